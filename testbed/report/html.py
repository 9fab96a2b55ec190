"""A Report as one self-contained ``report.html``.

Holds ``render_html``: every figure's PNG embedded as a ``data:image/png;base64`` URI, the
style inline, text escaped. The page must reference nothing outside itself (no link, script,
font or stylesheet to fetch), so it opens the same offline, attached to a mail, or years later.
"""
from __future__ import annotations

import base64
from html import escape

from testbed.report.document import FigureFile, Report, Table

__all__ = ["render_html", "data_uri"]

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; padding: 0 1em; }
h1 { font-size: 1.6em; } h2 { font-size: 1.25em; margin-top: 2em; border-bottom: 1px solid #ddd; }
figure { margin: 1em 0; } figure img { max-width: 100%; height: auto; border: 1px solid #eee; }
figcaption { color: #555; font-size: 0.9em; }
table { border-collapse: collapse; margin: 0.8em 0; font-size: 0.9em; }
th, td { border: 1px solid #ddd; padding: 0.2em 0.6em; } th { background: #f4f4f4; }
td.r, th.r { text-align: right; font-variant-numeric: tabular-nums; } td.l, th.l { text-align: left; }
caption { text-align: left; font-weight: bold; padding: 0.3em 0; }
p.line { margin: 0.3em 0; }
"""


def data_uri(fig: FigureFile) -> str:
    """The figure's PNG file as a ``data:image/png;base64,...`` URI."""
    return "data:image/png;base64," + base64.b64encode(fig.path.read_bytes()).decode("ascii")


def _table(table: Table) -> str:
    align = table.alignment()
    head = "".join(f'<th class="{a}">{escape(c)}</th>' for c, a in zip(table.columns, align))
    body = "".join("<tr>" + "".join(f'<td class="{a}">{escape(c)}</td>' for c, a in zip(row, align)) + "</tr>"
                   for row in table.rows)
    caption = f"<caption>{escape(table.title)}</caption>" if table.title and not table.collapsed else ""
    html = f"<table>{caption}<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
    if table.collapsed:
        return f"<details><summary>{escape(table.title or 'table')}</summary>{html}</details>"
    return html


def _figure(fig: FigureFile) -> str:
    return (f'<figure><img src="{data_uri(fig)}" width="{fig.width_px}" height="{fig.height_px}" '
            f'alt="{escape(fig.caption)}"><figcaption>{escape(fig.caption)}</figcaption></figure>')


def render_html(report: Report) -> str:
    """The whole page as text (UTF-8 when written)."""
    parts = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
             f"<title>{escape(report.title)}</title><style>{_STYLE}</style></head><body>",
             f"<h1>{escape(report.title)}</h1>"]
    parts += [f'<p class="line">{escape(line)}</p>' for line in report.lines]
    for section in report.sections:
        parts.append(f"<section><h2>{escape(section.heading)}</h2>")
        parts += [f'<p class="line">{escape(line)}</p>' for line in section.lines]
        parts += [_figure(fig) for fig in section.figures]
        parts += [_table(table) for table in section.tables]
        parts.append("</section>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"
