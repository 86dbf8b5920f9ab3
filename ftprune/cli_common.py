"""Options and helpers shared by the ``ftprune`` command modules."""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Iterator, NoReturn, Optional, Sequence

import typer

if TYPE_CHECKING:
    from search.config import RunConfig
    from storage import Store
    from storage.records import StoredHeldout
    from workers.scoring import WindowMetrics

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
JsonOut = Annotated[
    Optional[Path], typer.Option("--json", help="Write the rows to this file (a JSON list).")
]
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


# The library's input errors, by (module, class): each message is one line for the user.
USER_ERRORS = (
    ("search.errors", "ConfigError"),
    ("search.coordinator", "RunFinished"),
    ("router.loading", "ModelSpecError"),
    ("router.specs", "RouterSpecError"),
    ("router.specs", "CheckpointError"),
    ("storage.engine", "StorageError"),
    ("workers.data", "DataSpecError"),
    ("workers.devices", "DeviceError"),
    ("evaluation.tasks", "TaskError"),
)


# Failures of the work itself, not of its input (the run is marked failed and resumable):
# one line each as well.
RUN_FAILURES = (
    ("search.coordinator", "SearchFailure"),
    ("workers.pool", "WorkerFailure"),
)


def is_user_error(exc: BaseException, kinds: tuple[tuple[str, str], ...] = USER_ERRORS) -> bool:
    """Whether ``exc`` is one of ``kinds`` (:data:`USER_ERRORS`). Imports nothing: an error
    class can only have been raised once its module is loaded, so modules not yet imported
    are skipped (bad input met before torch or SQLAlchemy load never loads them)."""
    return any(
        module in sys.modules and isinstance(exc, getattr(sys.modules[module], name))
        for module, name in kinds
    )


@contextlib.contextmanager
def user_errors() -> Iterator[None]:
    """Turn the library's input errors into one line on stderr and exit status 2, the
    failures of :data:`RUN_FAILURES` into one line and exit status 1, and an interrupted
    run (:class:`search.interrupts.RunInterrupted`) into its one line and 128 + the
    signal's number."""
    try:
        yield
    except BaseException as exc:
        if is_user_error(exc, (("search.interrupts", "RunInterrupted"),)):
            typer.echo(str(exc), err=True)
            raise typer.Exit(getattr(exc, "exit_code", 130)) from None
        if not isinstance(exc, Exception):
            raise
        if is_user_error(exc):
            fail(str(exc))
        if is_user_error(exc, RUN_FAILURES):
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(1) from None
        raise


def fail(message: str) -> NoReturn:
    """Bad input: ``message`` as one line on stderr, exit status 2."""
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(2)


def check_range(value: float | None, option: str, low: float, high: float) -> None:
    """Bad input (exit 2, one line) unless ``value``, if given, is a number in
    [``low``, ``high``]: every count a command takes is bounded by what a user can mean."""
    if value is not None and not low <= value <= high:
        fail(f"{option} must lie in {low}..{high}, got {value}")


def check_output_file(path: Path | None, option: str) -> None:
    """Exit 2 with one line unless ``path`` (if given) can be written now, before the work
    whose result it will hold: its directory exists, it is no directory, and a byte written
    there sticks (a full disk, ``/dev/full`` or a read-only file fail here). The probe
    leaves the file as it was: a new file is removed, an existing one truncated back."""
    if path is None:
        return
    if path.is_dir():
        fail(f"{option} {path} is a directory")
    if not path.parent.is_dir():
        fail(f"{option}: directory {path.parent} does not exist")
    existed = path.exists()
    size = path.stat().st_size if path.is_file() else 0
    try:
        with open(path, "ab") as handle:
            handle.write(b"\n")
            handle.flush()
            if path.is_file():
                handle.truncate(size)
    except OSError as exc:
        fail(f"cannot write {option} {path}: {exc.strerror or exc}")
    finally:
        if not existed:
            path.unlink(missing_ok=True)


def on_device(cfg: RunConfig, device: str | None) -> RunConfig:
    """``cfg`` with ``--device`` if given (a stored run's config, which build_config does not
    see); raises DeviceError for a malformed spec."""
    if device is None:
        return cfg
    from workers.devices import check_device_spec

    check_device_spec(device)
    return cfg.model_copy(update={"device": device})


def checked_url(db: str | None, writes: bool = False) -> str:
    """``--db`` or the default URL, checked early (StorageError for a URL ftprune cannot
    use, and with ``writes`` for a SQLite file :func:`storage.engine.check_writable`
    refuses); loads SQLAlchemy but neither torch nor a model."""
    from storage import check_url, default_url
    from storage.engine import check_writable

    url = db or default_url()
    check_url(url)
    if writes:
        check_writable(url)
    return url


def open_store(db: str | None, create: bool = True) -> Store:
    """The store of a command that writes, after :func:`storage.engine.check_writable`.
    Raises StorageError (one line)."""
    from storage import Store, default_url
    from storage.engine import check_writable

    url = db or default_url()
    check_writable(url)
    return Store(url, create=create)


def format_schedule(schedule: list[float]) -> str:
    return "[" + ", ".join(f"{s:.3f}" for s in schedule) + "]"


def echo_heldout_table(
    cfg: RunConfig, rows: Sequence[tuple[str, WindowMetrics | StoredHeldout]]
) -> None:
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
