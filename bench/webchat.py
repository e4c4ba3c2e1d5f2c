"""Benchmark: citizens rating dossiers through the web chat of a real `bot.py run`.

Starts the bot as a separate process (SQLite by default, --pg URL for PostgreSQL), pushes
completed dossiers through the dossier API, then lets C concurrent citizens rate them:
open the chat from the deep link, five criteria, skip the comment. For every event it
measures the time from the POST to the bot's answer being readable by the browser, and
prints events/s, latency percentiles and the bot's memory (RSS).

    .venv/bin/python bench/webchat.py                 # C=50 citizens, 10 ratings each
    .venv/bin/python bench/webchat.py -c 20 -n 5 --pg postgresql://postgres@127.0.0.1/bench
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import socket
import statistics
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
TOKEN = "bench-token-0123456789abcdef"
PROCEDURE = "1.004227"
AGENCY = "H42.51.01"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def bot_settings(db_url: str, port: int) -> dict[str, str]:
    """The bot's settings for a rating bench: its database, port and API token."""
    return {
        "HAILONG_STORAGE_URL": db_url,
        "HAILONG_SERVER_PORT": str(port),
        "HAILONG_API_TOKEN": TOKEN,
        "HAILONG_LOG_LEVEL": "WARNING",
        "HAILONG_NLU_AUTOSTART": "false",  # the rating flow does not need Rasa
    }


async def start_bot(db_url: str, port: int) -> asyncio.subprocess.Process:
    env = {**os.environ, **bot_settings(db_url, port), "PYTHONUNBUFFERED": "1"}
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "bot.py",
        "run",
        cwd=ROOT,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    while True:
        line = (await asyncio.wait_for(proc.stdout.readline(), 120)).decode()  # type: ignore[union-attr]
        if not line:
            raise RuntimeError("the bot exited during start-up")
        if "hailong is running" in line:
            return proc


async def push_dossiers(base: str, n: int) -> list[str]:
    """Completed dossiers, through the dossier API."""
    codes = []
    now = datetime.now(UTC)
    day = (now - timedelta(days=3)).strftime("%y%m%d")
    async with aiohttp.ClientSession(base, headers={"Authorization": f"Bearer {TOKEN}"}) as http:
        for i in range(n):
            code = (
                f"{AGENCY}-{day}-{9000 + i:04d}" if n <= 999 else f"{AGENCY}-{day}-{100000 + i:06d}"
            )
            for event, at in (
                ("received", now - timedelta(days=3)),
                ("completed", now - timedelta(hours=2)),
            ):
                body = {
                    "code": code,
                    "procedure_code": PROCEDURE,
                    "agency_code": AGENCY,
                    "event": event,
                    "at": at.isoformat(),
                }
                r = await http.post("/api/v1/dossiers", json=body)
                assert r.status in (200, 201), await r.text()
            codes.append(code)
    return codes


class Citizen:
    def __init__(self, base: str, latencies: list[float]) -> None:
        self.base = base
        self.latencies = latencies
        self.last_id = 0

    async def event(self, http: aiohttp.ClientSession, body: dict, expect: str) -> dict:
        body["id"] = uuid.uuid4().hex
        t0 = time.perf_counter()
        r = await http.post("/chat/api/events", json=body)
        assert r.status == 202, await r.text()
        while True:
            r = await http.get(f"/chat/api/messages?after={self.last_id}&wait=10")
            messages = (await r.json())["messages"]
            if messages:
                self.last_id = messages[-1]["id"]
                if any(expect in m["text"] for m in messages):
                    self.latencies.append(time.perf_counter() - t0)
                    return messages[-1]

    async def rate(self, code: str) -> None:
        jar = aiohttp.CookieJar(unsafe=True)
        async with aiohttp.ClientSession(self.base, cookie_jar=jar) as http:
            await http.get("/chat")
            last = await self.event(http, {"start": code}, "(1/5)")
            for n in range(2, 6):
                last = await self.event(
                    http, {"payload": "4", "title": "Hài lòng", "turn": last["turn"]}, f"({n}/5)"
                )
            last = await self.event(
                http, {"payload": "4", "title": "Hài lòng", "turn": last["turn"]}, "góp ý"
            )
            await self.event(
                http, {"payload": "skip", "title": "Bỏ qua", "turn": last["turn"]}, "Cảm ơn"
            )


def pct(values: list[float], p: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, round(p / 100 * (len(values) - 1)))]


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-c", "--citizens", type=int, default=50, help="concurrent citizens")
    ap.add_argument("-n", "--ratings", type=int, default=10, help="ratings per citizen")
    ap.add_argument(
        "--pg", metavar="URL", help="PostgreSQL URL (an empty database) instead of SQLite"
    )
    args = ap.parse_args()

    tmp = tempfile.mkdtemp(prefix="hailong-bench-")
    db_url = args.pg or f"sqlite:///{tmp}/bench.db"
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    proc = await start_bot(db_url, port)
    try:
        codes = await push_dossiers(base, args.citizens * args.ratings)
        latencies: list[float] = []
        peak_rss = 0.0

        async def sample_rss() -> None:
            nonlocal peak_rss
            while True:
                peak_rss = max(peak_rss, rss_mb(proc.pid))
                await asyncio.sleep(0.2)

        sampler = asyncio.create_task(sample_rss())

        async def citizen(i: int) -> None:
            c = Citizen(base, latencies)
            for code in codes[i * args.ratings : (i + 1) * args.ratings]:
                await c.rate(code)

        t0 = time.perf_counter()
        await asyncio.gather(*(citizen(i) for i in range(args.citizens)))
        elapsed = time.perf_counter() - t0
        sampler.cancel()
        events = len(latencies)
        backend = "PostgreSQL" if args.pg else "SQLite"
        print(f"web chat rating, {backend}, {args.citizens} concurrent citizens, {events} events")
        print(f"  throughput  {events / elapsed:8.1f} events/s   ({elapsed:.1f} s)")
        ms = {p: pct(latencies, p) * 1000 for p in (50, 95, 99)}
        print(
            f"  latency     p50 {ms[50]:6.1f} ms   p95 {ms[95]:6.1f} ms   p99 {ms[99]:6.1f} ms"
            f"   mean {statistics.mean(latencies) * 1000:6.1f} ms"
        )
        print(f"  bot RSS     peak {peak_rss:6.1f} MB")
    finally:
        proc.send_signal(signal.SIGTERM)
        await proc.wait()


if __name__ == "__main__":
    asyncio.run(main())
