"""The life of a report: deadlines, who answers for it, transitions and their audit trail.

    new ─routed─▶ assigned ─accept─▶ in_progress ─reply─▶ answered ─resolve─▶ resolved
                   ▲  │                   └──────────resolve──────────────────▶ │
      reassign ────┘  └─(forward deadline passes: the head above is pressed)    │
                                            closed ◀─citizen: yes─┤
                   in_progress ◀─accept─ reopened ◀─citizen: no───┘ (one level up)

- new: stored, no competent agency found yet;
- assigned: routed to an agency, whose officials are told; it must be taken up, or passed
  on to the competent agency, within the forward deadline ([deadlines] forward_days);
- in_progress: an official took it up (Nhận xử lý);
- answered / resolved: the clock stops pressing; resolved asks the citizen to confirm.

Every transition writes a `ReportEvent` (who, when, why). Deadlines are in working days
(bot/workdays.py); the ladder (config [ladder]) says who answers for a report at each
level. All functions work inside the caller's transaction.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime
from typing import Any
from weakref import WeakKeyDictionary

from sqlalchemy import insert
from sqlmodel import select
from sqlmodel.ext.asyncio.session import AsyncSession

from bot.clock import VIETNAM
from bot.config import Settings
from bot.dossiers import end_of_day
from bot.workdays import WorkCalendar
from storage.models import Agency, Official, Report, ReportEvent

# Where each action may start from, and where it leads.
TRANSITIONS: dict[str, tuple[tuple[str, ...], str]] = {
    "assign": (("new",), "assigned"),
    "accept": (("new", "assigned", "reopened"), "in_progress"),
    "reply": (("new", "assigned", "in_progress", "answered", "reopened"), "answered"),
    "resolve": (("new", "assigned", "in_progress", "answered", "reopened"), "resolved"),
    "confirm": (("resolved",), "closed"),
    "reopen": (("resolved", "answered"), "reopened"),
    "reassign": (("new", "assigned", "in_progress", "reopened"), "assigned"),
}
# States in which the clock no longer presses anyone.
SETTLED = ("answered", "resolved", "closed")
# States in which nobody has taken the report up yet (the forward deadline runs).
UNTAKEN = ("new", "assigned")


class TransitionError(Exception):
    """The report is not in a state that allows this action (a stale button, a repeat)."""


# Deadlines already worked out, per calendar: a tick computes thousands, over few dates.
_DEADLINES: WeakKeyDictionary[WorkCalendar, dict[tuple[date, int], datetime]] = WeakKeyDictionary()


def deadline(calendar: WorkCalendar, start: datetime, working_days: int) -> datetime:
    """The end (23:59, Vietnam time) of the day `working_days` working days after `start`."""
    key = (start.astimezone(VIETNAM).date(), working_days)
    known = _DEADLINES.setdefault(calendar, {})
    found = known.get(key)
    if found is None:
        found = known[key] = end_of_day(calendar.add_working_days(*key))
    return found


def first_level(report: Report) -> int:
    """Conduct complaints start one level up (never only the accused's own unit)."""
    return 1 if report.category == "conduct" else 0


def event_row(
    report: Report,
    action: str,
    now: datetime,
    actor: str,
    official_id: int | None = None,
    note: str | None = None,
    from_status: str | None = None,
) -> dict[str, Any]:
    """The audit row `record` writes, as column values (for `record_all`)."""
    return {
        "report_id": report.id,
        "at": now,
        "actor": actor,
        "official_id": official_id,
        "action": action,
        "from_status": from_status,
        "to_status": report.status,
        "level": report.level,
        "note": note,
    }


async def record(
    s: AsyncSession,
    report: Report,
    action: str,
    now: datetime,
    actor: str,
    official_id: int | None = None,
    note: str | None = None,
    from_status: str | None = None,
) -> None:
    s.add(ReportEvent(**event_row(report, action, now, actor, official_id, note, from_status)))


async def record_all(s: AsyncSession, rows: list[dict[str, Any]]) -> None:
    """Write many audit rows (`event_row`) in one statement, in order (the clock's batches)."""
    if rows:
        await s.exec(insert(ReportEvent.__table__), params=rows)  # type: ignore[arg-type]


async def open_report(
    s: AsyncSession,
    report: Report,
    settings: Settings,
    calendar: WorkCalendar,
    now: datetime,
    routed: str | None = None,
) -> None:
    """Start the clock on a new report: deadline, level, audit; routed to an agency (its
    `agency_id` set, `routed` saying why), it is assigned there and its officials told."""
    if report.id is None:
        await s.flush()
    report.level = min(first_level(report), len(settings.ladder.levels) - 1)
    days = settings.deadlines.answer_days_for(report.field, report.category)
    report.due_at = deadline(calendar, report.created_at, days)
    report.next_escalation_at = report.due_at
    report.next_reminder_at = next_reminder(settings, calendar, report.created_at, days, now)
    await record(s, report, "created", now, "citizen", note=f"due {report.due_at:%Y-%m-%d}")
    if report.agency_id is None:
        return  # nowhere to go yet: it waits as new
    await assign(s, report, settings, calendar, now, routed)
    from bot.official_desk import announce_new_report  # the desk builds on this module

    await announce_new_report(s, report, settings, now)


async def assign(
    s: AsyncSession,
    report: Report,
    settings: Settings,
    calendar: WorkCalendar,
    now: datetime,
    why: str | None = None,
) -> None:
    """The report is at its agency (`agency_id`): the forward deadline starts."""
    await transition(s, report, "assign", now, "system", note=await _routed_note(s, report, why))
    report.forward_due_at = forward_deadline(settings, calendar, report, now)


def forward_deadline(
    settings: Settings, calendar: WorkCalendar, report: Report, start: datetime
) -> datetime:
    """When the agency must have taken the report up or passed it on."""
    days = settings.deadlines.forward_days_for(report.field, report.category)
    return deadline(calendar, start, days)


async def _routed_note(s: AsyncSession, report: Report, why: str | None) -> str:
    agency = await s.get(Agency, report.agency_id) if report.agency_id is not None else None
    where = agency.code if agency is not None else "—"
    return f"→ {where}" + (f" ({why})" if why else "")


def next_reminder(
    settings: Settings, calendar: WorkCalendar, start: datetime, days: int, after: datetime
) -> datetime | None:
    """The next reminder to the handling official after `after`, if any is left."""
    d = settings.deadlines
    marks = [deadline(calendar, start, max(1, round(days * f))) for f in d.remind_fractions]
    if d.remind_days_before and days > d.remind_days_before:
        marks.append(deadline(calendar, start, days - d.remind_days_before))
    later = sorted(m for m in marks if m > after)
    return later[0] if later else None


@dataclass(frozen=True)
class Responsible:
    level: int
    role: str
    officials: list[Official]


class Directory:
    """The agency tree and its officials, read once (a tick, an official's tap).

    Answers who is responsible at each ladder level without a query per report.
    """

    def __init__(self, agencies: list[Agency], officials: list[Official]) -> None:
        self.agencies = {a.id: a for a in agencies}
        self.heads: dict[int, Official] = {}
        self.officers: dict[int, list[Official]] = {}
        self.officials = {o.id: o for o in officials}
        for o in sorted(officials, key=lambda o: o.id or 0):
            if not o.active:
                continue
            if o.role == "head":
                self.heads.setdefault(o.agency_id, o)
            else:
                self.officers.setdefault(o.agency_id, []).append(o)
        self.offices: dict[int, Agency] = {}
        for a in agencies:
            if a.kind == "office" and a.parent_id is not None:
                self.offices.setdefault(a.parent_id, a)

    @classmethod
    async def load(cls, s: AsyncSession) -> Directory:
        agencies = list(await s.exec(select(Agency)))
        officials = list(await s.exec(select(Official)))
        return cls(agencies, officials)

    def root(self, agency_id: int | None) -> Agency | None:
        agency = self.agencies.get(agency_id) if agency_id is not None else None
        seen = 0
        while agency is not None and agency.parent_id is not None and seen < 50:
            agency = self.agencies.get(agency.parent_id)
            seen += 1
        return agency

    def officials_at(self, report: Report, settings: Settings, level: int) -> list[Official]:
        """Who answers for the report at `level` of the ladder (may be empty)."""
        role = settings.ladder.levels[level].role
        agency = self.agencies.get(report.agency_id) if report.agency_id else None
        head: Official | None = None
        if role == "handling_official":
            if report.official_id is not None:
                official = self.officials.get(report.official_id)
                return [official] if official else []
            return list(self.officers.get(agency.id, [])) if agency else []
        if role == "unit_head":
            head = self.heads.get(agency.id) if agency else None
        elif role == "agency_head":
            target = agency.parent_id if agency and agency.kind == "unit" else None
            target = target or (agency.id if agency else None)
            head = self.heads.get(target) if target is not None else None
        else:
            root = self.root(report.agency_id)
            if root is not None:
                office = self.offices.get(root.id, root)
                head = self.heads.get(office.id) or self.heads.get(root.id)  # type: ignore[arg-type]
        return [head] if head else []

    def responsible(self, report: Report, settings: Settings, level: int) -> Responsible | None:
        """The first level from `level` up with officials who are not the accused."""
        for lv in range(level, len(settings.ladder.levels)):
            found = [
                o
                for o in self.officials_at(report, settings, lv)
                if o.id != report.accused_official_id
            ]
            if found:
                return Responsible(lv, settings.ladder.levels[lv].role, found)
        return None


async def officials_at(
    s: AsyncSession, report: Report, settings: Settings, level: int
) -> list[Official]:
    """Who answers for the report at `level` of the ladder (may be empty)."""
    return (await Directory.load(s)).officials_at(report, settings, level)


async def responsible(
    s: AsyncSession, report: Report, settings: Settings, level: int
) -> Responsible | None:
    """The first level from `level` up whose officials exist and are not the accused."""
    return (await Directory.load(s)).responsible(report, settings, level)


async def transition(
    s: AsyncSession,
    report: Report,
    action: str,
    now: datetime,
    actor: str,
    official_id: int | None = None,
    note: str | None = None,
) -> str:
    """Apply `action` (see TRANSITIONS); raises TransitionError when it does not apply."""
    allowed, target = TRANSITIONS[action]
    if report.status not in allowed:
        raise TransitionError(f"{report.code} is {report.status}: cannot {action}")
    before = report.status
    report.status = target
    if action == "accept" and official_id is not None:
        report.official_id = official_id
    if action == "reply":
        report.answered_at = now
    if action == "resolve":
        report.resolved_at = now
    if action == "confirm":
        report.closed_at = now
    if target in SETTLED:
        report.next_escalation_at = None
        report.next_reminder_at = None
        report.next_update_at = None
    if target not in UNTAKEN:
        report.forward_due_at = None
    await record(s, report, action, now, actor, official_id, note, from_status=before)
    return target


async def reopen(
    s: AsyncSession,
    report: Report,
    settings: Settings,
    calendar: WorkCalendar,
    now: datetime,
    note: str | None = None,
) -> None:
    """The citizen says it is not solved: it climbs again, one level above where it was."""
    await transition(s, report, "reopen", now, "citizen", note=note)
    report.level = min(report.level + 1, len(settings.ladder.levels) - 1)
    grace = settings.ladder.levels[report.level].grace_days or settings.deadlines.answer_days
    report.due_at = deadline(calendar, now, grace)
    report.next_escalation_at = report.due_at


async def reroute(
    s: AsyncSession,
    report: Report,
    agency: Agency,
    settings: Settings,
    calendar: WorkCalendar,
    now: datetime,
    why: str,
) -> None:
    """The system sends a report nobody has taken up to another agency (it was found to
    be about conduct once classified): that agency's officials are told and get the
    forward period from now; the answer deadline still counts from the citizen's day."""
    before = report.agency_id
    report.agency_id = agency.id
    report.level = min(first_level(report), len(settings.ladder.levels) - 1)
    if report.status == "new":
        await assign(s, report, settings, calendar, now, why)
    else:
        report.forward_due_at = forward_deadline(settings, calendar, report, now)
        old = await s.get(Agency, before) if before is not None else None
        note = f"{old.code if old else '—'} → {agency.code} ({why})"
        await record(s, report, "rerouted", now, "system", note=note, from_status=report.status)
    from bot.official_desk import announce_new_report

    await announce_new_report(s, report, settings, now)


async def name_accused(
    s: AsyncSession,
    report: Report,
    accused: Official,
    settings: Settings,
    calendar: WorkCalendar,
    now: datetime,
    note: str = "",
) -> Responsible | None:
    """Record which official the report is about. They can no longer act on it: a report
    they were handling goes back to their agency untaken, and a level whose officials are
    only them is skipped (a head never answers a complaint about themselves). Whoever
    answers for it now, if that changed, is told. Returns who answers for it."""
    directory = await Directory.load(s)
    had = directory.responsible(report, settings, report.level)
    before = report.status
    report.accused_official_id = accused.id
    if report.official_id == accused.id:
        report.official_id = None
        if report.status == "in_progress":
            report.status = "assigned"
            report.forward_due_at = forward_deadline(settings, calendar, report, now)
    found = directory.responsible(report, settings, report.level)
    if found is not None:
        report.level = found.level
    text = f"về cán bộ {accused.name} (#{accused.id})" + (f": {note}" if note else "")
    await record(s, report, "accused", now, "admin", note=text, from_status=before)
    who = {o.id for o in found.officials} if found else set()
    if found is not None and who != ({o.id for o in had.officials} if had else set()):
        from bot.official_desk import announce

        await announce(
            s,
            report,
            settings,
            now,
            f"Phản ánh {report.code} liên quan đến cán bộ {accused.name}, nay chuyển đến "
            "anh/chị xem xét, giải quyết (cán bộ bị phản ánh không tự xử lý phản ánh về mình).",
        )
    return found
