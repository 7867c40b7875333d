"""Bounded caches for GIS answers: size-capped LRU with a time to live, thread-safe.

One :class:`GisCache` per GIS service (keyed by its base URL) is shared by everything in
the process: the intake hook reads it synchronously, the adapter fills it from the worker.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Any

MISS = object()  # "not in the cache"; a cached None means "the GIS said: nothing there"


class TTLCache:
    """LRU map with at most `maxsize` entries, each valid for `ttl` seconds."""

    def __init__(
        self, maxsize: int, ttl: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.maxsize, self.ttl, self.clock = maxsize, ttl, clock
        self._data: OrderedDict[Hashable, tuple[float, Any]] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = self.misses = 0

    def get(self, key: Hashable) -> Any:
        with self._lock:
            entry = self._data.get(key)
            if entry is None or entry[0] < self.clock():
                if entry is not None:
                    del self._data[key]
                self.misses += 1
                return MISS
            self._data.move_to_end(key)
            self.hits += 1
            return entry[1]

    def put(self, key: Hashable, value: Any) -> None:
        with self._lock:
            self._data[key] = (self.clock() + self.ttl, value)
            self._data.move_to_end(key)
            while len(self._data) > self.maxsize:
                self._data.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._data.clear()

    def __len__(self) -> int:
        return len(self._data)


class GisCache:
    """Addresses (geocode), points (reverse geocode), polygon layers and nearest assets."""

    def __init__(self, maxsize: int, ttl: float) -> None:
        self.addresses = TTLCache(maxsize, ttl)
        self.points = TTLCache(maxsize, ttl)
        self.polygons = TTLCache(64, ttl)  # whole layers: few, each a list of features
        self.assets = TTLCache(maxsize, ttl)

    def clear(self) -> None:
        for cache in (self.addresses, self.points, self.polygons, self.assets):
            cache.clear()

    def stats(self) -> dict[str, int]:
        parts = {
            "addresses": self.addresses,
            "points": self.points,
            "polygons": self.polygons,
            "assets": self.assets,
        }
        return {
            "hits": sum(c.hits for c in parts.values()),
            "misses": sum(c.misses for c in parts.values()),
            **{name: len(c) for name, c in parts.items()},
        }


_caches: dict[str, GisCache] = {}
_caches_lock = threading.Lock()


def shared_cache(base_url: str, maxsize: int, ttl: float) -> GisCache:
    """The process-wide cache of one GIS service (first caller's size and TTL win)."""
    with _caches_lock:
        if base_url not in _caches:
            _caches[base_url] = GisCache(maxsize, ttl)
        return _caches[base_url]


def point_key(lat: float, long: float, digits: int = 5) -> tuple[float, float]:
    """Round a point (5 digits ≈ 1 m) so nearby repeats share an entry."""
    return round(lat, digits), round(long, digits)
