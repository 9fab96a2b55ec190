"""What a report says, independent of how it is shown, and its Markdown rendering.

Holds ``Report`` (a title, lines under it, and ``Section``s), ``Section`` (figures, tables,
lines), ``Table`` (columns and rows of text), ``FigureFile`` (a PNG written to the report
folder, with its caption and pixel size) and ``render_markdown`` (``report.md``: tables, and
images linked by their file name beside it). ``testbed.report.html`` renders the same Report
as one self-contained HTML file.

Pure: it draws nothing and writes nothing.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["FigureFile", "Table", "Section", "Report", "render_markdown"]


@dataclass(frozen=True)
class FigureFile:
    """A PNG figure in the report folder: ``path`` is where it was written."""

    path: Path
    caption: str
    width_px: int
    height_px: int

    @property
    def name(self) -> str:
        return self.path.name


@dataclass
class Table:
    """A table of text cells; ``align`` holds ``l`` or ``r`` per column (default: left for the
    first column, right for the rest)."""

    columns: list[str]
    rows: list[list[str]]
    title: str = ""
    align: str = ""
    collapsed: bool = False      # HTML shows it folded (a long table of every figure)

    def alignment(self) -> str:
        return self.align or ("l" + "r" * (len(self.columns) - 1))


@dataclass
class Section:
    heading: str
    lines: list[str] = field(default_factory=list)
    figures: list[FigureFile] = field(default_factory=list)
    tables: list[Table] = field(default_factory=list)


@dataclass
class Report:
    title: str
    lines: list[str] = field(default_factory=list)
    sections: list[Section] = field(default_factory=list)

    def figures(self) -> list[FigureFile]:
        return [f for s in self.sections for f in s.figures]


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def markdown_table(table: Table) -> list[str]:
    """A GitHub-flavoured Markdown table (its title as a bold line above it)."""
    out = [f"**{table.title}**", ""] if table.title else []
    sep = ["---:" if a == "r" else ":---" for a in table.alignment()]
    out.append("| " + " | ".join(_md_cell(c) for c in table.columns) + " |")
    out.append("| " + " | ".join(sep) + " |")
    out.extend("| " + " | ".join(_md_cell(c) for c in row) + " |" for row in table.rows)
    return out + [""]


def render_markdown(report: Report) -> str:
    """``report.md``: headings, lines, tables, and each figure as an image link to its file."""
    out = [f"# {report.title}", ""]
    for line in report.lines:
        out += [line, ""]
    for section in report.sections:
        out += [f"## {section.heading}", ""]
        for line in section.lines:
            out += [line, ""]
        for fig in section.figures:
            out += [f"![{fig.caption}]({fig.name})", "", f"*{fig.caption}*", ""]
        for table in section.tables:
            out += markdown_table(table)
    return "\n".join(out).rstrip() + "\n"
