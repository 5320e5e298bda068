"""Progress on stderr: a live line on a terminal, a plain line every few seconds in a log file.

`LiveProgress` follows a batch sent in this process (`run`, and `retry`/`resume` of such a batch): requests
done of total, requests per second, tokens per minute against the limit in force, ETA, cost, 429s and
failures; the last line stays on screen when it ends. `Ticker` counts the lines of `submit` and the rows of
`export` on long files. Without a terminal each prints one plain line every `interval` seconds
(PIPELINE_PROGRESS_SECONDS, 10) and a last one at the end, so `nohup` logs show how a run went.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections import deque
from typing import TYPE_CHECKING

import click
from rich.console import Console
from rich.live import Live
from rich.text import Text

from pipeline.cli.render import usd

if TYPE_CHECKING:  # the engine (aiohttp, tenacity) loads only for the commands that send
    from pipeline.send.engine import Engine

#: Seconds between redraws on a terminal.
REFRESH_SECONDS = 0.25
#: Seconds of history behind the rates shown.
RATE_WINDOW_SECONDS = 10.0


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


class _Display:
    """One line, redrawn in place on a terminal, or printed every `interval` seconds otherwise."""

    def __init__(self, interval: float, tty: bool | None) -> None:
        self.tty = sys.stderr.isatty() if tty is None else tty
        self.interval = interval
        self._live: Live | None = None
        self._printed_at = time.monotonic()

    def start(self) -> None:
        if self.tty:
            self._live = Live(Text(""), console=Console(stderr=True), transient=False, auto_refresh=False)
            self._live.start()

    def show(self, line: str, *, last: bool = False) -> bool:
        """Draw (terminal) or print (when the interval is up, or `last`) the line; True if it did."""
        if self._live is not None:
            self._live.update(Text(line), refresh=True)
            if last:
                self._live.stop()
                self._live = None
            return True
        now = time.monotonic()
        if last or now - self._printed_at >= self.interval:
            click.echo(line, err=True)
            self._printed_at = now
            return True
        return False


class LiveProgress:
    """`with LiveProgress(total, done, interval) as p:` then `p.attach(engine)` inside the event loop."""

    def __init__(self, total: int, done_before: int, interval: float, tty: bool | None = None) -> None:
        self.total = total
        self.done_before = done_before
        self._display = _Display(interval, tty)
        self._engine: Engine | None = None
        self._task: asyncio.Task[None] | None = None
        self._history: deque[tuple[float, int, int]] = deque()
        self._started = time.monotonic()

    def __enter__(self) -> LiveProgress:
        self._display.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._task is not None:
            self._task.cancel()
        if self._engine is not None:
            self._display.show(self.line(self._engine), last=True)

    def attach(self, engine: Engine) -> None:
        self._engine = engine
        self._task = asyncio.get_running_loop().create_task(self._draw(engine))

    async def _draw(self, engine: Engine) -> None:
        period = REFRESH_SECONDS if self._display.tty else min(REFRESH_SECONDS * 4, self._display.interval)
        while True:
            self._display.show(self.line(engine))
            await asyncio.sleep(period)

    def line(self, engine: Engine) -> str:
        """done/total, req/s, tokens/min (of the limit), ETA, cost, 429s, failures, in flight."""
        s = engine.stats
        done = self.done_before + s.succeeded + s.failed + s.cancelled
        now = time.monotonic()
        self._history.append((now, done, s.total_tokens))
        while len(self._history) > 2 and now - self._history[0][0] > RATE_WINDOW_SECONDS:
            self._history.popleft()
        t0, done0, tokens0 = self._history[0]
        span = now - t0
        per_second = (done - done0) / span if span > 0 else 0.0
        tokens_per_min = (s.total_tokens - tokens0) / span * 60 if span > 0 else 0.0
        left = self.total - done
        eta = _duration(left / per_second) if per_second > 0 and left else "-" if left else "0s"
        share = f" ({done / self.total:.0%})" if self.total else ""
        return (
            f"requests {done:,}/{self.total:,}{share}  {per_second:,.1f} req/s  "
            f"tokens {tokens_per_min:,.0f}/min{_tpm_limit(engine)}  ETA {eta}  {usd(s.cost_usd)}  "
            f"429s {s.rate_limited:,}  failed {s.failed:,}  in flight {engine.in_flight:,}  "
            f"elapsed {_duration(now - self._started)}"
        )


def _tpm_limit(engine: Engine) -> str:
    limits = [snap.get("tpm") for snap in engine.limiter_views().values()]
    known = [limit for limit in limits if limit]
    return f" of {known[0]:,}" if len(limits) == 1 and known else ""


class Ticker:
    """Counts items (lines read, rows written) on stderr: `ticker.update(n)` ... `ticker.done(n)`."""

    def __init__(self, what: str, total: int | None, interval: float, tty: bool | None = None) -> None:
        self.what = what
        self.total = total
        self._display = _Display(interval, tty)
        self._started = time.monotonic()
        self._shown = False
        self._drawn_at = 0.0

    def update(self, count: int) -> None:
        now = time.monotonic()
        if self._display.tty:
            # A live line only for a long file (over a second), redrawn a few times a second.
            if now - self._started < 1.0 or now - self._drawn_at < REFRESH_SECONDS:
                return
            if not self._shown:
                self._display.start()
            self._drawn_at = now
        self._shown = self._display.show(self._line(count, now)) or self._shown

    def done(self, count: int) -> None:
        """The last line, if any was shown (short files show none)."""
        if self._shown:
            self._display.show(self._line(count, time.monotonic()), last=True)

    def _line(self, count: int, now: float) -> str:
        elapsed = max(now - self._started, 1e-9)
        of = f"/{self.total:,}" if self.total else ""
        return f"{self.what} {count:,}{of}  {count / elapsed:,.0f}/s  elapsed {_duration(elapsed)}"
