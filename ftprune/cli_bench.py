"""``ftprune bench``: timing benchmarks that print a table and write JSON rows.

Every command checks its input before loading anything; bad input prints one line
(``error: ...``) on stderr and exits with status 2. torch and the benchmark libraries are
imported inside the commands, so ``ftprune --help`` stays fast.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Callable, Optional

import typer

from ftprune.cli_common import (
    Device,
    Dtype,
    JsonOut,
    check_output_file,
    check_range,
    fail,
    user_errors,
)

if TYPE_CHECKING:
    from search.config import RunConfig

# Upper bounds of what a user can mean (a value past one is a typo, refused in one line).
MAX_BATCH = 65_536
MAX_REPEATS = 10_000
MAX_THREADS = 4096  # threads, workers
MAX_TOKENS = 10**10  # the search benchmark's forward-token budget
MAX_SEEDS = 100
MAX_CANDIDATES = 10**8
MAX_SEQUENCES = 10**7  # held-out sequences, examples per task

bench_app = typer.Typer(
    help="Benchmarks: time the product, write rows as JSON.", no_args_is_help=True
)


BenchConfig = Annotated[
    Optional[Path],
    typer.Option("--config", help="Run config (YAML); default: the embedded demo config."),
]
ModelOverride = Annotated[Optional[str], typer.Option(help="Override the config's model.")]
Model = Annotated[
    str,
    typer.Option(
        help="Model: smollm2-135m, random:llama-tiny, a .gguf file, a directory or a hub id."
    ),
]


@bench_app.command("routing")
def routing(
    model: Model = "smollm2-135m",
    seq_len: Annotated[
        Optional[list[int]],
        typer.Option(
            "--seq-len", help="Prompt length, repeat for several (default: 1024 and 2048)."
        ),
    ] = None,
    batch: Annotated[
        Optional[list[int]],
        typer.Option("--batch", help="Batch size, repeat for several (default: 1)."),
    ] = None,
    sparsity: Annotated[
        Optional[list[float]],
        typer.Option(
            "--sparsity",
            help="Uniform block sparsity S, 0 <= S < 1, repeat for several "
            "(default: 0, 0.25 and 0.4); S = 0 measures the engine's overhead "
            "with the dynamic router and its features running "
            "(one token skipped per block).",
        ),
    ] = None,
    dtype: Annotated[str, typer.Option(help="float32 or bfloat16.")] = "float32",
    device: Annotated[str, typer.Option(help="cpu, cuda or cuda:N.")] = "cpu",
    repeats: Annotated[int, typer.Option(help="Timed repeats per variant (median).")] = 5,
    warmup: Annotated[int, typer.Option(help="Untimed repeats first.")] = 1,
    attention_window: Annotated[
        int, typer.Option(help="Last queries that measure attention features (0: all, exact).")
    ] = 64,
    threads: Annotated[Optional[int], typer.Option(help="torch CPU threads.")] = None,
    clock: Annotated[
        str,
        typer.Option(
            help="wall (elapsed) or cpu (this process's CPU time: steadier on a shared machine, "
            "use with --threads 1)."
        ),
    ] = "wall",
    router: Annotated[
        str,
        typer.Option(
            help="What rows with S > 0 route with: static, or dynamic (FTP's dynamic "
            "router with its attention features: what a trained router costs)."
        ),
    ] = "static",
    json_out: JsonOut = None,
) -> None:
    """Time dense against routed prefill (uniform schedule; static or dynamic router).

    Per batch, length and S: a 'blocks' row (decoder stack, ideal 1/(1-S))
    and an 'end_to_end' row (with embeddings and LM head).

    Per batch and length: a 'features' row (one block, without and with
    the attention features a dynamic router reads).

    Every row carries a 95% confidence interval of its efficiency. Like
    every ftprune process, the benchmark runs with a heap that keeps freed
    memory (FTPRUNE_HEAP=default measures with glibc's defaults instead).
    """
    seq_lens = seq_len or [1024, 2048]
    batches = batch or [1]
    sparsities = [0.0, 0.25, 0.4] if sparsity is None else sparsity
    if any(n < 3 for n in seq_lens):
        fail("--seq-len must be at least 3 (every block keeps at least 2 tokens)")
    for size in batches:
        check_range(size, "--batch", 1, MAX_BATCH)
    if any(not 0.0 <= s < 1.0 for s in sparsities):
        fail("--sparsity must lie in [0, 1)")
    if dtype not in ("float32", "bfloat16"):
        fail(f"--dtype must be float32 or bfloat16, not {dtype!r}")
    check_range(repeats, "--repeats", 1, MAX_REPEATS)
    check_range(warmup, "--warmup", 0, MAX_REPEATS)
    if attention_window < 0:
        fail("--attention-window must be 0 (all queries) or positive")
    check_range(threads, "--threads", 1, MAX_THREADS)
    if clock not in ("wall", "cpu"):
        fail(f"--clock must be wall or cpu, not {clock!r}")
    if router not in ("static", "dynamic"):
        fail(f"--router must be static or dynamic, not {router!r}")
    if device == "auto":
        fail("--device must be cpu, cuda or cuda:N (a benchmark names what it times)")
    if device != "cpu" and clock == "cpu":
        fail("--clock cpu measures this process's CPU time: use --clock wall on a GPU")
    check_output_file(json_out, "--json")
    from router.facts import model_facts
    from workers.devices import check_device_available

    with user_errors():
        check_device_available(device)
        model_facts(model).check_fits(max(seq_lens), "--seq-len")

    import torch

    from ftprune.bench.routing import RoutingBench, report, run

    if threads:
        torch.set_num_threads(threads)
    bench = RoutingBench(
        model=model,
        dtype=dtype,
        seq_lens=tuple(seq_lens),
        batches=tuple(batches),
        sparsities=tuple(sparsities),
        repeats=repeats,
        warmup=warmup,
        attention_window=attention_window or None,
        clock=clock,
        device=device,
        router=router,
    )
    load_before = os.getloadavg()[0]
    rows = run(bench, show_progress=True)
    typer.echo(report(bench, rows, load_before, os.getloadavg()[0]))
    _write_json(rows, json_out)


def _write_json(rows: list[dict], json_out: Path | None) -> None:
    if json_out is not None:
        json_out.write_text(json.dumps(rows, indent=2) + "\n")
        typer.echo(f"wrote {len(rows)} rows to {json_out}")


def _checked_config(path: Path | None, **overrides: Any) -> RunConfig:
    """The run config with ``overrides``, its model and data checked; exits 2 on bad input."""
    from search.config import build_config
    from search.preflight import preflight

    with user_errors():
        cfg = build_config(path, **overrides)
        preflight(cfg, tokenize=True)
    return cfg


@bench_app.command("search")
def search(
    config: BenchConfig = None,
    model: ModelOverride = None,
    target_sparsity: Annotated[
        Optional[float], typer.Option(help="Override the config's target sparsity.")
    ] = None,
    tokens: Annotated[
        int, typer.Option(help="Forward-token budget per method and seed.")
    ] = 150_000,
    seeds: Annotated[int, typer.Option(help="Seeds 0..N-1 per method.")] = 3,
    device: Device = None,
    dtype: Dtype = None,
    json_out: JsonOut = None,
) -> None:
    """This search engine against a plain DEAP loop at the same forward-token budget.

    The plain loop is DEAP's eaSimple with a budget penalty, every individual scored on
    every calibration sequence, no cache. Both best schedules are then scored on held-out
    text at exactly the target sparsity. Rows: method, seed, evaluations, forward_tokens,
    wall_s, candidates_per_min, best_fitness, heldout_kl (+ tokens_to_match for ftprune).
    """
    check_range(tokens, "--tokens", 1, MAX_TOKENS)
    check_range(seeds, "--seeds", 1, MAX_SEEDS)
    check_output_file(json_out, "--json")
    cfg = _checked_config(
        config, model=model, target_sparsity=target_sparsity, device=device, dtype=dtype
    )
    from ftprune.bench.search import format_table, run

    rows = run(cfg, tokens, list(range(seeds)), progress=lambda line: typer.echo(line, err=True))
    typer.echo(format_table(rows))
    _write_json(rows, json_out)


@bench_app.command("coordinator")
def coordinator(
    workers: Annotated[int, typer.Option(help="Ray workers (zero-cost scorers).")] = 4,
    candidates: Annotated[int, typer.Option(help="Candidates to score in total.")] = 3000,
    db: Annotated[
        Optional[str], typer.Option("--db", help="Database URL (default: a throwaway SQLite file).")
    ] = None,
    json_out: JsonOut = None,
) -> None:
    """Candidates per second through the whole search loop with a zero-cost scorer.

    Everything but the model runs for real: the evolutionary search, the fitness cache,
    Ray dispatch to worker actors and the database write of every evaluation.
    """
    check_range(workers, "--workers", 1, MAX_THREADS)
    check_range(candidates, "--candidates", 1, MAX_CANDIDATES)
    check_output_file(json_out, "--json")
    if db is not None:
        from storage import StorageError, check_url

        try:
            check_url(db)
        except StorageError as exc:
            fail(str(exc))
    from ftprune.bench.coordinator import run

    row = run(workers, candidates, db)
    typer.echo(
        f"{row['workers']} workers, {row['candidates']} candidates in "
        f"{row['wall_s']:.1f} s: {row['candidates_per_s']:.0f} candidates/s, "
        f"{row['db_rows_written']} rows written to {row['database']}"
    )
    _write_json([row], json_out)


def _quality_command(kind: str) -> Callable[..., None]:
    """``bench quality`` and ``bench ablation`` share their options and checks."""

    def command(
        config: BenchConfig = None,
        model: ModelOverride = None,
        sparsity: Annotated[
            Optional[float], typer.Option(help="Override the config's target sparsity.")
        ] = None,
        seeds: Annotated[int, typer.Option(help="Seeds 0..N-1.")] = 3,
        seq_len: Annotated[
            Optional[list[int]],
            typer.Option(
                "--seq-len",
                help="Held-out sequence length, repeat for several (default: the config's).",
            ),
        ] = None,
        sequences: Annotated[
            Optional[int],
            typer.Option(help="Held-out sequences per length (default: the config's)."),
        ] = None,
        device: Device = None,
        dtype: Dtype = None,
        json_out: JsonOut = None,
    ) -> None:
        check_range(seeds, "--seeds", 1, MAX_SEEDS)
        check_range(sequences, "--sequences", 1, MAX_SEQUENCES)
        check_output_file(json_out, "--json")
        cfg = _checked_config(
            config,
            option_names={
                "target_sparsity": "--sparsity",
                "heldout_seq_lens": "--seq-len",
                "heldout_sequences_per_length": "--sequences",
            },
            model=model,
            target_sparsity=sparsity,
            heldout_seq_lens=seq_len,
            heldout_sequences_per_length=sequences,
            device=device,
            dtype=dtype,
        )
        from ftprune.bench.quality import format_table, run_ablation, run_quality

        run = run_quality if kind == "quality" else run_ablation
        rows = run(cfg, list(range(seeds)), progress=lambda line: typer.echo(line, err=True))
        typer.echo(
            f"{cfg.model}, target sparsity {cfg.target_sparsity}, {seeds} seed(s), "
            f"{cfg.heldout_sequences_per_length} held-out sequences per length, last "
            f"{cfg.window} positions; held-out window KL mean ± std over seeds"
        )
        typer.echo(format_table(rows))
        _write_json(rows, json_out)

    return command


bench_app.command(
    "quality",
    help=(
        "Held-out quality of allocations and routers: uniform, Block-Influence, searched "
        "(static and dynamic router) and fine-tuned (dynamic), per seed and sequence length. "
        "Rows: allocation, router, seed, seq_len, heldout_kl, heldout_top1, heldout_ppl, "
        "realized_sparsity."
    ),
)(_quality_command("quality"))
bench_app.command(
    "ablation",
    help=(
        "The dynamic router with each of its four factors removed, and a hidden-state router "
        "baseline, all trained for the same searched schedule; same rows as bench quality."
    ),
)(_quality_command("ablation"))


@bench_app.command("eval")
def eval_bench(
    model: Model = "smollm2-135m",
    task_file: Annotated[
        Optional[list[str]],
        typer.Option(
            "--task-file",
            help="BIG-bench task.json (or its directory), bigbench:<name> or olmo:<task> "
            "(lm-eval's stock task on the same rows); repeat for several.",
        ),
    ] = None,
    limit: Annotated[Optional[int], typer.Option(help="First N examples of each task.")] = None,
    sparsity: Annotated[
        float, typer.Option(help="Uniform block sparsity of the routed variant (static router).")
    ] = 0.3,
    batch_size: Annotated[int, typer.Option(help="Sequences per forward.")] = 8,
    dtype: Annotated[
        str, typer.Option(help="float32, bfloat16 or float64 (log-likelihoods agree to 1e-6).")
    ] = "float32",
    json_out: JsonOut = None,
) -> None:
    """The native multiple-choice scorer against lm-eval's HFLM on the same examples and
    model: log-likelihood agreement, accuracy and examples per second of each.

    Rows: task, variant (dense / routed), n, max_loglik_diff, acc_equal, acc_norm_equal,
    native_acc, lmeval_acc, native_s, lmeval_s, native_examples_per_s,
    lmeval_examples_per_s, speed_ratio (lm-eval seconds / native seconds).
    """
    if not task_file:
        fail("give at least one --task-file (a task.json or bigbench:<name>)")
    check_range(limit, "--limit", 1, MAX_SEQUENCES)
    check_range(batch_size, "--batch-size", 1, MAX_BATCH)
    if not 0.0 <= sparsity < 1.0:
        fail("--sparsity must lie in [0, 1)")
    if dtype not in ("float32", "bfloat16", "float64"):
        fail(f"--dtype must be float32, bfloat16 or float64, not {dtype!r}")
    check_output_file(json_out, "--json")
    from ftprune.eval import load_choice_tasks
    from router.facts import model_facts

    with user_errors():
        model_facts(model)  # the model's config file, without torch for the shipped models
        tasks = list(zip(task_file or [], load_choice_tasks(task_file or [], limit), strict=True))
    from ftprune.bench.eval import format_table, run

    rows = run(
        model, tasks, sparsity, batch_size, dtype, progress=lambda line: typer.echo(line, err=True)
    )
    typer.echo(format_table(rows))
    _write_json(rows, json_out)
