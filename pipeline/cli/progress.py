"""Live progress on stderr while a batch runs in this process (drawn only on a terminal)."""

from __future__ import annotations

import asyncio
import sys

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from pipeline.send.engine import Engine

#: Seconds between redraws.
REFRESH_SECONDS = 0.25


class LiveProgress:
    """`with LiveProgress(total, done) as p:` then `p.attach(engine)` from inside the event loop."""

    def __init__(self, total: int, done_before: int) -> None:
        self.done_before = done_before
        self.enabled = sys.stderr.isatty()
        self._progress = Progress(
            TextColumn("[bold]requests"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[detail]}"),
            TimeElapsedColumn(),
            console=Console(stderr=True),
            disable=not self.enabled,
        )
        self._task = self._progress.add_task("run", total=total, completed=done_before, detail="")
        self._redraw: asyncio.Task[None] | None = None

    def __enter__(self) -> LiveProgress:
        self._progress.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._redraw is not None:
            self._redraw.cancel()
        self._progress.stop()

    def attach(self, engine: Engine) -> None:
        if self.enabled:
            self._redraw = asyncio.get_running_loop().create_task(self._draw(engine))

    async def _draw(self, engine: Engine) -> None:
        while True:
            s = engine.stats
            self._progress.update(
                self._task,
                completed=self.done_before + s.succeeded + s.failed + s.cancelled,
                detail=f"ok {s.succeeded}  failed {s.failed}  in flight {engine.in_flight}  "
                f"429s {s.rate_limited}  tokens {s.total_tokens:,}",
            )
            await asyncio.sleep(REFRESH_SECONDS)
