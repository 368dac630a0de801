"""Progress of long steps: a bar on a terminal, a plain line at a steady interval elsewhere.

A run under nohup, CI or a job scheduler writes to a file, where tqdm turns its bar off and
the step looks hung for an hour. There, a line every `INTERVAL_S` seconds says the step is
alive, how far it is, its loss or dev metric, its rate and when it should end. Training,
augmentation, POS tagging and teacher labelling all report through this one class.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from types import TracebackType
from typing import TextIO

from tqdm.auto import tqdm

INTERVAL_S = 30.0  # a line at the first update after this many seconds: never silent for a minute


class Progress:
    """Counts `total` units of a step called `desc`; shows it as a bar or as periodic lines.

    `update(n, **figures)` adds n done units and sets figures (loss=..., shown as "loss 0.4312");
    `set(**figures)` only sets them (a dev metric after an evaluation). Underscores in figure
    names become spaces. Nothing is shown when `enabled` is false (another rank, a tiny input).
    """

    def __init__(
        self,
        desc: str,
        total: int,
        unit: str = "step",
        initial: int = 0,
        enabled: bool = True,
        stream: TextIO | None = None,
        interval: float = INTERVAL_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.desc, self.total, self.unit, self.done = desc, total, unit, initial
        self.stream = stream if stream is not None else sys.stderr
        self.interval, self.clock = interval, clock
        self.figures: dict[str, str] = {}
        self.started = self.last_line = clock()
        self.start_count = initial
        self.lines_written = 0
        on_terminal = enabled and _is_terminal(self.stream)
        self.bar = (
            tqdm(total=total, initial=initial, desc=desc, unit=unit, file=self.stream, dynamic_ncols=True)
            if on_terminal
            else None
        )
        self.lines = enabled and not on_terminal

    def update(self, n: int = 1, **figures: float) -> None:
        self.done += n
        self.set(**figures)
        if self.bar is not None:
            self.bar.update(n)
        elif self.lines and self.clock() - self.last_line >= self.interval:
            self._write_line(finished=False)

    def set(self, **figures: float) -> None:
        for name, value in figures.items():
            self.figures[name.replace("_", " ")] = f"{value:.4g}"
        if self.bar is not None and figures:
            self.bar.set_postfix(self.figures, refresh=False)

    def close(self, finished: bool = True) -> None:
        """Close the bar; a finished step that wrote lines ends with one saying so and how fast."""
        if self.bar is not None:
            self.bar.close()
        elif self.lines_written and finished:
            self._write_line(finished=True)

    def __enter__(self) -> Progress:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.close(finished=kind is None)  # a failed step is not "done"

    def line(self, finished: bool = False) -> str:
        """E.g. `[finetune] 120/1000 steps (12%), loss 0.4312, best dev accuracy 0.8123, 3.2 steps/s, ETA 4m35s`."""
        now = self.clock()
        elapsed = now - self.started
        share = f" ({100 * self.done / self.total:.0f}%)" if self.total else ""
        parts = [f"[{self.desc}] {self.done}/{self.total} {self.unit}s{share}"]
        parts += [f"{name} {value}" for name, value in self.figures.items()]
        rate = (self.done - self.start_count) / elapsed if elapsed > 0 else 0.0
        if rate > 0:
            parts.append(f"{rate:.3g} {self.unit}s/s" if rate >= 1 else f"{1 / rate:.3g} s/{self.unit}")
        if finished:
            parts.append(f"done in {_duration(elapsed)}")
        elif rate > 0:
            parts.append(f"ETA {_duration(max(self.total - self.done, 0) / rate)}")
        return ", ".join(parts)

    def _write_line(self, finished: bool) -> None:
        self.stream.write(self.line(finished) + "\n")
        self.stream.flush()
        self.last_line = self.clock()
        self.lines_written += 1


def _is_terminal(stream: TextIO) -> bool:
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())


def _duration(seconds: float) -> str:
    """12s, 4m35s, 2h03m."""
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
