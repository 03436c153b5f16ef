"""The ``demo-output/index.html`` gallery: one self-contained page, images by relative path.

The demo fills a ``Gallery`` (sections of figures, captions tables and metrics) and ``write`` renders
it with the standard library only, so the page opens from the file system in any browser.
"""

from __future__ import annotations

import datetime as _dt
import html
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

STYLE = """
body { font-family: system-ui, -apple-system, Segoe UI, sans-serif; margin: 2em auto; max-width: 1100px;
       color: #222; background: #fafafa; }
h1 { margin-bottom: 0.2em; } h2 { border-bottom: 1px solid #ccc; padding-bottom: 0.2em; margin-top: 2em; }
.meta { color: #666; font-size: 0.9em; }
.grid { display: flex; flex-wrap: wrap; gap: 14px; }
figure { margin: 0; background: #fff; border: 1px solid #ddd; border-radius: 6px; padding: 8px; }
figure img { display: block; image-rendering: pixelated; max-width: 100%; }
figcaption { font-size: 0.85em; margin-top: 6px; max-width: 320px; }
table { border-collapse: collapse; background: #fff; margin: 0.5em 0; }
th, td { border: 1px solid #ddd; padding: 4px 8px; text-align: left; font-size: 0.9em; vertical-align: top; }
th { background: #f0f0f0; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
td img { image-rendering: pixelated; }
.ok { color: #137333; font-weight: 600; } .bad { color: #b3261e; font-weight: 600; }
.strip { display: flex; flex-wrap: wrap; gap: 4px; }
.strip figure { padding: 3px; text-align: center; }
.strip figcaption { margin: 0 0 3px 0; font-weight: 600; }
"""


@dataclass
class Figure:
    """An image file (path relative to the page) with a caption; ``width`` in CSS pixels (0: natural)."""

    src: str
    caption: str = ""
    width: int = 0


@dataclass
class Strip:
    """Figures side by side in one table cell, each under its caption (e.g. a word over its map)."""

    figures: list[Figure] = field(default_factory=list)


@dataclass
class Table:
    """Rows of cells; a cell that is a ``Figure`` is drawn as an image."""

    header: Sequence[str]
    rows: list[Sequence] = field(default_factory=list)


@dataclass
class Section:
    title: str
    text: str = ""
    figures: list[Figure] = field(default_factory=list)
    tables: list[Table] = field(default_factory=list)


@dataclass
class Gallery:
    title: str
    subtitle: str = ""
    sections: list[Section] = field(default_factory=list)

    def section(self, title: str, text: str = "") -> Section:
        s = Section(title, text)
        self.sections.append(s)
        return s


def _cell(value) -> str:
    if isinstance(value, Strip):
        items = "".join(
            f'<figure><figcaption>{html.escape(f.caption)}</figcaption><img src="{html.escape(f.src)}" '
            f'alt="{html.escape(f.caption)}"' + (f' width="{f.width}"' if f.width else "") + "></figure>"
            for f in value.figures)
        return f'<td><div class="strip">{items}</div></td>'
    if isinstance(value, Figure):
        width = f' width="{value.width}"' if value.width else ""
        return f'<td><img src="{html.escape(value.src)}" alt="{html.escape(value.caption)}"{width}></td>'
    if isinstance(value, bool):
        return f'<td class="{"ok" if value else "bad"}">{"yes" if value else "no"}</td>'
    if isinstance(value, float):
        return f'<td class="num">{value:.3f}</td>'
    if isinstance(value, int):
        return f'<td class="num">{value}</td>'
    return f"<td>{html.escape(str(value))}</td>"


def render(gallery: Gallery) -> str:
    """The page as one HTML string."""
    out = [
        "<!doctype html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{html.escape(gallery.title)}</title>",
        f"<style>{STYLE}</style></head><body>",
        f"<h1>{html.escape(gallery.title)}</h1>",
    ]
    stamp = _dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    out.append(f'<p class="meta">{html.escape(gallery.subtitle)} &middot; generated {html.escape(stamp)}</p>')
    for s in gallery.sections:
        out.append(f"<h2>{html.escape(s.title)}</h2>")
        if s.text:
            out.append(f"<p>{html.escape(s.text)}</p>")
        for t in s.tables:
            out.append("<table><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in t.header) + "</tr>")
            out.extend("<tr>" + "".join(_cell(c) for c in row) + "</tr>" for row in t.rows)
            out.append("</table>")
        if s.figures:
            out.append('<div class="grid">')
            for f in s.figures:
                width = f' width="{f.width}"' if f.width else ""
                out.append(
                    f'<figure><img src="{html.escape(f.src)}" alt="{html.escape(f.caption)}"{width}>'
                    f"<figcaption>{html.escape(f.caption)}</figcaption></figure>"
                )
            out.append("</div>")
    out.append("</body></html>")
    return "\n".join(out) + "\n"


def write(gallery: Gallery, out_dir: str | Path) -> Path:
    """Write ``index.html`` into ``out_dir`` (the images must already be there) and return its path."""
    path = Path(out_dir) / "index.html"
    path.write_text(render(gallery), encoding="utf-8")
    return path
