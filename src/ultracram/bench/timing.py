"""Timing shared by the speed benchmarks: interleaved rounds, their summary, the machine's load.

The rule every speed benchmark follows: the entries it compares (models, FFF paths) are timed
in one block of repeated rounds, each round timing every entry once in a rotated order, so a
slow spell of a shared machine falls on all of them alike and no entry always runs right after
the same neighbour; each entry is reported as the median over rounds with the slowest and the
fastest round, next to the load average before and after the block, and with a warning when
other processes kept more than half the cores busy during it. (Best-of-single-passes taken at different moments made one model look
37x slower than another as the load changed.)
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

K = TypeVar("K")


def rotated(keys: Sequence[K], r: int) -> list[K]:
    """The order of round ``r``: ``keys`` started at position ``r`` (mod their number), so over
    rounds each entry runs first, last and after different neighbours."""
    keys = list(keys)
    if not keys:
        return keys
    r %= len(keys)
    return keys[r:] + keys[:r]


def interleaved_rounds(entries: dict[str, Callable[[], float | None]], rounds: int) -> dict[str, list[float]]:
    """Seconds of each entry in ``rounds`` interleaved rounds, in the entries' order.

    Each callable runs one timed unit. It returns its own seconds (when it must leave work out
    of the time, such as building a model or waiting for a GPU), or None: then the wall-clock
    time of the call is taken. Round ``r`` calls every entry once, in ``rotated(entries, r)``
    order. Warm-up is the caller's: the first round is timed like the others.
    """
    times: dict[str, list[float]] = {name: [] for name in entries}
    for r in range(rounds):
        for name in rotated(list(entries), r):
            t0 = time.perf_counter()
            seconds = entries[name]()
            elapsed = time.perf_counter() - t0
            times[name].append(elapsed if seconds is None else float(seconds))
    return times


def summarise(times: Sequence[float]) -> dict[str, float]:
    """Median, slowest (largest) and fastest (smallest) of one entry's round times."""
    if not times:
        raise ValueError("no times to summarise")
    return {"median": statistics.median(times), "slowest": max(times), "fastest": min(times)}


def machine_cores() -> int:
    """Cores of the whole machine: the load average counts runnable tasks machine-wide, so it is
    compared with all cores, not the ones this process may use."""
    return os.cpu_count() or 1


def cpu_seconds() -> tuple[float, float] | None:
    """(busy CPU seconds of the whole machine, CPU seconds of this process) now, from Linux's
    /proc/stat; None where it cannot be read. Between two readings, the machine's growth minus
    this process's is the CPU that other work took."""
    try:
        fields = Path("/proc/stat").read_text().splitlines()[0].split()
        ticks = os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None
    if fields[0] != "cpu" or len(fields) < 9:
        return None
    user, nice, system, _idle, _iowait, irq, softirq, steal = map(int, fields[1:9])
    return (user + nice + system + irq + softirq + steal) / ticks, time.process_time()


def machine_load() -> dict[str, Any]:
    """The 1-, 5- and 15-minute load averages (None where the OS has none), the core count, and
    a ``cpu_seconds`` reading with its time (for ``other_cores`` between two readings)."""
    load = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    return {"load_average": load, "cores": machine_cores(), "cpu": cpu_seconds(), "at": time.perf_counter()}


def other_cores(before: dict[str, Any], after: dict[str, Any]) -> float | None:
    """Cores that other processes kept busy, on average, between two ``machine_load`` readings;
    None without /proc/stat. Unlike the load average, it leaves out this process's own threads,
    which keep every core busy while a benchmark or a study runs (the load average after a
    2-thread block on 2 cores is about 2 however quiet the machine)."""
    a, b = before.get("cpu"), after.get("cpu")
    wall = after.get("at", 0.0) - before.get("at", 0.0)
    if not a or not b or wall <= 0:
        return None
    return max(0.0, (b[0] - a[0]) - (b[1] - a[1])) / wall


def busy_warning(load_before: dict[str, Any], load_after: dict[str, Any]) -> str | None:
    """A warning when other work shared the cores during the block: other processes kept more
    than half the cores busy on average (``other_cores``), or, without /proc/stat, the 1-minute
    load average before or after exceeded half the cores. Absolute speeds are then low and noisy
    (the interleaved rounds still spread it over every entry, so ratios suffer less)."""
    cores = load_before.get("cores") or load_after.get("cores") or machine_cores()
    before, after = (
        f"{d['load_average'][0]:.1f}" if d.get("load_average") else "?" for d in (load_before, load_after)
    )
    others = other_cores(load_before, load_after)
    if others is not None:
        if others <= cores / 2:
            return None
        return (f"WARNING: machine busy (other processes kept {others:.1f} of {cores} cores busy; load average "
                f"{before} before, {after} after): absolute speeds are disturbed; compare entries only within "
                "this run")  # fmt: skip
    loads = [d["load_average"][0] for d in (load_before, load_after) if d.get("load_average")]
    if not loads or max(loads) <= cores / 2:
        return None
    return (
        f"WARNING: machine busy (load average {before} before, {after} after, on {cores} cores; "
        f"over {cores / 2:g}): absolute speeds are disturbed; compare entries only within this run"
    )


def load_report(load_before: dict[str, Any], load_after: dict[str, Any]) -> dict[str, Any]:
    """The ``load`` block of a benchmark's JSON: both readings, the cores and the warning."""
    warning = busy_warning(load_before, load_after)
    return {
        "before": load_before.get("load_average"),
        "after": load_after.get("load_average"),
        "cores": load_before.get("cores") or load_after.get("cores"),
        "other_cores": other_cores(load_before, load_after),
        "busy": warning is not None,
        "warning": warning,
    }


__all__ = [
    "busy_warning",
    "cpu_seconds",
    "interleaved_rounds",
    "load_report",
    "machine_cores",
    "machine_load",
    "other_cores",
    "rotated",
    "summarise",
]
