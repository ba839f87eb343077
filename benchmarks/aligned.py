"""The benchmarks' text tables: a header row, a rule under it, the first column left-aligned and the
others right-aligned, each as wide as its widest cell."""

from __future__ import annotations


def print_aligned(rows: list[list[str]]) -> None:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for n, row in enumerate(rows):
        print(
            "  ".join(
                cell.rjust(w) if i else cell.ljust(w)
                for i, (cell, w) in enumerate(zip(row, widths, strict=True))
            )
        )
        if n == 0:
            print("  ".join("-" * w for w in widths))
