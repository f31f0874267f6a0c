"""Run the gateway's HTTP server until a signal arrives."""

from __future__ import annotations

import asyncio
import logging
import signal

from aiohttp import web

from .app import build_app
from .config import Settings

log = logging.getLogger(__name__)


async def start(settings: Settings) -> web.AppRunner:
    runner = web.AppRunner(build_app(settings), access_log=None, handle_signals=False)
    await runner.setup()
    await web.TCPSite(runner, settings.host, settings.port).start()
    log.info("gateway listening", extra={"host": settings.host, "port": settings.port})
    return runner


async def serve(settings: Settings) -> None:
    runner = await start(settings)
    try:
        await wait_for_signal()
    finally:
        await runner.cleanup()


async def wait_for_signal() -> None:
    """Return on SIGINT or SIGTERM, so servers can close cleanly."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
