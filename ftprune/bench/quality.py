"""``ftprune bench quality`` and ``ftprune bench ablation``: held-out window metrics of
allocations and routers, per seed and per held-out sequence length.

Quality, per seed (the seed drives the searches and router training): FTP's pipeline (one
round, in a throwaway SQLite database) gives the searched schedule, the trained dynamic
router and the fine-tuned schedule; rows are

- ``uniform`` + ``static``: every block at the target sparsity;
- ``block_influence`` + ``static``: ShortGPT Block Influence allocation (s_i ∝ sqrt(mean BI /
  BI_i), projected onto the budget grid);
- ``searched`` + ``static``, ``searched`` + ``dynamic``, ``finetuned`` + ``dynamic``.

Ablation, per seed: the static-router search of the pipeline's step 1, then one router
trained for its best schedule per variant: ``dynamic`` (all four factors), ``dynamic-no-<f>``
for each factor f, and ``hidden_state`` (an MLP over the block's input hidden state, the
design FTP argues against); rows are ``searched`` + each variant, and ``searched`` +
``static`` and ``searched`` + ``random`` (the seeded baseline) for reference.

Rows: allocation, router, seed, seq_len, heldout_kl, heldout_top1, heldout_ppl,
realized_sparsity (measured, padding excluded). Held-out sequences come from the held-out
split at each of the config's ``heldout_seq_lens`` (``heldout_sequences_per_length`` of
each), scored at the last ``window`` positions as everywhere else.
"""

from __future__ import annotations

import statistics
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Protocol

from search.config import RunConfig

if TYPE_CHECKING:
    from workers.pool import EvaluationPool

Progress = Callable[[str], None]


class BlockInfluence(Protocol):
    """A pool or a scorer: anything that knows its block count and Block Influence."""

    num_blocks: int

    def block_influence(self) -> list[float]: ...


def _config(base: RunConfig, seed: int, workdir: Path) -> RunConfig:
    return base.model_copy(
        update={"seed": seed, "run_name": f"bench-{seed}", "artifacts_dir": str(workdir)}
    )


Entry = tuple[str, str, str, list[float]]  # allocation, router label, router spec, schedule


def _rows(
    pool: EvaluationPool, config: RunConfig, seed: int, entries: list[Entry]
) -> list[dict[str, Any]]:
    """Score every entry at each held-out length."""
    from workers.pool import ScoreRequest
    from workers.scoring import merge_stats

    results = pool.evaluate(
        [ScoreRequest(schedule, "heldout", spec) for _, _, spec, schedule in entries]
    )
    rows = []
    for (allocation, router, _, _), result in zip(entries, results, strict=True):
        for seq_len in config.heldout_seq_lens:
            m = merge_stats(
                [s for s in result.per_sequence.values() if s.tokens == seq_len]
            ).metrics()  # tokens: the length read
            rows.append(
                {
                    "allocation": allocation,
                    "router": router,
                    "seed": seed,
                    "seq_len": seq_len,
                    "heldout_kl": m.kl,
                    "heldout_top1": m.top1,
                    "heldout_ppl": m.ppl,
                    "realized_sparsity": m.realized_sparsity,
                }
            )
    return rows


def influence_allocation(pool: BlockInfluence, config: RunConfig) -> list[float]:
    """The Block-Influence schedule of ``config`` for the model ``pool`` scores."""
    from search.ga import influence_schedule
    from search.settings import ga_params

    return influence_schedule(ga_params(config, pool.num_blocks), pool.block_influence())


def run_quality(
    base: RunConfig, seeds: list[int], progress: Progress = print
) -> list[dict[str, Any]]:
    """The quality rows (see the module docstring)."""
    from ftprune.pipeline import run_pipeline
    from router.registry import checkpoint_spec
    from search.settings import open_pool
    from storage import Store

    rows: list[dict[str, Any]] = []
    with (
        tempfile.TemporaryDirectory(prefix="ftprune-bench-") as tmp,
        open_pool(_config(base, seeds[0], Path(tmp))) as pool,
    ):
        for seed in seeds:
            config = _config(base, seed, Path(tmp) / f"seed-{seed}")
            store = Store(f"sqlite:///{tmp}/seed-{seed}.db")
            progress(f"seed {seed}: pipeline (search, router training, fine-tuning)")
            outcome = run_pipeline(config, store, 1, show_progress=False, pool=pool, echo=progress)
            store.close()
            last = outcome.rounds[-1]
            searched = outcome.search.best_schedule
            uniform = [config.target_sparsity] * pool.num_blocks
            dynamic = checkpoint_spec(last.checkpoint)
            rows += _rows(
                pool,
                config,
                seed,
                [
                    ("uniform", "static", "static", uniform),
                    ("block_influence", "static", "static", influence_allocation(pool, config)),
                    ("searched", "static", "static", searched),
                    ("searched", "dynamic", dynamic, searched),
                    ("finetuned", "dynamic", dynamic, last.finetune.best_schedule),
                ],
            )
            progress(format_table([r for r in rows if r["seed"] == seed]))
    return rows


def run_ablation(
    base: RunConfig, seeds: list[int], progress: Progress = print
) -> list[dict[str, Any]]:
    """The ablation rows (see the module docstring)."""
    from router.checkpoint import save_router
    from router.dynamic import FACTORS
    from router.registry import checkpoint_spec
    from search.coordinator import launch
    from search.settings import open_pool, training_request
    from storage import Store

    variants = (
        [("dynamic", "dynamic", FACTORS)]
        + [
            (f"dynamic-no-{factor}", "dynamic", tuple(f for f in FACTORS if f != factor))
            for factor in FACTORS
        ]
        + [("hidden_state", "hidden_state", FACTORS)]
    )
    rows: list[dict[str, Any]] = []
    with (
        tempfile.TemporaryDirectory(prefix="ftprune-bench-") as tmp,
        open_pool(_config(base, seeds[0], Path(tmp))) as pool,
    ):
        for seed in seeds:
            config = _config(base, seed, Path(tmp))
            store = Store(f"sqlite:///{tmp}/seed-{seed}.db")
            progress(f"seed {seed}: search with the static router")
            searched = launch(config, store, False, pool).search.best_schedule
            store.close()
            entries: list[Entry] = [
                ("searched", "static", "static", searched),
                ("searched", "random", "random", searched),
            ]
            for name, kind, factors in variants:
                progress(f"seed {seed}: train router {name}")
                trained = pool.train(training_request(config, searched, False, kind, factors))
                checkpoint = save_router(
                    Path(tmp) / f"seed-{seed}-{name}",
                    trained.router(),
                    searched,
                    config.model,
                    config.dtype,
                )
                entries.append(("searched", name, checkpoint_spec(checkpoint), searched))
            seed_rows = _rows(pool, config, seed, entries)
            rows += seed_rows
            progress(format_table(seed_rows))
    return rows


def format_table(rows: list[dict[str, Any]]) -> str:
    """Mean ± standard deviation over seeds per (allocation, router, seq_len)."""
    groups: dict[tuple[str, str, int], list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault((row["allocation"], row["router"], row["seq_len"]), []).append(row)
    lines = [
        f"{'allocation':<17}{'router':<22}{'seq':>6}{'seeds':>6}{'heldout KL':>20}"
        f"{'top-1':>8}{'ppl':>8}{'real S':>8}"
    ]
    for (allocation, router, seq_len), group in groups.items():
        kls = [r["heldout_kl"] for r in group]
        spread = statistics.stdev(kls) if len(kls) > 1 else 0.0
        lines.append(
            f"{allocation:<17}{router:<22}{seq_len:>6}{len(group):>6}"
            f"{statistics.mean(kls):>12.4f} ± {spread:.4f}"
            f"{statistics.mean(r['heldout_top1'] for r in group):>8.3f}"
            f"{statistics.mean(r['heldout_ppl'] for r in group):>8.2f}"
            f"{statistics.mean(r['realized_sparsity'] for r in group):>8.3f}"
        )
    return "\n".join(lines)
