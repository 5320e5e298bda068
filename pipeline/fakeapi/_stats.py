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
        self._key_flights: Counter[str] = Counter()  # key label -> in flight now
        self._clear()

    def _clear(self) -> None:
        self._received = 0
        self._answered = 0
        self._by_status: Counter[int] = Counter()
        self._by_key: dict[str, Counter[int]] = {}  # key label -> answers by status (with `keys` set)
        self._key_max: Counter[str] = Counter(self._key_flights)  # key label -> most in flight at once
        self._max_in_flight = self._in_flight
        self._bodies: dict[str, list[int]] = {}  # fingerprint -> [received, answered]
        self._projects: Counter[str] = Counter()  # OpenAI-Project header -> requests
        self._batch_calls: Counter[str] = Counter()  # Batch API operation -> calls received
        self._uploaded: list[str] = []  # file name of every file stored
        self._created: list[dict[str, Any]] = []  # {"id", "metadata"} of every batch created
        self._cancelled: list[str] = []  # id of every batch a cancel was accepted for
        self._lines = {"answered": 0, "expired": 0}  # batch lines processed
        self._usage = {"prompt_tokens": 0, "completion_tokens": 0}  # reported by 2xx answers and lines

    def enter(self, project: str | None = None, key: str | None = None) -> None:
        """A request to /v1 starts being handled (`project`: its OpenAI-Project header; `key`: the label
        of its key, when the fake has several)."""
        with self._lock:
            if key is not None:
                self._key_flights[key] += 1
                self._key_max[key] = max(self._key_max[key], self._key_flights[key])
            if project is not None:
                self._projects[project] += 1
            self._received += 1
            self._in_flight += 1
            self._max_in_flight = max(self._max_in_flight, self._in_flight)

    def leave(self, key: str | None = None) -> None:
        """The request is done: answered, failed or cancelled because the client went away."""
        with self._lock:
            self._in_flight -= 1
            if key is not None:
                self._key_flights[key] -= 1

    def receive(self, fingerprint: str) -> int:
        """Its body has been read. Returns how many times this body has been received, this time included."""
        with self._lock:
            counts = self._bodies.setdefault(fingerprint, [0, 0])
            counts[0] += 1
            return counts[0]

    @property
    def in_flight(self) -> int:
        return self._in_flight

    def answer(
        self, fingerprint: str, status: int, tokens: tuple[int, int] | None = None, key: str | None = None
    ) -> None:
        """It is being answered with `status`, reporting `tokens` (prompt, completion) in its usage; `key`
        names the key it came with when the fake has several."""
        with self._lock:
            self._by_status[status] += 1
            if key is not None:
                self._by_key.setdefault(key, Counter())[status] += 1
            if 200 <= status < 300:
                self._answered += 1
                self._bodies.setdefault(fingerprint, [0, 0])[1] += 1
                self._count_usage(tokens)

    def answer_line(self, fingerprint: str, status: int, tokens: tuple[int, int] | None = None) -> None:
        """A Batch API line was answered with `status` (it counts in `bodies`, not as an HTTP request)."""
        with self._lock:
            self._lines["answered"] += 1
            if 200 <= status < 300:
                self._bodies.setdefault(fingerprint, [0, 0])[1] += 1
                self._count_usage(tokens)

    def _count_usage(self, tokens: tuple[int, int] | None) -> None:
        if tokens is not None:
            self._usage["prompt_tokens"] += tokens[0]
            self._usage["completion_tokens"] += tokens[1]

    def expire_line(self) -> None:
        with self._lock:
            self._lines["expired"] += 1

    def batch_call(self, operation: str) -> None:
        """A Batch API operation was received (before its checks)."""
        with self._lock:
            self._batch_calls[operation] += 1

    def uploaded(self, filename: str) -> None:
        with self._lock:
            self._uploaded.append(filename)

    def created(self, batch_id: str, metadata: dict[str, str] | None) -> None:
        with self._lock:
            self._created.append({"id": batch_id, "metadata": dict(metadata or {})})

    def cancelled(self, batch_id: str) -> None:
        with self._lock:
            self._cancelled.append(batch_id)

    def snapshot(self) -> dict[str, Any]:
        """The JSON-ready dict served at /_fake/stats."""
        with self._lock:
            return {
                "received": self._received,
                "answered": self._answered,
                "by_status": {str(status): n for status, n in sorted(self._by_status.items())},
                "max_in_flight_by_key": dict(self._key_max),
                "by_key": {
                    key: {str(status): n for status, n in sorted(counts.items())}
                    for key, counts in self._by_key.items()
                },
                "in_flight": self._in_flight,
                "max_in_flight": self._max_in_flight,
                "bodies": {fp: {"received": r, "answered": a} for fp, (r, a) in self._bodies.items()},
                "projects": dict(self._projects),
                "usage": dict(self._usage),
                "batch_api": {
                    "calls": dict(self._batch_calls),
                    "uploaded": list(self._uploaded),
                    "created": [dict(c, metadata=dict(c["metadata"])) for c in self._created],
                    "cancelled": list(self._cancelled),
                    "lines": dict(self._lines),
                },
            }

    def reset(self) -> None:
        """Zero every count; requests still in flight stay counted as in flight."""
        with self._lock:
            self._clear()
