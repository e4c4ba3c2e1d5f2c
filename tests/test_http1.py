"""The lean HTTP/1.1 client of the platform sends, against real servers on localhost:
aiohttp's own server, and a scripted one for what aiohttp's does not say (chunks with
trailers, 100 Continue, a body up to the close, a broken answer, an idle close)."""

from __future__ import annotations

import asyncio
import json
import shutil
import ssl
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from bot.channels.http1 import Http1Client, HttpError

Echo = tuple[TestServer, list[dict[str, Any]]]


@pytest.fixture
async def echo() -> AsyncIterator[Echo]:
    """aiohttp's server, answering each POST with what it received (as JSON)."""
    seen: list[dict[str, Any]] = []

    async def handle(request: web.Request) -> web.Response:
        peer = request.transport.get_extra_info("peername") if request.transport else None
        got = {
            "path": request.path,
            "headers": dict(request.headers),
            "body": (await request.read()).decode(),
            "port": peer[1] if peer else None,
        }
        seen.append(got)
        await asyncio.sleep(float(request.query.get("wait", 0)))
        return web.json_response(got)

    app = web.Application()
    app.router.add_post("/{tail:.*}", handle)
    server = TestServer(app)
    await server.start_server()
    yield server, seen
    await server.close()


# The request's bytes -> what to write back, and whether to close the connection then.
Script = Callable[[bytes], tuple[bytes, bool]]
Serve = Callable[[Script], Awaitable[tuple[int, list[int]]]]


@pytest.fixture
async def scripted() -> AsyncIterator[Serve]:
    """A raw TCP server: for each request (head and Content-Length body) it writes what
    the script says; the port, and a list that grows by one for each connection."""
    servers: list[asyncio.Server] = []

    async def serve(script: Script) -> tuple[int, list[int]]:
        connections: list[int] = []

        async def one(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            connections.append(1)
            try:
                while True:
                    head = await reader.readuntil(b"\r\n\r\n")
                    length = 0
                    for line in head.split(b"\r\n"):
                        if line.lower().startswith(b"content-length:"):
                            length = int(line.split(b":")[1])
                    out, close = script(head + await reader.readexactly(length))
                    writer.write(out)
                    await writer.drain()
                    if close:
                        break
            except (asyncio.IncompleteReadError, ConnectionError):
                pass
            finally:
                writer.close()

        server = await asyncio.start_server(one, "127.0.0.1", 0)
        servers.append(server)
        return server.sockets[0].getsockname()[1], connections

    yield serve
    for server in servers:
        server.close()


def answer(body: bytes, *head: str, status: str = "200 OK") -> bytes:
    lines = [f"HTTP/1.1 {status}", *head]
    if not any(h.lower().startswith(("content-length", "transfer-encoding")) for h in head):
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


async def test_posts_reuse_one_connection_and_carry_their_headers_and_body(echo: Echo) -> None:
    server, seen = echo
    client = Http1Client(f"http://127.0.0.1:{server.port}/v3.0")
    try:
        for i in range(20):
            got = await client.post(
                "/oa/message/cs", f'{{"n": {i}}}'.encode(), {"access_token": "tok-5"}
            )
            assert got.status == 200
            assert got.headers["content-type"].startswith("application/json")
            sent = json.loads(got.body)
            assert sent["path"] == "/v3.0/oa/message/cs"
            assert sent["body"] == f'{{"n": {i}}}'
            assert sent["headers"]["access_token"] == "tok-5"
            assert sent["headers"]["Host"] == f"127.0.0.1:{server.port}"
            assert sent["headers"]["Content-Length"] == str(len(sent["body"]))
    finally:
        await client.close()
    assert len({s["port"] for s in seen}) == 1  # kept alive: one connection for all 20


async def test_concurrent_posts_share_at_most_limit_connections(echo: Echo) -> None:
    server, seen = echo
    client = Http1Client(f"http://127.0.0.1:{server.port}", limit=3)
    try:
        answers = await asyncio.gather(
            *[client.post("/x?wait=0.05", str(i).encode(), {}) for i in range(12)]
        )
    finally:
        await client.close()
    assert sorted(int(json.loads(a.body)["body"]) for a in answers) == list(range(12))
    assert len({s["port"] for s in seen}) == 3


async def test_a_chunked_answer_after_100_continue_is_read_whole(scripted: Serve) -> None:
    def script(request: bytes) -> tuple[bytes, bool]:
        return (
            b"HTTP/1.1 100 Continue\r\n\r\n"
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
            b'5;ext=1\r\n{"err\r\n'
            b'D\r\nor": 0, "a": \r\n'
            b"2\r\n1}\r\n"
            b"0\r\nX-Trailer: yes\r\n\r\n"
        ), False

    port, connections = await scripted(script)
    client = Http1Client(f"http://127.0.0.1:{port}")
    try:
        for _ in range(3):
            got = await client.post("/", b"{}", {})
            assert (got.status, got.body) == (200, b'{"error": 0, "a": 1}')
    finally:
        await client.close()
    assert len(connections) == 1


async def test_connection_close_a_body_up_to_the_close_and_an_idle_close(
    scripted: Serve,
) -> None:
    """An answer saying `Connection: close` ends its connection; one without a length
    is read up to the close; a kept-alive connection the server closes while it is
    idle (its keep-alive timeout) is not used again: every request succeeds."""
    plan = iter(
        [
            (answer(b"one", "Connection: close"), False),
            (b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nall of it, to the close", True),
            (answer(b"three"), True),  # kept alive by its head, closed by the server
            (answer(b"four"), False),
        ]
    )  # fmt: skip
    port, connections = await scripted(lambda request: next(plan))
    client = Http1Client(f"http://127.0.0.1:{port}")
    try:
        assert (await client.post("/", b"", {})).body == b"one"
        assert (await client.post("/", b"", {})).body == b"all of it, to the close"
        assert (await client.post("/", b"", {})).body == b"three"
        await asyncio.sleep(0.05)  # the server's close arrives while the connection idles
        assert (await client.post("/", b"", {})).body == b"four"
    finally:
        await client.close()
    assert len(connections) == 4


async def test_failures_are_errors_and_the_next_request_gets_a_fresh_connection(
    scripted,
) -> None:
    plan = iter(
        [
            (b"", True),  # closed without an answer
            (b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort", False),  # then silence
            (b"SPDY/3 200 OK\r\n\r\n", False),
            (answer(b"x" * 2000), False),  # larger than max_body
            (answer(b"fine"), False),
        ]
    )
    port, connections = await scripted(lambda request: next(plan))
    client = Http1Client(f"http://127.0.0.1:{port}", max_body=1000, timeout=0.5)
    try:
        with pytest.raises(HttpError, match="closed before the answer"):
            await client.post("/", b"", {})
        with pytest.raises((HttpError, TimeoutError)):
            await client.post("/", b"", {})  # 5 of 10 bytes, then nothing: the timeout
        with pytest.raises(HttpError, match=r"not an HTTP/1\.x answer"):
            await client.post("/", b"", {})
        with pytest.raises(HttpError, match="at most 1000"):
            await client.post("/", b"", {})
        assert (await client.post("/", b"", {})).body == b"fine"
    finally:
        await client.close()
    assert len(connections) == 5  # none of the broken connections was used again


async def test_a_server_that_does_not_answer_times_out_and_is_not_waited_for_again(
    scripted,
) -> None:
    port, connections = await scripted(
        lambda request: (b"" if b"/silent" in request else answer(b"here"), False)
    )
    client = Http1Client(f"http://127.0.0.1:{port}", timeout=0.2)
    try:
        with pytest.raises(TimeoutError):
            await client.post("/silent", b"", {})
        assert (await client.post("/", b"", {})).body == b"here"
    finally:
        await client.close()
    assert len(connections) == 2  # the silent connection was dropped


async def test_idle_connections_are_dropped_after_idle_for(echo: Echo) -> None:
    server, seen = echo
    client = Http1Client(f"http://127.0.0.1:{server.port}", idle_for=0.1)
    try:
        await client.post("/", b"1", {})
        await client.post("/", b"2", {})
        await asyncio.sleep(0.2)
        await client.post("/", b"3", {})
    finally:
        await client.close()
    ports = [s["port"] for s in seen]
    assert ports[0] == ports[1] != ports[2]


async def test_a_line_break_in_a_header_is_refused_before_anything_is_sent(echo: Echo) -> None:
    server, seen = echo
    client = Http1Client(f"http://127.0.0.1:{server.port}")
    try:
        with pytest.raises(ValueError, match="line break"):
            await client.post("/", b"", {"access_token": "tok\r\nX-Evil: 1"})
    finally:
        await client.close()
    assert seen == []


async def test_nothing_listening_is_an_error_not_a_hang() -> None:
    client = Http1Client("http://127.0.0.1:9", timeout=2)
    with pytest.raises(HttpError, match="cannot connect"):
        await client.post("/", b"", {})


def _self_signed(tmp: Path) -> tuple[Path, Path]:
    if shutil.which("openssl") is None:
        pytest.skip("openssl is needed to make a test certificate")
    key, cert = tmp / "key.pem", tmp / "cert.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-keyout", str(key), "-out", str(cert), "-subj", "/CN=localhost",
         "-addext", "subjectAltName=DNS:localhost"],
        check=True, capture_output=True,
    )  # fmt: skip
    return key, cert


async def test_https_checks_the_certificate(tmp_path: Path) -> None:
    key, cert = _self_signed(tmp_path)
    served = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    served.load_cert_chain(cert, key)

    async def handle(request: web.Request) -> web.Response:
        return web.Response(body=await request.read())

    app = web.Application()
    app.router.add_post("/", handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "localhost", 0, ssl_context=served)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    trusting = ssl.create_default_context(cafile=str(cert))
    good = Http1Client(f"https://localhost:{port}", tls=trusting)
    strict = Http1Client(f"https://localhost:{port}")  # the system's authorities only
    try:
        assert (await good.post("/", b"over TLS", {})).body == b"over TLS"
        with pytest.raises(HttpError, match=r"CERTIFICATE_VERIFY_FAILED|certificate verify"):
            await strict.post("/", b"", {})
    finally:
        await good.close()
        await strict.close()
        await runner.cleanup()
