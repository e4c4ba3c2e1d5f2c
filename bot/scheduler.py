"""The clock: due work found in the tables, done once, by whichever process claims it.

Every process runs an APScheduler interval job (`[ladder] tick_seconds`) that calls
`tick()`. State lives in our tables only: a report's `next_escalation_at`,
`forward_due_at`, `next_reminder_at` and `next_update_at` say when it needs something
(indexed, so a tick never scans the table), and the weekly digest is one `digest` row
per (head, week).

Each kind of work is claimed in one transaction that also writes its outcome — the
report moved on and the outbox messages — so it happens exactly once:
PostgreSQL claims rows with `FOR UPDATE SKIP LOCKED` (processes never wait on each other
and never take the same row); SQLite runs one writer at a time and the claim moves the
due time forward. A tick handles at most `batch` items of each kind, so its time stays
flat however many reports there are; work that came due while the service was down is
done by the next ticks, each missed deadline once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import case, func
from sqlmodel import col, select

from bot.clock import VIETNAM, Clock, local_date
from bot.config import Settings
from bot.invitations import invitations
from bot.notices import Notices
from bot.reports import (
    SETTLED,
    UNTAKEN,
    Directory,
    deadline,
    event_row,
    next_reminder,
    record_all,
)
from bot.workdays import WorkCalendar
from storage.db import Database
from storage.models import Digest, Dossier, Procedure, Rating, RatingAnswer, Report
from storage.ops import claim_due, insert_ignore, save_columns

log = logging.getLogger(__name__)

BATCH = 1000
MAX_BUTTONS = 5  # Zalo's limit

# What an escalation moves on (a settled report only loses its next_escalation_at).
_ESCALATED = ("level", "due_at", "next_escalation_at", "next_reminder_at", "next_update_at")

ROLE_NAMES = {
    "handling_official": "cán bộ xử lý",
    "unit_head": "lãnh đạo đơn vị xử lý",
    "agency_head": "lãnh đạo cơ quan có thẩm quyền",
    "province": "Văn phòng UBND tỉnh",
}


@dataclass
class TickResult:
    escalated: int = 0
    untaken: int = 0
    apologies: int = 0
    head_messages: int = 0
    reminders: int = 0
    updates: int = 0
    digests: int = 0
    invitations: int = 0
    messages: int = 0
    seconds: float = 0.0

    @property
    def work(self) -> int:
        return (
            self.escalated
            + self.untaken
            + self.reminders
            + self.updates
            + self.digests
            + self.invitations
        )


@dataclass
class _Lists:
    """What each official hears of in one tick: reports that climbed to them (code, missed
    deadline, new deadline) and reports nobody took up in time."""

    escalated: dict[int, list[tuple[Report, str, str]]] = field(default_factory=dict)
    untaken: dict[int, list[Report]] = field(default_factory=dict)

    def officials(self) -> list[int]:
        return list(dict.fromkeys([*self.escalated, *self.untaken]))

    def messages(self) -> list[tuple[int, str, list[dict[str, str]]]]:
        out = []
        for official_id in self.officials():
            parts: list[str] = []
            shown: list[Report] = []
            if items := self.escalated.get(official_id):
                lines = [f"• {r.code}: quá hạn {old}, hạn mới {new}" for r, old, new in items]
                parts.append(
                    f"Có {len(items)} phản ánh, kiến nghị quá hạn chưa được trả lời, nay chuyển "
                    "đến anh/chị chỉ đạo giải quyết:\n" + _listed(lines)
                )
                shown += [r for r, _, _ in items]
            if reports := self.untaken.get(official_id):
                lines = [
                    f"• {r.code}: gửi ngày {local_date(r.created_at)}, hạn trả lời "
                    f"{local_date(r.due_at) if r.due_at else '—'}"
                    for r in reports
                ]
                parts.append(
                    f"Có {len(reports)} phản ánh, kiến nghị đã quá thời hạn tiếp nhận mà chưa "
                    "được cán bộ nhận xử lý hoặc chuyển đến cơ quan có thẩm quyền:\n"
                    + _listed(lines)
                    + "\nĐề nghị nhận xử lý hoặc chuyển đúng thẩm quyền ngay."
                )
                shown += reports
            out.append((official_id, "\n\n".join(parts), _open_buttons(shown)))
        return out


def _listed(lines: list[str], most: int = 30) -> str:
    """At most `most` lines, then how many more (a message stays readable, and short)."""
    more = [f"… và {len(lines) - most} phản ánh khác"] if len(lines) > most else []
    return "\n".join(lines[:most] + more)


def _open_buttons(reports: list[Report]) -> list[dict[str, str]]:
    return [{"payload": f"of:open:{r.id}", "title": f"Mở {r.code}"} for r in reports][:MAX_BUTTONS]


class Ticker:
    def __init__(
        self,
        db: Database,
        settings: Settings,
        calendar: WorkCalendar,
        clock: Clock,
        on_outbox: Callable[[], None] = lambda: None,
        batch: int = BATCH,
    ) -> None:
        self.db = db
        self.settings = settings
        self.calendar = calendar
        self.clock = clock
        self.on_outbox = on_outbox
        self.batch = batch
        self._scheduler = None
        self._running: asyncio.Task[object] | None = None

    @property
    def pg(self) -> bool:
        return not self.db.is_sqlite

    async def tick(self) -> TickResult:
        """Do the work that is due now; each item once across all processes."""
        started = asyncio.get_running_loop().time()
        now = self.clock.now()
        result = TickResult()
        await self._late(now, result)
        await self._reminders(now, result)
        await self._updates(now, result)
        await self._digests(now, result)
        await self._invitations(now, result)
        result.seconds = asyncio.get_running_loop().time() - started
        if result.messages:
            self.on_outbox()
        if result.work:
            log.info(
                "tick: %s escalated (%s heads told, %s apologies), %s not taken up in time, "
                "%s reminders, %s status updates, %s digests in %.3f s",
                result.escalated,
                result.head_messages,
                result.apologies,
                result.untaken,
                result.reminders,
                result.updates,
                result.digests,
                result.seconds,
            )
        return result

    # ---- missed deadlines: escalation (answer deadline) and the forward deadline

    async def _late(self, now: datetime, result: TickResult) -> None:
        """Reports past their answer deadline climb one level, once, and the citizen gets
        an apology with the new date; reports nobody took up or passed on within the
        forward deadline press their officials and the level above. Each official hears
        of all of it in one message."""
        async with self.db.transaction() as s:
            late = await claim_due(s, Report, Report.next_escalation_at, now, self.batch, self.pg)
            untaken = await claim_due(s, Report, Report.forward_due_at, now, self.batch, self.pg)
            if not late and not untaken:
                return
            directory = await Directory.load(s)
            out = Notices()
            events: list[dict[str, Any]] = []
            lists = _Lists()
            self._escalate(late, directory, now, out, events, lists, result)
            climbed = {r.id for r in late if r.next_escalation_at is not None}
            self._press(untaken, directory, now, events, lists, result, skip=climbed)
            for official_id, text, buttons in lists.messages():
                out.to_official(official_id, text, buttons)
            result.head_messages += len(lists.officials())
            await save_columns(s, late, _ESCALATED)
            await save_columns(s, untaken, ("forward_due_at",))
            await record_all(s, events)
            result.messages += await out.write(s, now)

    def _escalate(
        self,
        due: list[Report],
        directory: Directory,
        now: datetime,
        out: Notices,
        events: list[dict[str, Any]],
        lists: _Lists,
        result: TickResult,
    ) -> None:
        levels = self.settings.ladder.levels
        update_every = timedelta(days=self.settings.deadlines.update_every_days)
        for r in due:
            if r.status in SETTLED or r.due_at is None:
                r.next_escalation_at = None
                continue
            missed = r.due_at
            target = min(r.level + 1, len(levels) - 1)
            found = directory.responsible(r, self.settings, target)
            if found is not None:
                r.level = found.level
            grace = levels[r.level].grace_days or self.settings.deadlines.answer_days
            r.due_at = deadline(self.calendar, missed, grace)
            r.next_escalation_at = r.due_at
            r.next_reminder_at = None  # late now: the heads' list replaces reminders
            r.next_update_at = r.next_update_at or now + update_every
            old, new = local_date(missed), local_date(r.due_at)
            note = f"missed {old}; new deadline {new}"
            events.append(event_row(r, "escalated", now, "system", note=note))
            events.append(event_row(r, "apology", now, "system", note=new))
            who = ROLE_NAMES.get(levels[r.level].role, "cấp trên")
            agency = directory.agencies.get(r.agency_id) if r.agency_id else None
            out.to_citizen(
                r.citizen_id,
                f"Thành thật xin lỗi anh/chị: phản ánh {r.code} chưa được trả lời đúng hạn "
                f"(hạn {old}). Phản ánh đã được chuyển lên {who}"
                f"{' của ' + agency.name if agency and who != ROLE_NAMES['province'] else ''}"
                f" để chỉ đạo giải quyết; hạn trả lời mới là ngày {new}. "
                f"Anh/chị có thể tra cứu bằng cách gõ «/status {r.code}».",
            )
            result.escalated += 1
            result.apologies += 1
            for official in found.officials if found else []:
                lists.escalated.setdefault(official.id, []).append((r, old, new))  # type: ignore[arg-type]

    def _press(
        self,
        due: list[Report],
        directory: Directory,
        now: datetime,
        events: list[dict[str, Any]],
        lists: _Lists,
        result: TickResult,
        skip: set[int | None],
    ) -> None:
        last = len(self.settings.ladder.levels) - 1
        for r in due:
            r.forward_due_at = None
            if r.status not in UNTAKEN or r.id in skip:
                continue  # taken up or passed on in time, or it has just climbed anyway
            # Its own officials, and the level above them, hear of it.
            told: dict[int, None] = {}
            for level in (r.level, min(r.level + 1, last)):
                found = directory.responsible(r, self.settings, level)
                for official in found.officials if found else []:
                    told.setdefault(official.id)  # type: ignore[arg-type]
            for official_id in told:
                lists.untaken.setdefault(official_id, []).append(r)
            events.append(event_row(r, "forward_overdue", now, "system", note=f"{len(told)} told"))
            result.untaken += 1

    # ---- reminders to the handling official before the deadline

    async def _reminders(self, now: datetime, result: TickResult) -> None:
        async with self.db.transaction() as s:
            due = await claim_due(s, Report, Report.next_reminder_at, now, self.batch, self.pg)
            if not due:
                return
            directory = await Directory.load(s)
            out = Notices()
            events: list[dict[str, Any]] = []
            for r in due:
                r.next_reminder_at = None
                if r.status in SETTLED or r.due_at is None or r.due_at <= now:
                    continue
                days = self.settings.deadlines.answer_days_for(r.field, r.category)
                r.next_reminder_at = next_reminder(
                    self.settings, self.calendar, r.created_at, days, now
                )
                found = directory.responsible(r, self.settings, r.level)
                for official in found.officials if found else []:
                    out.to_official(
                        official.id,  # type: ignore[arg-type]
                        f"Nhắc việc: phản ánh {r.code} cần được trả lời trước ngày "
                        f"{local_date(r.due_at)}.",
                        _open_buttons([r]),
                    )
                events.append(event_row(r, "reminder", now, "system", note=local_date(r.due_at)))
                result.reminders += 1
            await save_columns(s, due, ("next_reminder_at",))
            await record_all(s, events)
            result.messages += await out.write(s, now)

    # ---- every few days while late, the citizen hears how it stands

    async def _updates(self, now: datetime, result: TickResult) -> None:
        every = timedelta(days=self.settings.deadlines.update_every_days)
        async with self.db.transaction() as s:
            due = await claim_due(s, Report, Report.next_update_at, now, self.batch, self.pg)
            if not due:
                return
            out = Notices()
            events: list[dict[str, Any]] = []
            for r in due:
                if r.status in SETTLED:
                    r.next_update_at = None
                    continue
                r.next_update_at = now + every
                out.to_citizen(
                    r.citizen_id,
                    f"Phản ánh {r.code} của anh/chị vẫn đang được xử lý, hạn trả lời hiện tại là "
                    f"ngày {local_date(r.due_at) if r.due_at else '—'}. Chúng tôi sẽ tiếp tục "
                    "thông báo khi có kết quả.",
                )
                events.append(event_row(r, "status_update", now, "system"))
                result.updates += 1
            await save_columns(s, due, ("next_update_at",))
            await record_all(s, events)
            result.messages += await out.write(s, now)

    # ---- the weekly digest to every head with reports

    def _week(self, now: datetime) -> str | None:
        """The ISO week whose digest is due now (at or after the configured time)."""
        local = now.astimezone(VIETNAM)
        ladder = self.settings.ladder
        if (local.isoweekday(), local.hour) < (ladder.digest_weekday, ladder.digest_hour):
            local -= timedelta(days=7)
        year, week, _ = local.isocalendar()
        return f"{year}-W{week:02d}"

    async def _digests(self, now: datetime, result: TickResult) -> None:
        week = self._week(now)
        if week is None:
            return
        since = now - timedelta(days=7)
        async with self.db.transaction() as s:
            directory = await Directory.load(s)
            heads = {o.agency_id: o for o in directory.heads.values()}
            done = set(await s.exec(select(Digest.official_id).where(Digest.week == week)))
            todo = [o for o in heads.values() if o.id not in done]
            if not todo:
                return
            # A head answers for their agency and the units below it.
            children: dict[int, list[int]] = {}
            for a in directory.agencies.values():
                if a.parent_id is not None:
                    children.setdefault(a.parent_id, []).append(a.id)  # type: ignore[arg-type]

            def subtree(agency_id: int) -> set[int]:
                seen, todo_ids = set(), [agency_id]
                while todo_ids:
                    a = todo_ids.pop()
                    if a not in seen:
                        seen.add(a)
                        todo_ids.extend(children.get(a, []))
                return seen

            late = case(
                (col(Report.status).in_(SETTLED), 0), (col(Report.due_at) < now, 1), else_=0
            )
            on_time = case((col(Report.answered_at) <= col(Report.due_at), 1), else_=0)
            reports = {
                agency: (n, int(ok or 0), int(overdue or 0))
                for agency, n, ok, overdue in await s.exec(
                    select(Report.agency_id, func.count(), func.sum(on_time), func.sum(late))
                    .where(Report.created_at >= since)
                    .group_by(col(Report.agency_id))
                )
            }
            answers = list(
                await s.exec(
                    select(Dossier.agency_id, Procedure.name, RatingAnswer.counts_as, func.count())
                    .join(Rating, col(Rating.id) == col(RatingAnswer.rating_id))
                    .join(Dossier, col(Dossier.id) == col(Rating.dossier_id))
                    .join(Procedure, col(Procedure.id) == col(Dossier.procedure_id))
                    .where(Rating.created_at >= since)
                    .group_by(
                        col(Dossier.agency_id), col(Procedure.name), col(RatingAnswer.counts_as)
                    )
                )
            )
            out = Notices()
            for head in todo:
                # The (head, week) row is the claim: another process that got there first
                # makes this insert do nothing, and this one sends nothing.
                claim = {"official_id": head.id, "week": week, "created_at": now}
                if await insert_ignore(s, Digest, claim, ["official_id", "week"]) is None:
                    continue
                scope = subtree(head.agency_id)
                n = sum(reports.get(a, (0, 0, 0))[0] for a in scope)
                ok = sum(reports.get(a, (0, 0, 0))[1] for a in scope)
                overdue = sum(reports.get(a, (0, 0, 0))[2] for a in scope)
                per_proc: dict[str, list[int]] = {}
                for agency_id, proc, counts_as, k in answers:
                    if agency_id in scope:
                        tally = per_proc.setdefault(proc, [0, 0])
                        tally[0] += k if counts_as == "satisfied" else 0
                        tally[1] += k
                rated = sum(t[1] for t in per_proc.values())
                if n == 0 and rated == 0:
                    continue
                satisfied = sum(t[0] for t in per_proc.values())
                rate = f"{100 * satisfied / rated:.1f}% ({rated} lượt)" if rated else "chưa có"
                worst = sorted(
                    ((t[0] / t[1], proc) for proc, t in per_proc.items() if t[1] >= 3),
                )[:3]
                lines = [f"   – {proc}: {100 * r:.0f}%" for r, proc in worst if r < 1]
                agency = directory.agencies.get(head.agency_id)
                text = (
                    f"Tổng hợp tuần {week} — {agency.name if agency else ''}:\n"
                    f"• Phản ánh, kiến nghị nhận: {n}\n• Trả lời đúng hạn: {ok}\n"
                    f"• Đang quá hạn: {overdue}\n• Tỷ lệ hài lòng: {rate}"
                )
                if lines:
                    text += "\n• Thủ tục có tỷ lệ hài lòng thấp nhất:\n" + "\n".join(lines)
                out.to_official(head.id, text, [])  # type: ignore[arg-type]
                result.digests += 1
            result.messages += await out.write(s, now)

    # ---- rating invitations when a watched dossier is completed (bot/invitations.py)

    async def _invitations(self, now: datetime, result: TickResult) -> None:
        async with self.db.transaction() as s:
            invited, reminded, messages = await invitations(
                s, self.settings, now, self.batch, self.pg
            )
        result.invitations += invited + reminded
        result.messages += messages

    # ---- running on a schedule

    def start(self) -> None:
        from apscheduler.schedulers.asyncio import AsyncIOScheduler

        # Its "Running job …" lines every tick would drown the log; our tick logs its work.
        logging.getLogger("apscheduler").setLevel(logging.WARNING)
        scheduler = AsyncIOScheduler(timezone="UTC")
        scheduler.add_job(
            self._safe_tick,
            "interval",
            seconds=self.settings.ladder.tick_seconds,
            id="tick",
            max_instances=1,
            coalesce=True,
            # The schedule runs on real time (the work itself on `self.clock`); the first
            # tick comes one interval after start, when the service has settled.
            next_run_time=datetime.now(UTC) + timedelta(seconds=self.settings.ladder.tick_seconds),
        )
        scheduler.start()
        self._scheduler = scheduler  # type: ignore[assignment]

    async def _safe_tick(self) -> None:
        if self._scheduler is None:
            return  # stopping
        self._running = asyncio.current_task()
        try:
            await self.tick()
        except Exception:
            log.exception("tick failed; the work stays due and is retried on the next tick")
        finally:
            self._running = None

    async def stop(self) -> None:
        """No new ticks; a tick under way is cancelled (its transaction rolls back)."""
        scheduler, self._scheduler = self._scheduler, None
        if scheduler is not None:
            with contextlib.suppress(Exception):
                scheduler.shutdown(wait=False)  # type: ignore[attr-defined]
        running = self._running
        if running is not None and not running.done():
            running.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await running
