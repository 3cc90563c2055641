"""CPU time of other processes (a sink, a worker), read from Linux's /proc, for the benchmarks."""

from __future__ import annotations

import os
from pathlib import Path


def _stat(pid: int | str) -> list[str]:
    """/proc/PID/stat's fields after the command name (which may hold spaces): state first."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def cpu_seconds(pid: int | str) -> float:
    """User + system CPU seconds process ``pid`` has used so far."""
    fields = _stat(pid)
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def children_cpu() -> float | None:
    """CPU seconds used so far by this process's live children; None where /proc is not."""
    try:
        total = 0.0
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                if int(_stat(entry)[1]) == os.getpid():  # the parent's pid
                    total += cpu_seconds(entry)
            except OSError:
                continue  # gone meanwhile
        return total
    except (OSError, ValueError, IndexError):
        return None
