"""The Python API's progress line: in a notebook, one output that updates in place; in a script, a line
redrawn on stderr when it is a terminal, else printed every few seconds (a log).

A notebook is recognised by a running IPython kernel (IPython already imported, its shell has a kernel):
the line is an IPython display handle, updated in place, plain text. Nothing here imports IPython when it
is not already loaded, and nothing needs ipywidgets.
"""

from __future__ import annotations

import importlib
import sys
import time
from typing import Any

__all__ = ["ProgressLine", "in_notebook", "progress_text"]


def progress_text(report: dict[str, Any]) -> str:
    """One line on a batch from its status report (`report.batch_report`)."""
    done = report["succeeded"] + report["failed"] + report["cancelled"]
    parts = [f"batch {report['batch']}: {done:,}/{report['total']:,} done"]
    detail = [f"{report['succeeded']:,} succeeded"]
    detail += [f"{report[k]:,} {k}" for k in ("failed", "cancelled") if report[k]]
    parts.append(f"({', '.join(detail)})")
    if report["in_flight"]:
        parts.append(f"{report['in_flight']:,} in flight")
    parts.append(f"${report['cost_usd']:,.4f}")
    line = ", ".join([" ".join(parts[:2]), *parts[2:]])
    if report["state"] != "in_progress":
        line += f" [{report['state']}" + (f": {report['pause_reason']}]" if report["pause_reason"] else "]")
    return line


class ProgressLine:
    """Shows one line, again and again, where the caller runs: see the module docstring."""

    def __init__(self, enabled: bool = True, interval: float = 10.0) -> None:
        self.enabled = enabled
        self.interval = interval
        self._handle: Any = None
        self._kernel = enabled and in_notebook()
        self._tty = enabled and not self._kernel and sys.stderr.isatty()
        self._printed_at = 0.0
        self._last = ""

    def show(self, text: str, *, last: bool = False) -> None:
        """Draw `text` (a terminal, a notebook) or print it when the interval is up or it is the `last`."""
        if not self.enabled or (text == self._last and not last):
            return
        self._last = text
        if self._kernel:
            self._show_in_notebook(text)
        elif self._tty:
            sys.stderr.write("\r\x1b[K" + text + ("\n" if last else ""))
            sys.stderr.flush()
        elif last or time.monotonic() - self._printed_at >= self.interval:
            self._printed_at = time.monotonic()
            print(f"{time.strftime('%H:%M:%S')} {text}", file=sys.stderr, flush=True)

    def _show_in_notebook(self, text: str) -> None:
        shown: Any = importlib.import_module("IPython.display")  # untyped; loaded by the kernel already
        if self._handle is None:
            self._handle = shown.display(shown.Pretty(text), display_id=True)
        else:
            self._handle.update(shown.Pretty(text))


def in_notebook() -> bool:
    ipython = sys.modules.get("IPython")
    shell = ipython.get_ipython() if ipython is not None else None
    return getattr(shell, "kernel", None) is not None
