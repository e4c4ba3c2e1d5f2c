"""Benchmark: the free-text step through the bot against Rasa's /model/parse called directly.

One invocation starts one Rasa server the way `bot.py run` does (`bot.rasa.RasaServer`; the
model at [nlu] model or --model, trained first if missing, about 2 minutes) and sends it
the same complaints (nlu/tests/heldout.yml, never trained on), in the same run, three ways:

- direct: POST /model/parse from a bare aiohttp client, the texts taken by J workers in
  closed loops; J = the bot's [nlu] max_concurrency (4; -j to change) and J = C, the
  number of citizens below;
- client: the bot's Rasa client, `NluClient.read` (NFC, "/" guard, its concurrency cap,
  timeout, circuit breaker, the field read out of the ranking), at the same J;
- bot: a real `bot.py run` (SQLite in a temporary directory, --pg URL for PostgreSQL; no
  demo data) with HAILONG_NLU_AUTOSTART=false and HAILONG_NLU_URL / HAILONG_NLU_TOKEN
  pointing at that same Rasa, its Zalo OA pointed at bench/webhook.py's lean fake Zalo
  API. Each complaint has its own new Zalo user, who first sends "Gửi phản ánh, kiến
  nghị" (the main menu button's title, what a tap sends) and gets "Xin mời anh/chị mô tả
  vấn đề…" — all of a round's users before its timed phase, not timed. Then C citizens
  in closed loops type the complaints as signed `user_send_text` webhooks; the free-text
  step is timed from the webhook POST to the bot's next question reaching the fake:
  "Phản ánh của anh/chị thuộc lĩnh vực … — đúng không?" (Rasa sure), "Xin anh/chị chọn
  lĩnh vực của phản ánh:" (unsure), or the formal track's notice (Rasa read a khiếu
  nại). Any other answer (the field buttons offered because Rasa was not reached, an
  apology, "not understood") stops the bench; the question is also checked against what
  the bot's own `classify_complaint` makes of Rasa's direct answer for the same text
  (differences are counted and shown).

Throughput is complaints per second of a timed phase (the bot's holds free-text steps
only). Each round runs every mode once, the order reversed every other round, so drift
hits all alike; the table pools the rounds, and the bot/direct ratio is also given per
round (with its median). Printed: complaints/s and p50/p99 of each mode; the CPU Rasa,
the bot (and PostgreSQL's processes with --pg) and everything else on the machine used
meanwhile (other processes and steal show the noise); bot/direct throughput against the
target (≥ 0.9×); the bot's overhead at p50 (bot p50 − direct p50 at J = C); the bot's
own time per complaint beside its Rasa call; the bot's peak RSS.

    .venv/bin/python bench/nlu.py                     # C=16, 5 rounds × 250 complaints
    .venv/bin/python bench/nlu.py -c 4                # C=4: direct and client at J=4 only
    .venv/bin/python bench/nlu.py --pg postgresql://postgres@127.0.0.1/bench_nlu  # empty db
    .venv/bin/python bench/nlu.py --nlu-concurrency 16  # what-if: the bot's cap at 16
    .venv/bin/python bench/nlu.py -v                  # and each timed phase as it ends

The PostgreSQL database must exist and be empty (the bot migrates it). Run it on a quiet
machine: the "others" column and the noise line say how much else was running.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import re
import secrets
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.webchat import free_port, pct, rss_mb  # noqa: E402
from bench.webhook import (  # noqa: E402
    CLK_TCK,
    BenchError,
    Citizen,
    FakeZaloApi,
    Mailboxes,
    Run,
    Send,
    Server,
    ZaloEvents,
    bot_env,
    check_empty,
    closed_loops,
)
from bot.actions import ExternalContext, classify_complaint  # noqa: E402
from bot.config import Settings, load_settings  # noqa: E402
from bot.eventloop import event_loop_factory  # noqa: E402
from bot.flowstore import DEFAULT_FIELDS  # noqa: E402
from bot.nlu import NluClient  # noqa: E402
from bot.rasa import RasaServer  # noqa: E402
from nlu.reading import Reading, read_ranking  # noqa: E402

# What the citizen sends and what the bot answers (flows/data/main.yaml, feedback.yaml).
FEEDBACK_BUTTON = "Gửi phản ánh, kiến nghị"  # main: the menu button's title
ASK_TEXT = "Xin mời anh/chị mô tả vấn đề cần phản ánh"  # feedback: ask_text
CONFIRM_FIELD = re.compile(  # feedback: confirm_field (Rasa sure)
    r"Phản ánh của anh/chị thuộc lĩnh vực (.+?) \((.+?)\) — đúng không\?"
)
CONFIRM_BUTTONS = ["Đúng", "Chọn lĩnh vực khác"]
PICK = "Xin anh/chị chọn lĩnh vực của phản ánh:"  # feedback: pick_field (Rasa unsure)
FORMAL = "Nội dung anh/chị nêu có thể là khiếu nại hoặc tố cáo."  # feedback: formal_track
FIELD_TITLES = [f["label"]["vi"] for f in DEFAULT_FIELDS]  # a new database's field table
TARGET = 0.9  # the bot's free-text throughput ≥ 0.9× Rasa's direct throughput
NLU_RESULT = re.compile(r'result="(\w+)"')


def heldout_complaints() -> list[str]:
    data = yaml.safe_load((ROOT / "nlu/tests/heldout.yml").read_text(encoding="utf-8"))
    texts = []
    for block in data["nlu"]:
        if "+" in block["intent"]:
            texts += [line[2:].strip() for line in block["examples"].splitlines() if line[2:]]
    return texts


# ---------------------------------------------------------------- CPU


def process_cpu(pid: int | None) -> float:
    """User + system CPU seconds of a process (all its threads) so far; 0 if none."""
    if pid is None:
        return 0.0
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def machine_cpu() -> tuple[float, float]:
    """CPU seconds the whole machine was busy so far (user, nice, system, irq, softirq), and
    stolen by the hypervisor."""
    with open("/proc/stat") as f:
        ticks = [int(v) for v in f.readline().split()[1:9]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = ticks
    return (user + nice + system + irq + softirq) / CLK_TCK, steal / CLK_TCK


@dataclass
class Cpu:
    """CPU seconds used during a timed phase, by whom."""

    rasa: float = 0.0
    bot: float = 0.0
    db: float = 0.0  # PostgreSQL's server processes (with --pg; SQLite is in the bot)
    bench: float = 0.0  # this process: the clients, the citizens, the fake Zalo API
    others: float = 0.0  # every other process on the machine
    steal: float = 0.0

    def __add__(self, o: Cpu) -> Cpu:
        return Cpu(
            self.rasa + o.rasa,
            self.bot + o.bot,
            self.db + o.db,
            self.bench + o.bench,
            self.others + o.others,
            self.steal + o.steal,
        )


def postgres_cpu() -> float:
    """CPU seconds of the processes named postgres on this machine (the server the bot
    uses with --pg, and its backends; one that exits takes its time along)."""
    total = 0
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        name, _, rest = stat.partition("(")[2].rpartition(")")
        if name == "postgres":
            fields = rest.split()
            total += int(fields[11]) + int(fields[12])
    return total / CLK_TCK


class CpuMeter:
    def __init__(self, rasa_pid: int | None, bot_pid: int | None, pg: bool) -> None:
        self.rasa_pid, self.bot_pid, self.pg = rasa_pid, bot_pid, pg

    def sample(self) -> tuple[float, ...]:
        busy, steal = machine_cpu()
        return (
            process_cpu(self.rasa_pid),
            process_cpu(self.bot_pid),
            postgres_cpu() if self.pg else 0.0,
            time.process_time(),
            busy,
            steal,
        )

    def since(self, start: tuple[float, ...]) -> Cpu:
        deltas = (b - a for a, b in zip(start, self.sample(), strict=True))
        rasa, bot, db, bench, busy, steal = deltas
        return Cpu(rasa, bot, db, bench, max(0.0, busy - rasa - bot - db - bench), steal)


# ---------------------------------------------------------------- the figures


@dataclass
class Phase:
    """One timed phase: each complaint's latency, the phase's seconds and CPU."""

    latencies: list[float]
    seconds: float
    cpu: Cpu
    metrics: dict[str, float] = field(default_factory=dict)  # the bot's counters, deltas

    @property
    def rate(self) -> float:
        return len(self.latencies) / self.seconds


@dataclass
class Figures:
    """One mode's timed phases, pooled over the rounds."""

    label: str
    phases: list[Phase] = field(default_factory=list)

    @property
    def latencies(self) -> list[float]:
        return [x for p in self.phases for x in p.latencies]

    @property
    def seconds(self) -> float:
        return sum(p.seconds for p in self.phases)

    @property
    def rate(self) -> float:
        return len(self.latencies) / self.seconds

    def ms(self, p: float) -> float:
        return pct(self.latencies, p) * 1000

    def line(self) -> str:
        n, s = len(self.latencies), self.seconds
        cpu = sum((p.cpu for p in self.phases), Cpu())
        rounds = [p.rate for p in self.phases]
        spread = f"{min(rounds):.1f}–{max(rounds):.1f}"
        return (
            f"  {self.label:<16} {self.rate:>8.1f} {spread:>13} {self.ms(50):>7.1f}"
            f" {self.ms(99):>7.1f} {statistics.mean(self.latencies) * 1000:>7.1f}"
            f" {cpu.rasa / n * 1000:>7.1f} {cpu.bot / n * 1000:>6.1f} {cpu.db / n * 1000:>5.1f}"
            f" {cpu.bench / s:>6.0%}"
            f" {cpu.others / s:>6.0%} {cpu.steal / s:>6.0%}"
        )


async def timed(
    texts: list[str], concurrency: int, one: Callable[[str], Awaitable[None]]
) -> tuple[list[float], float]:
    """Each text once, `concurrency` closed loops taking the next one; latencies, seconds."""
    latencies: list[float] = []
    queue = list(reversed(texts))

    async def worker() -> None:
        while queue:
            text = queue.pop()
            t0 = time.perf_counter()
            await one(text)
            latencies.append(time.perf_counter() - t0)

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return latencies, time.perf_counter() - t0


# ---------------------------------------------------------------- what the bot should answer


class _Answered:
    """Stands for the Rasa client: the reading Rasa gave directly for the text."""

    def __init__(self, reading: Reading) -> None:
        self.reading = reading

    async def read(self, text: str) -> Reading:
        return self.reading


async def expected_answer(settings: Settings, text: str, ranking: list[dict[str, Any]]) -> str:
    """What the bot must ask after this complaint given Rasa's direct answer, as the bot's
    own `classify_complaint` decides: "confirm <field> (<category>)", "pick" or "formal"."""
    nlu: Any = _Answered(read_ranking(ranking))
    done = await classify_complaint(ExternalContext(settings, nlu, DEFAULT_FIELDS), {"text": text})
    if done.outcome == "sure":
        reading = done.vars["nlu"]
        return f"confirm {reading['field_name']['vi']} ({reading['category_name']['vi']})"
    return {"unsure": "pick", "formal": "formal"}.get(done.outcome, done.outcome)


def answer_kind(send: Send) -> str | None:
    """What the bot asked: "confirm <field> (<category>)", "pick", "formal"; None for
    anything else (buttons offered because Rasa was not reached, an apology, …)."""
    titles = [b["title"] for b in send.buttons]
    text = " ".join(send.text.split())
    if (m := CONFIRM_FIELD.fullmatch(text)) and titles == CONFIRM_BUTTONS:
        return f"confirm {m[1]} ({m[2]})"
    if text == PICK and titles == FIELD_TITLES:
        return "pick"
    if text.startswith(FORMAL):
        return "formal"
    return None


# ---------------------------------------------------------------- the bot


class Bot:
    """A real `bot.py run` on Zalo OA webhooks, its Rasa the bench's, answers at the fake."""

    def __init__(self, args: argparse.Namespace, tmp: str) -> None:
        self.args, self.tmp = args, tmp
        self.mail = Mailboxes()
        self.api = FakeZaloApi(self.mail)
        self.platform = ZaloEvents()
        self.users = itertools.count()
        self.server: Server | None = None
        self.base = ""
        self.kinds: dict[str, int] = {}
        self.checked = 0
        self.mismatched = 0
        self.mismatches: list[str] = []  # the first few

    async def start(self, nlu_env: dict[str, str]) -> None:
        await self.api.start()
        port = free_port()
        db_url = self.args.pg or f"sqlite:///{self.tmp}/bot.db"
        shape = argparse.Namespace(channel="zalo", loop=self.args.loop)
        env = bot_env(shape, db_url, port, self.api) | nlu_env
        env["HAILONG_DEMO_AUTOLOAD"] = "false"  # the fields come with the schema
        argv = [sys.executable, "bot.py", "run"]
        self.server = await Server.start("bot", argv, env, "hailong is running")
        self.base = f"http://127.0.0.1:{port}"

    async def stop(self) -> None:
        if self.server is not None:
            await self.server.stop()
        await self.api.stop()

    async def scrape(self, http: aiohttp.ClientSession) -> dict[str, float]:
        """The bot's counters this bench reads, from GET /metrics."""
        async with http.get(self.base + "/metrics") as r:
            text = await r.text()
        wanted = (
            "hailong_nlu_requests_total",
            "hailong_nlu_seconds_sum",
            "hailong_nlu_seconds_count",
            "hailong_batch_processing_seconds_sum",
            "hailong_batch_processing_seconds_count",
        )
        out: dict[str, float] = {}
        for line in text.splitlines():
            if line.startswith(wanted):
                name, _, value = line.rpartition(" ")
                out[name] = float(value)
        return out

    async def round(
        self, texts: list[str], citizens: int, expected: dict[str, str], meter: CpuMeter
    ) -> Phase:
        """A new user per complaint is taken to the feedback question (not timed), then the
        citizens type the complaints (timed), each answer checked against `expected`."""
        server = self.server
        assert server is not None
        users = [self.platform.user(next(self.users)) for _ in texts]
        timeout = self.args.timeout
        connector = aiohttp.TCPConnector(limit=0)
        http_timeout = aiohttp.ClientTimeout(total=timeout)
        async with aiohttp.ClientSession(connector=connector, timeout=http_timeout) as http:
            url = self.base + self.platform.path
            citizen = Citizen(http, url, self.platform, self.mail, Run(), timeout)

            async def answer(user: str, t0: float, what: str) -> Send:
                try:
                    send = await asyncio.wait_for(self.mail.open(user).get(), timeout)
                except TimeoutError:
                    raise BenchError(f"{what}: no answer at the fake in {timeout:.0f} s") from None
                if send.at < t0:
                    raise BenchError(f"{what}: an answer before the event: {send.text[:160]!r}")
                return send

            async def open_feedback(i: int) -> None:
                user, what = users[i], f"user {users[i]}, {FEEDBACK_BUTTON!r}"
                self.mail.open(user)
                t0 = await citizen.post(self.platform.text(user, FEEDBACK_BUTTON), what)
                send = await answer(user, t0, what)
                if not send.text.startswith(ASK_TEXT) or send.buttons:
                    raise BenchError(f"{what}: unexpected answer {send.text[:160]!r}")

            latencies: list[float] = []

            async def complain(i: int) -> None:
                user, text = users[i], texts[i]
                what = f"user {user}, complaint {text[:60]!r}"
                t0 = await citizen.post(self.platform.text(user, text), what)
                send = await answer(user, t0, what)
                latencies.append(send.at - t0)
                self.mail.close(user)  # whatever comes later is a stray, reported
                kind = answer_kind(send)
                if kind is None:
                    raise BenchError(f"{what}: not the field question: {send.text[:200]!r}")
                self.checked += 1
                shown = kind.partition(" ")[0]
                self.kinds[shown] = self.kinds.get(shown, 0) + 1
                if kind != expected[text]:
                    self.mismatched += 1
                    if len(self.mismatches) < 5:
                        self.mismatches.append(
                            f"{text[:60]!r}: bot {kind}, direct {expected[text]}"
                        )

            async def loops(step: Callable[[int], Awaitable[None]]) -> float:
                queue = list(range(len(texts) - 1, -1, -1))

                async def loop() -> None:
                    while queue:
                        await step(queue.pop())

                t0 = time.perf_counter()
                await closed_loops(server, [loop() for _ in range(citizens)])
                return time.perf_counter() - t0

            await loops(open_feedback)
            await asyncio.sleep(0.3)  # the bot's sent marks and the like, before the timing
            before = await self.scrape(http)
            start = meter.sample()
            seconds = await loops(complain)
            cpu = meter.since(start)
            after = await self.scrape(http)
        delta = {k: v - before.get(k, 0.0) for k, v in after.items()}
        return Phase(latencies, seconds, cpu, delta)

    def problems(self) -> list[str]:
        found = list(self.api.errors)
        found += [f"unexpected send to {s.user}: {s.text[:80]!r}" for s in self.mail.strays[:10]]
        return found


# ---------------------------------------------------------------- the run


@dataclass
class Plan:
    args: argparse.Namespace
    settings: Settings
    token: str
    cap: int  # the bot's max_concurrency
    concurrencies: list[int]  # of direct and client: the cap (or -j), and the citizens
    texts: list[str]
    distinct: list[str]


async def bench(args: argparse.Namespace) -> int:
    port = free_port()
    token = secrets.token_hex(16)
    nlu_env = {"HAILONG_NLU_URL": f"http://127.0.0.1:{port}", "HAILONG_NLU_TOKEN": token}
    if args.model:
        nlu_env["HAILONG_NLU_MODEL"] = args.model
    if args.nlu_concurrency:  # the bot's and the client's cap, instead of [nlu]'s
        nlu_env["HAILONG_NLU_MAX_CONCURRENCY"] = str(args.nlu_concurrency)
    settings = load_settings(ROOT / "config.toml", {**os.environ, **nlu_env})
    cap = settings.nlu.max_concurrency
    distinct = heldout_complaints()
    texts = (distinct * (args.texts // len(distinct) + 1))[: args.texts]
    concurrencies = sorted({args.concurrency or cap, args.citizens})
    plan = Plan(args, settings, token, cap, concurrencies, texts, distinct)
    tmp = tempfile.mkdtemp(prefix="hailong-bench-nlu-")
    rasa = RasaServer(settings, token)
    bot = Bot(args, tmp)
    try:
        if args.pg:
            try:
                await check_empty(args.pg)
            except BenchError:
                raise
            except Exception as exc:  # unreachable, no such database, no access…
                raise BenchError(f"cannot use {args.pg}: {exc}") from None
        t0 = time.perf_counter()
        await rasa.start()
        if not await rasa.wait_ready(3600):
            raise BenchError(f"Rasa did not become ready: {rasa.error or 'see data/rasa.log'}")
        ready = time.perf_counter() - t0
        print(f"Rasa ready in {ready:.1f} s ({settings.nlu.model}, pid {rasa.pid})")
        await bot.start({**nlu_env, "HAILONG_NLU_AUTOSTART": "false"})
        return await measure(plan, rasa, bot)
    except BenchError as exc:
        print(f"bench failed: {exc}", file=sys.stderr)
        if bot.server is not None:
            print(bot.server.output(), file=sys.stderr)
        return 1
    finally:
        await bot.stop()
        await rasa.stop()
        shutil.rmtree(tmp, ignore_errors=True)


async def measure(plan: Plan, rasa: RasaServer, bot: Bot) -> int:
    args, settings, token, texts = plan.args, plan.settings, plan.token, plan.texts
    url = f"{settings.nlu.url}/model/parse"
    rankings: dict[str, list[dict[str, Any]]] = {}
    assert bot.server is not None
    meter = CpuMeter(rasa.pid, bot.server.proc.pid, bool(args.pg))
    client = NluClient(settings.nlu, token=token)
    http = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))

    async def direct(text: str) -> None:
        async with http.post(url, json={"text": text}, params={"token": token}) as r:
            body = await r.json(content_type=None)
        if r.status != 200 or not isinstance(body, dict) or not body.get("intent_ranking"):
            raise BenchError(f"/model/parse answered HTTP {r.status}: {str(body)[:200]}")
        rankings[text] = body["intent_ranking"]

    async def via_client(text: str) -> None:
        if await client.read(text) is None:
            raise BenchError(f"the bot's Rasa client got no reading for {text[:60]!r}")

    figures: dict[str, Figures] = {}

    async def run_mode(mode: str, j: int, n: int) -> None:
        await asyncio.sleep(0.3)  # what the previous mode left going, out of the way
        if mode == "bot":
            phase = await bot.round(texts, j, expected, meter)
            label = f"bot, {j} citizens"
        else:
            start = meter.sample()
            latencies, seconds = await timed(texts, j, direct if mode == "direct" else via_client)
            phase = Phase(latencies, seconds, meter.since(start))
            label = f"{mode}, J={j}"
        figures.setdefault(label, Figures(label)).phases.append(phase)
        if args.verbose:
            k, cpu = len(phase.latencies) / 1000, phase.cpu
            print(
                f"  round {n + 1}: {label:<16} {phase.rate:6.1f}/s"
                f"  p50 {pct(phase.latencies, 50) * 1000:6.1f} ms  Rasa {cpu.rasa / k:4.1f} ms"
                f"  bot {cpu.bot / k:4.1f} ms  db {cpu.db / k:4.1f} ms"
                f"  others {cpu.others / phase.seconds:4.0%}",
                flush=True,
            )

    try:
        # Warm-up: every text through Rasa once (its answer kept), the client, the bot.
        await timed(plan.distinct, plan.cap, direct)
        await timed(texts[:20], plan.cap, via_client)
        expected = {t: await expected_answer(settings, t, rankings[t]) for t in plan.distinct}
        await bot.round(texts[: 2 * args.citizens], args.citizens, expected, meter)

        modes = [(m, j) for j in plan.concurrencies for m in ("direct", "client")]
        modes.append(("bot", args.citizens))
        for n in range(args.rounds):
            for mode, j in modes if n % 2 == 0 else reversed(modes):
                await run_mode(mode, j, n)
        await asyncio.sleep(1.0)  # late sends
        problems = bot.problems()
        if problems:
            raise BenchError("the fake saw problems:\n  " + "\n  ".join(problems))
        rasa_rss = rss_mb(rasa.pid) if rasa.pid else float("nan")
    finally:
        await http.close()
        await client.close()
    report(plan, figures, bot)
    print(f"  Rasa RSS                {rasa_rss:.0f} MB at the end")
    return 0


def report(plan: Plan, figures: dict[str, Figures], bot: Bot) -> None:
    args, cap, c = plan.args, plan.cap, plan.args.citizens
    backend = "PostgreSQL" if args.pg else "SQLite"
    print(
        f"{args.rounds} rounds × {len(plan.texts)} held-out complaints ({len(plan.distinct)}"
        f" distinct), the same texts each way; the bot on {backend}, Zalo OA webhooks"
    )
    where = "--nlu-concurrency" if args.nlu_concurrency else "[nlu] max_concurrency"
    print(
        f"  J = requests kept in flight; J={cap} is the bot's {where}: it has at most {cap}"
        f" requests in flight at Rasa, whatever the number of citizens"
    )
    print(
        f"  {'':<16} {'compl/s':>8} {'(rounds)':>13} {'p50 ms':>7} {'p99 ms':>7} {'mean ms':>7}"
        f" {'Rasa ms':>7} {'bot ms':>6} {'db ms':>5} {'bench':>6} {'others':>6} {'steal':>6}"
    )
    for f in figures.values():
        print(f.line())
    print(
        "  Rasa ms, bot ms, db ms (PostgreSQL's processes, --pg) = their CPU per complaint;"
        " bench (this process: clients, citizens, fake Zalo API), others (every other"
        " process), steal = shares of one core"
    )
    phases = [p for f in figures.values() for p in f.phases]
    others = [p.cpu.others / p.seconds for p in phases]
    total = sum(p.cpu.others for p in phases) / sum(p.seconds for p in phases)
    print(
        f"  noise                   other processes used {total:.0%} of a core during the timed"
        f" phases (at most {max(others):.0%} in one){'' if max(others) < 0.15 else ': NOISY'}"
    )
    b = figures[f"bot, {c} citizens"]
    directs = {j: figures[f"direct, J={j}"] for j in plan.concurrencies}
    for j, d in directs.items():
        per_round = [bp.rate / dp.rate for bp, dp in zip(b.phases, d.phases, strict=True)]
        ratio = b.rate / d.rate
        why = {cap: "the bot's cap", c: "as many as the citizens"}.get(j, "-j")
        if j == cap == c:
            why = "the bot's cap = the citizens"
        verdict = "met" if ratio >= TARGET else "MISSED"
        print(
            f"  bot/direct J={j:<3}       {ratio:.3f}× throughput ({why}); per round"
            f" {' '.join(f'{r:.2f}' for r in per_round)}, median"
            f" {statistics.median(per_round):.3f}; target ≥ {TARGET}×: {verdict}"
        )
    same = directs[c]
    mean_gap = (statistics.mean(b.latencies) - statistics.mean(same.latencies)) * 1000
    print(
        f"  bot overhead            p50 {b.ms(50) - same.ms(50):+.1f} ms, p99"
        f" {b.ms(99) - same.ms(99):+.1f} ms, mean {mean_gap:+.1f} ms (bot − direct at J={c})"
    )
    for j in plan.concurrencies:
        client, direct = figures[f"client, J={j}"], directs[j]
        print(
            f"  client overhead J={j:<3}  p50 {client.ms(50) - direct.ms(50):+.2f} ms,"
            f" throughput {client.rate / direct.rate:.3f}× direct"
        )
    n = len(b.latencies)
    m: dict[str, float] = {}
    for p in b.phases:
        for k, v in p.metrics.items():
            m[k] = m.get(k, 0.0) + v
    calls = m.get("hailong_nlu_seconds_count", 0.0)
    call_ms = m.get("hailong_nlu_seconds_sum", 0.0) / calls * 1000 if calls else float("nan")
    batches = m.get("hailong_batch_processing_seconds_count", 0.0)
    batch_ms = m.get("hailong_batch_processing_seconds_sum", 0.0) / batches * 1000
    mean = statistics.mean(b.latencies) * 1000
    print(
        f"  bot per complaint       mean {mean:.1f} ms = its Rasa call {call_ms:.1f} ms (waiting"
        f" for one of its {cap} slots included) + its own {mean - call_ms:.1f} ms;"
        f" {batches / n:.2f} batches of {batch_ms:.1f} ms"
    )
    results = ", ".join(
        f"{r[1]} {v:.0f}"
        for k, v in m.items()
        if k.startswith("hailong_nlu_requests_total") and v and (r := NLU_RESULT.search(k))
    )
    print(f"  the bot's Rasa calls    {results} (timed phases)")
    assert bot.server is not None
    print(f"  bot RSS                 {bot.server.peak_rss:.0f} MB peak")
    kinds = ", ".join(f"{v} {k}" for k, v in sorted(bot.kinds.items()))
    same_reading = (
        "the same as Rasa's direct answer for every one"
        if not bot.mismatched
        else f"{bot.mismatched} DIFFERENT from Rasa's direct answer, e.g. {bot.mismatches}"
    )
    print(f"  answers checked         {bot.checked}, warm-up included ({kinds}); {same_reading}")
    for key, count in bot.server.records.most_common():
        print(f"  the bot logged {count}× {key}, the first:")
        print(f"    | {bot.server.first_record[key][:300]}")


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--model", help="model file (default: [nlu] model; trained if missing)")
    ap.add_argument("-c", "--citizens", type=int, default=16, help="concurrent citizens (16)")
    ap.add_argument(
        "-j",
        "--concurrency",
        type=int,
        help="direct/client requests in flight (default: the bot's max_concurrency); also at -c",
    )
    ap.add_argument(
        "--nlu-concurrency",
        type=int,
        metavar="N",
        help="the bot's (and the client's) max_concurrency instead of [nlu]'s (a what-if)",
    )
    ap.add_argument("-v", "--verbose", action="store_true", help="print each timed phase")
    ap.add_argument("-r", "--rounds", type=int, default=5, help="rounds (5)")
    ap.add_argument("-n", "--texts", type=int, default=250, help="complaints per round (250)")
    ap.add_argument(
        "--pg", metavar="URL", help="PostgreSQL URL (an empty database) instead of SQLite"
    )
    ap.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for an answer")
    ap.add_argument(
        "--loop",
        choices=["uvloop", "asyncio"],
        default="uvloop",
        help="event loop of the bot and of this process (uvloop, as bot.py run)",
    )
    return ap.parse_args()


if __name__ == "__main__":
    arguments = parse_args()
    with asyncio.Runner(loop_factory=event_loop_factory(arguments.loop)) as runner:
        sys.exit(runner.run(bench(arguments)))
