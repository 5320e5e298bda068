"""WriteHealth: one log line per failed write, sending held while storing fails, one stall, and recovery."""

from __future__ import annotations

import asyncio
import logging

import pytest

from pipeline.send.health import CLAIMING, STORING, WriteHealth


def test_a_failing_write_is_one_line_and_stalls_once(caplog: pytest.LogCaptureFixture) -> None:
    stalls: list[str] = []
    health = WriteHealth(0.0, stalls.append)
    with caplog.at_level(logging.WARNING, logger="pipeline.send.health"):
        for _ in range(3):
            health.failed(STORING, OSError("database or disk is full\n[SQL: INSERT ...]"), 1.0)
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 3 and all(
        "\n" not in line and not r.exc_info for line, r in zip(lines, caplog.records, strict=True)
    )
    assert all(line.startswith("storing answers failed for") for line in lines)
    assert stalls == [health.stalled] and "database or disk is full" in stalls[0]
    assert not health.writable


def test_the_stall_ends_when_every_failing_kind_works_again() -> None:
    health = WriteHealth(0.0)
    health.failed(STORING, OSError("full"))
    health.failed(CLAIMING, OSError("full"))
    health.worked(STORING)
    assert health.writable and health.stalled is not None  # claims still fail
    health.worked(CLAIMING)
    assert health.stalled is None


def test_sending_waits_while_storing_fails() -> None:
    async def scenario() -> list[str]:
        health, stop, seen = WriteHealth(60.0), asyncio.Event(), []
        health.failed(STORING, OSError("full"))

        async def sender() -> None:
            await health.wait_writable(stop)
            seen.append("sent")

        task = asyncio.create_task(sender())
        await asyncio.sleep(0)  # the sender reaches its wait
        seen.append("still failing")
        health.worked(STORING)
        await asyncio.wait_for(task, 5)
        return seen

    assert asyncio.run(scenario()) == ["still failing", "sent"]
