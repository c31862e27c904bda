"""How busy the machine was while something was timed: the CPU other processes took, and the load average.

A timing taken while another process competes for the cores is slower by an amount nobody can
undo afterwards (medians do not help when the disturbance lasts the whole measurement). So
whatever bild times records, beside its figures, what the rest of the machine did meanwhile:
`others_cpu`, the share of all cores' time spent by other processes (the machine's busy time
from /proc/stat, less this process's own CPU time), and the 1-minute load average at start and
end. `BUSY` is the share above which a measurement is flagged: a 2-thread timing on a 2-core
machine slows visibly well before the other process takes half of it.
"""

from __future__ import annotations

import os
import resource
import time
from pathlib import Path
from typing import Any

BUSY = 0.25  # others' share of all cores' time above which a timing is called busy


def machine_busy_seconds() -> float | None:
    """Seconds all cores spent busy since boot (Linux), or None where /proc/stat is not readable."""
    try:
        fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    except (OSError, IndexError):
        return None
    ticks = [int(f) for f in fields]
    idle = ticks[3] + (ticks[4] if len(ticks) > 4 else 0)  # idle + iowait
    return (sum(ticks[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def own_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def load_average() -> float | None:
    try:
        return os.getloadavg()[0]
    except OSError:
        return None


class LoadMeter:
    """Started when made; `read()` says how busy the rest of the machine was since."""

    def __init__(self) -> None:
        self.cores = os.cpu_count() or 1
        self.wall, self.busy, self.own, self.load = time.monotonic(), machine_busy_seconds(), own_seconds(), \
            load_average()

    def read(self) -> dict[str, Any]:
        wall = max(time.monotonic() - self.wall, 1e-9)
        busy = machine_busy_seconds()
        others = None
        if busy is not None and self.busy is not None:
            others = max(0.0, (busy - self.busy) - (own_seconds() - self.own)) / (wall * self.cores)
        return {"others_cpu": None if others is None else round(min(others, 1.0), 3), "cores": self.cores,
                "load_average": [self.load, load_average()], "seconds": round(wall, 3),
                "busy": others is not None and others > BUSY}
