"""Per-epoch clocks for the benches: Ultralytics callbacks that time each epoch's training and validation."""

from __future__ import annotations

import time


class EpochClock:
    """``train`` = seconds from epoch start to the end of its last batch; ``total`` adds its validation."""

    def __init__(self) -> None:
        self.train: list[float] = []
        self.total: list[float] = []
        self._start: float | None = None

    def on_train_epoch_start(self, trainer) -> None:
        self._start = time.perf_counter()

    def on_train_epoch_end(self, trainer) -> None:
        if self._start is not None:
            self.train.append(time.perf_counter() - self._start)

    def on_fit_epoch_end(self, trainer) -> None:
        if self._start is not None:  # None on Ultralytics' extra call after training (final eval)
            self.total.append(time.perf_counter() - self._start)
            self._start = None

    def attach(self, target) -> None:
        """Register on a YOLO model or a trainer (anything with ``add_callback``)."""
        for event in ("on_train_epoch_start", "on_train_epoch_end", "on_fit_epoch_end"):
            target.add_callback(event, getattr(self, event))

    def attach_to_trainers(self, *classes) -> None:
        """Register on every trainer built from ``classes`` (for code that creates its own trainer)."""
        for cls in classes:
            original = cls.__init__

            def init(trainer, *args, _original=original, **kwargs):
                _original(trainer, *args, **kwargs)
                self.attach(trainer)

            cls.__init__ = init

    def report(self) -> dict:
        return {"train": self.train, "total": self.total}
