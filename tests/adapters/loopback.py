"""A throwaway aiohttp app on a loopback port, for the transport tests."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from aiohttp import web


@contextlib.asynccontextmanager
async def aiohttp_loopback(app: web.Application, prefix: str = "/svc") -> AsyncIterator[str]:
    """Serve `app` on 127.0.0.1 and an ephemeral port; yields its base URL + `prefix`."""
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield f"http://127.0.0.1:{port}{prefix}"
    finally:
        await runner.cleanup()
