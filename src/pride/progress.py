"""Progress of every long phase: training steps, the reference pass, sampling, judging and
evaluation all report through `Phase`.

On a terminal: a rich bar with the count, a rate and an ETA. Anywhere else (nohup, CI, `tee`)
rich draws nothing until the end, so a plain line is printed instead, at most every
`PRIDE_PROGRESS_SECONDS` seconds (default 30) and once at the end: a log shows a run moving.
"""

from __future__ import annotations

import os
import time

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn


def interval() -> float:
    try:
        return max(0.0, float(os.environ.get("PRIDE_PROGRESS_SECONDS", "30")))
    except ValueError:
        return 30.0


class Phase:
    """`with Phase(console, "sampling", total, unit="prompts") as p: p.advance(n, info="...")`."""

    def __init__(self, console: Console | None, description: str, total: int | None, unit: str = "",
                 enabled: bool = True, completed: int = 0):
        self.console = console or Console(stderr=True)
        self.description, self.total, self.unit = description, total, unit
        self.enabled = enabled and not self.console.quiet
        self.completed, self.start_count, self.info = completed, completed, ""
        self.live = self.enabled and self.console.is_terminal
        self.started = self.last_line = time.perf_counter()
        self.bar = None
        if self.live:
            self.bar = Progress(TextColumn("[bold]{task.description}"), BarColumn(),
                                TextColumn("{task.completed}/{task.total}"), TextColumn("{task.fields[info]}"),
                                TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(), console=self.console,
                                transient=False)
            self.task = self.bar.add_task(description, total=total, completed=completed, info="")

    def __enter__(self) -> "Phase":
        if self.bar is not None:
            self.bar.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        if self.bar is not None:
            self.bar.__exit__(*exc)
        elif self.enabled and exc[0] is None and self.completed > self.start_count:
            self._line(final=True)

    def advance(self, n: int = 1, info: str | None = None) -> None:
        self.update(self.completed + n, info)

    def update(self, completed: int, info: str | None = None) -> None:
        self.completed = completed
        if info is not None:
            self.info = info
        if self.bar is not None:
            self.bar.update(self.task, completed=completed, info=self.info)
        elif self.enabled and time.perf_counter() - self.last_line >= interval():
            self._line()

    def _line(self, final: bool = False) -> None:
        now = time.perf_counter()
        self.last_line = now
        elapsed = now - self.started
        done = self.completed - self.start_count
        rate = done / elapsed if elapsed > 0 else 0.0
        parts = [f"{self.description}: {self.completed}" + (f"/{self.total}" if self.total else "")
                 + (f" {self.unit}" if self.unit else "")]
        parts.append(f"{rate:.2f}/s" if rate < 10 else f"{rate:.0f}/s")
        if self.total and rate > 0 and not final:
            parts.append(f"eta {_clock((self.total - self.completed) / rate)}")
        parts.append(f"elapsed {_clock(elapsed)}")
        if self.info:
            parts.append(self.info)
        self.console.print(", ".join(parts), markup=False, highlight=False, soft_wrap=True)


def _clock(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


__all__ = ["Phase"]
