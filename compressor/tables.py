"""A result table built once and rendered twice: rich for the terminal, markdown for report files."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Table:
    columns: list[str]
    rows: list[list[str]] = field(default_factory=list)
    title: str = ""
    caption: str = ""
    left: int = 1  # how many leading columns are labels (left-justified); the rest are numbers
    text_last: bool = False  # the last column is text too (notes)

    def add(self, *cells) -> None:
        self.rows.append(["" if c is None else str(c) for c in cells])

    def markdown(self, heading: str = "") -> str:
        lines = [f"{heading} {self.title}", ""] if heading and self.title else []
        lines.append("| " + " | ".join(self.columns) + " |")
        lines.append("|" + "|".join("---" if self._left(i) else "---:" for i in range(len(self.columns))) + "|")
        lines += ["| " + " | ".join(r) + " |" for r in self.rows]
        if self.caption:
            lines += ["", self.caption]
        return "\n".join(lines) + "\n"

    def _left(self, i: int) -> bool:
        return i < self.left or (self.text_last and i == len(self.columns) - 1)

    def rich(self):
        from rich.table import Table as RichTable

        t = RichTable(title=self.title or None, caption=self.caption or None, min_width=len(self.title) + 4)
        for i, c in enumerate(self.columns):
            t.add_column(c, justify="left" if self._left(i) else "right")
        for r in self.rows:
            t.add_row(*r)
        return t


def fmt(value, spec: str = "{}") -> str:
    """A cell: empty for None, else the value formatted."""
    return "" if value is None else spec.format(value)
