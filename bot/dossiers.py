"""Dossier events from the one-stop system (hệ thống một cửa): received, completed, late.

Each (dossier code, event) is applied once; a repeat is recognised and changes nothing.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, date, datetime, time
from typing import Any

from sqlalchemy import update
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from bot.clock import VIETNAM
from bot.workdays import WorkCalendar
from storage.models import Agency, Dossier, DossierEvent, DossierWatch, Procedure
from storage.ops import insert_ignore

EVENTS = ("received", "completed", "late")
_PHONE = re.compile(r"^\+?[0-9]{8,15}$")


class Rejected(ValueError):
    """The event cannot be applied; `field` names the part of the request at fault."""

    def __init__(self, message: str, field: str, status: int = 400) -> None:
        super().__init__(message)
        self.field = field
        self.status = status


@dataclass(frozen=True)
class DossierEventIn:
    code: str
    event: str
    at: datetime
    procedure_code: str
    agency_code: str
    due_at: datetime | None = None
    citizen_name: str | None = None
    citizen_phone: str | None = None

    def payload(self) -> dict[str, Any]:
        """What is kept in the event log (no personal data)."""
        return {
            "procedure_code": self.procedure_code,
            "agency_code": self.agency_code,
            "due_at": self.due_at.isoformat() if self.due_at else None,
        }


def normalise_phone(raw: str) -> str:
    """Digits only, with a leading + kept; Vietnamese 84… numbers written as 0…"""
    phone = re.sub(r"[\s.\-()]", "", raw)
    if not _PHONE.match(phone):
        raise Rejected("phone must be 8–15 digits, optionally starting with +", "citizen.phone")
    if phone.startswith("+84"):
        phone = "0" + phone[3:]
    return phone


def end_of_day(day: date) -> datetime:
    """The last minute of that day in Vietnam: a due date lasts the whole day."""
    return datetime.combine(day, time(23, 59), VIETNAM)


async def apply_event(
    session: AsyncSession, ev: DossierEventIn, calendar: WorkCalendar, now: datetime
) -> tuple[bool, Dossier]:
    """Apply one event; returns (applied, dossier). applied is False for a repeat."""
    procedure = await session.scalar(select(Procedure).where(Procedure.code == ev.procedure_code))
    if procedure is None:
        raise Rejected(f"unknown procedure {ev.procedure_code!r}", "procedure_code", 422)
    agency = await session.scalar(select(Agency).where(Agency.code == ev.agency_code))
    if agency is None:
        raise Rejected(f"unknown agency {ev.agency_code!r}", "agency_code", 422)

    first_time = await insert_ignore(
        session,
        DossierEvent,
        dict(dossier_code=ev.code, event=ev.event, at=ev.at, payload=ev.payload(), received_at=now),
        ["dossier_code", "event"],
    )
    await insert_ignore(
        session,
        Dossier,
        dict(
            code=ev.code,
            procedure_id=procedure.id,
            agency_id=agency.id,
            received_at=ev.at,
            status="received",
            updated_at=now,
        ),
        ["code"],
    )
    dossier = await session.scalar(select(Dossier).where(Dossier.code == ev.code).with_for_update())
    assert dossier is not None
    if first_time is None:
        return False, dossier

    dossier.procedure_id = procedure.id  # type: ignore[assignment]
    dossier.agency_id = agency.id  # type: ignore[assignment]
    if ev.citizen_name:
        dossier.citizen_name = ev.citizen_name
    if ev.citizen_phone:
        dossier.citizen_phone = ev.citizen_phone
    if ev.event == "received":
        dossier.received_at = ev.at
        if ev.due_at is None and procedure.time_limit_days > 0:
            local = ev.at.astimezone(VIETNAM).date()
            dossier.due_at = end_of_day(calendar.add_working_days(local, procedure.time_limit_days))
    elif ev.event == "completed":
        dossier.status = "completed"
        dossier.completed_at = ev.at
        # Citizens who asked about it while it was in progress are invited to rate it.
        await session.exec(
            update(DossierWatch)
            .where(
                col(DossierWatch.dossier_id) == dossier.id,
                col(DossierWatch.invited_at).is_(None),
            )
            .values(invite_at=now)
        )  # type: ignore[call-overload]
    elif ev.event == "late" and dossier.status != "completed":
        dossier.status = "late"
    if ev.due_at is not None:
        dossier.due_at = ev.due_at
    dossier.updated_at = now
    return True, dossier


def dossier_json(d: Dossier, links: dict[str, str]) -> dict[str, Any]:
    def iso(v: datetime | None) -> str | None:
        return v.astimezone(UTC).isoformat() if v else None

    return {
        "code": d.code,
        "status": d.status,
        "received_at": iso(d.received_at),
        "due_at": iso(d.due_at),
        "completed_at": iso(d.completed_at),
        "links": links,
    }
