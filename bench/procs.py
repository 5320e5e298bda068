"""What a benchmark's processes cost: wall time and CPU (user + sys) of a child, or of running processes
read from /proc. Imported by the bench scripts; no third-party import (the harness stays small).

CPU time is the figure to compare on a shared machine: other work slows a process's wall clock far more
than the CPU it spends (it still spends some more: caches and frequency are shared too).
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

#: Clock ticks per second of /proc's CPU counters.
TICKS = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class Usage:
    """What one child process (and every process it waited for) spent."""

    wall: float  #: seconds from start to exit
    user: float  #: CPU seconds in user mode
    sys: float  #: CPU seconds in the kernel
    returncode: int

    @property
    def cpu(self) -> float:
        return self.user + self.sys


def run_measured(command: Sequence[str], **popen: object) -> Usage:
    """Run `command` to its end; its wall time and its own rusage (os.wait4: this child and the children it
    waited for, nothing else this process started)."""
    started = time.perf_counter()
    proc = subprocess.Popen(list(command), **popen)  # type: ignore[call-overload]
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - started
    proc.returncode = os.waitstatus_to_exitcode(status)
    return Usage(wall, usage.ru_utime, usage.ru_stime, proc.returncode)


def proc_cpu(pid: int, *, reaped: bool = True) -> float:
    """CPU seconds process `pid` spent (all its threads), plus, with `reaped`, what its children that
    already exited and were waited for spent (a PostgreSQL backend that ended counts in the postmaster);
    0.0 once the process is gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = raw.rsplit(")", 1)[1].split()  # after "pid (comm)": state is fields[0], utime fields[11]
    ticks = int(fields[11]) + int(fields[12])
    if reaped:
        ticks += int(fields[13]) + int(fields[14])
    return ticks / TICKS


def children(pid: int) -> list[int]:
    """Every live descendant of `pid`."""
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        parents.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        kids = parents.get(todo.pop(), [])
        found += kids
        todo += kids
    return found


def tree_cpu(pids: Iterable[int]) -> float:
    """CPU seconds of these processes and all their live descendants (and the descendants they reaped)."""
    total = 0.0
    for pid in pids:
        total += proc_cpu(pid) + sum(proc_cpu(child) for child in children(pid))
    return total


def pidfile(path: Path) -> int:
    """The pid a server wrote to its pid file (the first word: PostgreSQL's postmaster.pid, Redis's)."""
    return int(path.read_text().split()[0])
