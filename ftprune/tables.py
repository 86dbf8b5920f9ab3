"""Terminal tables: one renderer for every command that prints rows.

A table is a list of row dicts and a list of :class:`Column`. Each column reads one value
per row (a key or a function), formats it (a format spec for numbers; NaN and None print as
an empty cell) and is as wide as its widest cell or header: text is left-aligned, numbers
right-aligned, so nothing is cut and no width is written by hand.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

Row = Mapping[str, Any]


@dataclass(frozen=True)
class Column:
    header: str
    value: str | Callable[[Row], Any]  # a key of the row, or a function of it
    spec: str = ""  # format spec of numbers (".3f", ">+.1f", ...)

    def cell(self, row: Row) -> str:
        value = row.get(self.value) if isinstance(self.value, str) else self.value(row)
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return ""
        if isinstance(value, bool):
            return "yes" if value else "no"
        if isinstance(value, (int, float)):
            return format(value, self.spec)
        return str(value)


def _numeric(column: Column, rows: Sequence[Row]) -> bool:
    for row in rows:
        value = row.get(column.value) if isinstance(column.value, str) else column.value(row)
        if value is not None:
            return isinstance(value, (int, float)) and not isinstance(value, bool)
    return False


def render(rows: Sequence[Row], columns: Sequence[Column]) -> str:
    """The rows under a header line and a rule, two spaces between columns."""
    cells = [[c.cell(row) for c in columns] for row in rows]
    widths = [
        max([len(c.header), *(len(line[i]) for line in cells)]) for i, c in enumerate(columns)
    ]
    right = [_numeric(c, rows) for c in columns]

    def line(values: Sequence[str]) -> str:
        parts = [
            v.rjust(w) if r else v.ljust(w) for v, w, r in zip(values, widths, right, strict=True)
        ]
        return "  ".join(parts).rstrip()

    head = line([c.header for c in columns])
    return "\n".join([head, "-" * len(head), *(line(values) for values in cells)])
