"""Progress of long work: a rich bar on a terminal, plain complete lines in a log.

rich draws a live bar only on a terminal; written to a file, a pipe or a CI log it prints the
bar's last frame once, cut to 80 columns (numbers end in "…"). So when standard output is
not a terminal, ``ProgressDisplay`` prints instead one plain line at most every ``every_s``
seconds and one at the end, each whole, e.g.::

    pretraining:  42.0%  0:01:13 elapsed  step 120 loss 6.812 ...
"""

from __future__ import annotations

import sys
import time


def hms(seconds: float) -> str:
    """``H:MM:SS``; negative durations show as 0:00:00."""
    s = int(max(seconds, 0.0))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


class ProgressDisplay:
    """``label``, completion out of ``total``, time elapsed and left, and a free ``info`` text.

    ``update(completed, info)`` as often as convenient (a terminal redraws at most 10 times a
    second; a log gets a line every ``every_s`` seconds); ``close()`` once at the end. With
    ``enabled=False`` every call does nothing. ``eta=False`` leaves out the time-left estimate
    (for work that knows its own, e.g. a resumed run whose completion did not start at 0).
    """

    def __init__(self, label: str, total: float, *, enabled: bool = True, every_s: float = 30.0,
                 eta: bool = True):  # fmt: skip
        self.label, self.total, self.every_s, self.eta = label, max(float(total), 1e-12), every_s, eta
        self.bar = None
        self.enabled = enabled
        self.start = time.monotonic()
        self.last_line = -float("inf")  # log mode: when the last line was printed
        self.state: tuple[float, str] | None = None  # latest (completed, info), for close()
        self.printed: tuple[float, str] | None = None  # log mode: the state of the last line printed
        if not enabled:
            return
        from rich.console import Console

        console = Console()
        if console.is_terminal:
            from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

            columns = [TextColumn(f"[bold]{label}[/bold]"), BarColumn(), TextColumn("{task.percentage:>5.1f}%"),
                       TimeElapsedColumn(), *([TimeRemainingColumn()] if eta else []), TextColumn("{task.fields[info]}")]  # fmt: skip
            self.bar = Progress(*columns, console=console)
            self.task = self.bar.add_task(label, total=self.total, info="")
            self.bar.start()

    def update(self, completed: float, info: str = "") -> None:
        if not self.enabled:
            return
        self.state = (completed, info)
        if self.bar is not None:
            self.bar.update(self.task, completed=completed, info=info)
            return
        now = time.monotonic()
        if now - self.last_line >= self.every_s:
            self.last_line = now
            self._print_line(completed, info)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()
            self.bar = None
        elif (
            self.enabled and self.state is not None and self.state != self.printed
        ):  # never the same line twice
            self._print_line(*self.state)
        self.enabled = False

    def _print_line(self, completed: float, info: str) -> None:
        self.printed = (completed, info)
        elapsed = time.monotonic() - self.start
        fraction = min(max(completed / self.total, 0.0), 1.0)
        left = f"  {hms(elapsed / fraction - elapsed)} left" if self.eta and 0.0 < fraction < 1.0 else ""
        print(f"{self.label}: {100 * fraction:5.1f}%  {hms(elapsed)} elapsed{left}  {info}".rstrip(),
              file=sys.stdout, flush=True)  # fmt: skip
