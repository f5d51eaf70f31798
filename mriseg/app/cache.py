"""A small thread-safe LRU cache: bounded memory for predictions shared by every app session."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Any


class LRUCache:
    """Keeps the most recently used values, within a count and (optionally) a byte budget.

    Args:
        max_entries: most values kept.
        max_bytes: most bytes kept, as measured by ``size_of``; None for no byte limit. The newest value is
            always kept, even when it alone is over the budget.
        size_of: bytes of one value.

    Example:
        >>> cache = LRUCache(max_entries=2)
        >>> cache.put("a", 1); cache.put("b", 2); cache.put("c", 3)
        >>> cache.get("a") is None, cache.get("c")
        (True, 3)
    """

    def __init__(self, max_entries: int = 16, max_bytes: int | None = None,
                 size_of: Callable[[Any], int] = lambda value: 0) -> None:
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.size_of = size_of
        self._items: OrderedDict[Hashable, tuple[Any, int]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def get(self, key: Hashable) -> Any | None:
        with self._lock:
            if key not in self._items:
                return None
            self._items.move_to_end(key)
            return self._items[key][0]

    def put(self, key: Hashable, value: Any) -> None:
        size = self.size_of(value)
        with self._lock:
            if key in self._items:
                self._bytes -= self._items.pop(key)[1]
            self._items[key] = (value, size)
            self._bytes += size
            while len(self._items) > 1 and (
                len(self._items) > self.max_entries
                or (self.max_bytes is not None and self._bytes > self.max_bytes)
            ):
                self._bytes -= self._items.popitem(last=False)[1][1]

    @property
    def bytes(self) -> int:
        with self._lock:
            return self._bytes

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)
