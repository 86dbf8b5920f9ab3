"""``ftprune demo``: FTP's pipeline on the embedded defaults, or (``--quick``) on tiny
budgets."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Any

import typer

from ftprune.cli_common import Db, Device, Dtype, Pool, Quiet, Workers, checked_url, user_errors

QUICK_DEMO = dict(
    seq_lens=[128],
    sequences_per_length=4,
    heldout_seq_lens=[256],
    heldout_sequences_per_length=2,
    window=16,
    offspring=6,
    generations=2,
    stages=[{"sequences": 2, "keep": 3}, {"sequences": 4, "keep": 2}],
    finetune_generations=1,
    router_training={"steps": 3, "batch_size": 2, "eval_every": 3},
)


def _demo_gpus(device: str | None, pool: str | None, workers: int | None) -> dict[str, Any]:
    """What ``demo --device cuda`` needs on its Ray pool (the demo has no gpus_per_worker
    option): its workers share GPU 0, each reserving an equal fraction of it. Raises
    ConfigError or DeviceError (one line) for a device the demo's workers cannot use."""
    if device is None or not device.startswith("cuda") or pool == "local":
        return {}
    from search.config import ConfigError, RunConfig
    from workers.devices import DeviceError, check_device_spec

    check_device_spec(device)
    if device not in ("cuda", "cuda:0"):
        raise ConfigError(
            f"--device {device}: the demo's Ray workers share one GPU, which each sees as "
            f"cuda:0; use --device cuda, or --pool local --device {device}"
        )
    import torch

    if not torch.cuda.is_available():
        raise DeviceError(f"--device {device}: this machine has no CUDA device")
    return {"gpus_per_worker": 1.0 / (workers or RunConfig.model_fields["workers"].default)}


def demo(
    quick: Annotated[bool, typer.Option("--quick", help="Tiny budgets (about a minute).")] = False,
    pool: Pool = None,
    workers: Workers = None,
    device: Device = None,
    dtype: Dtype = None,
    db: Db = None,
    quiet: Quiet = False,
) -> None:
    """FTP's pipeline on the embedded defaults (smollm2-135m, builtin:pydoc, S = 0.3).

    Search with the static router, train the dynamic router, fine-tune the schedule.
    """
    from ftprune.cli_pipeline import run_pipeline_and_report
    from search.config import build_config

    with user_errors():
        overrides: dict[str, Any] = dict(QUICK_DEMO) if quick else {}
        overrides.update(_demo_gpus(device, pool, workers))
        cfg = build_config(
            None,
            run_name=f"demo-{time.strftime('%Y%m%d-%H%M%S')}",
            pool=pool,
            workers=workers,
            device=device,
            dtype=dtype,
            **overrides,
        )
        url = checked_url(db, writes=True)  # after the config: a bad one needs no SQLAlchemy
        from storage import redact

        typer.echo(
            f"demo {cfg.run_name}: runs and results go to the database {redact(url)}, router "
            f"checkpoints to {Path(cfg.artifacts_dir).resolve()}/ (the database records "
            "their paths; keep both)",
            err=True,
        )
        run_pipeline_and_report(cfg, url, 1, quiet)
