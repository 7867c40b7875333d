"""API-key check for writes (Open311: `api_key` form field; 403 when missing or bad).

Reads stay open, as in GeoReport v2. A short positive cache keeps the key lookup (a
database round trip, and on SQLite a write lock) off the hot intake path; a revocation
reaches every process within CACHE_SECONDS.
"""

from __future__ import annotations

import asyncio
import time

from starlette.concurrency import run_in_threadpool

from hub.api.errors import Open311Error
from hub.services.apikeys import ApiKeyService, digest

CACHE_SECONDS = 2.0
INVALID = "Invalid api_key received -- can't proceed with create_request."  # the spec's words


class ApiKeyChecker:
    def __init__(self, service: ApiKeyService, *, cache_seconds: float = CACHE_SECONDS) -> None:
        self.service = service
        self.cache_seconds = cache_seconds
        self._cache: dict[str, tuple[str, float]] = {}
        self._pending: dict[str, asyncio.Future[str | None]] = {}

    async def require(self, key: str | None) -> str:
        """The key's name; raises a 403 Open311Error when it is missing, unknown or revoked."""
        if not key:
            raise Open311Error(403, "api_key is required to create a service request")
        hashed = digest(key)
        cached = self._cache.get(hashed)
        now = time.monotonic()
        if cached and cached[1] > now:
            return cached[0]
        # One lookup per key at a time: when the cache entry expires under load, the
        # requests holding that key share it instead of each taking a thread.
        pending = self._pending.get(hashed)
        if pending is None:
            pending = asyncio.ensure_future(run_in_threadpool(self.service.verify, key))
            self._pending[hashed] = pending
            pending.add_done_callback(lambda _: self._pending.pop(hashed, None))
        name = await asyncio.shield(pending)
        if name is None:
            self._cache.pop(hashed, None)
            raise Open311Error(403, INVALID)
        if len(self._cache) > 1024:  # bounded: keys are few, junk keys are never cached
            self._cache.clear()
        self._cache[hashed] = (name, now + self.cache_seconds)
        return name

    def forget(self) -> None:
        self._cache.clear()
