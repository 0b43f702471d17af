"""Progress of long work: a live bar (count and rate) on a terminal, a few plain lines in a log.

On a terminal a phase shows tqdm's bar. When the stream is not a terminal (``dvc repro > log``, a CI
job, ``dvc queue logs``) a bar would print a frame per update, so a phase prints **one** summary line
when it ends instead::

    organize@target: check images: 510 img in 0.4 s (1,270 img/s)

and, only while a phase runs long, a line after 30 s, 60 s, 120 s, ... (each gap doubles, so a
two-hour phase adds eight lines). A phase cut short by an error says where it stopped; one with nothing
to do prints nothing. Progress goes to stderr, like tqdm's: a stage's results on stdout stay clean.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import IO, TypeVar

T = TypeVar("T")
FIRST_HEARTBEAT_S = 30.0  # the first in-progress line of a long phase in a log; each later one waits twice as long
BAR_MIN_INTERVAL_S = 0.5  # a terminal bar redraws at most this often


def interactive(stream: IO[str] | None = None) -> bool:
    """Whether ``stream`` (default stderr) is a terminal that can redraw a bar in place.

    A terminal that reports 0 columns (some CI pseudo-terminals) gets lines: tqdm draws nothing there.
    """
    stream = stream or sys.stderr
    try:
        if not stream.isatty():
            return False
    except (AttributeError, ValueError):  # a closed or unusual stream
        return False
    try:
        return os.get_terminal_size(stream.fileno()).columns > 0
    except (AttributeError, ValueError, OSError):  # a terminal-like stream without a file descriptor
        return True


def amount(n: float, unit: str) -> str:
    """``1,270 img``, or bytes scaled (``12.3 MB``)."""
    if unit == "B":
        for prefix in ("", "k", "M", "G", "T"):
            if abs(n) < 1000 or prefix == "T":
                return f"{n:,.0f} B" if not prefix else f"{n:.1f} {prefix}B"
            n /= 1000
    return f"{n:,.0f} {unit}"


def say(text: str, stream: IO[str] | None = None) -> None:
    """One progress line, flushed at once (a log read while the stage runs shows it)."""
    stream = stream or sys.stderr
    print(text, file=stream, flush=True)


class Phase:
    """Count the items of one phase; a bar on a terminal, a summary line (and rare heartbeats) otherwise.

    Use :func:`track` for a loop and :func:`phase` for a block that counts by hand.
    """

    def __init__(self, desc: str, total: int | None = None, unit: str = "img", stream: IO[str] | None = None) -> None:
        self.desc, self.total, self.unit = desc, total, unit
        self.stream = stream or sys.stderr
        self.n = 0
        self.started = time.perf_counter()
        self._next_heartbeat = FIRST_HEARTBEAT_S
        self._bar = None
        if interactive(self.stream):
            from tqdm import tqdm

            scale = unit == "B"
            self._bar = tqdm(
                total=total, desc=desc, unit=unit, unit_scale=scale, file=self.stream, mininterval=BAR_MIN_INTERVAL_S, dynamic_ncols=True
            )

    def update(self, n: int = 1) -> None:
        self.n += n
        if self._bar is not None:
            self._bar.update(n)
            return
        elapsed = time.perf_counter() - self.started
        if elapsed >= self._next_heartbeat:
            self._next_heartbeat *= 2
            say(f"{self.desc}: {self._counted()} so far, {elapsed:.0f} s ({self._rate(elapsed)}){self._eta(elapsed)}", self.stream)

    def close(self, failed: bool = False) -> None:
        elapsed = time.perf_counter() - self.started
        if self._bar is not None:
            self._bar.close()
            return
        if self.total == 0 and not failed:  # nothing to do (no pool/, no other dataset): no line
            return
        if failed:
            say(f"{self.desc}: stopped after {self._counted()} in {elapsed:.1f} s", self.stream)
        else:
            say(f"{self.desc}: {self._counted()} in {elapsed:.1f} s ({self._rate(elapsed)})", self.stream)

    def _counted(self) -> str:
        done = amount(self.n, self.unit)
        return done if self.total is None or self.n == self.total else f"{done} of {amount(self.total, self.unit)}"

    def _rate(self, elapsed: float) -> str:
        return f"{amount(self.n / elapsed, self.unit)}/s" if elapsed > 0 else "-"

    def _eta(self, elapsed: float) -> str:
        if not self.total or not self.n:
            return ""
        return f", ~{(self.total - self.n) * elapsed / self.n:.0f} s left"


class Step:
    """A phase without a count (one export format): its duration on one line when it is done.

    On a terminal its name is shown when it starts too, so a minute of silence has a name.
    """

    def __init__(self, desc: str, stream: IO[str] | None = None) -> None:
        self.desc, self.stream = desc, stream or sys.stderr
        self.started = time.perf_counter()
        if interactive(self.stream):
            say(f"{desc} ...", self.stream)

    def done(self, note: str = "") -> None:
        say(f"{self.desc}: done in {time.perf_counter() - self.started:.1f} s{note and f' ({note})'}", self.stream)


@contextmanager
def phase(desc: str, total: int | None = None, unit: str = "img", stream: IO[str] | None = None) -> Iterator[Phase]:
    """A :class:`Phase` closed on exit, saying where it stopped when the block raised."""
    progress = Phase(desc, total, unit, stream)
    try:
        yield progress
    except BaseException:
        progress.close(failed=True)
        raise
    progress.close()


def track(items: Iterable[T], desc: str, total: int | None = None, unit: str = "img", stream: IO[str] | None = None) -> Iterator[T]:
    """Yield ``items`` while counting them as one phase (``total`` defaults to ``len(items)`` where it has one)."""
    if total is None and hasattr(items, "__len__"):
        total = len(items)  # type: ignore[arg-type]
    with phase(desc, total, unit, stream) as progress:
        for item in items:
            yield item
            progress.update()
