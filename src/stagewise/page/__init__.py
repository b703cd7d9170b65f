"""``report.html``: one self-contained page beside every report (run, study, audit) to look at.

The page holds its data inline (JSON) and draws it with its own small script (``page.js``): no
network, no CDN, no library. Sections are plain dicts, so each report says what to show:

- ``scatter``: panels of series of points ``{x, y, info}`` (hover a point for its ``info``),
- ``forest``: rows ``{label, estimate, low, high, significant, info}`` (paired differences),
- ``items``: an item explorer, rows of ``columns`` filtered by select boxes on ``filters``.
"""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

from ..io import atomic_write_text

HERE = Path(__file__).resolve().parent
STYLE = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }
h1 { font-size: 1.5em; } h2 { font-size: 1.15em; margin-top: 1.6em; border-bottom: 1px solid #ddd; }
.plot { margin: 4px 12px 4px 0; background: #fafafa; border: 1px solid #eee; }
.plot text { font-size: 11px; } .plot .title { font-weight: 600; font-size: 12px; }
.axis { stroke: #444; } .zero { stroke: #aaa; stroke-dasharray: 3 3; } .curve { stroke-width: 1.5; }
.bar { stroke: #1f77b4; stroke-width: 2; } .forest circle { fill: #1f77b4; }
.bar.sig, .forest circle.sig { stroke: #d62728; fill: #d62728; } .point { cursor: pointer; }
#tip { position: absolute; background: #fff; border: 1px solid #888; padding: 4px 8px; font-size: 12px;
       box-shadow: 2px 2px 6px rgba(0,0,0,.2); pointer-events: none; max-width: 420px; }
table { border-collapse: collapse; font-size: 12px; width: 100%; }
td { border-bottom: 1px solid #eee; padding: 3px 6px; vertical-align: top; }
thead td { font-weight: 600; border-bottom: 2px solid #ccc; }
.filters { margin: 8px 0; } .filters label { margin-right: 14px; } pre { white-space: pre-wrap; }
"""


def inline_json(value: Any) -> str:
    """JSON safe inside a <script> element: no '</script>' or '<!--' can end it early."""
    return json.dumps(value, ensure_ascii=False).replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def section_html(number: int, section: dict[str, Any]) -> str:
    note = f"<p>{html.escape(section['note'])}</p>" if section.get("note") else ""
    return f'<h2>{html.escape(section["title"])}</h2>{note}<div id="section-{number}"></div>'


def render_page(title: str, intro: str, sections: list[dict[str, Any]], markdown: str | None = None) -> str:
    """The page: ``sections`` drawn by page.js, then the report's markdown as text (every number)."""
    placed = [{**section, "id": f"section-{number}"} for number, section in enumerate(sections)]
    body = "".join(section_html(number, section) for number, section in enumerate(sections))
    tables = f"<h2>Report</h2><pre>{html.escape(markdown)}</pre>" if markdown else ""
    script = (HERE / "page.js").read_text(encoding="utf-8")
    return (
        "<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
        f"<title>{html.escape(title)}</title><style>{STYLE}</style></head><body>"
        f"<h1>{html.escape(title)}</h1><p>{html.escape(intro)}</p>{body}{tables}<div id='tip' hidden></div>"
        f"<script type='application/json' id='page-data'>{inline_json({'sections': placed})}</script>"
        f"<script>{script}</script></body></html>\n"
    )


def write_page(path: Path, title: str, intro: str, sections: list[dict[str, Any]], markdown: str | None = None) -> Path:
    atomic_write_text(path, render_page(title, intro, sections, markdown))
    return path
