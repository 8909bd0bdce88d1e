"""Timing shared by the speed benchmarks: interleaved rounds, their summary, the machine's load.

The rule every speed benchmark follows: the entries it compares (models, FFF paths) are timed
in one block of repeated rounds, each round timing every entry once in a rotated order, so a
slow spell of a shared machine falls on all of them alike and no entry always runs right after
the same neighbour; each entry is reported as the median over rounds with the slowest and the
fastest round, next to the load average before and after the block, and with a warning when
the machine was busy. (Best-of-single-passes taken at different moments made one model look
37x slower than another as the load changed.)
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable, Sequence
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


def machine_load() -> dict[str, Any]:
    """The 1-, 5- and 15-minute load averages (None where the OS has none) and the core count."""
    load = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    return {"load_average": load, "cores": machine_cores()}


def busy_warning(load_before: dict[str, Any], load_after: dict[str, Any]) -> str | None:
    """A warning when the 1-minute load average before or after the block exceeded half the
    cores: other work then shared the cores and absolute speeds are low and noisy (the
    interleaved rounds still spread it over every entry, so ratios suffer less)."""
    cores = load_before.get("cores") or load_after.get("cores") or machine_cores()
    loads = [d["load_average"][0] for d in (load_before, load_after) if d.get("load_average")]
    if not loads or max(loads) <= cores / 2:
        return None
    before, after = (
        f"{d['load_average'][0]:.1f}" if d.get("load_average") else "?" for d in (load_before, load_after)
    )
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
        "busy": warning is not None,
        "warning": warning,
    }


__all__ = [
    "busy_warning",
    "interleaved_rounds",
    "load_report",
    "machine_cores",
    "machine_load",
    "rotated",
    "summarise",
]
