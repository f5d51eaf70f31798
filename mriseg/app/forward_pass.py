"""One forward pass at a time in the app's process, the short ones first.

PyTorch already spreads each pass over every core, so sessions running passes side by side only fight over the cores.
When a class uploads at once, the passes a student waits for with nothing on screen (a slice, the middle slice of a
volume for its first overlay, the feature maps of How it works) go before the batches of volumes that already show
their preview and are being finished in the background.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator


class ForwardPassLock:
    """A lock whose urgent holders go before its background ones; among each kind, whoever the scheduler wakes.

    Example:
        >>> lock = ForwardPassLock()
        >>> with lock.urgent():
        ...     lock.waiting_urgent
        0
    """

    def __init__(self) -> None:
        self._condition = threading.Condition()
        self._held = False
        self.waiting_urgent = 0

    @contextlib.contextmanager
    def urgent(self) -> Iterator[None]:
        """Hold the lock for a pass someone waits for with nothing on screen."""
        with self._condition:
            self.waiting_urgent += 1
            try:
                self._condition.wait_for(lambda: not self._held)
            finally:
                self.waiting_urgent -= 1
            self._held = True
        try:
            yield
        finally:
            self._release()

    @contextlib.contextmanager
    def background(self) -> Iterator[None]:
        """Hold the lock for a pass of work already under way (a volume's next batch): after every urgent one."""
        with self._condition:
            self._condition.wait_for(lambda: not self._held and self.waiting_urgent == 0)
            self._held = True
        try:
            yield
        finally:
            self._release()

    def _release(self) -> None:
        with self._condition:
            self._held = False
            self._condition.notify_all()
