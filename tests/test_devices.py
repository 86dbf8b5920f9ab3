"""Devices end to end: the spec checks, the scorer, its teacher cache and router training on
an explicit device, and pool workers (in process and on Ray) that train and report where
their model is. Tests marked ``gpu`` run only where CUDA exists."""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from ftprune.cli import app
from search.config import ConfigError, build_config
from search.settings import check_device, training_request
from workers.devices import DeviceError, check_device_available, check_device_spec, resolve_device
from workers.pool import LocalPool, RayPool
from workers.scoring import Scorer, ScorerSettings, build_splits
from workers.training import train_request

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "configs/tiny.yaml"
CUDA = torch.cuda.is_available()
needs_cuda = pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
no_cuda = pytest.mark.skipif(CUDA, reason="checks a machine without CUDA")
runner = CliRunner()


def _settings(device: str) -> ScorerSettings:
    return ScorerSettings(
        model="random:llama-tiny",
        device=device,
        calibration_lens=(48, 64),
        calibration_per_length=2,
        heldout_lens=(64,),
        heldout_per_length=2,
        window=8,
        batch_size=2,
    )


def _request(steps: int = 3):
    return training_request(
        build_config(
            TINY,
            router_training={"steps": steps, "batch_size": 2, "eval_every": 2, "guide_steps": 2},
        ),
        [0.2, 0.4, 0.3, 0.3],
        show_progress=False,
    )


@pytest.mark.parametrize("spec", ["auto", "cpu", "cuda", "cuda:0", "cuda:12"])
def test_device_specs_of_the_config(spec):
    check_device_spec(spec)
    assert build_config(TINY, device=spec).device == spec


@pytest.mark.parametrize("spec", ["gpu", "cuda:", "cuda:x", "cuda0", "CPU", "", "meta"])
def test_malformed_device_specs_are_refused(spec):
    with pytest.raises(DeviceError, match="auto, cpu, cuda or cuda:N"):
        check_device_spec(spec)
    with pytest.raises(ConfigError, match="device"):
        build_config(TINY, device=spec)


def test_auto_resolves_to_cuda_only_where_it_exists():
    assert resolve_device("auto").type == ("cuda" if CUDA else "cpu")
    assert resolve_device("cpu") == torch.device("cpu")


def test_ray_workers_see_only_the_gpus_they_reserve():
    with pytest.raises(DeviceError, match="gpus_per_worker is 0"):
        check_device_available("cuda", gpus_per_worker=0.0)
    with pytest.raises(DeviceError, match="gpus_per_worker is 1"):
        check_device_available("cuda:1", gpus_per_worker=1.0)
    check_device_available("cuda:1", gpus_per_worker=2.0, remote=True)  # a cluster's GPUs
    check_device_available("cuda", gpus_per_worker=0.25, remote=True)  # fractions share one
    check_device_available("auto", gpus_per_worker=0.0)
    check_device_available("cpu")


@no_cuda
def test_cuda_on_a_machine_without_it_is_refused():
    with pytest.raises(DeviceError, match="no CUDA device"):
        check_device_available("cuda")
    with pytest.raises(DeviceError, match="no CUDA device"):  # local Ray would wait forever
        check_device_available("cpu", gpus_per_worker=0.5)
    with pytest.raises(DeviceError, match="no CUDA device"):
        check_device(build_config(TINY, device="cuda:0", pool="local"))


@pytest.mark.parametrize(
    "command",
    [
        ["search", "launch", "--config", str(TINY)],
        ["pipeline", "--config", str(TINY)],
        ["bench", "quality", "--config", str(TINY)],
        ["bench", "ablation", "--config", str(TINY)],
        ["bench", "search", "--config", str(TINY)],
        ["demo", "--quick"],
    ],
)
@pytest.mark.parametrize(
    "device,message",
    [
        ("gpu", "unknown device 'gpu'"),
        pytest.param("cuda", "cuda", marks=no_cuda),  # no CUDA here, or no GPU reserved (demo)
    ],
)
def test_bad_device_is_one_line_before_any_work(tmp_path, command, device, message):
    db = tmp_path / "never.db"
    has_db = command[0] in ("search", "pipeline", "demo")
    result = runner.invoke(
        app, [*command, "--device", device, *(["--db", f"sqlite:///{db}"] if has_db else [])]
    )
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and message in lines[0].lower()
    assert not db.exists()


def test_scorer_puts_model_and_sequences_on_its_device():
    """``meta`` stands in for an accelerator: nothing can run there, but every tensor the
    scorer holds must land there, so nothing falls back to the CPU silently."""
    scorer = Scorer(_settings("meta"))
    assert scorer.device == torch.device("meta") and scorer.model_device() == "meta"
    assert all(p.device.type == "meta" for p in scorer.model.parameters())
    for split in ("calibration", "heldout"):
        assert {seq.device.type for seq in scorer.comparator(split).sequences} == {"meta"}


def test_scorer_uses_the_sequences_it_is_given():
    settings = _settings("cpu")
    given = build_splits(settings, Scorer(settings).tokenizer)
    given["calibration"] = given["calibration"][:3]  # distinguishable from its own build
    scorer = Scorer(settings, given)
    assert scorer.num_sequences("calibration") == 3
    assert all(
        torch.equal(a, b)
        for a, b in zip(
            scorer.comparator("calibration").sequences, given["calibration"], strict=True
        )
    )


def test_teacher_cache_and_training_honour_an_explicit_cpu_device():
    scorer = Scorer(_settings("cpu"))
    scorer.score([0.3] * 4)
    teachers = scorer.comparator("calibration")._teachers
    assert len(teachers) == 4
    assert {t.log_probs.device for t in teachers.values()} == {torch.device("cpu")}
    state = train_request(scorer, _request())
    assert state.device == "cpu" and state.worker.endswith(f":{os.getpid()}")
    assert {t.device.type for t in state.state_dict.values()} == {"cpu"}
    assert len(state.history["loss"]) == 3 and state.heldout.positions == 2 * 8


def test_local_pool_trains_on_its_own_scorer():
    with LocalPool(_settings("cpu")) as pool:
        assert pool.worker_devices() == ["cpu"]
        first = pool.train(_request())
        again = pool.train(_request())
    assert first.kind == "dynamic" and first.fields["factors"] == [
        "position",
        "attention",
        "rank",
        "sparsity",
    ]
    for name, tensor in first.state_dict.items():  # seeded: the same router twice
        assert torch.equal(tensor, again.state_dict[name])
    router = first.router()
    assert not router.training
    assert all(torch.equal(router.state_dict()[n], t) for n, t in first.state_dict.items())


@pytest.mark.ray
@pytest.mark.usefixtures("ray_instance")
def test_ray_worker_trains_in_its_own_process_and_matches_in_process_training(capsys):
    with LocalPool(_settings("cpu")) as local:
        expected = local.train(_request())
    pool = RayPool(_settings("auto"), workers=1, cpus_per_worker=1)
    try:
        import ray

        assert pool.worker_devices() == ["cpu"]  # auto without a reserved GPU
        shared = ray.get(pool.sequences_ref)
        assert [len(shared[s]) for s in ("calibration", "heldout")] == [4, 2]
        assert pool.num_sequences == {"calibration": 4, "heldout": 2}
        capsys.readouterr()
        trained = pool.train(replace(_request(), config=replace(_request().config, progress=True)))
        # The actor's steps reach this process: a progress bar, and the actor's count.
        assert "router training" in capsys.readouterr().err
        assert ray.get(pool._actors[0].progress.remote()) == 3
        pids = pool.worker_pids()
    finally:
        pool.close()
    pid = int(trained.worker.rsplit(":", 1)[1])
    assert pid in pids and pid != os.getpid()
    assert trained.device == "cpu"
    assert trained.history["loss"] == pytest.approx(expected.history["loss"], rel=1e-4)
    for name, tensor in expected.state_dict.items():
        assert torch.allclose(trained.state_dict[name], tensor, atol=1e-5), name


@pytest.mark.gpu
@needs_cuda
def test_scorer_teacher_cache_and_training_on_cuda():
    scorer = Scorer(_settings("cuda"))
    assert scorer.model_device() == "cuda:0"
    evaluation = scorer.score([0.3] * 4)
    assert 0.0 < evaluation.fitness
    teachers = scorer.comparator("calibration")._teachers
    assert {t.log_probs.device.type for t in teachers.values()} == {"cuda"}
    state = train_request(scorer, _request())
    assert state.device == "cuda:0"
    assert {t.device.type for t in state.state_dict.values()} == {"cpu"}


@pytest.mark.gpu
@pytest.mark.ray
@pytest.mark.usefixtures("ray_instance")
@needs_cuda
def test_ray_actors_with_fractional_gpus_load_their_models_there():
    pool = RayPool(_settings("cuda"), workers=2, gpus_per_worker=0.5)
    try:
        assert pool.worker_devices() == ["cuda:0", "cuda:0"]
        assert pool.train(_request()).device == "cuda:0"
    finally:
        pool.close()
