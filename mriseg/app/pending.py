"""A volume segmented in a background thread, the middle slices first, so a page can show an overlay in seconds.

The middle slice is first segmented alone, for a preview; then every slice is, in batches.

The forward pass runs the same batches as :meth:`mriseg.inference.Segmenter.predict` (slices 0-15, 16-31, ...), only
in another order (the batch holding the middle slice first, then outwards), so the finished probabilities are the
ones the CLI computes, bit for bit. The volume-wide intensity statistics need every slice, but only their pixels, not
the network: they are computed first, in a fraction of a second.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import numpy as np

from mriseg.app.forward_pass import ForwardPassLock
from mriseg.inference import Probabilities, Segmenter

# A pending prediction nobody has looked at for this long is dropped: its session closed or moved on.
ABANDONED_AFTER_S = 20.0


def batch_order(n_slices: int, batch_size: int) -> list[int]:
    """The first slice of each batch, the batch holding the middle slice first, then alternately outwards.

    Example:
        >>> batch_order(155, 16)
        [64, 48, 80, 32, 96, 16, 112, 0, 128, 144]
    """
    middle = (n_slices // 2) // batch_size
    return sorted(range(0, n_slices, batch_size), key=lambda start: abs(start // batch_size - middle))


class PendingPrediction:
    """The probabilities of a volume as its slices come out of the network, in a thread of its own.

    Args:
        segmenter: the model.
        pixels: (slices, H, W) raw intensities.
        tta: also run the mirrored image (as :meth:`Segmenter.predict`).
        lock: held around each forward pass (one pass at a time in the process): urgently for the preview, in the
            background for the batches.
        finish: called in the thread with the finished probabilities and the forward pass's seconds, before
            :attr:`finished` is set (the app caches the prediction and its threshold masks there).
    """

    def __init__(self, segmenter: Segmenter, pixels: np.ndarray, tta: bool, lock: ForwardPassLock,
                 finish: Callable[[Probabilities, float], None]) -> None:
        self.segmenter, self.tta, self.lock, self.finish = segmenter, tta, lock, finish
        self.pixels = np.asarray(pixels, dtype=np.float32)
        self.mean = np.zeros(self.pixels.shape, np.float32)
        self.std = np.zeros(self.pixels.shape, np.float32) if tta else None
        self.done = np.zeros(len(self.pixels), bool)
        self.error: str | None = None
        self.cancelled = False
        self.finished = threading.Event()
        self.watchers: set[str] = set()
        self.last_seen = time.monotonic()
        self.preview: np.ndarray | None = None  # (H, W) probabilities of the middle slice, segmented alone first
        self.preview_parts = None  # what the page draws from the preview, made once

    @property
    def n_slices(self) -> int:
        return len(self.mean)

    @property
    def slices_done(self) -> int:
        return int(self.done.sum())

    @property
    def middle(self) -> int:
        return self.n_slices // 2

    def start(self) -> PendingPrediction:
        threading.Thread(target=self._run, name="mriseg-volume-prediction", daemon=True).start()
        return self

    def watch(self, session: str) -> None:
        """Session ``session`` is waiting for this prediction (called on every look, which keeps it alive)."""
        self.watchers.add(session)
        self.last_seen = time.monotonic()

    def leave(self, session: str) -> None:
        """Session ``session`` no longer waits (it opened another case); with nobody left, the work stops."""
        self.watchers.discard(session)

    @property
    def abandoned(self) -> bool:
        return not self.watchers or time.monotonic() - self.last_seen > ABANDONED_AFTER_S

    def _run(self) -> None:
        try:
            started = time.perf_counter()
            if self._segment():
                self.finish(Probabilities(self.mean, self.std), time.perf_counter() - started)
        except Exception as error:  # shown on the page: a thread's exception would otherwise vanish
            self.error = f"{type(error).__name__}: {error}"
        finally:
            self.finished.set()

    def _segment(self) -> bool:
        """Run every batch, middle first; False when the prediction was abandoned on the way."""
        segmenter = self.segmenter
        grid = segmenter.preprocessor.volume_to_input(self.pixels)
        height, width = self.pixels.shape[1:]
        restore = segmenter.preprocessor.grid_to_volume
        with self.lock.urgent():  # the middle slice alone: a sixteenth of a batch's time to the page's preview
            mean, _ = segmenter.predict_grid(grid[self.middle : self.middle + 1])
        self.preview = np.clip(restore(mean, height, width)[0], 0.0, 1.0)
        for start in batch_order(self.n_slices, segmenter.batch_size):
            if self.abandoned:
                self.cancelled = True
                return False
            stop = start + segmenter.batch_size
            with self.lock.background():
                mean, std = segmenter.predict_grid(grid[start:stop], tta=self.tta)
            self.mean[start:stop] = np.clip(restore(mean, height, width), 0.0, 1.0)
            if std is not None:
                self.std[start:stop] = np.clip(restore(std, height, width), 0.0, None)
            self.done[start:stop] = True
        return True
