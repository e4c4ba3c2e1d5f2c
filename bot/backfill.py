"""Reports stored while Rasa could not be asked are classified when it answers again.

A report created with `nlu_status = "pending"` (Rasa down, slow or circuit open; or a
dissatisfied rating's comment, whose category nobody has read yet) gets Rasa's reading
here: `nlu_field`, `nlu_category`, `nlu_confidence`; its `category` if it had none. A
report that turns out to be about an official's conduct and has not been taken up yet
is routed again, one level above (DOMAIN.md), and that agency's officials are told.

Rasa is asked outside any transaction; the update is conditional on the report still
being pending, so several processes doing this at once change each report once.
"""

from __future__ import annotations

import asyncio
import logging

from sqlalchemy import func
from sqlmodel import col, select

from bot.clock import Clock
from bot.config import Settings
from bot.nlu import NluClient
from bot.reports import UNTAKEN, reroute
from bot.routing import route_report
from bot.workdays import WorkCalendar
from storage.db import Database
from storage.models import Report

log = logging.getLogger(__name__)

BATCH = 50


async def classify_pending(
    db: Database,
    nlu: NluClient,
    settings: Settings,
    calendar: WorkCalendar,
    clock: Clock,
    limit: int = BATCH,
) -> int:
    """Classify up to `limit` pending reports; returns how many were classified."""
    if nlu.circuit_open:
        return 0
    async with db.sessions() as s:
        rows = list(
            await s.exec(
                select(Report.id, Report.text)
                .where(Report.nlu_status == "pending")
                .order_by(col(Report.id))
                .limit(limit)
            )
        )
    done = 0
    for report_id, text in rows:
        reading = await nlu.read(text)
        if reading is None or reading.field is None:
            break  # Rasa stopped answering: try again on the next round
        async with db.transaction() as s:
            report = await s.get(Report, report_id, with_for_update=True)
            if report is None or report.nlu_status != "pending":
                continue
            report.nlu_field = reading.field
            report.nlu_category = reading.category
            report.nlu_confidence = round(reading.field_confidence, 3)
            report.nlu_status = "done"
            if report.category is None and reading.category:
                report.category = reading.category
                if reading.category == "conduct" and report.status in UNTAKEN:
                    routed = await route_report(
                        s, report.field, "conduct", report.dossier_id, report.commune_id
                    )
                    if routed is not None and routed.agency.id != report.agency_id:
                        log.info(
                            "report %s is about conduct: routed to %s (%s)",
                            report.code,
                            routed.agency.code,
                            routed.reason,
                        )
                        why = f"conduct, once classified: {routed.reason}"
                        await reroute(
                            s, report, routed.agency, settings, calendar, clock.now(), why
                        )
        done += 1
    if done:
        log.info("classified %s report(s) stored while Rasa was unavailable", done)
    return done


async def pending_count(db: Database) -> int:
    async with db.sessions() as s:
        return int(await s.scalar(select(func.count()).where(Report.nlu_status == "pending")) or 0)


async def run_forever(
    db: Database,
    nlu: NluClient,
    settings: Settings,
    calendar: WorkCalendar,
    clock: Clock,
) -> None:
    every = settings.nlu.backfill_every_seconds
    while True:
        try:
            while await classify_pending(db, nlu, settings, calendar, clock) == BATCH:
                pass
        except Exception:
            log.exception("classifying pending reports failed; trying again in %.0f s", every)
        await asyncio.sleep(every)
