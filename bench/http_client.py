"""Benchmark: the CPU a client spends on one platform send, aiohttp's client against
bot/channels/http1.py, on the same event loop (uvloop).

A server in another process answers every POST at once with a Zalo-sized JSON answer
(a bare asyncio protocol: it costs the client's process nothing). C concurrent callers
each make N/C POSTs of a Zalo message body with the send's headers, on connections kept
alive. Printed per client: requests/s and the client process's CPU per request (what a
send costs the bot besides its own work), alternating the clients for `--rounds`.

    .venv/bin/python bench/http_client.py               # N = 20,000, C = 20, 2 rounds
    .venv/bin/python bench/http_client.py -n 50000 -c 50
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import socket
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bot.channels.http1 import Http1Client
from bot.eventloop import event_loop_factory

ANSWER = b'{"data":{"message_id":"8f0b6d2c1e","user_id":"8100000000000000015"},"error":0,"message":"Success"}'  # noqa: E501
RESPONSE = (
    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
    b"Content-Length: " + str(len(ANSWER)).encode() + b"\r\n\r\n" + ANSWER
)
BODY = (
    '{"recipient":{"user_id":"8100000000000000015"},"message":{"text":"Anh/chị hài lòng '
    'thế nào về thời gian giải quyết hồ sơ?","attachment":{"type":"template","payload":'
    '{"buttons":[{"title":"Rất hài lòng","type":"oa.query.hide","payload":"5"},'
    '{"title":"Hài lòng","type":"oa.query.hide","payload":"4"}]}}}}'
).encode()
HEADERS = {"access_token": "bench-zalo-access-token", "Content-Type": "application/json"}
PATH = "/v3.0/oa/message/cs"


class _Answering(asyncio.Protocol):
    """Answers each request (head and Content-Length body) as soon as it is whole."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: asyncio.Transport = transport  # type: ignore[assignment]
        self.buf = b""

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while (end := self.buf.find(b"\r\n\r\n")) >= 0:
            head = self.buf[:end].lower()
            at = head.find(b"content-length:")
            length = int(head[at + 15 :].split(b"\r\n", 1)[0]) if at >= 0 else 0
            if len(self.buf) < end + 4 + length:
                return
            self.buf = self.buf[end + 4 + length :]
            self.transport.write(RESPONSE)


def _serve(sock: socket.socket) -> None:
    async def main() -> None:
        await asyncio.get_running_loop().create_server(_Answering, sock=sock)
        await asyncio.Event().wait()

    with asyncio.Runner(loop_factory=event_loop_factory("uvloop")) as runner:
        runner.run(main())


Post = Callable[[], Awaitable[None]]


async def _measure(post: Post, n: int, c: int) -> tuple[float, float]:
    async def caller(k: int) -> None:
        for _ in range(k):
            await post()

    await caller(200)  # connections made, code warm
    wall, cpu = time.perf_counter(), time.process_time()
    await asyncio.gather(*[caller(n // c) for _ in range(c)])
    done = n // c * c
    return done / (time.perf_counter() - wall), (time.process_time() - cpu) / done * 1e6


async def with_aiohttp(base: str, n: int, c: int) -> tuple[float, float]:
    """As the Zalo sends were made before: a session, data= bytes, the answer read."""
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=15)) as http:

        async def post() -> None:
            async with http.post(f"{base}{PATH}", data=BODY, headers=HEADERS) as r:
                await r.read()

        return await _measure(post, n, c)


async def with_http1(base: str, n: int, c: int) -> tuple[float, float]:
    client = Http1Client(base, timeout=15)

    async def post() -> None:
        await client.post(PATH, BODY, HEADERS)

    try:
        return await _measure(post, n, c)
    finally:
        await client.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-n", type=int, default=20_000, help="POSTs per client and round")
    ap.add_argument("-c", type=int, default=20, help="concurrent callers")
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    sock = socket.create_server(("127.0.0.1", 0))
    base = f"http://127.0.0.1:{sock.getsockname()[1]}"
    server = multiprocessing.get_context("fork").Process(target=_serve, args=(sock,))
    server.start()
    sock.close()
    try:
        print(f"{args.n} POSTs per client and round, {args.c} concurrent, kept-alive connections")
        print(f"  {'client':<22} {'requests/s':>11} {'client CPU µs/request':>22}")
        for _ in range(args.rounds):
            for name, run in (("aiohttp ClientSession", with_aiohttp), ("Http1Client", with_http1)):
                with asyncio.Runner(loop_factory=event_loop_factory("uvloop")) as runner:
                    rate, cpu = runner.run(run(base, args.n, args.c))
                print(f"  {name:<22} {rate:>11,.0f} {cpu:>22.1f}")
    finally:
        server.terminate()
        server.join()


if __name__ == "__main__":
    main()
