"""MkDocs hook: measurements are data. A line

    <!-- csv benchmarks/results/NAME.csv: column, column, ... -->

in a page becomes a table of those columns of the CSV (all of them when none are named), followed by
the machine, versions and commit the rows record (their `machine` and `commit` columns).
`<!-- csv PATH: column=value; column, ... -->` keeps only the rows where the column has that value.
"""

from __future__ import annotations

import csv
import re
from pathlib import Path

DIRECTIVE = re.compile(r"^<!-- csv (?P<path>\S+?)(?::(?P<columns>[^>]*))? -->$", re.MULTILINE)
ROOT = Path(__file__).resolve().parent.parent


def _cell(value: str) -> str:
    """As written, but a long float (a latency in ms) rounded: 4 decimals below 1, else 2."""
    try:
        number = float(value)
    except ValueError:
        return value.replace("|", "\\|")
    if len(value.partition(".")[2]) <= 4:
        return value
    return f"{number:.4f}" if abs(number) < 1 else f"{number:.2f}"


def render(path: str, columns: str | None) -> str:
    keep = None
    with (ROOT / path).open(newline="") as f:
        rows = list(csv.DictReader(f))
    if columns and ";" in columns:
        keep, columns = columns.split(";", 1)
        key, _, value = keep.partition("=")
        rows = [r for r in rows if r.get(key.strip()) == value.strip()]
    if not rows:
        raise ValueError(f"{path} has no rows" + (f" where {keep.strip()}" if keep else ""))
    names = [c.strip() for c in columns.split(",")] if columns and columns.strip() else \
        [c for c in rows[0] if c not in ("machine", "commit")]
    missing = [c for c in names if c not in rows[0]]
    if missing:
        raise ValueError(f"{path} has no column {', '.join(missing)}")
    lines = ["| " + " | ".join(names) + " |", "|" + "---|" * len(names)]
    lines += ["| " + " | ".join(_cell(r[c]) for c in names) + " |" for r in rows]
    where = sorted({(r.get("machine", ""), r.get("commit", "")) for r in rows})
    notes = [f"{m} (commit {c})" if c else m for m, c in where if m]
    if notes:
        lines += ["", "Measured on: " + "; ".join(notes) + f". Data: `{path}`."]
    return "\n".join(lines)


def on_page_markdown(markdown: str, **_) -> str:
    return DIRECTIVE.sub(lambda m: render(m["path"], m["columns"]), markdown)
