"""A lean HTTP/1.1 client for a platform API's sends: POSTs to one origin, over
connections kept alive between them.

A send is one small request and one small answer, thousands a minute at a busy hour.
aiohttp's client is general (cookies, redirects, proxies, tracing, streaming bodies) and
its bookkeeping costs ~73 µs of CPU a request here against ~16 µs for this one
(bench/http_client.py): a tenth of what the bot spent on an event (bench/webhook.py).
Everything else (token refreshes, Rasa, Telegram) stays with the general clients.

What it does: http and https (the system's certificate authorities, with SNI), a request
written in one piece, answers with Content-Length, chunked or up to the close, 1xx
answers skipped, `Connection: close` honoured, at most `limit` connections (callers wait
for one), idle connections dropped after `idle_for` seconds or when the server closes
them, a total timeout per request, and an answer larger than `max_body` refused. What it
does not: redirects, proxies, compression (it asks for none), cookies.
"""

from __future__ import annotations

import asyncio
import ssl
from collections import deque
from dataclasses import dataclass
from urllib.parse import urlsplit

MAX_HEAD = 64 * 1024


class HttpError(Exception):
    """No usable answer: the connection failed or closed early, or the answer was not
    HTTP/1.x or too large. (A timeout is TimeoutError.)"""


@dataclass(frozen=True)
class Answer:
    status: int
    headers: dict[str, str]  # names in lower case; a repeated header keeps the last value
    body: bytes


class _Connection(asyncio.Protocol):
    """One TCP (or TLS) connection; one request on it at a time."""

    def __init__(self, max_body: int) -> None:
        self.max_body = max_body
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.waiter: asyncio.Future[Answer] | None = None
        self.reusable = True  # False once it closed or is not to be trusted
        self.idle_since = 0.0  # the loop's time

    # ---- asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if self.waiter is None:  # nothing was asked: the connection is not to be trusted
            self.close()
            return
        self._answer(eof=False)

    def eof_received(self) -> bool:
        return False  # close the transport

    def connection_lost(self, exc: Exception | None) -> None:
        self.reusable = False
        if self.waiter is not None and not self.waiter.done():
            self._answer(eof=True)
            if not self.waiter.done():
                self.waiter.set_exception(
                    HttpError(f"the connection closed before the answer was complete ({exc})")
                )

    # ----

    def ask(self, request: bytes) -> asyncio.Future[Answer]:
        assert self.transport is not None
        self.waiter = asyncio.get_running_loop().create_future()
        self.buffer.clear()
        self.transport.write(request)
        return self.waiter

    def close(self) -> None:
        self.reusable = False
        if self.transport is not None:
            self.transport.close()

    def expire(self) -> None:
        """The answer did not come in time."""
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(TimeoutError("no answer in time"))
        self.abort()

    def abort(self) -> None:
        self.reusable = False
        if self.transport is not None:
            self.transport.abort()

    def _answer(self, eof: bool) -> None:
        waiter = self.waiter
        assert waiter is not None
        try:
            answer = self._parse(eof)
        except HttpError as exc:
            if not waiter.done():
                waiter.set_exception(exc)
            self.close()
            return
        if answer is not None and not waiter.done():
            waiter.set_result(answer)

    def _parse(self, eof: bool) -> Answer | None:
        """The answer in the buffer, once complete; None while more is to come."""
        buf = self.buffer
        while True:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                if len(buf) > MAX_HEAD:
                    raise HttpError("the answer's head is too large")
                return None
            lines = bytes(buf[:end]).decode("latin-1").split("\r\n")
            version, _, rest = lines[0].partition(" ")
            code = rest[:3]
            if not version.startswith("HTTP/1.") or not code.isdigit():
                raise HttpError(f"not an HTTP/1.x answer: {lines[0][:80]!r}")
            status = int(code)
            if 100 <= status < 200 and status != 101:  # 100 Continue and the like: skip
                del buf[: end + 4]
                continue
            break
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, sep, value = line.partition(":")
            if not sep:
                raise HttpError(f"a malformed header line: {line[:80]!r}")
            headers[name.strip().lower()] = value.strip()
        start = end + 4
        connection = headers.get("connection", "").lower()
        keep = connection != "close" if version == "HTTP/1.1" else connection == "keep-alive"
        if "chunked" in headers.get("transfer-encoding", "").lower():
            chunked = self._chunked(start)
            if chunked is None:
                return None
            body, used = chunked
            keep = keep and len(buf) == used
        elif "content-length" in headers:
            try:
                length = int(headers["content-length"])
            except ValueError:
                raise HttpError("a malformed Content-Length") from None
            if length < 0 or length > self.max_body:
                raise HttpError(f"an answer of {length} bytes (at most {self.max_body})")
            if len(buf) < start + length:
                return None
            body = bytes(buf[start : start + length])
            keep = keep and len(buf) == start + length
        elif status in (204, 304):
            body = b""
        else:  # the body runs to the close
            if len(buf) - start > self.max_body:
                raise HttpError(f"an answer larger than {self.max_body} bytes")
            if not eof:
                return None
            body, keep = bytes(buf[start:]), False
        if not keep:
            self.reusable = False
        return Answer(status, headers, body)

    def _chunked(self, at: int) -> tuple[bytes, int] | None:
        """The body and where it ends in the buffer, once complete."""
        buf = self.buffer
        parts: list[bytes] = []
        size = 0
        while True:
            eol = buf.find(b"\r\n", at)
            if eol < 0:
                return None
            line = bytes(buf[at:eol]).split(b";", 1)[0].strip()
            try:
                n = int(line, 16)
            except ValueError:
                raise HttpError("a malformed chunk size") from None
            size += n
            if size > self.max_body:
                raise HttpError(f"an answer larger than {self.max_body} bytes")
            if n == 0:  # the last chunk, then trailers up to an empty line
                trailers = buf.find(b"\r\n", eol + 2)
                while trailers >= 0 and trailers != eol + 2:
                    eol, trailers = trailers, buf.find(b"\r\n", trailers + 2)
                if trailers < 0:
                    return None
                return b"".join(parts), trailers + 2
            if len(buf) < eol + 2 + n + 2:
                return None
            if buf[eol + 2 + n : eol + 4 + n] != b"\r\n":
                raise HttpError("a chunk longer than its size")
            parts.append(bytes(buf[eol + 2 : eol + 2 + n]))
            at = eol + 2 + n + 2


class Http1Client:
    """POSTs to the origin of `base` (`scheme://host[:port]`; a path in it prefixes the
    paths asked for)."""

    def __init__(
        self,
        base: str,
        *,
        timeout: float = 15.0,
        limit: int = 100,
        idle_for: float = 15.0,
        max_body: int = 1 << 20,
        user_agent: str = "hailong",
        tls: ssl.SSLContext | None = None,
    ) -> None:
        url = urlsplit(base)
        if url.scheme not in ("http", "https") or not url.hostname:
            raise ValueError(f"not an http(s) URL: {base!r}")
        self.host = url.hostname
        self.port = url.port or (443 if url.scheme == "https" else 80)
        self.tls: ssl.SSLContext | None = None
        if url.scheme == "https":  # `tls`: another context (tests: their own authority)
            self.tls = tls or ssl.create_default_context()
        self.prefix = url.path.rstrip("/")
        default_port = self.port == (443 if self.tls else 80)
        host = f"[{self.host}]" if ":" in self.host else self.host
        self._head = (
            f"Host: {host if default_port else f'{host}:{self.port}'}\r\n"
            f"User-Agent: {user_agent}\r\nAccept-Encoding: identity\r\n"
        )
        self.timeout = timeout
        self.idle_for = idle_for
        self.max_body = max_body
        self._slots = asyncio.Semaphore(limit)
        self._idle: deque[_Connection] = deque()
        self._closed = False

    async def post(self, path: str, body: bytes, headers: dict[str, str]) -> Answer:
        """POST `body`; the answer, whatever its status."""
        if self._closed:
            raise HttpError("the client is closed")
        lines = [f"POST {self.prefix}{path} HTTP/1.1\r\n", self._head]
        for name, value in headers.items():
            if "\r" in value or "\n" in value or "\r" in name or "\n" in name:
                raise ValueError(f"a line break in the header {name!r}")
            lines.append(f"{name}: {value}\r\n")
        lines.append(f"Content-Length: {len(body)}\r\n\r\n")
        request = "".join(lines).encode("latin-1") + body
        loop = asyncio.get_running_loop()
        async with self._slots:
            deadline = loop.time() + self.timeout
            conn = self._reuse(loop.time())
            if conn is None:
                async with asyncio.timeout_at(deadline):
                    conn = await self._connect()
            # A timer of the loop's own for the answer: asyncio.timeout's bookkeeping
            # was a sixth of a send.
            timer = loop.call_at(deadline, conn.expire)
            try:
                answer = await conn.ask(request)
            except BaseException:
                conn.abort()  # what is left on it is not known
                raise
            finally:
                timer.cancel()
            conn.waiter = None
            if conn.reusable and not self._closed:
                conn.idle_since = loop.time()
                self._idle.append(conn)
            else:
                conn.close()
            return answer

    def _reuse(self, now: float) -> _Connection | None:
        """The connection idle the shortest while, if one is still good; the others
        idle too long are closed."""
        oldest = now - self.idle_for
        while self._idle and self._idle[0].idle_since < oldest:
            self._idle.popleft().close()
        while self._idle:
            conn = self._idle.pop()
            if conn.reusable:
                return conn
        return None

    async def _connect(self) -> _Connection:
        loop = asyncio.get_running_loop()
        try:
            _, conn = await loop.create_connection(
                lambda: _Connection(self.max_body),
                self.host,
                self.port,
                ssl=self.tls,
                server_hostname=self.host if self.tls else None,
            )
        except OSError as exc:  # refused, unreachable, DNS, TLS (ssl.SSLError)
            raise HttpError(f"cannot connect to {self.host}:{self.port}: {exc}") from exc
        return conn

    async def close(self) -> None:
        self._closed = True
        while self._idle:
            self._idle.pop().close()
