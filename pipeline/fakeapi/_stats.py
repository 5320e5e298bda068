"""What the fake has seen: counts by status, concurrency, and every request body by fingerprint."""

from __future__ import annotations

import threading
from collections import Counter
from typing import Any


class Stats:
    """Counters shared by the server's event loop and, through snapshot/reset, other threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._in_flight = 0
        self._clear()

    def _clear(self) -> None:
        self._received = 0
        self._answered = 0
        self._by_status: Counter[int] = Counter()
        self._max_in_flight = self._in_flight
        self._bodies: dict[str, list[int]] = {}  # fingerprint -> [received, answered]
        self._projects: Counter[str] = Counter()  # OpenAI-Project header -> requests

    def enter(self, project: str | None = None) -> None:
        """A request to /v1 starts being handled (`project`: its OpenAI-Project header)."""
        with self._lock:
            if project is not None:
                self._projects[project] += 1
            self._received += 1
            self._in_flight += 1
            self._max_in_flight = max(self._max_in_flight, self._in_flight)

    def leave(self) -> None:
        """The request is done: answered, failed or cancelled because the client went away."""
        with self._lock:
            self._in_flight -= 1

    def receive(self, fingerprint: str) -> int:
        """Its body has been read. Returns how many times this body has been received, this time included."""
        with self._lock:
            counts = self._bodies.setdefault(fingerprint, [0, 0])
            counts[0] += 1
            return counts[0]

    def answer(self, fingerprint: str, status: int) -> None:
        """It is being answered with `status`."""
        with self._lock:
            self._by_status[status] += 1
            if 200 <= status < 300:
                self._answered += 1
                self._bodies.setdefault(fingerprint, [0, 0])[1] += 1

    def snapshot(self) -> dict[str, Any]:
        """The JSON-ready dict served at /_fake/stats."""
        with self._lock:
            return {
                "received": self._received,
                "answered": self._answered,
                "by_status": {str(status): n for status, n in sorted(self._by_status.items())},
                "in_flight": self._in_flight,
                "max_in_flight": self._max_in_flight,
                "bodies": {fp: {"received": r, "answered": a} for fp, (r, a) in self._bodies.items()},
                "projects": dict(self._projects),
            }

    def reset(self) -> None:
        """Zero every count; requests still in flight stay counted as in flight."""
        with self._lock:
            self._clear()
