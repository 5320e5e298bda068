"""`pipeline report`: one self-contained HTML file on a batch, readable with no server and no network.

The page is the web view's own (`static/`): its CSS and scripts are put inside the file, with the batch's
JSON (`data.batch_page`, `status --json`'s report among it) in a `<script type="application/json">` that
app.js reads instead of calling the server. A Content-Security-Policy in the file itself forbids every
request (`default-src 'none'`): opened from a disk or an e-mail, it loads nothing.
"""

from __future__ import annotations

from pathlib import Path

import orjson

from pipeline.prices import PriceTable
from pipeline.report import iso
from pipeline.store.db import Database
from pipeline.store.models import Batch, utcnow
from pipeline.ui.data import batch_page
from pipeline.ui.server import asset

#: The report's own policy: inline script and styles only, no request of any kind.
REPORT_CSP = "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; img-src data:"


def render(db: Database, batch: Batch, prices: PriceTable) -> str:
    """The report's HTML."""
    data = {"batch": batch_page(db, batch, prices), "written_at": iso(utcnow())}
    # "<" escaped in the JSON, so no text in it (an answer, a custom id) can close the script element.
    payload = orjson.dumps(data).decode().replace("<", "\\u003c")
    html = asset("index.html")
    policy = f'<meta http-equiv="Content-Security-Policy" content="{REPORT_CSP}">'
    styles = f"<style>\n{asset('style.css')}</style>"
    html = html.replace('<link rel="stylesheet" href="/static/style.css">', f"{policy}\n{styles}")
    html = html.replace("<title>pipeline</title>", f"<title>pipeline report: {_escape(batch.id)}</title>")
    scripts = '<script src="/static/charts.js"></script>\n<script src="/static/app.js"></script>'
    inline = (
        f'<script type="application/json" id="report-data">{payload}</script>\n'
        f"<script>\n{_script(asset('charts.js'))}</script>\n<script>\n{_script(asset('app.js'))}</script>"
    )
    return html.replace(scripts, inline)


def write_report(db: Database, batch: Batch, prices: PriceTable, path: Path) -> int:
    """Write the report to `path`; returns its size in bytes."""
    text = render(db, batch, prices).encode()
    path.write_bytes(text)
    return len(text)


def _script(source: str) -> str:
    if "</script" in source.lower():  # a shipped file never holds it; checked so it never breaks the page
        raise ValueError("a script to inline holds </script")
    return source


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
