"""The one table renderer: widths from the content, numbers right-aligned, empty cells for
missing values."""

from __future__ import annotations

import math

from ftprune.tables import Column, render


def test_columns_fit_their_widest_cell_and_align_by_kind() -> None:
    rows = [
        {"task": "arc", "acc": 0.5, "n": 300, "ok": True},
        {"task": "a much longer task name", "acc": math.nan, "n": 7, "ok": False},
    ]
    text = render(
        rows,
        [
            Column("task", "task"),
            Column("acc", "acc", ".3f"),
            Column("n", "n", "d"),
            Column("twice", lambda r: 2 * r["n"], "d"),
            Column("same", "ok"),
        ],
    )
    head, rule, first, second = text.splitlines()
    assert head.split() == ["task", "acc", "n", "twice", "same"]
    assert rule == "-" * len(head)
    assert first.startswith("arc ") and "0.500" in first and first.endswith("600  yes")
    assert second.startswith("a much longer task name  ") and "nan" not in second
    assert first.index("300") + 3 == second.index("  7") + 3 == head.index("n") + 1
