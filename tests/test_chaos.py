"""The chaos soak (bench/chaos.py) for 2 minutes with a fixed seed: every invariant holds at once.

A real fleet (3 `pipeline worker` processes, Redis, PostgreSQL, the fake API) under kill -9, SIGSTOP,
clock steps, Redis and PostgreSQL restarts, killed connections, 5xx bursts, 429 storms and hangs, with
batches submitted, cancelled and reprioritised meanwhile. The script starts and stops everything itself
and ends within its deadlines; the test only bounds it from outside. Longer runs: see the README.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.integration


def _needs(*tools: str) -> None:
    missing = [tool for tool in tools if shutil.which(tool) is None]
    postgres = list(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    if missing or not postgres:
        message = f"the chaos soak needs {', '.join(missing) or 'PostgreSQL'}"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)


@pytest.mark.timeout(1200)
def test_two_minutes_of_chaos_hold_every_invariant(tmp_path: Path) -> None:
    _needs("redis-server", "redis-cli", "faketime")
    out = tmp_path / "chaos"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PIPELINE_", "OPENAI_", "TEST_"))}
    done = subprocess.run(
        [
            sys.executable,
            str(ROOT / "bench" / "chaos.py"),
            "--minutes",
            "2",
            "--seed",
            "7",
            "--out",
            str(out),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=1100,  # 2 minutes of chaos, at most 5 of healing, 2 of draining, and starting up
    )
    print(done.stderr[-4000:])
    assert done.stdout.strip(), done.stderr[-4000:]
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    print(json.dumps(summary, indent=2))
    assert summary["faults"] >= 10 and len(summary["faults_by_kind"]) >= 6, summary["faults_by_kind"]
    assert summary["rows"] > 0 and summary["batches"] >= 3
    for name, held in summary["invariants"].items():
        assert held, f"{name} does not hold; logs in {out}"
    assert done.returncode == 0
