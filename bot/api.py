"""The dossier API: `POST /api/v1/dossiers`, called by the one-stop system.

Bearer token from `api.token`; idempotent on (dossier code, event); a malformed body gets
400 with a JSON error naming the field; never a 500 for anything the caller sent.
"""

from __future__ import annotations

import hmac
import logging
from datetime import date, datetime
from typing import Any

from aiohttp import web

from bot.clock import VIETNAM, Clock
from bot.config import Settings
from bot.dossiers import (
    EVENTS,
    DossierEventIn,
    Rejected,
    apply_event,
    dossier_json,
    end_of_day,
    normalise_phone,
)
from bot.links import dossier_links
from bot.logs import mask
from bot.web import json_error
from bot.workdays import WorkCalendar
from nlu.text import find_dossier_code
from storage.db import Database

log = logging.getLogger(__name__)
MAX_BODY = 64 * 1024


def _text(data: dict[str, Any], key: str, max_len: int, required: bool = True) -> str | None:
    value = data.get(key)
    if value is None or value == "":
        if required:
            raise Rejected(f"{key} is required", key)
        return None
    if not isinstance(value, str) or len(value) > max_len:
        raise Rejected(f"{key} must be text of at most {max_len} characters", key)
    return value.strip()


def _when(data: dict[str, Any], key: str, required: bool) -> datetime | None:
    """ISO 8601 date-time (without an offset: Vietnam time) or, for due dates, a date."""
    raw = _text(data, key, 40, required)
    if raw is None:
        return None
    try:
        if len(raw) == 10 and key != "at":
            return end_of_day(date.fromisoformat(raw))
        value = datetime.fromisoformat(raw)
    except ValueError:
        raise Rejected(
            f"{key} must be an ISO 8601 date-time, e.g. 2026-10-08T09:30:00+07:00", key
        ) from None
    return value if value.tzinfo else value.replace(tzinfo=VIETNAM)


def parse_event(data: Any) -> DossierEventIn:
    if not isinstance(data, dict):
        raise Rejected("body must be a JSON object", "body")
    raw_code = _text(data, "code", 80)
    assert raw_code is not None
    code = find_dossier_code(raw_code)
    if code is None or len(raw_code.replace(" ", "")) > len(code) + 2:
        raise Rejected(
            "code must be a dossier code <agency code>-YYMMDD-NNNN, e.g. H15.50.05.13-261008-0975",
            "code",
        )
    event = _text(data, "event", 20)
    if event not in EVENTS:
        raise Rejected(f"event must be one of: {', '.join(EVENTS)}", "event")
    citizen = data.get("citizen") or {}
    if not isinstance(citizen, dict):
        raise Rejected("citizen must be an object with name and phone", "citizen")
    phone = _text(citizen, "phone", 30, required=False)
    try:
        name = _text(citizen, "name", 200, required=False)
    except Rejected as exc:
        raise Rejected(str(exc), "citizen.name") from None
    return DossierEventIn(
        code=code,
        event=event,
        at=_when(data, "at", required=True),  # type: ignore[arg-type]
        procedure_code=_text(data, "procedure_code", 60),  # type: ignore[arg-type]
        agency_code=_text(data, "agency_code", 40),  # type: ignore[arg-type]
        due_at=_when(data, "due_at", required=False),
        citizen_name=name,
        citizen_phone=normalise_phone(phone) if phone else None,
    )


class DossierApi:
    def __init__(
        self,
        db: Database,
        settings: Settings,
        clock: Clock,
        calendar: WorkCalendar,
        channels: dict[str, Any] | None = None,
    ) -> None:
        self.channels = channels or {}
        self.db = db
        self.settings = settings
        self.clock = clock
        self.calendar = calendar

    def routes(self) -> list[web.RouteDef]:
        return [web.post("/api/v1/dossiers", self.post_dossier)]

    def _authorised(self, request: web.Request) -> bool:
        token = self.settings.api.token
        given = request.headers.get("Authorization", "")
        if not token or not given.startswith("Bearer "):
            return False
        return hmac.compare_digest(given[7:].strip().encode(), token.encode())

    async def post_dossier(self, request: web.Request) -> web.Response:
        """Record a dossier event: 201 when applied, 200 when it was already known."""
        if not self._authorised(request):
            reason = (
                "api.token is not configured"
                if not self.settings.api.token
                else "wrong or missing bearer token"
            )
            return json_error(401, reason)
        if (request.content_length or 0) > MAX_BODY:
            return json_error(413, f"body larger than {MAX_BODY} bytes")
        try:
            data = await request.json()
        except ValueError:
            return json_error(400, "body is not valid JSON", "body")
        try:
            ev = parse_event(data)
            async with self.db.transaction() as s:
                applied, dossier = await apply_event(s, ev, self.calendar, self.clock.now())
                body = dossier_json(
                    dossier, dossier_links(self.settings, dossier.code, self.channels)
                )
        except Rejected as exc:
            return json_error(exc.status, str(exc), exc.field)
        log.info(
            "dossier %s event %s %s (citizen phone %s)",
            ev.code,
            ev.event,
            "applied" if applied else "repeated: ignored",
            mask(ev.citizen_phone),
        )
        return web.json_response(
            {"result": "applied" if applied else "duplicate", "dossier": body},
            status=201 if applied else 200,
        )
