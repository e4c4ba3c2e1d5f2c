"""python-telegram-bot's requests to the Bot API, carried by aiohttp.

PTB builds every Bot API call and reads every answer; how the bytes travel is a class
it lets us give (`BaseRequest`). Its own uses httpx, whose stack (httpcore, anyio) costs
several times aiohttp's per request; the bot already speaks HTTP through aiohttp
everywhere else. Timeouts and failures are reported to PTB as its own `TimedOut` and
`NetworkError`, as the httpx one does.
"""

from __future__ import annotations

from typing import Any

import aiohttp
from telegram._utils.defaultvalue import DefaultValue
from telegram.error import NetworkError, TimedOut
from telegram.request import BaseRequest, RequestData


class AiohttpRequest(BaseRequest):
    def __init__(
        self,
        connections: int = 64,
        read_timeout: float | None = 10.0,
        write_timeout: float | None = 10.0,
        connect_timeout: float | None = 5.0,
    ) -> None:
        self._connections = connections
        self._read_timeout = read_timeout
        self._write_timeout = write_timeout
        self._connect_timeout = connect_timeout
        self._session: aiohttp.ClientSession | None = None

    @property
    def read_timeout(self) -> float | None:
        return self._read_timeout

    async def initialize(self) -> None:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self._connections)
            )

    async def shutdown(self) -> None:
        if self._session is not None and not self._session.closed:
            await self._session.close()
        self._session = None

    async def do_request(
        self,
        url: str,
        method: str,
        request_data: RequestData | None = None,
        read_timeout: Any = BaseRequest.DEFAULT_NONE,
        write_timeout: Any = BaseRequest.DEFAULT_NONE,
        connect_timeout: Any = BaseRequest.DEFAULT_NONE,
        pool_timeout: Any = BaseRequest.DEFAULT_NONE,
    ) -> tuple[int, bytes]:
        if self._session is None or self._session.closed:
            raise RuntimeError("This AiohttpRequest is not initialized!")
        read = self._read_timeout if isinstance(read_timeout, DefaultValue) else read_timeout
        write = self._write_timeout if isinstance(write_timeout, DefaultValue) else write_timeout
        connect = (
            self._connect_timeout if isinstance(connect_timeout, DefaultValue) else connect_timeout
        )
        # aiohttp has no write timeout of its own: the longest of the two bounds a read.
        sock_read = max(t for t in (read, write) if t is not None) if (read or write) else None
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=connect, sock_read=sock_read)
        body: Any = None
        if request_data is not None:
            files = request_data.multipart_data
            params = request_data.json_parameters
            if files:
                form = aiohttp.FormData()
                for name, value in params.items():
                    form.add_field(name, value)
                for name, (filename, content, mimetype) in files.items():
                    form.add_field(name, content, filename=filename, content_type=mimetype)
                body = form
            else:
                body = params or None
        try:
            async with self._session.request(
                method,
                url,
                data=body,
                headers={"User-Agent": self.USER_AGENT},
                timeout=timeout,
            ) as response:
                return response.status, await response.read()
        except TimeoutError as err:
            raise TimedOut from err
        except aiohttp.ClientError as err:
            raise NetworkError(f"aiohttp.{type(err).__name__}: {err}") from err
