"""``ftprune eval --retrieval``: retrieval accuracy per length and depth, as a terminal grid
and as the depth × length heatmap long-context users read (dense and every routed row side
by side, one row of panels per family). The heatmap draws ``acc``, the multiple-choice
accuracy (the key's answer against three distractors: chance 0.25), which stays informative
where greedy exact match is out of a small model's reach (SQuAD answers); the grid prints
both.

Both read the evaluation rows of the retrieval cells (task ``retrieval:<family>/<length>/
<depth %>``, metrics ``exact_match`` and ``acc``), so they draw stored rows as well.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Sequence

from evaluation.retrieval import Cell, parse_cell


def grid_values(
    rows: Sequence[dict[str, Any]], metric: str = "exact_match"
) -> dict[str, dict[Cell, float]]:
    """Accuracy per retrieval cell of every row series: ``dense`` and ``<label>+<router>``."""
    out: dict[str, dict[Cell, float]] = {}
    for r in rows:
        cell = parse_cell(r["task"])
        if cell is None or r["metric"] != metric:
            continue
        out.setdefault("dense", {})[cell] = r["dense"]
        out.setdefault(f"{r['label']}+{r['router']}", {})[cell] = r["routed"]
    return out


def format_grid(rows: Sequence[dict[str, Any]], metric: str = "exact_match") -> str:
    """Per family and length, one line per series: accuracy at every depth, and the mean."""
    values = grid_values(rows, metric)
    if not values:
        return ""
    cells = sorted(values["dense"])
    depths = sorted({c[2] for c in cells})
    lines = [f"retrieval {metric} by depth (% of the haystack before the key)"]
    for family, length in dict.fromkeys((c[0], c[1]) for c in cells):
        lines.append(
            f"{family} @ {length} tokens".ljust(34)
            + "".join(f"{d:>6}" for d in depths)
            + f"{'mean':>7}"
        )
        for series, cell_values in values.items():
            accs = [cell_values.get((family, length, d), math.nan) for d in depths]
            mean = sum(accs) / len(accs)
            lines.append(
                f"  {series[:31]:<32}" + "".join(f"{a:>6.2f}" for a in accs) + f"{mean:>7.3f}"
            )
    return "\n".join(lines)


def plot_heatmap(rows: Sequence[dict[str, Any]], out: Path, metric: str = "acc") -> None:
    """One PNG: per family a row of panels (dense, then every routed series), each a
    depth × length grid of accuracy (0 red, 1 green)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    values = grid_values(rows, metric)
    cells = sorted(values["dense"])
    families = list(dict.fromkeys(c[0] for c in cells))
    lengths = sorted({c[1] for c in cells})
    depths = sorted({c[2] for c in cells})
    series = list(values)
    fig, axes = plt.subplots(
        len(families),
        len(series),
        figsize=(1.0 + 1.1 * len(lengths) * len(series), (1.2 + 0.3 * len(depths)) * len(families)),
        squeeze=False,
        constrained_layout=True,
    )
    image = None
    for f, family in enumerate(families):
        for s, name in enumerate(series):
            grid = [[values[name].get((family, n, d), math.nan) for n in lengths] for d in depths]
            ax = axes[f][s]
            image = ax.imshow(grid, vmin=0.0, vmax=1.0, cmap="RdYlGn", aspect="auto")
            for i, line in enumerate(grid):
                for j, value in enumerate(line):
                    if not math.isnan(value):
                        ax.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize=7)
            ax.set_xticks(range(len(lengths)), [str(n) for n in lengths], fontsize=7)
            ax.set_yticks(range(len(depths)), [f"{d}%" for d in depths], fontsize=7)
            ax.set_title(f"{family}\n{name}", fontsize=8)
            if s == 0:
                ax.set_ylabel("key depth")
            if f == len(families) - 1:
                ax.set_xlabel("tokens")
    if image is not None:
        fig.colorbar(image, ax=axes, shrink=0.6, label=metric)
    fig.savefig(out, dpi=110)
    plt.close(fig)
