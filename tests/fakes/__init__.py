"""Local fake servers that speak the messaging platforms' protocols (Telegram, Zalo OA).

Neither platform is reachable from the test machines, so the real client code (PTB's
`telegram.Bot`, our aiohttp Zalo client) is pointed at these servers through its base URL.
Each fake listens on 127.0.0.1 at a free port; use it as an async context manager:

    async with FakeTelegram() as tg:
        bot = telegram.Bot(tg.token, base_url=tg.base_url)

The fakes depend on nothing but aiohttp and the standard library.
"""

from __future__ import annotations

import asyncio
import socket
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self

from aiohttp import web

if TYPE_CHECKING:
    from tests.fakes.telegram import FakeTelegram
    from tests.fakes.zalo import FakeZalo

__all__ = ["FakeTelegram", "FakeZalo", "LocalServer"]


class LocalServer:
    """An aiohttp application served on 127.0.0.1 at a free port."""

    #: How long a "timeout" fault keeps a request hanging (stop() releases it at once).
    hang_seconds: float = 120.0

    def __init__(self) -> None:
        self.app = web.Application(client_max_size=64 * 1024 * 1024)
        self._runner: web.AppRunner | None = None
        self._port: int | None = None
        self._closing = asyncio.Event()

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError(f"{type(self).__name__} is not started")
        return self._port

    @property
    def url(self) -> str:
        """`http://127.0.0.1:PORT`."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def closing(self) -> bool:
        return self._closing.is_set()

    async def start(self) -> Self:
        """Bind a free port and serve."""
        if self._runner is not None:
            return self
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        self._port = sock.getsockname()[1]
        self._runner = web.AppRunner(self.app, access_log=None, shutdown_timeout=2.0)
        await self._runner.setup()
        await web.SockSite(self._runner, sock).start()
        return self

    async def stop(self) -> None:
        """Release hanging requests and long polls, then close the server."""
        self._closing.set()
        self._on_closing()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def _on_closing(self) -> None:
        """Hook for subclasses: wake whatever waits."""

    async def _hang(self) -> None:
        """Wait like a server that never answers (until hang_seconds or stop())."""
        try:
            await asyncio.wait_for(self._closing.wait(), self.hang_seconds)
        except TimeoutError:
            pass

    @staticmethod
    def _drop_connection(request: web.Request) -> None:
        """Close the TCP connection without an answer."""
        if request.transport is not None:
            request.transport.close()

    async def __aenter__(self) -> Self:
        return await self.start()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()


def __getattr__(name: str) -> Any:
    """`from tests.fakes import FakeTelegram, FakeZalo` without importing both eagerly."""
    if name == "FakeTelegram":
        from tests.fakes.telegram import FakeTelegram

        return FakeTelegram
    if name == "FakeZalo":
        from tests.fakes.zalo import FakeZalo

        return FakeZalo
    raise AttributeError(name)
