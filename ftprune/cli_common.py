"""Options and helpers shared by the ``ftprune`` command modules."""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Annotated, Any, Iterator, NoReturn, Optional

import typer

if TYPE_CHECKING:
    from search.config import RunConfig

Db = Annotated[
    Optional[str],
    typer.Option("--db", help="Database URL (default: $FTPRUNE_DB, else sqlite:///ftprune.db)."),
]
Pool = Annotated[
    Optional[str],
    typer.Option(
        "--pool",
        help="Where candidates are scored: 'ray' (local instance or --ray-address) "
        "or 'local' (this process).",
    ),
]
Workers = Annotated[Optional[int], typer.Option("--workers", help="Number of Ray workers.")]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars.")]
Device = Annotated[
    Optional[str],
    typer.Option(
        "--device",
        help="Where workers put the model: auto (CUDA if the worker sees it, else "
        "the CPU), cpu, cuda or cuda:N (default: the config's).",
    ),
]
Dtype = Annotated[
    Optional[str],
    typer.Option(
        "--dtype", help="Model dtype: float32, bfloat16 or float16 (default: the config's)."
    ),
]


@contextlib.contextmanager
def user_errors() -> Iterator[None]:
    """Turn the library's input errors into one line on stderr and exit status 2."""
    from router import ModelSpecError
    from router.checkpoint import CheckpointError
    from search.config import ConfigError
    from storage import StorageError
    from workers import DataSpecError
    from workers.devices import DeviceError
    from workers.scoring import RouterSpecError
    from workers.tasks import TaskError

    try:
        yield
    except (
        ConfigError,
        ModelSpecError,
        DataSpecError,
        StorageError,
        RouterSpecError,
        CheckpointError,
        DeviceError,
        TaskError,
    ) as exc:
        fail(str(exc))


def fail(message: str) -> NoReturn:
    """Bad input: ``message`` as one line on stderr, exit status 2."""
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(2)


def on_device(cfg: RunConfig, device: str | None) -> RunConfig:
    """``cfg`` with ``--device`` if given (a stored run's config, which build_config does not
    see); raises DeviceError for a malformed spec."""
    if device is None:
        return cfg
    from workers.devices import check_device_spec

    check_device_spec(device)
    return cfg.model_copy(update={"device": device})


def open_store(db: str | None, create: bool = True) -> Any:
    from storage import Store, default_url

    return Store(db or default_url(), create=create)


def format_schedule(schedule: list[float]) -> str:
    return "[" + ", ".join(f"{s:.3f}" for s in schedule) + "]"


def echo_heldout_table(cfg: Any, rows: list[tuple[str, Any]]) -> None:
    """The held-out window metrics table: (what the row shows, metrics with ``kl``,
    ``top1``, ``ppl`` and ``realized_sparsity``) per row."""
    count = cfg.heldout_sequences_per_length * len(cfg.heldout_seq_lens)
    typer.echo(
        f"\nheld-out text ({count} sequences of "
        f"{'/'.join(map(str, cfg.heldout_seq_lens))} tokens, last {cfg.window} "
        f"positions of each):"
    )
    typer.echo(
        f"  {'schedule + router':<30}{'window KL':>10}{'top-1':>8}{'window ppl':>12}"
        f"{'realized S':>12}"
    )
    for text, m in rows:
        typer.echo(
            f"  {text:<30}{m.kl:>10.4f}{m.top1:>8.3f}{m.ppl:>12.2f}{m.realized_sparsity:>12.3f}"
        )
