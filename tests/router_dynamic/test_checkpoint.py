"""Router checkpoints: export -> load gives the same model; broken ones fail clearly."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from router import load_model, route
from router.checkpoint import CheckpointError, load_routed, load_router, save_router
from router.dynamic import FACTORS, DynamicRouter, HiddenStateRouter
from tests.router_dynamic.conftest import ids

SPEC = "random:llama-tiny"
SCHEDULE = [0.2, 0.5, 0.4, 0.6]


def _trained_like(router):
    """Perturb the initial weights so a load that silently re-initializes would differ."""
    with torch.no_grad():
        for param in router.parameters():
            param.add_(torch.randn_like(param))
    return router


@pytest.mark.parametrize("nested", [False, True], ids=["free", "nested"])
@pytest.mark.parametrize("kind", ["dynamic", "hidden_state"])
def test_export_then_load_gives_identical_logits_and_generation(tmp_path, kind, nested):
    model, _ = load_model(SPEC)
    schedule = sorted(SCHEDULE) if nested else SCHEDULE  # nesting needs it non-decreasing
    torch.manual_seed(0)
    router = _trained_like(
        DynamicRouter(["position", "attention", "sparsity"], nested=nested)
        if kind == "dynamic"
        else HiddenStateRouter(model.config.hidden_size, nested=nested)
    )
    route(model, schedule, router)
    batch = ids(2, 24)
    with torch.no_grad():
        expected = model(batch).logits
    generated = model.generate(batch, max_new_tokens=4, do_sample=False)
    save_router(tmp_path, router, schedule, model_spec=SPEC)

    loaded, _, routing = load_routed(tmp_path)
    with torch.no_grad():
        assert torch.equal(loaded(batch).logits, expected)
    assert torch.equal(loaded.generate(batch, max_new_tokens=4, do_sample=False), generated)
    assert routing.schedule == schedule
    meta = json.loads((tmp_path / "router.json").read_text())
    assert meta["model"] == SPEC and set(meta["versions"]) >= {"torch", "transformers"}
    if kind == "dynamic":
        assert meta["factors"] == ["position", "attention", "sparsity"]
    assert meta["nested"] is nested and routing.nested is nested


@pytest.fixture
def saved(tmp_path):
    torch.manual_seed(0)
    save_router(tmp_path, DynamicRouter(), SCHEDULE, model_spec=SPEC)
    return tmp_path


def _edit_meta(directory, **changes):
    path = directory / "router.json"
    meta = json.loads(path.read_text())
    meta.update(changes)
    path.write_text(json.dumps(meta))


def _assert_one_line_error(load, directory, match):
    with pytest.raises(CheckpointError, match=match) as error:
        load(directory)
    assert "\n" not in str(error.value)


def test_missing_directory_or_files(tmp_path, saved):
    _assert_one_line_error(load_router, tmp_path / "nowhere", "no router.json")
    (saved / "router.safetensors").unlink()
    _assert_one_line_error(load_router, saved, "no weights file")


def test_bad_json_and_bad_fields(saved):
    (saved / "router.json").write_text("{not json")
    _assert_one_line_error(load_router, saved, "invalid JSON")
    (saved / "router.json").write_text(json.dumps({"format": 1, "kind": "dynamic"}))
    _assert_one_line_error(load_router, saved, "field 'hidden'")


def test_unknown_kind_and_factor(saved):
    _edit_meta(saved, kind="oracle")
    _assert_one_line_error(load_router, saved, "unknown router kind 'oracle'")
    _edit_meta(saved, kind="dynamic", factors=["position", "entropy"])
    _assert_one_line_error(load_router, saved, "bad router description")


def test_corrupted_weights(saved):
    (saved / "router.safetensors").write_bytes(b"\x00\x01 not a safetensors file")
    _assert_one_line_error(load_router, saved, "unreadable safetensors")


def test_wrong_shapes_or_tensors(saved):
    _edit_meta(saved, hidden=32)
    _assert_one_line_error(load_router, saved, r"has shape \(64,\), the router needs \(32,\)")
    _edit_meta(saved, hidden=64, factors=["position", "rank"])
    _assert_one_line_error(load_router, saved, "has shape")
    _edit_meta(saved, kind="hidden_state", hidden_size=64)
    _assert_one_line_error(load_router, saved, r"has shape \(64, 4\), the router needs \(64, 64\)")
    _edit_meta(saved, kind="dynamic", factors=list(FACTORS))
    tensors = load_file(str(saved / "router.safetensors"))
    save_file({**tensors, "extra": torch.zeros(1)}, str(saved / "router.safetensors"))
    _assert_one_line_error(load_router, saved, "do not match the dynamic router")


def test_schedule_that_does_not_fit_the_model(saved):
    _edit_meta(saved, schedule=SCHEDULE[:3])
    _assert_one_line_error(load_routed, saved, "schedule has 3 entries but .* has 4 decoder")
    _edit_meta(saved, schedule=[0.2, 0.5, 0.4, 1.5])
    _assert_one_line_error(load_routed, saved, r"sparsity must lie in \[0, 1\)")
    _edit_meta(saved, schedule=SCHEDULE, model="random:gpt-huge")
    _assert_one_line_error(load_routed, saved, "unknown random model")
