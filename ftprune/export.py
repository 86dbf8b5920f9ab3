"""``ftprune export``: a run's deployable routed model, a router checkpoint directory that
``router.checkpoint.load_routed(DIR)`` turns into a working routed model.

What is written is explicit: one of the run's routers (``--router LABEL``) with one
schedule (``--schedule finetuned``: the schedule the pipeline fine-tuned for that router,
``finetuned-<round>``; ``--schedule trained``: the schedule the router was trained for).
By default the router is the newest one the pipeline fine-tuned a schedule for (its last
round), with that fine-tuned schedule; a run whose routers were all trained by ``router
train`` exports its newest router with the schedule it was trained for. A router named
with ``--router`` by a round label (``round-N``) and no ``--schedule`` exports round N's
fine-tuned schedule, and is refused in one line if that round has none; a router with
another label (``router train --label``) exports the schedule it was trained for.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from search.config import ConfigError
from search.records import RouterLabel

if TYPE_CHECKING:
    from storage import Store
    from storage.schema import RouterRow

SCHEDULE_CHOICES = ("finetuned", "trained")
SCHEDULE_WORDS = {"finetuned": "fine-tuned", "trained": "trained"}  # as output names them


@dataclass(frozen=True)
class ExportPlan:
    """Which router and schedule of which run an export writes."""

    run_name: str
    router_label: str
    router_id: int
    checkpoint: Path
    schedule_kind: str  # one of SCHEDULE_CHOICES
    schedule: list[float]


def check_choice(schedule: str | None) -> None:
    """ConfigError unless ``--schedule`` is None or one of :data:`SCHEDULE_CHOICES`."""
    if schedule is not None and schedule not in SCHEDULE_CHOICES:
        raise ConfigError(
            f"--schedule must be one of {', '.join(SCHEDULE_CHOICES)}, not {schedule!r}"
        )


def plan_export(
    store: Store, ref: str | int, router: str | None = None, schedule: str | None = None
) -> ExportPlan:
    """The router and schedule to export (see the module docstring); StorageError for a
    run without routers, an unknown ``router`` label or a checkpoint that changed on disk,
    ConfigError for a fine-tuned schedule the router does not have."""
    from router.specs import WEIGHTS, weights_sha256
    from storage import StorageError

    check_choice(schedule)
    run = store.find_run(ref)
    routers = store.routers(run.id)
    if not routers:
        raise StorageError(
            f"run {run.name!r} has no trained router: run `ftprune router "
            f"train --run {run.name}` or the pipeline first"
        )
    finetuned = {h.label: list(h.schedule) for h in store.heldout(run.id)}
    row = _chosen_router(run.name, routers, finetuned, router, schedule)
    wanted = RouterLabel.from_json(row.label).finetuned
    own = finetuned.get(wanted.to_json()) if wanted is not None else None
    # A router named by a round label exports that round's fine-tuned schedule unless
    # --schedule trained asks for the one it was trained for; other routers fall back to it.
    named_round = router is not None and wanted is not None
    kind = schedule or ("finetuned" if own is not None or named_round else "trained")
    if kind == "finetuned" and own is None:
        raise ConfigError(
            f"router {row.label!r} of run {run.name!r} has no fine-tuned schedule (only the "
            "pipeline's rounds have one): pass --schedule trained"
        )
    weights = Path(row.checkpoint) / WEIGHTS
    if not weights.is_file():
        raise StorageError(f"router checkpoint of run {run.name!r} is missing: {weights}")
    if weights_sha256(row.checkpoint) != row.checkpoint_sha256:
        raise StorageError(f"router checkpoint {weights} changed since it was recorded")
    chosen = own if kind == "finetuned" and own is not None else list(row.schedule)
    return ExportPlan(run.name, row.label, row.id, Path(row.checkpoint), kind, chosen)


def _chosen_router(
    run_name: str,
    routers: list[RouterRow],
    finetuned: dict[str, list[float]],
    label: str | None,
    schedule: str | None,
) -> RouterRow:
    """The router ``--router`` names, else the default (see the module docstring)."""
    from storage import StorageError

    if label is not None:
        found = [r for r in routers if r.label == label]
        if not found:
            labels = ", ".join(r.label for r in routers)
            raise StorageError(f"run {run_name!r} has no router {label!r} (it has: {labels})")
        return found[-1]
    if schedule == "trained":
        return routers[-1]
    rounds = [
        r
        for r in routers
        if (wanted := RouterLabel.from_json(r.label).finetuned) is not None
        and wanted.to_json() in finetuned
    ]
    return rounds[-1] if rounds else routers[-1]


def write_export(plan: ExportPlan, out: Path) -> Path:
    """Write the plan's router with its schedule into ``out`` (created)."""
    from router.checkpoint import load_router, save_router

    router, meta = load_router(plan.checkpoint)
    save_router(out, router, plan.schedule, meta["model"], meta["dtype"], meta["decode"])
    return out


def check_out(out: Path) -> None:
    """ConfigError unless ``--out`` can become the export directory: absent or an empty
    directory, and writable (checked before the database is read)."""
    from search.preflight import check_writable_dir

    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} exists and is not a directory")
    if out.is_dir() and any(out.iterdir()):
        raise ConfigError(f"--out {out} exists and is not empty")
    check_writable_dir(out, "--out")
