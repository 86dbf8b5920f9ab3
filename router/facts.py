"""What checks need to know of a model before it loads, read without its weights: its
facts from its config file, and its tokenizer's ids without transformers (and torch) where
the tokenizer is a plain ``tokenizers`` one."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from router.loading import (
    RANDOM_CONTEXT,
    ModelSpecError,
    _parse_random,
    _unconverted_source,
    byte_tokenizer_core,
    check_family_name,
    check_model_spec,
    load_tokenizer,
    model_config,
)

# transformers tokenizer classes that use a tokenizer.json as it is (see token_encoder)
PLAIN_TOKENIZER_CLASSES = ("TokenizersBackend", "PreTrainedTokenizerFast", "GPT2TokenizerFast")


@dataclass(frozen=True)
class ModelFacts:
    """What checks need of a model, read from its config without its weights: the family
    (``model_type``), the decoder blocks, the context (``max_position_embeddings``, None
    when the config has none) and the hidden size."""

    spec: str
    family: str
    blocks: int
    context: int | None
    hidden_size: int

    def check_fits(self, longest: int, what: str) -> None:
        """Raise :class:`ModelSpecError` unless ``longest`` positions fit the context."""
        if self.context is not None and longest > self.context:
            raise ModelSpecError(
                f"{what} {longest} exceeds the context of model {self.spec!r} "
                f"({self.context} positions)"
            )


Encoder = Callable[[str], list[int]]  # text -> token ids, no special tokens added


def model_facts(spec: str) -> ModelFacts:
    """The :class:`ModelFacts` of ``spec``. A random preset's come from its shape, a
    directory's (or a GGUF's converted copy's) from its ``config.json`` read as JSON; other
    specs go through :func:`model_config` (transformers). Raises :class:`ModelSpecError`
    as :func:`model_config` does, and for an unsupported family."""
    check_model_spec(spec)
    if spec.startswith("random:"):
        family, (hidden, layers, *_rest) = _parse_random(spec)
        model_type = "llama" if family.startswith("llama") else family
        return ModelFacts(spec, model_type, layers, RANDOM_CONTEXT, hidden)
    source, options = _unconverted_source(spec)
    path = Path(source) / "config.json"
    if not options and path.is_file():
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            family = str(data.get("model_type", "?"))
            check_family_name(family, spec)
            context = data.get("max_position_embeddings")
            return ModelFacts(
                spec,
                family,
                int(data["num_hidden_layers"]),
                context if isinstance(context, int) else None,
                int(data["hidden_size"]),
            )
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as error:
            raise ModelSpecError(f"cannot read the config of model {spec!r}: {error}") from None
    config = model_config(spec)
    context = getattr(config, "max_position_embeddings", None)
    return ModelFacts(
        spec,
        config.model_type,
        int(config.num_hidden_layers),
        context if isinstance(context, int) else None,
        int(config.hidden_size),
    )


def token_encoder(spec: str) -> Encoder:
    """A function giving the token ids that ``load_tokenizer(spec)(text,
    add_special_tokens=False)["input_ids"]`` gives, built without transformers (and torch)
    where the tokenizer is a plain ``tokenizers`` one: the random presets' byte-level
    tokenizer, and a ``tokenizer.json`` of a local directory or a GGUF's converted copy
    (equality is tested for the shipped models); otherwise the transformers tokenizer's."""
    check_model_spec(spec)
    if spec.startswith("random:"):
        core = byte_tokenizer_core()
    else:
        source, options = _unconverted_source(spec)
        path = Path(source) / "tokenizer.json"
        if options or not path.is_file() or not _plain_tokenizer(Path(source)):
            tokenizer = load_tokenizer(spec)
            return lambda text: list(
                tokenizer(
                    text, add_special_tokens=False, return_attention_mask=False, verbose=False
                )["input_ids"]
            )
        from tokenizers import Tokenizer

        core = Tokenizer.from_file(str(path))
    return lambda text: list(core.encode(text, add_special_tokens=False).ids)


def _plain_tokenizer(directory: Path) -> bool:
    """Whether transformers would use ``tokenizer.json`` as it is: a tokenizer class of
    :data:`PLAIN_TOKENIZER_CLASSES`, which rewrites neither normalizer nor pre-tokenizer."""
    try:
        settings = json.loads((directory / "tokenizer_config.json").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return False
    return settings.get("tokenizer_class") in PLAIN_TOKENIZER_CLASSES and not (
        settings.get("add_prefix_space")
    )
