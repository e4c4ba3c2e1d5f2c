#!/usr/bin/env python3
"""hailong — citizen feedback chatbot for Vietnamese public administration.

The command line. `python bot.py run` starts everything with the defaults of config.toml
(SQLite, the web chat at http://127.0.0.1:8080/chat, demo data on an empty database).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import signal
import sys
from collections.abc import Callable
from datetime import date, datetime, time
from pathlib import Path
from typing import Any

from bot.config import ConfigError, Settings, load_settings
from bot.nlu_cli import add_nlu_commands
from bot.nlu_tools import add_tool_commands
from bot.report_cli import add_report_commands


def _settings(args: argparse.Namespace) -> Settings:
    return load_settings(args.config)


def _upgrade(settings: Settings) -> None:
    from storage.db import run_migrations

    run_migrations(settings.storage.url, settings.base_dir)


# ---------------------------------------------------------------- commands


def cmd_run(args: argparse.Namespace) -> int:
    """Start the bot: web chat, dossier API, workers (migrates the database first)."""
    settings = _settings(args)
    if args.port:
        settings = settings.model_copy(
            update={"server": settings.server.model_copy(update={"port": args.port})}
        )
    from bot.logs import setup_logging

    setup_logging(settings.log.level, settings.log.format)
    _upgrade(settings)
    from bot.eventloop import event_loop_factory

    with asyncio.Runner(loop_factory=event_loop_factory(settings.server.event_loop)) as runner:
        return runner.run(_serve(settings, demo=settings.demo.autoload and not args.no_demo))


async def _serve(settings: Settings, demo: bool) -> int:
    from aiohttp import web

    from bot.app import build_app, build_service
    from bot.clock import Clock

    service = build_service(settings, Clock())
    if demo:
        await _load_demo_if_empty(service)
    runner = web.AppRunner(build_app(service), handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, settings.server.host, settings.server.port)
    try:
        await site.start()
    except OSError as exc:
        await runner.cleanup()
        print(
            f"cannot listen on {settings.server.host}:{settings.server.port} ({exc.strerror}). "
            "Set server.port in config.toml or HAILONG_SERVER_PORT.",
            file=sys.stderr,
        )
        return 1
    # What start-up made (modules, flows, the app) lives as long as the process: set it
    # aside from the garbage collector, whose full passes then walk only what came after.
    # Each event makes and drops thousands of objects, nearly all freed by reference
    # counting: collect the young ones every 10,000 allocations instead of every 700
    # (about 5% of the bot's CPU per event, bench/webhook.py; the memory stays bounded).
    gc.collect()
    gc.freeze()
    gc.set_threshold(10_000, 20, 20)
    print(
        f"hailong is running — web chat: {settings.public_url}/chat  (Ctrl+C to stop)", flush=True
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    print("stopping…", flush=True)
    await runner.cleanup()
    return 0


async def _load_demo_if_empty(service: Any, force: bool = False) -> None:
    from bot.demo import database_is_empty, load_demo

    async with service.db.transaction() as s:
        if not force and not await database_is_empty(s):
            return
        summary = await load_demo(
            s, service.settings, service.calendar, service.clock.now(), service.settings.demo.seed
        )
    url = service.settings.public_url
    print(
        f"demo data loaded: {summary.agencies} agencies, {summary.officials} officials, "
        f"{summary.procedures} procedures, {summary.dossiers} dossiers, {summary.ratings} ratings"
    )
    print("completed dossiers to rate (type the code in the chat, or open the link):")
    for code in summary.try_codes:
        print(f"  {code}   {url}/chat?start={code}")
    print(f"already rated: {summary.rated_code}   still in progress: {summary.pending_code}")


def cmd_chat(args: argparse.Namespace) -> int:
    """Talk to the bot in this terminal (type a button's number to tap it)."""
    settings = _settings(args)
    from bot.logs import setup_logging

    setup_logging("WARNING", settings.log.format)
    _upgrade(settings)
    return asyncio.run(_chat(settings, args.lang))


async def _chat(settings: Settings, lang: str | None) -> int:
    import uuid

    from bot.app import build_service, seed_startup
    from bot.channels.base import Inbound
    from bot.channels.console import Console
    from bot.clock import Clock

    console = Console()
    service = build_service(settings, Clock(), {"console": console})
    if settings.demo.autoload:
        await _load_demo_if_empty(service)
    await seed_startup(service)
    service.dispatcher.start()
    service.sender.start()
    session = uuid.uuid4().hex[:8]
    user = f"terminal-{session}"
    print(
        "Gõ tin nhắn, hoặc số thứ tự để bấm nút; Ctrl+D để thoát. (Type; a number taps a button.)"
    )
    start = Inbound("console", f"{session}-start", user, kind="start", lang=lang)
    await service.ingress.accept(start)
    loop = asyncio.get_running_loop()
    try:
        while True:
            line = await loop.run_in_executor(None, sys.stdin.readline)
            if not line:
                break
            await service.ingress.accept(console.inbound(user, line.rstrip("\n"), session))
    finally:
        await service.dispatcher.stop()
        await asyncio.sleep(0.3)  # let the last answers out
        await service.sender.stop()
        await service.db.dispose()
    return 0


def cmd_db_upgrade(args: argparse.Namespace) -> int:
    """Create or upgrade the database schema to the latest version."""
    settings = _settings(args)
    _upgrade(settings)
    print(f"database is up to date: {settings.storage.url.split('@')[-1]}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """Load the demo province (agencies, officials, procedures, dossiers, ratings)."""
    settings = _settings(args)
    _upgrade(settings)

    async def go() -> None:
        from bot.app import build_service
        from bot.clock import Clock

        service = build_service(settings, Clock())
        try:
            from bot.demo import database_is_empty

            async with service.db.sessions() as s:
                empty = await database_is_empty(s)
            if not empty and not args.force:
                print("the database already has data; use --force to add the demo anyway")
                return
            await _load_demo_if_empty(service, force=True)
        finally:
            await service.db.dispose()

    asyncio.run(go())
    return 0


def _day(value: str) -> datetime:
    from bot.clock import VIETNAM

    try:
        return datetime.combine(date.fromisoformat(value), time(0), VIETNAM)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a date YYYY-MM-DD") from None


def cmd_satisfaction(args: argparse.Namespace) -> int:
    """Satisfaction summary: ratings and satisfaction rate per agency / procedure / field."""
    settings = _settings(args)

    async def go() -> int:
        from bot.stats import format_table, satisfaction
        from storage.db import Database

        db = Database(settings.storage.url, settings.base_dir)
        try:
            async with db.sessions() as s:
                results = {by: await satisfaction(s, by, args.since, args.until) for by in args.by}
        finally:
            await db.dispose()
        if args.json:
            out = {
                by: {"total": total.as_dict(), "lines": [ln.as_dict() for ln in lines]}
                for by, (total, lines) in results.items()
            }
            print(json.dumps(out, ensure_ascii=False, indent=2))
            return 0
        titles = {
            "agency": "Theo cơ quan / By agency",
            "procedure": "Theo thủ tục / By procedure",
            "field": "Theo lĩnh vực / By field",
            "criterion": "Theo tiêu chí / By criterion",
        }
        print("\n\n".join(format_table(titles[by], *results[by]) for by in args.by))
        return 0

    return asyncio.run(go())


def cmd_flows_validate(args: argparse.Namespace) -> int:
    """Check flow files (default: flows/data/*.yaml) and name every problem's step."""
    import yaml

    from bot.flowstore import FLOW_DIR, configured_lists, read_flow_files, validate_set
    from flows.validate import FlowInvalid

    settings = _settings(args)
    definitions = read_flow_files(FLOW_DIR)
    for path in args.files:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
        definitions[str(data.get("id"))] = data
    try:
        validate_set(definitions, configured_lists(settings))
    except FlowInvalid as exc:
        print(exc, file=sys.stderr)
        return 1
    print(f"ok: {', '.join(sorted(definitions))}")
    return 0


def cmd_flows_list(args: argparse.Namespace) -> int:
    """List stored flow versions and which one is current."""
    settings = _settings(args)

    async def go() -> None:
        from sqlmodel import select

        from storage.db import Database
        from storage.models import Flow, FlowVersion

        db = Database(settings.storage.url, settings.base_dir)
        try:
            async with db.sessions() as s:
                current = {f.id: f.current_version_id for f in await s.exec(select(Flow))}
                for v in await s.exec(
                    select(FlowVersion).order_by(FlowVersion.flow_id, FlowVersion.version)
                ):
                    mark = "*" if current.get(v.flow_id) == v.id else " "
                    print(
                        f"{mark} {v.flow_id:<12} v{v.version:<4} "
                        f"{v.created_at:%Y-%m-%d %H:%M} {v.author}  {v.note}"
                    )
        finally:
            await db.dispose()

    asyncio.run(go())
    return 0


def cmd_flows_publish(args: argparse.Namespace) -> int:
    """Publish a flow file as the new current version (validated first)."""
    import yaml

    from flows.validate import FlowInvalid

    settings = _settings(args)
    data = yaml.safe_load(Path(args.file).read_text(encoding="utf-8"))

    async def go() -> int:
        from bot.clock import Clock
        from bot.flowstore import configured_lists, publish
        from storage.db import Database

        db = Database(settings.storage.url, settings.base_dir)
        try:
            async with db.transaction() as s:
                v = await publish(
                    s, data, args.author, Clock().now(), configured_lists(settings), args.note
                )
            print(f"published {v.flow_id} v{v.version}")
            return 0
        except FlowInvalid as exc:
            print(exc, file=sys.stderr)
            return 1
        finally:
            await db.dispose()

    return asyncio.run(go())


def cmd_flows_rollback(args: argparse.Namespace) -> int:
    """Make an earlier version of a flow current again."""
    settings = _settings(args)

    async def go() -> int:
        from bot.clock import Clock
        from bot.flowstore import rollback
        from storage.db import Database

        db = Database(settings.storage.url, settings.base_dir)
        try:
            async with db.transaction() as s:
                await rollback(s, args.flow, args.version, args.author, Clock().now())
            print(f"{args.flow} is back on v{args.version}")
            return 0
        except LookupError as exc:
            print(exc.args[0], file=sys.stderr)
            return 1
        finally:
            await db.dispose()

    return asyncio.run(go())


def _with_db(settings: Settings, work: Callable[[Any], Any]) -> Any:
    """Run `work(db)` against the configured database (migrated first)."""
    from storage.db import Database

    _upgrade(settings)

    async def go() -> Any:
        db = Database(settings.storage.url, settings.base_dir)
        try:
            return await work(db)
        finally:
            await db.dispose()

    return asyncio.run(go())


def cmd_official_list(args: argparse.Namespace) -> int:
    """List officials with their agency and linked messenger accounts."""
    settings = _settings(args)

    async def work(db: Any) -> None:
        from sqlmodel import select

        from storage.models import Agency, Official, OfficialAccount

        async with db.sessions() as s:
            query = select(Official, Agency).join(Agency, Agency.id == Official.agency_id)
            if args.agency:
                query = query.where(Agency.code == args.agency)
            accounts: dict[int, list[str]] = {}
            for acc in await s.exec(select(OfficialAccount)):
                accounts.setdefault(acc.official_id, []).append(acc.channel)
            for official, agency in await s.exec(query.order_by(Agency.code, Official.id)):
                linked = ", ".join(sorted(accounts.get(official.id, []))) or "—"
                print(
                    f"{official.id:>5}  {official.name:<28} {official.title:<36} "
                    f"{agency.code:<14} {linked}"
                )

    _with_db(settings, work)
    return 0


def cmd_official_link_code(args: argparse.Namespace) -> int:
    """Issue a one-time code an official sends to the bot to link their account."""
    settings = _settings(args)

    async def work(db: Any) -> int:
        from datetime import timedelta

        from bot.clock import Clock
        from bot.officials import issue_link_code

        try:
            async with db.transaction() as s:
                code = await issue_link_code(
                    s, args.official, Clock().now(), timedelta(hours=args.hours)
                )
        except LookupError as exc:
            print(exc.args[0], file=sys.stderr)
            return 1
        print(code)
        print(
            "Gửi mã này cho bot trên Telegram hoặc Zalo để liên kết tài khoản "
            f"(hiệu lực {args.hours} giờ, dùng một lần).\n"
            "Send this code to the bot on Telegram or Zalo to link the account."
        )
        return 0

    return int(_with_db(settings, work))


def cmd_telegram_set_webhook(args: argparse.Namespace) -> int:
    """Register telegram.webhook_url (with its secret token) with Telegram."""
    settings = _settings(args)
    if not (settings.telegram.enabled and settings.telegram.webhook_url):
        print(
            "set telegram.token, telegram.webhook_url and telegram.secret_token first",
            file=sys.stderr,
        )
        return 1
    from bot.channels.telegram import Telegram

    ok = asyncio.run(Telegram(settings.telegram).set_webhook())
    print(f"webhook {'registered' if ok else 'NOT registered'}: {settings.telegram.webhook_url}")
    return 0 if ok else 1


def cmd_zalo_bot_set_webhook(args: argparse.Namespace) -> int:
    """Register zalo_bot.webhook_url (with its secret token) with the Zalo Bot Platform."""
    settings = _settings(args)
    if not (settings.zalo_bot.enabled and settings.zalo_bot.webhook_url):
        print(
            "set zalo_bot.token, zalo_bot.webhook_url and zalo_bot.secret_token first",
            file=sys.stderr,
        )
        return 1
    from bot.channels.zalo_bot import ZaloBot

    asyncio.run(ZaloBot(settings.zalo_bot).set_webhook())
    print(f"webhook registered: {settings.zalo_bot.webhook_url}")
    return 0


def cmd_zalo_set_tokens(args: argparse.Namespace) -> int:
    """Store a new Zalo OA access/refresh token pair (e.g. after the refresh token was lost)."""
    settings = _settings(args)
    if not settings.zalo.enabled:
        print("Zalo OA is off: set zalo.app_id first", file=sys.stderr)
        return 1

    async def work(db: Any) -> None:
        from bot.channels.zalo import ZaloTokens
        from bot.clock import Clock

        await ZaloTokens(db, settings.zalo, Clock()).set_pair(args.access_token, args.refresh_token)

    _with_db(settings, work)
    print("stored; the bot uses the new pair from its next message")
    return 0


def cmd_qr(args: argparse.Namespace) -> int:
    """Write a PNG with QR codes (Telegram, Zalo, web chat) for a dossier receipt."""
    settings = _settings(args)
    from bot.links import dossier_links
    from bot.qr import receipt_png
    from nlu.text import find_dossier_code

    code = find_dossier_code(args.code)
    if code is None:
        print(
            f"{args.code!r} is not a dossier code (e.g. H15.50.05.13-261008-0975)", file=sys.stderr
        )
        return 1
    links = dossier_links(settings, code)
    out = Path(args.output or f"{code}.png")
    out.write_bytes(receipt_png(code, links))
    print(f"written {out}")
    for name, link in links.items():
        print(f"  {name:<9} {link}")
    if settings.telegram.enabled and "telegram" not in links:
        print("  (set telegram.username for the Telegram link)")
    return 0


def cmd_config(args: argparse.Namespace) -> int:
    """Validate the configuration and print it (secrets masked)."""
    settings = _settings(args)
    data = settings.model_dump(mode="json", exclude={"base_dir"})
    for section in data.values():
        for key, value in section.items():
            if value and ("token" in key or "secret" in key):
                section[key] = "***"
    print(json.dumps(data, ensure_ascii=False, indent=2))
    return 0


# ---------------------------------------------------------------- parser


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="bot.py",
        description="hailong — citizen feedback chatbot for Vietnamese public administration.",
    )
    p.add_argument("--config", help="configuration file (default: config.toml, or $HAILONG_CONFIG)")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def add(
        name: str, fn: Callable[[argparse.Namespace], int], parent: Any = sub
    ) -> argparse.ArgumentParser:
        doc = (fn.__doc__ or "").strip().splitlines()[0]
        sp = parent.add_parser(name, help=doc, description=doc)
        sp.set_defaults(func=fn)
        return sp

    run = add("run", cmd_run)
    run.add_argument("--port", type=int, help="override server.port")
    run.add_argument(
        "--no-demo", action="store_true", help="do not load demo data into an empty database"
    )

    chat = add("chat", cmd_chat)
    chat.add_argument("--lang", choices=["vi", "en"], help="language of the conversation")

    db = sub.add_parser("db", help="Database schema: db upgrade.")
    db_sub = db.add_subparsers(dest="db_command", metavar="ACTION", required=True)
    add("upgrade", cmd_db_upgrade, db_sub)

    demo = add("demo", cmd_demo)
    demo.add_argument("--force", action="store_true", help="load even if the database has data")

    sat = add("satisfaction", cmd_satisfaction)
    sat.add_argument(
        "--by",
        action="append",
        choices=["agency", "procedure", "field", "criterion"],
        help="grouping (repeatable; default: agency and procedure)",
    )
    sat.add_argument("--since", type=_day, help="ratings from this date (YYYY-MM-DD)")
    sat.add_argument("--until", type=_day, help="ratings before this date (YYYY-MM-DD)")
    sat.add_argument("--json", action="store_true", help="print JSON instead of tables")

    flows = sub.add_parser("flows", help="Conversation flows: validate, list, publish, rollback.")
    flows_sub = flows.add_subparsers(dest="flows_command", metavar="ACTION", required=True)
    fv = add("validate", cmd_flows_validate, flows_sub)
    fv.add_argument("files", nargs="*", help="flow files to check with the shipped ones")
    add("list", cmd_flows_list, flows_sub)
    fp = add("publish", cmd_flows_publish, flows_sub)
    fp.add_argument("file")
    fp.add_argument("--author", default="cli")
    fp.add_argument("--note", default="")
    fr = add("rollback", cmd_flows_rollback, flows_sub)
    fr.add_argument("flow")
    fr.add_argument("version", type=int)
    fr.add_argument("--author", default="cli")

    official = sub.add_parser("official", help="Officials: list, link-code.")
    official_sub = official.add_subparsers(dest="official_command", metavar="ACTION", required=True)
    ol = add("list", cmd_official_list, official_sub)
    ol.add_argument("--agency", help="only this agency code")
    lc = add("link-code", cmd_official_link_code, official_sub)
    lc.add_argument("official", type=int, help="the official's id (see: official list)")
    lc.add_argument("--hours", type=int, default=72, help="validity (default 72)")

    telegram = sub.add_parser("telegram", help="Telegram: set-webhook.")
    telegram_sub = telegram.add_subparsers(dest="telegram_command", metavar="ACTION", required=True)
    add("set-webhook", cmd_telegram_set_webhook, telegram_sub)

    zalo = sub.add_parser("zalo", help="Zalo OA: set-tokens.")
    zalo_sub = zalo.add_subparsers(dest="zalo_command", metavar="ACTION", required=True)
    st = add("set-tokens", cmd_zalo_set_tokens, zalo_sub)
    st.add_argument("access_token")
    st.add_argument("refresh_token")

    zalo_bot = sub.add_parser("zalo-bot", help="Zalo Bot Platform: set-webhook.")
    zalo_bot_sub = zalo_bot.add_subparsers(dest="zalo_bot_command", metavar="ACTION", required=True)
    add("set-webhook", cmd_zalo_bot_set_webhook, zalo_bot_sub)

    qr = add("qr", cmd_qr)
    qr.add_argument("code", help="dossier code")
    qr.add_argument("-o", "--output", help="PNG file (default: <code>.png)")

    add_tool_commands(add_nlu_commands(sub))
    add_report_commands(sub)
    add("config", cmd_config)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if getattr(args, "by", None) is None and args.command == "satisfaction":
        args.by = ["agency", "procedure"]
    try:
        return int(args.func(args) or 0)
    except ConfigError as exc:
        print(f"configuration error — {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
