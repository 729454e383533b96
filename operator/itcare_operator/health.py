"""``/healthz``, ``/readyz`` and ``/metrics`` over aiohttp (already a kopf dependency)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

__all__ = ["HttpServers"]


class HttpServers:
    """The health and metrics endpoints; ports 0 disable them."""

    def __init__(
        self,
        *,
        registry: CollectorRegistry,
        heartbeat: Callable[[], float],
        ready: Callable[[], bool],
        stale_after: float = 60.0,
    ) -> None:
        self._registry = registry
        self._heartbeat = heartbeat
        self._ready = ready
        self._stale_after = stale_after
        self._runners: list[web.AppRunner] = []

    async def _healthz(self, request: web.Request) -> web.Response:
        age = time.monotonic() - self._heartbeat()
        if age > self._stale_after:
            return web.Response(status=503, text=f"scheduler stalled for {age:.0f}s\n")
        return web.Response(text="ok\n")

    async def _readyz(self, request: web.Request) -> web.Response:
        if not self._ready():
            return web.Response(status=503, text="not ready: initial listing not finished\n")
        return web.Response(text="ok\n")

    async def _metrics(self, request: web.Request) -> web.Response:
        # In a thread: rendering 10,000 credentials' series takes a few hundred ms,
        # which on the event loop would delay every refresh by as much per scrape.
        loop = asyncio.get_running_loop()
        body = await loop.run_in_executor(None, generate_latest, self._registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def start(self, health_port: int, metrics_port: int, host: str = "0.0.0.0") -> None:  # noqa: S104
        routes: dict[int, list[web.RouteDef]] = {}
        if health_port:
            routes.setdefault(health_port, []).extend(
                [web.get("/healthz", self._healthz), web.get("/readyz", self._readyz)]
            )
        if metrics_port:
            routes.setdefault(metrics_port, []).append(web.get("/metrics", self._metrics))
        for port, port_routes in routes.items():
            app = web.Application()
            app.add_routes(port_routes)
            runner = web.AppRunner(app, access_log=None)
            await runner.setup()
            await web.TCPSite(runner, host, port).start()
            self._runners.append(runner)

    async def stop(self) -> None:
        for runner in self._runners:
            await runner.cleanup()
        self._runners.clear()
