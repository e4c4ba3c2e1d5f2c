"""Benchmark: one clock tick (bot/scheduler.py) over N reports in PostgreSQL.

For each N it creates a scratch database, migrates it and seeds, with COPY: a province
(its office with a head; communes, each with a head and a unit with a head and officers;
every official with linked Telegram/Zalo accounts), N/2 citizens with a conversation
each, and N reports. Then, on `--repeat` fresh copies of that database (median shown),
it times `Ticker.tick()` at "now" on a ManualClock after a warm-up tick. No outbox sender
runs: the time is finding the due reports, claiming them and writing the outcome in the
same transaction (reports moved on, audit rows, outbox rows), not delivering messages.

The reports: a share `--due` (1%) past their deadline (`next_escalation_at` in the past),
small shares with a reminder or a status update due, the rest due in the future, spread
over four months. A tick handles at most `--batch` items of each kind, so its time must
stay flat as N grows: the due queries go through the due-time indexes, never a table
scan; their plans are printed (an ordered index scan, or with few due rows a bitmap scan
of the same index and a sort). "next tick" is the one right after (the next batch, and
reports whose new deadline had passed too). This week's digests count as sent; the
weekly digest is timed on its own. Each copy is checkpointed before its ticks, so they
pay the full-page writes that follow a checkpoint and no checkpoint lands inside them.

    .venv/bin/python bench/escalation.py                   # N = 10k, 100k, 1M
    .venv/bin/python bench/escalation.py -n 1000000 --reminders 0.001 --updates 0.001
                                       # every kind due beyond a batch: 3,000 items a tick
    .venv/bin/python bench/escalation.py -n 10000 --repeat 1 --pg postgresql://u@db:5432
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, ClassVar

import asyncpg
from sqlalchemy import event
from sqlalchemy.engine import make_url

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bot.clock import VIETNAM, ManualClock  # noqa: E402
from bot.config import load_settings  # noqa: E402
from bot.scheduler import Ticker, TickResult  # noqa: E402
from bot.workdays import WorkCalendar  # noqa: E402
from storage.db import Database, run_migrations  # noqa: E402

# A Wednesday morning in Hà Nội: past this week's digest time (Monday 08:00).
NOW = datetime(2027, 3, 10, 10, 0, tzinfo=VIETNAM).astimezone(UTC)
COMMUNES = 20
OFFICERS = 3  # per unit
WARMUP = 20  # reports due long ago: the warm-up tick handles them before the timed one
CHUNK = 100_000
FIELDS = ["land", "construction", "judicial_records", "other"]
CHANNELS = ["telegram", "zalo", "webchat"]
TEXTS = [
    "Hồ sơ tách thửa nộp từ tháng 12 đến nay chưa có kết quả, đề nghị xem xét giải quyết.",
    "Công trình xây dựng bên cạnh nhà tôi lấn sang phần đất của gia đình, đã báo nhưng ko ai xử lý",
    "Xin phiếu lý lịch tư pháp quá hạn 5 ngày vẫn chưa nhận được, gọi điện thì không ai nghe.",
    "Cán bộ một cửa thái độ không đúng mực, yêu cầu nộp thêm giấy tờ không có trong quy định.",
    "Đường vào xóm bị ngập mỗi khi mưa, đề nghị UBND xã sớm khắc phục.",
]
REPORT_COLUMNS = [
    "id", "code", "citizen_id", "channel", "text", "source", "field", "category",
    "field_source", "nlu_field", "nlu_category", "nlu_confidence", "nlu_status",
    "commune_id", "agency_id", "status", "created_at", "official_id", "accused_official_id",
    "level", "due_at", "next_escalation_at", "next_reminder_at", "next_update_at",
    "forward_due_at",
]  # fmt: skip
CONVERSATION_COLUMNS = [
    "id", "channel", "user_key", "citizen_id", "lang", "vars", "started_at", "updated_at",
]  # fmt: skip


def admin_dsn(base: str, database: str = "postgres") -> str:
    u = make_url(base.replace("postgresql+asyncpg://", "postgresql://"))
    return u.set(drivername="postgresql", database=database).render_as_string(False)


def label(n: int) -> str:
    if n % 1_000_000 == 0:
        return f"{n // 1_000_000}M"
    return f"{n // 1000}k" if n % 1000 == 0 else str(n)


async def sql(url: str, statement: str) -> None:
    conn = await asyncpg.connect(url, timeout=10)
    try:
        await conn.execute(statement)
    finally:
        await conn.close()


async def admin(base: str, statement: str) -> None:
    await sql(admin_dsn(base), statement)


async def copy_database(base: str, template: str, name: str) -> None:
    """A copy of the seeded database, then a checkpoint: no checkpoint of the copy's own
    writes runs during the timed ticks, which pay the full-page writes after one."""
    try:  # PostgreSQL 15+: copy the files instead of writing the whole copy to the WAL
        await admin(base, f'CREATE DATABASE "{name}" TEMPLATE "{template}" STRATEGY FILE_COPY')
    except asyncpg.PostgresSyntaxError:
        await admin(base, f'CREATE DATABASE "{name}" TEMPLATE "{template}"')
    try:
        await admin(base, "CHECKPOINT")
    except asyncpg.PostgresError:
        pass  # not allowed for this role: a checkpoint may then fall inside a tick


# ---------------------------------------------------------------- seeding


async def seed_tree(conn: asyncpg.Connection) -> dict[str, Any]:
    """Province → office (head); communes (head) → unit (head, officers); linked accounts."""
    at = NOW - timedelta(days=400)

    async def agency(code: str, name: str, kind: str, parent: int | None) -> int:
        return await conn.fetchval(
            "INSERT INTO agency (code, name, kind, parent_id, head_title) "
            "VALUES ($1, $2, $3, $4, '') RETURNING id",
            code,
            name,
            kind,
            parent,
        )

    officials: list[tuple[int, str, str]] = []  # (agency, name, role)
    province = await agency("000.00.00.H42", "UBND tỉnh Phú Thọ", "province", None)
    office = await agency("H42.01", "Văn phòng UBND tỉnh Phú Thọ", "office", province)
    officials.append((office, "Chánh Văn phòng", "head"))
    communes: list[tuple[int, int]] = []  # (commune, its unit)
    for c in range(COMMUNES):
        commune = await agency(f"H42.{c + 10:02d}", f"UBND xã số {c + 1}", "commune", province)
        unit = await agency(f"H42.{c + 10:02d}.01", f"Phòng Kinh tế xã số {c + 1}", "unit", commune)
        communes.append((commune, unit))
        officials.append((commune, f"Chủ tịch UBND xã số {c + 1}", "head"))
        officials.append((unit, f"Trưởng phòng xã số {c + 1}", "head"))
        officials += [(unit, f"Cán bộ {k + 1} xã số {c + 1}", "officer") for k in range(OFFICERS)]
    ids = [
        await conn.fetchval(
            "INSERT INTO official (agency_id, name, title, role, active) "
            "VALUES ($1, $2, '', $3, true) RETURNING id",
            *o,
        )
        for o in officials
    ]
    accounts = []
    for i, official_id in enumerate(ids):
        accounts.append((official_id, "telegram", f"of-tg-{official_id}", at))
        if i % 2 == 0:  # half of them linked Zalo too
            accounts.append((official_id, "zalo", f"of-zalo-{official_id}", at))
    await conn.copy_records_to_table(
        "official_account",
        records=accounts,
        columns=["official_id", "channel", "user_key", "linked_at"],
    )
    heads = [i for i, o in zip(ids, officials, strict=True) if o[2] == "head"]
    officers: dict[int, list[int]] = {}
    for i, (agency_id, _, role) in zip(ids, officials, strict=True):
        if role == "officer":
            officers.setdefault(agency_id, []).append(i)
    return {
        "communes": communes,
        "officers": officers,
        "heads": heads,
        "officials": len(ids),
        "accounts": len(accounts),
    }


def report_rows(
    first: int, count: int, tree: dict[str, Any], citizens: int, args: argparse.Namespace
) -> list[tuple[Any, ...]]:
    rng = random.Random(first)
    day, hour, minute = timedelta(days=1), timedelta(hours=1), timedelta(minutes=1)
    rows = []
    for i in range(first, first + count):
        commune, unit = tree["communes"][i % COMMUNES]
        agency_id = unit if i % 5 else commune
        unit_officers = tree["officers"][unit]
        conduct = i % 10 == 0
        status = "in_progress" if i % 3 == 0 else "assigned"
        official_id = unit_officers[i % OFFICERS] if status == "in_progress" else None
        accused = unit_officers[(i + 1) % OFFICERS] if conduct and i % 20 == 0 else None
        level = 1 if conduct else 0
        reminder = update = forward = None
        r = rng.random()
        if i <= WARMUP:
            due = NOW - 40 * day - i * minute
        elif r < args.due:  # past its deadline: climbs one level in the tick
            level += rng.choice((0, 0, 1))
            due = NOW - rng.uniform(1, 10 * 24 * 60) * minute
        elif r < args.due + args.reminders:  # a reminder to the handling official
            due = NOW + rng.uniform(1, 10) * day
            reminder = NOW - rng.uniform(1, 24 * 60) * minute
        elif r < args.due + args.reminders + args.updates:  # late: the citizen hears
            level = max(level, 1)
            due = NOW + rng.uniform(1, 5) * day
            update = NOW - rng.uniform(1, 24 * 60) * minute
        elif (
            r < args.due + args.reminders + args.updates + args.untaken and status != "in_progress"
        ):
            due = NOW + rng.uniform(5, 10) * day  # nobody took it up in time: pressed
            forward = NOW - rng.uniform(1, 24 * 60) * minute
        else:  # due in the future, spread over four months
            due = NOW + rng.uniform(1, 120 * 24) * hour
            if level == 0 and rng.random() < 0.8:
                reminder = due - rng.uniform(1, 7) * day
                reminder = reminder if reminder > NOW else None
            elif level > 0 or rng.random() < 0.1:
                level = max(level, 1)
                update = NOW + rng.uniform(1, 7 * 24) * hour
        # Received three weeks before the deadline (five for a late one), or for the
        # reports due far ahead, some time in the past year.
        created = due - (21 if level == 0 else 35) * day
        if created > NOW - hour:
            created = NOW - rng.uniform(1, 365 * 24) * hour
        if status == "assigned" and forward is None and created > NOW - 7 * day:
            forward = created + 7 * day  # received this week: its forward deadline ahead
        field = FIELDS[i % len(FIELDS)]
        rows.append(
            (
                i,
                f"PAKN.{created.astimezone(VIETNAM):%Y%m%d}.{i:07d}",
                1 + i % citizens,
                CHANNELS[i % len(CHANNELS)],
                TEXTS[i % len(TEXTS)],
                "chat",
                field,
                "conduct" if conduct else "procedure",
                "nlu",
                field,
                "conduct" if conduct else "procedure",
                0.93,
                "done",
                commune,
                agency_id,
                status,
                created,
                official_id,
                accused,
                level,
                due,
                due,
                reminder,
                update,
                forward,
            )
        )
    return rows


async def seed(url: str, n: int, args: argparse.Namespace) -> dict[str, Any]:
    conn = await asyncpg.connect(url)
    try:
        # The rows below are consistent by construction: skip the per-row FK triggers.
        try:
            await conn.execute("SET session_replication_role = replica")
        except asyncpg.PostgresError:
            pass  # not a superuser: the checks run, seeding is slower
        tree = await seed_tree(conn)
        citizens = max(1, n // 2)
        at = NOW - timedelta(days=400)
        for first in range(1, citizens + 1, CHUNK):
            ids = range(first, min(first + CHUNK, citizens + 1))
            await conn.copy_records_to_table(
                "citizen", records=((i, at) for i in ids), columns=["id", "created_at"]
            )
            await conn.copy_records_to_table(
                "conversation",
                records=(
                    (i, CHANNELS[i % 3], f"c-{i}", i, "vi", "{}", at, at + timedelta(days=i % 90))
                    for i in ids
                ),
                columns=CONVERSATION_COLUMNS,
            )
        for first in range(1, n + 1, CHUNK):
            rows = report_rows(first, min(CHUNK, n + 1 - first), tree, citizens, args)
            await conn.copy_records_to_table("report", records=rows, columns=REPORT_COLUMNS)
        for table in ("citizen", "conversation", "report"):
            await conn.execute(
                f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), "
                f"(SELECT max(id) FROM {table}))"
            )
        # This week's digests were sent on Monday: the timed ticks are ordinary ticks.
        year, week, _ = NOW.astimezone(VIETNAM).isocalendar()
        await conn.copy_records_to_table(
            "digest",
            records=[(h, f"{year}-W{week:02d}", NOW - timedelta(days=2)) for h in tree["heads"]],
            columns=["official_id", "week", "created_at"],
        )
        await conn.execute("RESET session_replication_role")
        await conn.execute("VACUUM ANALYZE")
        due = await conn.fetchrow(
            "SELECT count(*) FILTER (WHERE next_escalation_at <= $1) AS escalations,"
            " count(*) FILTER (WHERE next_reminder_at <= $1) AS reminders,"
            " count(*) FILTER (WHERE next_update_at <= $1) AS updates,"
            " count(*) FILTER (WHERE forward_due_at <= $1) AS untaken FROM report",
            NOW,
        )
        tree["due"] = dict(due)
        tree["citizens"] = citizens
        return tree
    finally:
        await conn.close()


# ---------------------------------------------------------------- timing


class DueQueries:
    """Captures the due queries a tick sends, to EXPLAIN them at another moment."""

    MARKS: ClassVar[dict[str, str]] = {
        "escalation": "next_escalation_at <=",
        "forward": "forward_due_at <=",
        "reminder": "next_reminder_at <=",
        "update": "next_update_at <=",
    }

    def __init__(self, db: Database) -> None:
        self.seen: dict[str, tuple[str, tuple[Any, ...]]] = {}
        event.listen(db.engine.sync_engine, "before_cursor_execute", self._on_execute)

    def _on_execute(self, _conn, _cursor, statement, parameters, _context, _many) -> None:  # type: ignore[no-untyped-def]
        for kind, mark in self.MARKS.items():
            if mark in statement and kind not in self.seen:
                self.seen[kind] = (statement, tuple(parameters or ()))

    async def explain(self, url: str, now: datetime) -> dict[str, str]:
        """Each due query's plan at `now` (EXPLAIN without running it), as its nodes."""
        conn = await asyncpg.connect(url)
        out = {}
        try:
            for kind, (sql, params) in self.seen.items():
                args = [now if isinstance(p, datetime) else p for p in params]
                plan = await conn.fetchval("EXPLAIN (FORMAT JSON) " + sql, *args)
                nodes, node = [], json.loads(plan)[0]["Plan"]
                while node:
                    name = node["Node Type"]
                    if "Index Name" in node:
                        name += f" using {node['Index Name']}"
                    if "Relation Name" in node and "Scan" in name:
                        name += f" on {node['Relation Name']}"
                    nodes.append(name)
                    node = (node.get("Plans") or [None])[0]
                out[kind] = " → ".join(nodes)
        finally:
            await conn.close()
        return out


async def timed(ticker: Ticker) -> tuple[TickResult, float]:
    t0 = time.perf_counter()
    result = await ticker.tick()
    return result, time.perf_counter() - t0


async def ticks(
    url: str, args: argparse.Namespace, explain: bool, fixed: int = 0
) -> dict[str, Any]:
    """On a freshly seeded database: a warm-up tick, the timed tick, the next one, the digest.

    With `fixed`, instead: one tick at the moment when `fixed` escalations are due, the
    same work whatever N is, so that its time shows what N alone costs.
    """
    environ = {"HAILONG_STORAGE_URL": url, "HAILONG_DEMO_AUTOLOAD": "false"}
    settings = load_settings(ROOT / "config.toml", environ)
    calendar = WorkCalendar(settings.workdays.extra_days_off, settings.workdays.makeup_working_days)
    db = Database(url, pool_size=2)
    clock = ManualClock(NOW - timedelta(days=39))
    ticker = Ticker(db, settings, calendar, clock, batch=args.batch)
    queries = DueQueries(db)
    out: dict[str, Any] = {}
    try:
        # Warm-up: the few reports due 40 days ago, so the timed tick runs in a warm
        # process (compiled and prepared statements, the holiday calendar), as every
        # tick of a running service does.
        out["warm"], _ = await timed(ticker)
        if explain:  # the warm-up's due queries, as the timed tick sends them
            out["plans"] = await queries.explain(url, NOW)
        if fixed:
            conn = await asyncpg.connect(url)
            try:
                moment = await conn.fetchval(
                    "SELECT next_escalation_at FROM report WHERE next_escalation_at IS NOT NULL"
                    " ORDER BY next_escalation_at OFFSET $1 LIMIT 1",
                    fixed - 1,
                )
                # That week's digests count as sent too: the same work is escalations.
                await conn.execute(
                    "INSERT INTO digest (official_id, week, created_at) SELECT official_id, $1,"
                    " created_at FROM digest ON CONFLICT DO NOTHING",
                    ticker._week(moment),
                )
            finally:
                await conn.close()
            clock.set(moment)
            out["tick"] = await timed(ticker)
            return out
        clock.set(NOW)
        out["tick"] = await timed(ticker)
        out["next"] = await timed(ticker)
        # The weekly digest to every head (the first tick after Monday 08:00), as if this
        # week's were not sent yet; batch=0: the due queries find nothing.
        await sql(url, "DELETE FROM digest")
        out["digest"] = await timed(Ticker(db, settings, calendar, clock, batch=0))
    finally:
        await db.dispose()
    return out


def median(runs: list[tuple[TickResult, float]]) -> tuple[TickResult, float, str]:
    """The run of median time, and its time shown with all of them."""
    ordered = sorted(runs, key=lambda run: run[1])
    result, seconds = ordered[len(ordered) // 2]
    shown = f"{seconds * 1000:7.1f} ms"
    if len(ordered) > 1:
        shown += f" (of {', '.join(f'{t * 1000:.0f}' for _, t in ordered)})"
    return result, seconds, shown


def work(r: TickResult, seconds: float) -> str:
    rate = f" → {r.work / seconds:,.0f} reports/s" if r.work else ""
    return (
        f"{r.work} items: {r.escalated} escalated, {r.untaken} not taken up, {r.reminders} "
        f"reminders, {r.updates} updates, {r.digests} digests; {r.messages} messages{rate}"
    )


async def bench(n: int, args: argparse.Namespace) -> dict[str, Any]:
    """Seed a template database once, then time the ticks on `--repeat` copies of it."""
    name = f"hailong_bench_escalation_{os.getpid()}_{label(n).lower()}"
    await admin(args.pg, f'CREATE DATABASE "{name}"')
    copies: list[str] = []
    try:
        url = admin_dsn(args.pg, name)
        await asyncio.to_thread(run_migrations, url)
        t0 = time.perf_counter()
        tree = await seed(url, n, args)
        seeded = time.perf_counter() - t0
        runs, fixed_runs = [], []
        for k in range(args.repeat):
            for fixed in (0, args.fixed) if args.fixed else (0,):
                copies.append(f"{name}_{k}_{fixed}")
                await copy_database(args.pg, name, copies[-1])
                run = await ticks(admin_dsn(args.pg, copies[-1]), args, k == 0 and not fixed, fixed)
                (fixed_runs if fixed else runs).append(run)
                await admin(args.pg, f'DROP DATABASE "{copies.pop()}" WITH (FORCE)')
    finally:
        for db in [*copies, name]:
            await admin(args.pg, f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')

    due = tree["due"]
    first, next_, digest = (median([run[k] for run in runs]) for k in ("tick", "next", "digest"))
    same = median([run["tick"] for run in fixed_runs]) if fixed_runs else None
    print(
        f"N = {n:,} reports ({tree['citizens']:,} citizens; {tree['officials']} officials, "
        f"{tree['accounts']} linked accounts)"
    )
    print(f"  seed       {seeded:7.1f} s   ({n / seeded:,.0f} reports/s: COPY, VACUUM ANALYZE)")
    print(
        f"  due now    {due['escalations']:,} escalations, {due['untaken']:,} not taken up, "
        f"{due['reminders']:,} reminders, {due['updates']:,} updates; at most {args.batch} "
        "of each kind per tick"
    )
    for kind, plan in runs[0]["plans"].items():
        print(f"  EXPLAIN {kind:<10} {plan}")
    print(f"  tick       {first[2]}  {work(*first[:2])}")
    print(f"  next tick  {next_[2]}  {work(*next_[:2])}")
    print(f"  digest     {digest[2]}  {digest[0].digests} heads (weekly, on its own)")
    if same is not None:
        print(f"  same work  {same[2]}  {work(*same[:2])} (when {args.fixed} were due)")
    print(flush=True)
    return {
        "n": n,
        "seed": seeded,
        "tick": first[1],
        "work": first[0].work,
        "next": next_[1],
        "next_work": next_[0].work,
        "digest": digest[1],
        "same": same[1] if same else None,
        "same_work": same[0].work if same else 0,
    }


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "-n",
        "--reports",
        type=int,
        action="append",
        help="number of reports (repeat for several runs; default 10k, 100k and 1M)",
    )
    ap.add_argument(
        "--pg",
        default="postgresql://postgres@127.0.0.1:5432",
        metavar="URL",
        help="PostgreSQL server (scratch databases are created there and dropped)",
    )
    ap.add_argument("--due", type=float, default=0.01, help="share past their deadline (1%%)")
    ap.add_argument(
        "--reminders", type=float, default=0.0001, help="share with a reminder due (0.01%%)"
    )
    ap.add_argument(
        "--updates", type=float, default=0.0001, help="share with a status update due (0.01%%)"
    )
    ap.add_argument(
        "--untaken",
        type=float,
        default=0.0001,
        help="share past their forward deadline, nobody took them up (0.01%%)",
    )
    ap.add_argument("--batch", type=int, default=1000, help="items of each kind per tick")
    ap.add_argument(
        "--fixed",
        type=int,
        default=100,
        help="also time a tick when this many escalations are due, for every N (0: not)",
    )
    ap.add_argument(
        "--repeat", type=int, default=3, help="timed runs per N, each on a fresh copy (median)"
    )
    args = ap.parse_args()
    runs = [await bench(n, args) for n in args.reports or [10_000, 100_000, 1_000_000]]
    print(
        "       N   seed s   tick ms   items   reports/s   next tick ms (items)   digest ms"
        "   same work ms (items)"
    )
    for r in runs:
        same = f"{r['same'] * 1000:14.1f} ({r['same_work']:5d})" if r["same"] else ""
        print(
            f"{label(r['n']):>8} {r['seed']:8.1f} {r['tick'] * 1000:9.1f} {r['work']:7d} "
            f"{r['work'] / r['tick']:11,.0f} {r['next'] * 1000:14.1f} ({r['next_work']:5d})"
            f" {r['digest'] * 1000:11.1f} {same}"
        )


if __name__ == "__main__":
    asyncio.run(main())
