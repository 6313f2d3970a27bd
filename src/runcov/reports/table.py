"""Plain-text tables and number formatting for terminal reports."""

from __future__ import annotations

from typing import Iterable, Optional, Sequence


def percent(covered: int, total: int) -> Optional[float]:
    """``covered / total`` as a percentage rounded to one decimal, None when total is 0."""
    if total <= 0:
        return None
    return round(100.0 * covered / total, 1)


def total_label(files: int) -> str:
    """The label of a table's TOTAL row: ``TOTAL (1 file)``, ``TOTAL (3 files)``."""
    return f"TOTAL ({files} file{'' if files == 1 else 's'})"


def fmt_percent(value: Optional[float]) -> str:
    """``42.5%``, or ``-`` for an unknown percentage."""
    return "-" if value is None else f"{value:.1f}%"


def fmt_ranges(numbers: Iterable[int]) -> str:
    """Compress sorted line numbers into coverage.py-style ranges: ``3-5, 9, 12-13``."""
    values = sorted(set(numbers))
    parts: list[str] = []
    i = 0
    while i < len(values):
        j = i
        while j + 1 < len(values) and values[j + 1] == values[j] + 1:
            j += 1
        parts.append(str(values[i]) if i == j else f"{values[i]}-{values[j]}")
        i = j + 1
    return ", ".join(parts)


def fmt_arcs(arcs: Iterable[Sequence[int]]) -> str:
    """Arcs as ``12->14, 20->exit`` (coverage.py's notation)."""
    parts = []
    for start, end in sorted((int(a), int(b)) for a, b in arcs):
        src = "entry" if start < 0 else str(start)
        dst = "exit" if end < 0 else str(end)
        parts.append(f"{src}->{dst}")
    return ", ".join(parts)


def render_table(
    headers: Sequence[str],
    rows: Sequence[Sequence[object]],
    align: Optional[str] = None,
    footer: Optional[Sequence[object]] = None,
) -> str:
    """Render an aligned table; ``align`` has one ``l``/``r`` per column (default: first left)."""
    ncols = len(headers)
    if align is None:
        align = "l" + "r" * (ncols - 1)
    cells = [[str(c) for c in row] for row in rows]
    foot = [str(c) for c in footer] if footer is not None else None
    widths = [len(h) for h in headers]
    for row in [*cells, *([foot] if foot else [])]:
        for i, cell in enumerate(row):
            widths[i] = max(widths[i], len(cell))

    def line(row: Sequence[str]) -> str:
        out = []
        for i, cell in enumerate(row):
            out.append(cell.ljust(widths[i]) if align[i] == "l" else cell.rjust(widths[i]))
        return "  ".join(out).rstrip()

    rule = "  ".join("-" * w for w in widths)
    lines = [line(list(headers)), rule]
    lines.extend(line(row) for row in cells)
    if foot:
        lines.append(rule)
        lines.append(line(foot))
    return "\n".join(lines) + "\n"
