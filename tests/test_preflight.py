"""search.preflight: every check of a run in one place, answered from the model's config and
tokenizer (never its weights), and the tokens it builds are the ones the pool scores on."""

from __future__ import annotations

from pathlib import Path

import pytest

from search.config import DEFAULT_LEARNED_FROM, DEFAULT_ROUTER_KIND, build_config
from search.preflight import CheckedRun, check_router, preflight

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "configs/tiny.yaml"


def test_the_torch_free_names_are_the_registrys():
    from router.registry import FIXED, TRAINED
    from router.specs import FIXED_ROUTERS, TRAINED_KINDS

    assert tuple(FIXED) == FIXED_ROUTERS and tuple(TRAINED) == TRAINED_KINDS
    assert TRAINED[DEFAULT_ROUTER_KIND].learned_from == DEFAULT_LEARNED_FROM


@pytest.mark.parametrize("spec", ["random:llama-tiny", "random:qwen2-tiny"])
def test_model_facts_and_tokens_without_the_model(spec):
    from router.facts import model_facts, token_encoder
    from router.loading import load_tokenizer, model_config
    from workers.data import split_text

    facts, config = model_facts(spec), model_config(spec)
    assert (facts.blocks, facts.context, facts.hidden_size) == (
        config.num_hidden_layers,
        config.max_position_embeddings,
        config.hidden_size,
    )
    text = split_text("builtin:pydoc", "heldout")
    expected = load_tokenizer(spec)(text, add_special_tokens=False)["input_ids"]
    assert token_encoder(spec)(text) == expected


@pytest.mark.model
def test_the_embedded_models_facts_and_tokens_match_transformers():
    from router.facts import model_facts, token_encoder
    from router.loading import SMOLLM2_ALIAS, load_tokenizer, model_config
    from workers.data import split_text

    facts, config = model_facts(SMOLLM2_ALIAS), model_config(SMOLLM2_ALIAS)
    assert (facts.family, facts.blocks, facts.context) == (
        config.model_type,
        config.num_hidden_layers,
        config.max_position_embeddings,
    )
    tokenizer = load_tokenizer(SMOLLM2_ALIAS)
    for split in ("calibration", "heldout"):
        text = split_text("builtin:pydoc", split)
        assert (
            token_encoder(SMOLLM2_ALIAS)(text)
            == tokenizer(text, add_special_tokens=False)["input_ids"]
        )


def test_preflight_builds_the_tokens_a_pool_would(monkeypatch):
    import torch

    import router.loading
    from router.loading import load_tokenizer
    from search.settings import scorer_settings
    from workers.scoring import build_splits

    config = build_config(TINY)
    expected = build_splits(scorer_settings(config), load_tokenizer(config.model))
    monkeypatch.setattr(router.loading, "load_model", _no_weights)
    checked = preflight(config)
    assert checked.model.blocks == 4
    sequences = checked.sequences()
    assert sequences is not None and set(sequences) == set(expected)
    for split, tensors in expected.items():
        assert all(torch.equal(a, b) for a, b in zip(sequences[split], tensors, strict=True))


def test_a_checked_run_is_tokenized_once(tmp_path, monkeypatch):
    """``launch`` of a checked run opens its pool on the checked tokens: the text is never
    tokenized again."""
    import workers.data
    from search.coordinator import launch
    from storage import Store

    checked = preflight(build_config(TINY, generations=1, run_name="once"))
    calls: list[str] = []
    original = workers.data.split_text
    monkeypatch.setattr(
        workers.data, "split_text", lambda *a: calls.append("split") or original(*a)
    )
    with Store(f"sqlite:///{tmp_path / 'once.db'}") as store:
        outcome = launch(checked, store, show_progress=False)
    assert outcome.search.evaluations > 0 and calls == []


def test_a_checkpoint_is_checked_from_its_header_without_reading_weights(tmp_path, monkeypatch):
    import router.checkpoint
    from router.checkpoint import save_router
    from router.dynamic import DynamicRouter
    from router.facts import model_facts
    from router.specs import CheckpointError

    directory = save_router(tmp_path / "r", DynamicRouter(), [0.3] * 4, "random:llama-tiny")
    monkeypatch.setattr(router.checkpoint, "load_file", _no_weights)
    facts = model_facts("random:llama-tiny")
    check_router(f"dynamic:{directory}", facts)
    other = save_router(tmp_path / "w", DynamicRouter(hidden=8), [0.3] * 4, "random:llama-tiny")
    meta = (other / "router.json").read_text().replace('"hidden": 8', '"hidden": 64')
    (other / "router.json").write_text(meta)
    with pytest.raises(CheckpointError, match="has shape"):
        check_router(f"dynamic:{other}", facts)


def test_feasibility_is_the_searched_budgets(tmp_path):
    """A run whose stored search targets another sparsity than its config is refused, not
    searched against two budgets."""
    from search.coordinator import SearchFailure, run_search
    from search.settings import scorer_settings
    from storage import Store
    from workers.pool import LocalPool

    config = build_config(TINY, generations=1, run_name="budget")
    with Store(f"sqlite:///{tmp_path / 'b.db'}") as store:
        run = store.create_run("budget", config.model_dump(), 0)
        with LocalPool(scorer_settings(config)) as pool:
            run_search(config, store, pool, run.id, False)
            changed = config.model_copy(update={"target_sparsity": 0.4, "generations": 2})
            with pytest.raises(SearchFailure, match="stored search targets sparsity 0.3"):
                run_search(changed, store, pool, run.id, False)


def test_a_checked_run_without_tokens_opens_no_sequences():
    checked = CheckedRun(build_config(TINY), _facts())
    assert checked.sequences() is None


def _facts():
    from router.facts import model_facts

    return model_facts("random:llama-tiny")


def _no_weights(*args, **kwargs):
    raise AssertionError("weights were read")
