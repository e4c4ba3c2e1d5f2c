"""Benchmark: what the bot adds to Rasa's own classification time.

Starts one Rasa server (the way `bot.py run` does; the model at [nlu] model, trained first
if missing, or --model) and sends the same complaint texts (nlu/tests/heldout.yml, never
trained on) three ways, in one run:

- direct:  POST /model/parse with a bare aiohttp client (Rasa's own figure);
- client:  the bot's Rasa client, `NluClient.read` (NFC, "/" guard, concurrency cap,
           timeout, circuit breaker, reading field/category out of the ranking);
- bot:     (--bot) a real `bot.py run` on SQLite: C web-chat citizens each open
           "Gửi phản ánh", type a complaint and wait for the field question; time from the
           POST to the answer readable by the browser.

Direct and client alternate in rounds so drift hits both alike. Prints requests/s and
p50/p99 for each, and the client's overhead over direct.

    .venv/bin/python bench/nlu.py                     # 4 rounds × 200 texts, concurrency 4
    .venv/bin/python bench/nlu.py --bot -c 20         # and the end-to-end free-text step
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import signal
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

import aiohttp
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.webchat import free_port, pct, rss_mb  # noqa: E402
from bot.config import load_settings  # noqa: E402
from bot.nlu import NluClient  # noqa: E402
from bot.rasa import RasaServer  # noqa: E402


def heldout_complaints() -> list[str]:
    data = yaml.safe_load((ROOT / "nlu/tests/heldout.yml").read_text(encoding="utf-8"))
    texts = []
    for block in data["nlu"]:
        if "+" in block["intent"]:
            texts += [line[2:].strip() for line in block["examples"].splitlines() if line[2:]]
    return texts


def summary(name: str, latencies: list[float], elapsed: float) -> str:
    ms = {p: pct(latencies, p) * 1000 for p in (50, 99)}
    return (
        f"  {name:<8} {len(latencies) / elapsed:8.1f} req/s   p50 {ms[50]:6.2f} ms   "
        f"p99 {ms[99]:6.2f} ms   mean {statistics.mean(latencies) * 1000:6.2f} ms"
    )


async def timed(texts: list[str], concurrency: int, one) -> tuple[list[float], float]:  # type: ignore[no-untyped-def]
    latencies: list[float] = []
    queue = list(texts)

    async def worker() -> None:
        while queue:
            text = queue.pop()
            t0 = time.perf_counter()
            await one(text)
            latencies.append(time.perf_counter() - t0)

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return latencies, time.perf_counter() - t0


async def through_the_bot(settings_env: dict[str, str], texts: list[str], citizens: int) -> None:
    tmp = tempfile.mkdtemp(prefix="hailong-bench-nlu-")
    port = free_port()
    env = {
        **os.environ,
        **settings_env,
        "HAILONG_STORAGE_URL": f"sqlite:///{tmp}/bench.db",
        "HAILONG_SERVER_PORT": str(port),
        "HAILONG_LOG_LEVEL": "WARNING",
        "HAILONG_DEMO_AUTOLOAD": "false",
        "PYTHONUNBUFFERED": "1",
    }
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "bot.py", "run", cwd=ROOT, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    while b"hailong is running" not in (line := await proc.stdout.readline()):  # type: ignore[union-attr]
        if not line:
            raise RuntimeError("the bot exited during start-up")
    base = f"http://127.0.0.1:{port}"
    latencies: list[float] = []
    peak = 0.0

    async def citizen(i: int) -> None:
        nonlocal peak
        jar = aiohttp.CookieJar(unsafe=True)
        async with aiohttp.ClientSession(base, cookie_jar=jar) as http:
            await http.get("/chat")
            last_id = 0

            async def event(body: dict, expect: str) -> dict:
                nonlocal last_id
                body["id"] = uuid.uuid4().hex
                t0 = time.perf_counter()
                await http.post("/chat/api/events", json=body)
                while True:
                    r = await http.get(f"/chat/api/messages?after={last_id}&wait=10")
                    messages = (await r.json())["messages"]
                    if messages:
                        last_id = messages[-1]["id"]
                        if any(expect in m["text"] for m in messages):
                            return {"ms": time.perf_counter() - t0, **messages[-1]}

            for text in texts[i::citizens]:
                await event({"text": "menu"}, "Xin chào")
                await event({"text": "gửi phản ánh"}, "mô tả vấn đề")
                got = await event({"text": text}, "lĩnh vực")
                latencies.append(got["ms"])
                peak = max(peak, rss_mb(proc.pid))

    try:
        t0 = time.perf_counter()
        await asyncio.gather(*(citizen(i) for i in range(citizens)))
        elapsed = time.perf_counter() - t0
        print(f"through the bot (web chat, SQLite), {citizens} citizens, free-text step only:")
        ms = {p: pct(latencies, p) * 1000 for p in (50, 99)}
        print(
            f"  bot      {len(latencies)} complaints, p50 {ms[50]:6.1f} ms   p99 {ms[99]:6.1f} ms"
            f"   (whole run {elapsed:.1f} s incl. menu steps)   bot RSS peak {peak:.0f} MB"
        )
    finally:
        proc.send_signal(signal.SIGTERM)
        await proc.wait()


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", help="model file (default: [nlu] model; trained if missing)")
    ap.add_argument("-r", "--rounds", type=int, default=4, help="direct/client rounds")
    ap.add_argument("-n", "--texts", type=int, default=200, help="texts per round")
    ap.add_argument("-j", "--concurrency", type=int, default=4, help="requests in flight")
    ap.add_argument("--bot", action="store_true", help="also time the free-text step in the bot")
    ap.add_argument("-c", "--citizens", type=int, default=20, help="citizens for --bot")
    args = ap.parse_args()

    port = free_port()
    token = secrets.token_hex(16)
    env = {"HAILONG_NLU_URL": f"http://127.0.0.1:{port}", "HAILONG_NLU_TOKEN": token}
    if args.model:
        env["HAILONG_NLU_MODEL"] = args.model
    settings = load_settings(ROOT / "config.toml", {**os.environ, **env})
    server = RasaServer(settings, token)
    t0 = time.perf_counter()
    await server.start()
    if not await server.wait_ready(3600):
        raise SystemExit("Rasa did not become ready (see data/rasa.log)")
    print(f"Rasa ready in {time.perf_counter() - t0:.1f} s ({settings.nlu.model})")
    try:
        texts = heldout_complaints()
        texts = (texts * (args.texts // len(texts) + 1))[: args.texts]
        client = NluClient(settings.nlu, token=token)
        http = aiohttp.ClientSession()
        url = f"{settings.nlu.url}/model/parse"

        async def direct(text: str) -> None:
            async with http.post(url, json={"text": text}, params={"token": token}) as r:
                await r.json()

        async def via_client(text: str) -> None:
            assert await client.read(text) is not None

        await timed(texts[:20], args.concurrency, direct)  # warm-up
        await timed(texts[:20], args.concurrency, via_client)
        results: dict[str, tuple[list[float], float]] = {"direct": ([], 0.0), "client": ([], 0.0)}
        for _ in range(args.rounds):
            for name, fn in (("direct", direct), ("client", via_client)):
                lat, el = await timed(texts, args.concurrency, fn)
                results[name] = (results[name][0] + lat, results[name][1] + el)
        await http.close()
        await client.close()
        print(
            f"{args.rounds} rounds × {len(texts)} held-out complaints, concurrency "
            f"{args.concurrency}:"
        )
        for name, (lat, el) in results.items():
            print(summary(name, lat, el))
        d, c = results["direct"], results["client"]
        over_p50 = pct(c[0], 50) / pct(d[0], 50) - 1
        over_tp = 1 - (len(c[0]) / c[1]) / (len(d[0]) / d[1])
        print(
            f"  client overhead: p50 {over_p50:+.1%}, throughput {over_tp:+.1%} (lower is better)"
        )
        if args.bot:
            await through_the_bot({**env, "HAILONG_NLU_AUTOSTART": "false"}, texts, args.citizens)
    finally:
        await server.stop()


if __name__ == "__main__":
    asyncio.run(main())
