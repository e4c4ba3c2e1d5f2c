"""`bot.py report …`: reports (phản ánh) from the command line.

For officials whose messenger account is not linked yet: the same actions as the buttons
of a notice (bot/official_desk.py), under the same rules and with the same effects — a
transition with its audit row, and the citizen's message queued in the outbox (a running
bot sends it). `add_report_commands(sub)` adds the `report` command to bot.py's
subparsers and returns its own; as in bot.py, each command function's docstring is its
help, and it returns the exit code (1 with a message on stderr when refused).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any

from bot.config import Settings, load_settings


def _settings(args: argparse.Namespace) -> Settings:
    return load_settings(args.config)


def _fail(message: str) -> int:
    print(message, file=sys.stderr)
    return 1


def _run(args: argparse.Namespace, work: Callable[[Any, Settings], Awaitable[int]]) -> int:
    """Run `work(db, settings)` against the configured database (migrated first)."""
    from bot.logs import setup_logging
    from storage.db import Database, run_migrations

    settings = _settings(args)
    setup_logging(settings.log.level, settings.log.format)
    run_migrations(settings.storage.url, settings.base_dir)

    async def go() -> int:
        db = Database(settings.storage.url, settings.base_dir)
        try:
            return await work(db, settings)
        finally:
            await db.dispose()

    return asyncio.run(go())


def _time(when: datetime | None) -> str:
    from bot.clock import VIETNAM

    return when.astimezone(VIETNAM).strftime("%d/%m/%Y %H:%M") if when else "—"


# ---------------------------------------------------------------- reading


def cmd_report_list(args: argparse.Namespace) -> int:
    """List reports, newest first: code, date, status, level, agency, deadline."""

    async def work(db: Any, settings: Settings) -> int:
        from sqlmodel import select

        from bot.clock import Clock, local_date
        from bot.reports import SETTLED
        from storage.models import Agency, Report

        now = Clock().now()
        async with db.sessions() as s:
            agencies = {a.id: a for a in await s.exec(select(Agency))}
            query = select(Report).order_by(Report.id.desc())  # type: ignore[union-attr]
            if args.agency:
                agency = next((a for a in agencies.values() if a.code == args.agency), None)
                if agency is None:
                    return _fail(f"không có cơ quan mã {args.agency} / no agency {args.agency}")
                query = query.where(Report.agency_id == agency.id)
            if args.status:
                query = query.where(Report.status == args.status)
            rows = list(await s.exec(query))
        shown = 0
        for r in rows:
            overdue = r.due_at is not None and r.due_at < now and r.status not in SETTLED
            if args.overdue and not overdue:
                continue
            agency = agencies.get(r.agency_id)
            due = local_date(r.due_at) if r.due_at else "—"
            print(
                f"{r.code:<20} {local_date(r.created_at)}  {r.status:<10} L{r.level}  "
                f"{agency.code if agency else '—':<14} hạn {due}{'  QUÁ HẠN' if overdue else ''}"
            )
            shown += 1
        print(f"{shown} phản ánh / report(s)")
        return 0

    return _run(args, work)


def cmd_report_show(args: argparse.Namespace) -> int:
    """Show a report in full with its audit trail (who did what, when)."""

    async def work(db: Any, settings: Settings) -> int:
        from sqlmodel import select

        from bot.official_desk import describe, state_name
        from storage.models import Official, ReportEvent

        async with db.sessions() as s:
            report = await _find(s, args.code)
            if report is None:
                return _fail(_not_found(args.code))
            print(f"Phản ánh {report.code} — {await state_name(s, report)}")
            print(f"Trạng thái / status: {report.status}, cấp / level: {report.level}")
            print(await describe(s, report, full=True))
            if report.official_id is not None:
                official = await s.get(Official, report.official_id)
                print(f"Cán bộ xử lý: {official.name if official else report.official_id}")
            print("\nNhật ký / audit trail:")
            events = await s.exec(
                select(ReportEvent)
                .where(ReportEvent.report_id == report.id)
                .order_by(ReportEvent.id)  # type: ignore[arg-type]
            )
            names = {o.id: o.name for o in await s.exec(select(Official))}
            for e in events:
                who = e.actor
                if e.official_id is not None:
                    who += f" {names.get(e.official_id, '')} (#{e.official_id})"
                change = f"{e.from_status or ''}→{e.to_status or ''}"
                note = f"  «{e.note}»" if e.note else ""
                print(f"  {_time(e.at)}  {e.action:<10} {change:<22} L{e.level}  {who}{note}")
        return 0

    return _run(args, work)


async def _find(s: Any, typed: str) -> Any:
    """The report with this code (typed loosely), locked for the transaction."""
    from sqlmodel import select

    from nlu.text import find_report_code
    from storage.models import Report

    code = find_report_code(typed)
    if code is None:
        return None
    return await s.scalar(select(Report).where(Report.code == code).with_for_update())


def _not_found(code: str) -> str:
    return f"Không tìm thấy phản ánh {code}. / No report {code}."


# ---------------------------------------------------------------- acting


def _act(args: argparse.Namespace, what: str) -> int:
    """Find the report and the official, do `what` as the buttons do; refusals exit 1."""

    async def work(db: Any, settings: Settings) -> int:
        from sqlmodel import select

        from bot import official_desk as desk
        from bot.clock import Clock, local_date
        from storage.models import Agency, Official

        now = Clock().now()
        try:
            async with db.transaction() as s:
                report = await _find(s, args.code)
                if report is None:
                    return _fail(_not_found(args.code))
                official = await s.get(Official, args.official)
                if official is None or not official.active:
                    return _fail(
                        f"Không có cán bộ số {args.official} (đang công tác). "
                        f"/ No active official {args.official}."
                    )
                code = report.code
                if what == "accept":
                    await desk.accept(s, report, official, settings, now)
                    due = local_date(report.due_at) if report.due_at else "—"
                    message = desk.say("accepted", "vi", code=code, due=due)
                elif what == "reply":
                    await desk.reply(s, report, official, args.text, settings, now)
                    message = desk.say("replied", "vi", code=code)
                elif what == "resolve":
                    await desk.resolve(s, report, official, settings, now)
                    message = desk.say("resolved", "vi", code=code)
                else:
                    target = await s.scalar(select(Agency).where(Agency.code == args.to))
                    if target is None:
                        return _fail(f"Không có cơ quan mã {args.to}. / No agency {args.to}.")
                    await desk.reassign(s, report, official, target, args.reason, settings, now)
                    message = desk.say("reassigned", "vi", code=code, agency=target.name)
        except desk.DeskError as exc:
            return _fail(exc.text("vi"))
        print(message)
        return 0

    return _run(args, work)


def cmd_report_accept(args: argparse.Namespace) -> int:
    """Take a report up as an official (the citizen is told)."""
    return _act(args, "accept")


def cmd_report_reply(args: argparse.Namespace) -> int:
    """Answer a report: the text is sent to the citizen as written."""
    args.text = (args.text or "").strip()
    if not args.text:
        return _fail("--text trống. / --text is empty.")
    settings = _settings(args)
    if len(args.text) > settings.conversation.max_text_chars:
        limit = settings.conversation.max_text_chars
        return _fail(f"--text dài quá {limit} ký tự. / --text is longer than {limit} characters.")
    return _act(args, "reply")


def cmd_report_resolve(args: argparse.Namespace) -> int:
    """Mark a report resolved: the citizen is asked whether it is really solved."""
    return _act(args, "resolve")


def cmd_report_reassign(args: argparse.Namespace) -> int:
    """Send a report to another agency, with the reason: it starts there afresh."""
    args.reason = (args.reason or "").strip()
    if not args.reason:
        return _fail("--reason trống. / --reason is empty.")
    return _act(args, "reassign")


def cmd_report_accuse(args: argparse.Namespace) -> int:
    """Name the official a report is about (admin): they can no longer act on it."""

    async def work(db: Any, settings: Settings) -> int:
        from bot.clock import Clock
        from bot.reports import name_accused
        from bot.workdays import WorkCalendar
        from storage.models import Official

        now = Clock().now()
        calendar = WorkCalendar(
            settings.workdays.extra_days_off, settings.workdays.makeup_working_days
        )
        async with db.transaction() as s:
            report = await _find(s, args.code)
            if report is None:
                return _fail(_not_found(args.code))
            accused = await s.get(Official, args.official)
            if accused is None:
                return _fail(f"Không có cán bộ số {args.official}. / No official {args.official}.")
            found = await name_accused(
                s, report, accused, settings, calendar, now, (args.note or "").strip()
            )
            code = report.code
        print(f"Phản ánh {code}: cán bộ bị phản ánh là {accused.name} (#{accused.id}).")
        if found is None:
            print("Không còn ai ở các cấp trên để xử lý. / Nobody is left to answer for it.")
        else:
            names = ", ".join(f"{o.name} (#{o.id})" for o in found.officials)
            print(f"Người xử lý / now answering: {names} (cấp / level {found.level})")
        return 0

    return _run(args, work)


# ---------------------------------------------------------------- parser


def add_report_command(
    parent: Any, name: str, fn: Callable[[argparse.Namespace], int]
) -> argparse.ArgumentParser:
    """Add one `report NAME` action whose help is the first line of fn's docstring."""
    doc = (fn.__doc__ or "").strip().splitlines()[0]
    sp = parent.add_parser(name, help=doc, description=doc)
    sp.set_defaults(func=fn)
    return sp


def add_report_commands(sub: Any) -> Any:
    """Add `report` to bot.py's subparsers; returns the `report` subparsers."""
    report = sub.add_parser(
        "report", help="Reports (phản ánh): list, show, accept, reply, resolve, reassign, accuse."
    )
    report_sub = report.add_subparsers(dest="report_command", metavar="ACTION", required=True)

    ls = add_report_command(report_sub, "list", cmd_report_list)
    ls.add_argument("--agency", metavar="CODE", help="only this agency (its code)")
    ls.add_argument(
        "--status",
        choices=["new", "assigned", "in_progress", "answered", "resolved", "closed", "reopened"],
        help="only this status",
    )
    ls.add_argument("--overdue", action="store_true", help="only unanswered reports past due")

    sh = add_report_command(report_sub, "show", cmd_report_show)
    sh.add_argument("code", help="receipt code, e.g. PAKN.20261123.0001")

    def acting(name: str, fn: Callable[[argparse.Namespace], int]) -> argparse.ArgumentParser:
        sp = add_report_command(report_sub, name, fn)
        sp.add_argument("code", help="receipt code, e.g. PAKN.20261123.0001")
        sp.add_argument(
            "--official", type=int, required=True, metavar="ID", help="acting official's id"
        )
        return sp

    acting("accept", cmd_report_accept)
    acting("reply", cmd_report_reply).add_argument(
        "--text", required=True, help="the answer, sent to the citizen as written"
    )
    acting("resolve", cmd_report_resolve)
    ra = acting("reassign", cmd_report_reassign)
    ra.add_argument("--to", required=True, metavar="AGENCY_CODE", help="the agency's code")
    ra.add_argument("--reason", required=True, help="why it goes there (kept in the audit trail)")
    ac = add_report_command(report_sub, "accuse", cmd_report_accuse)
    ac.add_argument("code", help="receipt code, e.g. PAKN.20261123.0001")
    ac.add_argument(
        "--official", type=int, required=True, metavar="ID", help="the official it is about"
    )
    ac.add_argument("--note", help="what the citizen says of them (kept in the audit trail)")
    return report_sub
