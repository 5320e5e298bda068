"""Running the fake: in a background thread (FakeServer) or in the caller's event loop (serve)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from types import TracebackType
from typing import Any

from aiohttp import web

from ._app import make_app, state_of
from ._config import FakeConfig

#: Seconds a stopping server lets in-flight handlers finish before cancelling them (hung ones included).
SHUTDOWN_GRACE = 0.5

#: Seconds FakeServer.start waits for the server thread to listen.
START_TIMEOUT = 10.0


async def _listen(app: web.Application, host: str, port: int) -> tuple[web.AppRunner, int]:
    """Start serving `app`; return the runner (to clean up) and the port actually bound."""
    # handler_cancellation: a client that gives up cancels its handler, so in_flight tells the truth.
    runner = web.AppRunner(app, access_log=None, handler_cancellation=True, shutdown_timeout=SHUTDOWN_GRACE)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
    except BaseException:
        await runner.cleanup()
        raise
    bound: int = runner.addresses[0][1]
    return runner, bound


def _base_url(host: str, port: int) -> str:
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}/v1"


async def serve(
    config: FakeConfig,
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    on_ready: Callable[[str], None] | None = None,
) -> None:
    """Serve the fake until cancelled. `on_ready` gets the base URL (e.g. http://127.0.0.1:8000/v1)."""
    runner, bound = await _listen(make_app(config), host, port)
    try:
        if on_ready is not None:
            on_ready(_base_url(host, bound))
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()


class FakeServer:
    """The fake API in a background thread with its own event loop. Single use: start once, stop once.

    with FakeServer(FakeConfig(rpm=600)) as fake:
        httpx.post(f"{fake.url}/chat/completions", ...)
        fake.config.error_rate = 0.5     # takes effect on the next request
        fake.stats()["answered"]
    """

    def __init__(self, config: FakeConfig | None = None, host: str = "127.0.0.1", port: int = 0) -> None:
        self._config = config if config is not None else FakeConfig()
        self._host = host
        self._wanted_port = port
        self._app = make_app(self._config)
        self._port: int | None = None
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None
        self._ready = threading.Event()
        self._error: Exception | None = None

    @property
    def config(self) -> FakeConfig:
        """The live config: change its fields while the server runs."""
        return self._config

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("FakeServer is not running")
        return self._port

    @property
    def url(self) -> str:
        """Base URL of the API, ending in /v1."""
        return _base_url(self._host, self.port)

    def stats(self) -> dict[str, Any]:
        """The same snapshot as GET /_fake/stats."""
        return state_of(self._app).stats.snapshot()

    def reset(self) -> None:
        """Same as POST /_fake/reset: zero stats, quota count and rate-limit meters."""
        state = state_of(self._app)
        if self._loop is None:
            state.reset()
            return
        # The meters belong to the server's loop: reset them there.
        asyncio.run_coroutine_threadsafe(_call(state.reset), self._loop).result(START_TIMEOUT)

    def start(self) -> None:
        if self._thread is not None:
            raise RuntimeError("FakeServer can only be started once")
        self._thread = threading.Thread(target=self._run, name="fakeapi", daemon=True)
        self._thread.start()
        if not self._ready.wait(START_TIMEOUT):
            raise RuntimeError(f"fake API did not start within {START_TIMEOUT} s")
        if self._error is not None:
            self._thread.join()
            raise self._error

    def stop(self) -> None:
        """Stop serving: in-flight requests get SHUTDOWN_GRACE seconds, then are cancelled."""
        if self._thread is None or self._loop is None or self._stopping is None:
            return
        if self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._stopping.set)
            self._thread.join()
        self._port = None

    def __enter__(self) -> FakeServer:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except Exception as exc:  # reported to start(), in the caller's thread
            self._error = exc
            self._ready.set()

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stopping = asyncio.Event()
        runner, self._port = await _listen(self._app, self._host, self._wanted_port)
        self._ready.set()
        try:
            await self._stopping.wait()
        finally:
            await runner.cleanup()


async def _call(function: Callable[[], None]) -> None:
    function()
