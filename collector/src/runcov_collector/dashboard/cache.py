"""A small time-bounded cache of store answers, so paging, sorting and filtering stay fast."""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from typing import Any, Callable, Hashable


class AnswerCache:
    """Keeps the last ``size`` answers for ``ttl`` seconds each (LRU, thread-safe).

    A release page over 10,000 files needs the whole file list to sort and page it; the
    first view pays the store query, the following pages and re-sorts within ``ttl`` do not.
    Concurrent misses for one key compute once.
    """

    def __init__(self, ttl: float = 10.0, size: int = 16,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl = ttl
        self.size = size
        self.clock = clock
        self._entries: OrderedDict[Hashable, tuple[float, Any]] = OrderedDict()
        self._lock = threading.Lock()
        self._key_locks: dict[Hashable, threading.Lock] = {}

    def get(self, key: Hashable, compute: Callable[[], Any]) -> Any:
        """The cached answer for ``key``, or ``compute()``'s (then cached)."""
        if self.ttl <= 0:
            return compute()
        with self._lock:
            hit = self._fresh(key)
            if hit is not None:
                return hit[1]
            key_lock = self._key_locks.setdefault(key, threading.Lock())
        with key_lock:
            with self._lock:
                hit = self._fresh(key)
                if hit is not None:
                    return hit[1]
            value = compute()
            with self._lock:
                self._entries[key] = (self.clock(), value)
                self._entries.move_to_end(key)
                while len(self._entries) > self.size:
                    self._entries.popitem(last=False)
                self._key_locks.pop(key, None)
            return value

    def _fresh(self, key: Hashable) -> tuple[float, Any] | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        if self.clock() - entry[0] > self.ttl:
            del self._entries[key]
            return None
        self._entries.move_to_end(key)
        return entry
