"""The named actions flows call, carried out against the tables (or Rasa).

Each table action runs inside the transaction of the event that triggered it, so the
rating or report it writes commits together with the conversation state and the outgoing
messages. External actions (Rasa) run outside any transaction and touch no table.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import bindparam
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from bot.clock import VIETNAM, local_date
from bot.config import Settings
from bot.nlu import NluClient
from bot.officials import link_account
from bot.reports import open_report
from bot.routing import find_commune as find_commune_named
from bot.routing import route_report
from bot.workdays import WorkCalendar
from flows.actions import ACTIONS
from flows.engine import ActionDone, FlowError
from nlu.reading import Reading
from nlu.text import find_dossier_code, find_report_code, fold, is_greeting
from storage.messages import DeferredRating
from storage.models import (
    Agency,
    Dossier,
    DossierWatch,
    FieldOfWork,
    Procedure,
    Rating,
    Report,
)
from storage.ops import insert_ignore, insert_rating, next_in_sequence


@dataclass(frozen=True)
class ActionContext:
    """Who the action runs for and when."""

    session: AsyncSession
    settings: Settings
    citizen_id: int
    channel: str
    user_key: str
    now: datetime
    vars: Mapping[str, Any]
    calendar: WorkCalendar
    # Dossiers looked up ahead for the batch, by code (None: no such dossier, RatedNow:
    # rated in this batch); see `look_up_dossiers`. Absent, each lookup is a statement of
    # its own.
    dossiers: dict[str, Any] | None = None
    # How a `writes_later` action stores a rating with the batch (which may keep it for
    # its last statement): False when the dossier has one already. Absent, it is stored
    # now, on `session`.
    store_rating: Callable[[DeferredRating], Awaitable[bool]] | None = None


@dataclass(frozen=True)
class RatedNow:
    """A dossier rated in this batch: looked up again, it is rated (its rating may not be
    in the table until the batch's last statement)."""

    dossier: dict[str, Any]
    at: datetime


@dataclass(frozen=True)
class ExternalContext:
    """What an external action may use: no session, no table."""

    settings: Settings
    nlu: NluClient | None
    # The fields (lĩnh vực) a complaint can be filed under: [{"value", "label"}].
    fields: list[dict[str, Any]]


Handler = Callable[[ActionContext, Mapping[str, str]], Awaitable[ActionDone]]
ExternalHandler = Callable[[ExternalContext, Mapping[str, str]], Awaitable[ActionDone]]
HANDLERS: dict[str, Handler] = {}
EXTERNAL_HANDLERS: dict[str, ExternalHandler] = {}


def action(name: str) -> Callable[[Handler], Handler]:
    if name not in ACTIONS or ACTIONS[name].external:
        raise ValueError(f"action {name!r} is not a table action declared in flows/actions.py")

    def register(fn: Handler) -> Handler:
        HANDLERS[name] = fn
        return fn

    return register


def external(name: str) -> Callable[[ExternalHandler], ExternalHandler]:
    """Register an external (Rasa) or pure (arguments only) action."""
    spec = ACTIONS.get(name)
    if spec is None or not (spec.external or spec.pure):
        raise ValueError(f"action {name!r} is not declared external or pure in flows/actions.py")

    def register(fn: ExternalHandler) -> ExternalHandler:
        EXTERNAL_HANDLERS[name] = fn
        return fn

    return register


def is_external(name: str) -> bool:
    spec = ACTIONS.get(name)
    return spec is not None and spec.external


def is_pure(name: str) -> bool:
    spec = ACTIONS.get(name)
    return spec is not None and spec.pure


def reads_only(name: str) -> bool:
    spec = ACTIONS.get(name)
    return spec is not None and spec.reads_only


def writes_later(name: str) -> bool:
    spec = ACTIONS.get(name)
    return spec is not None and spec.writes_later


def _checked(name: str, done: ActionDone) -> ActionDone:
    if done.outcome not in ACTIONS[name].outcomes:
        raise FlowError(f"action {name!r} returned undeclared outcome {done.outcome!r}")
    return done


async def run_action(ctx: ActionContext, name: str, args: Mapping[str, str]) -> ActionDone:
    handler = HANDLERS.get(name)
    if handler is None:
        raise FlowError(f"action {name!r} has no handler")
    return _checked(name, await handler(ctx, args))


async def run_external(ctx: ExternalContext, name: str, args: Mapping[str, str]) -> ActionDone:
    handler = EXTERNAL_HANDLERS.get(name)
    if handler is None:
        raise FlowError(f"external action {name!r} has no handler")
    return _checked(name, await handler(ctx, args))


def offline(name: str) -> ActionDone:
    """The outcome of an external action that could not be asked."""
    return ActionDone("unavailable")


# Built once: a statement built for every lookup costs more than running it.
_DOSSIER_TO_RATE_BASE = (
    select(  # type: ignore[call-overload]
        col(Dossier.id),
        col(Dossier.code),
        col(Dossier.status),
        col(Dossier.received_at),
        col(Dossier.due_at),
        col(Dossier.completed_at),
        col(Procedure.name).label("procedure"),
        col(Procedure.field),
        col(Agency.name).label("agency"),
        col(Rating.created_at).label("rated_at"),
    )
    .join(Procedure, col(Procedure.id) == col(Dossier.procedure_id))
    .join(Agency, col(Agency.id) == col(Dossier.agency_id))
    .join(Rating, col(Rating.dossier_id) == col(Dossier.id), isouter=True)
)
_DOSSIER_TO_RATE = _DOSSIER_TO_RATE_BASE.where(col(Dossier.code) == bindparam("code"))
_DOSSIERS_TO_RATE = _DOSSIER_TO_RATE_BASE.where(
    col(Dossier.code).in_(bindparam("codes", expanding=True))
)


async def look_up_dossiers(session: AsyncSession, texts: Iterable[str | None]) -> dict[str, Any]:
    """The dossiers the texts give codes of, in one statement, by code (None for a code
    no dossier has): a batch looks up ahead what its citizens typed, where `find_dossier`
    would make a round trip for each, one after the other."""
    codes = {code for text in texts if text and (code := find_dossier_code(text))}
    if not codes:
        return {}
    connection = await session.connection()
    rows = (await connection.execute(_DOSSIERS_TO_RATE, {"codes": sorted(codes)})).all()
    found = {row.code: row for row in rows}
    return {code: found.get(code) for code in codes}


def _dossier_vars(d: Any) -> dict[str, Any]:
    return {
        "id": d.id,
        "code": d.code,
        "procedure": d.procedure,
        "field": d.field,
        "agency": d.agency,
        "received": local_date(d.received_at),
        "due": local_date(d.due_at) if d.due_at else "",
        "completed": local_date(d.completed_at) if d.completed_at else "",
    }


@action("find_dossier")
async def find_dossier(ctx: ActionContext, args: Mapping[str, str]) -> ActionDone:
    """Is there a completed, not yet rated dossier with this code?"""
    code = find_dossier_code(args.get("code", "")) or args.get("code", "")
    if ctx.dossiers is not None and code in ctx.dossiers:
        row = ctx.dossiers[code]
        if isinstance(row, RatedNow):
            return ActionDone(
                "already_rated",
                {"dossier_code": code, "dossier": row.dossier, "rated_on": local_date(row.at)},
            )
    else:
        result = await (await ctx.session.connection()).execute(_DOSSIER_TO_RATE, {"code": code})
        row = result.first()
    if row is None:
        return ActionDone("not_found", {"dossier_code": code, "dossier": None})
    found = {"dossier_code": code, "dossier": _dossier_vars(row)}
    if row.status != "completed":
        return ActionDone("not_completed", found)
    if row.rated_at is not None:
        return ActionDone("already_rated", {**found, "rated_on": local_date(row.rated_at)})
    fresh = {"answers": {}, "comment": None, "report_code": None}
    return ActionDone(
        "ready", {**found, **fresh, "criteria_count": len(ctx.settings.rating.criteria)}
    )


@action("watch_dossier")
async def watch_dossier(ctx: ActionContext, args: Mapping[str, str]) -> ActionDone:
    """The citizen will be invited to rate the dossier when it is completed."""
    dossier = ctx.vars.get("dossier") or {}
    if dossier.get("id"):
        values = {"dossier_id": dossier["id"], "citizen_id": ctx.citizen_id, "created_at": ctx.now}
        await insert_ignore(ctx.session, DossierWatch, values, ["dossier_id", "citizen_id"])
    return ActionDone("watching")


@action("save_rating")
async def save_rating(ctx: ActionContext, args: Mapping[str, str]) -> ActionDone:
    """Store the rating once per dossier; say whether the citizen was dissatisfied."""
    dossier = ctx.vars.get("dossier") or {}
    answers: Mapping[str, Any] = ctx.vars.get("answers") or {}
    criteria = ctx.settings.rating.criteria
    missing = [c.key for c in criteria if c.key not in answers]
    if not dossier.get("id") or missing:
        raise FlowError(f"save_rating without a dossier or answers (missing {missing})")
    levels = []
    for c in criteria:
        level = ctx.settings.rating.level(int(answers[c.key]))
        if level is None:
            raise FlowError(f"answer {answers[c.key]!r} to {c.key!r} is not on the scale")
        levels.append((c.key, level))
    comment = ctx.vars.get("comment") or None
    values = {
        "dossier_id": dossier["id"],
        "citizen_id": ctx.citizen_id,
        "channel": ctx.channel,
        "comment": comment,
        "created_at": ctx.now,
    }
    answers_stored = [
        {"criterion": key, "value": level.value, "label": level.vi, "counts_as": level.counts_as}
        for key, level in levels
    ]
    rating = DeferredRating(values, answers_stored)
    if ctx.store_rating is not None:
        stored = await ctx.store_rating(rating)
    else:
        stored = await insert_rating(ctx.session, values, answers_stored) is not None
    if not stored:
        # Someone rated this dossier a moment ago, between lookup and save.
        existing = await ctx.session.scalar(
            select(Rating.created_at).where(Rating.dossier_id == dossier["id"])
        )
        return ActionDone("already_rated", {"rated_on": local_date(existing or ctx.now)})
    if ctx.dossiers is not None:  # what was looked up ahead is out of date
        ctx.dossiers[dossier["code"]] = RatedNow(dossier, ctx.now)
    unsatisfied = any(level.counts_as == "unsatisfied" for _, level in levels)
    return ActionDone("unsatisfied" if unsatisfied else "saved")


async def new_report_code(session: AsyncSession, now: datetime) -> str:
    """A receipt code PAKN.YYYYMMDD.NNNN, numbered per Vietnam calendar day."""
    day = now.astimezone(VIETNAM).strftime("%Y%m%d")
    n = await next_in_sequence(session, f"pakn:{day}")
    return f"PAKN.{day}.{n:04d}"


@action("create_feedback")
async def create_feedback(ctx: ActionContext, args: Mapping[str, str]) -> ActionDone:
    """A dissatisfied rating's comment becomes a report about the rated dossier.

    The field is the dossier's; the category is read by Rasa shortly after (the report
    waits as "pending"), and the report goes to the agency that handled the dossier.
    """
    text = (args.get("text") or "").strip()
    if not text:
        return ActionDone("need_text")
    dossier = ctx.vars.get("dossier") or {}
    field = dossier.get("field")
    routed = await route_report(ctx.session, field, None, dossier_id=dossier.get("id"))
    code = await new_report_code(ctx.session, ctx.now)
    rating_id = await ctx.session.scalar(
        select(Rating.id).where(Rating.dossier_id == dossier.get("id"))
    )
    report = Report(
        code=code,
        citizen_id=ctx.citizen_id,
        channel=ctx.channel,
        text=text,
        dossier_id=dossier.get("id"),
        rating_id=rating_id,
        source="rating" if rating_id else "chat",
        field=field,
        field_source="dossier" if field else None,
        nlu_status="pending",
        agency_id=routed.agency.id if routed else None,
        created_at=ctx.now,
    )
    ctx.session.add(report)
    why = routed.reason if routed else None
    await open_report(ctx.session, report, ctx.settings, ctx.calendar, ctx.now, why)
    return ActionDone("created", {"report_code": code})


@action("link_official")
async def link_official(ctx: ActionContext, args: Mapping[str, str]) -> ActionDone:
    """An official sent the one-time code an admin gave them: link this account."""
    official = await link_account(
        ctx.session, args.get("code", ""), ctx.channel, ctx.user_key, ctx.now
    )
    if official is None:
        return ActionDone("invalid")
    return ActionDone("linked", {"official": official})


@external("read_menu_text")
async def read_menu_text(ctx: ExternalContext, args: Mapping[str, str]) -> ActionDone:
    """Free text at the menu: a dossier code goes straight to its rating."""
    text = args.get("text", "")
    code = find_dossier_code(text)
    if code:
        return ActionDone("dossier_code", {"dossier_code": code})
    if is_greeting(text):
        return ActionDone("greeting")
    return ActionDone("other")


# ---------------------------------------------------------------- understanding text

CATEGORY_NAMES = {
    "procedure": {"vi": "về quy định, thủ tục", "en": "about rules and procedures"},
    "conduct": {"vi": "về thái độ, hành vi của cán bộ", "en": "about an official's conduct"},
}
# Menu intents of the Rasa model → outcomes of `understand`.
MENU_INTENTS = {
    "rate": "rate",
    "complain": "complain",
    "ask_status": "ask_status",
    "help": "help",
    "formal_complaint": "formal",
    "thanks": "thanks",
    "greet": "greet",
}
# Below this, the top menu intent is not trusted ("unknown": the menu is shown again).
MENU_CONFIDENCE = 0.5
# Without Rasa, menu text this long is taken for a complaint (the citizen then picks
# the field): a short one is more likely a question we should not misfile.
COMPLAINT_MIN_WORDS = 6


def _field_label(fields: list[dict[str, Any]], key: str | None) -> dict[str, str] | None:
    return next((f["label"] for f in fields if f["value"] == key), None)


def _reading_vars(reading: Reading, fields: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "field": reading.field,
        "field_name": _field_label(fields, reading.field) or "",
        "category": reading.category,
        "category_name": CATEGORY_NAMES.get(reading.category or "", ""),
        "confidence": round(reading.field_confidence, 3),
        "intent": reading.intent,
    }


@external("understand")
async def understand(ctx: ExternalContext, args: Mapping[str, str]) -> ActionDone:
    """What free text at the main menu wants; a complaint is kept as `complaint`."""
    text = args.get("text", "").strip()
    reading = await ctx.nlu.read(text) if ctx.nlu else None
    if reading is None:
        if len(fold(text).split()) >= COMPLAINT_MIN_WORDS:
            return ActionDone("complaint", {"complaint": text})
        return ActionDone("unavailable")
    complaint_mass = sum(reading.fields.values())
    if reading.is_complaint or complaint_mass >= MENU_CONFIDENCE:
        return ActionDone("complaint", {"complaint": text})
    outcome = MENU_INTENTS.get(reading.intent)
    if outcome is None or reading.intent_confidence < MENU_CONFIDENCE:
        return ActionDone("unknown")
    return ActionDone(outcome)


@external("classify_complaint")
async def classify_complaint(ctx: ExternalContext, args: Mapping[str, str]) -> ActionDone:
    """The field and category of a complaint, and how sure Rasa is."""
    text = args.get("text", "").strip()
    found: dict[str, Any] = {
        "nlu": None,
        "picked_field": None,
        "report_dossier": None,
        "commune": None,
        "mentioned_code": find_dossier_code(text) or "",
    }
    reading = await ctx.nlu.read(text) if ctx.nlu else None
    if reading is None or reading.field is None:
        return ActionDone("unavailable", found)
    found["nlu"] = _reading_vars(reading, ctx.fields)
    if reading.intent == "formal_complaint" and reading.intent_confidence >= MENU_CONFIDENCE:
        return ActionDone("formal", found)
    known = _field_label(ctx.fields, reading.field) is not None
    sure = known and reading.field_confidence >= ctx.settings.nlu.threshold
    return ActionDone("sure" if sure else "unsure", found)


# ---------------------------------------------------------------- reports

REPORT_STATUS: dict[str, dict[str, str]] = {
    "new": {
        "vi": "Đã tiếp nhận, đang xác định cơ quan có thẩm quyền",
        "en": "Received, finding the competent agency",
    },
    "assigned": {
        "vi": "Đã chuyển đến cơ quan có thẩm quyền, chờ cán bộ nhận xử lý",
        "en": "Sent to the competent agency, waiting to be taken up",
    },
    "in_progress": {"vi": "Đang được cán bộ xử lý", "en": "Being handled by an official"},
    "answered": {"vi": "Đã có trả lời", "en": "Answered"},
    "resolved": {"vi": "Đã giải quyết", "en": "Resolved"},
    "closed": {"vi": "Đã kết thúc", "en": "Closed"},
    "reopened": {"vi": "Được mở lại, đang xử lý", "en": "Reopened, being handled"},
}


def _dossier_ref(d: Dossier, agency: Agency) -> dict[str, Any]:
    return {"id": d.id, "code": d.code, "agency": agency.name}


@action("link_dossier")
async def link_dossier(ctx: ActionContext, args: Mapping[str, str]) -> ActionDone:
    """The dossier a complaint is about, in any state (delays are complained about)."""
    raw = args.get("code", "")
    code = find_dossier_code(raw)
    if not code:
        return ActionDone("none") if not raw.strip() else ActionDone("not_found")
    row = (
        await ctx.session.exec(
            select(Dossier, Agency)
            .join(Agency, Agency.id == Dossier.agency_id)
            .where(Dossier.code == code)
        )
    ).first()
    if row is None:
        return ActionDone("not_found", {"dossier_code": code})
    return ActionDone("found", {"report_dossier": _dossier_ref(*row), "dossier_code": code})


@action("find_commune")
async def find_commune(ctx: ActionContext, args: Mapping[str, str]) -> ActionDone:
    agency = await find_commune_named(ctx.session, args.get("name", ""))
    if agency is None:
        return ActionDone("not_found")
    return ActionDone("found", {"commune": {"id": agency.id, "name": agency.name}})


async def _field_names(session: AsyncSession) -> dict[str, dict[str, str]]:
    rows = await session.exec(select(FieldOfWork))
    return {f.key: {"vi": f.name_vi, "en": f.name_en} for f in rows}


@action("create_report")
async def create_report(ctx: ActionContext, args: Mapping[str, str]) -> ActionDone:
    """Store the complaint, route it, give its receipt code."""
    text = str(ctx.vars.get("complaint") or "").strip()
    if not text:
        raise FlowError("create_report without a complaint text")
    nlu: Mapping[str, Any] = ctx.vars.get("nlu") or {}
    names = await _field_names(ctx.session)
    picked = ctx.vars.get("picked_field")
    if picked is not None and picked not in names:
        raise FlowError(f"create_report: unknown field {picked!r}")
    field = picked or nlu.get("field") or "other"
    category = nlu.get("category")
    dossier: Mapping[str, Any] = ctx.vars.get("report_dossier") or {}
    commune: Mapping[str, Any] = ctx.vars.get("commune") or {}
    routed = await route_report(
        ctx.session, field, category, dossier_id=dossier.get("id"), commune_id=commune.get("id")
    )
    code = await new_report_code(ctx.session, ctx.now)
    report = Report(
        code=code,
        citizen_id=ctx.citizen_id,
        channel=ctx.channel,
        text=text,
        dossier_id=dossier.get("id"),
        source="chat",
        field=field,
        category=category,
        field_source="citizen" if picked else "nlu",
        nlu_field=nlu.get("field"),
        nlu_category=nlu.get("category"),
        nlu_confidence=nlu.get("confidence"),
        nlu_status="done" if nlu else "pending",
        commune_id=commune.get("id"),
        agency_id=routed.agency.id if routed else None,
        created_at=ctx.now,
    )
    ctx.session.add(report)
    why = routed.reason if routed else None
    await open_report(ctx.session, report, ctx.settings, ctx.calendar, ctx.now, why)
    report = {
        "code": code,
        "field_name": names.get(field, field),
        "agency": routed.agency.name if routed else "",
    }
    return ActionDone("created", {"report": report, "report_code": code})


def _excerpt(text: str, limit: int = 120) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


@action("list_reports")
async def list_reports(ctx: ActionContext, args: Mapping[str, str]) -> ActionDone:
    """This citizen's reports, newest first (five at most)."""
    rows = list(
        await ctx.session.exec(
            select(Report)
            .where(Report.citizen_id == ctx.citizen_id)
            .order_by(Report.id.desc())  # type: ignore[union-attr]
            .limit(5)
        )
    )
    if not rows:
        return ActionDone("none")
    names = await _field_names(ctx.session)
    lines: dict[str, list[str]] = {"vi": [], "en": []}
    for r in rows:
        for lang in ("vi", "en"):
            field = names.get(r.field or "", {}).get(lang, "")
            status = REPORT_STATUS.get(r.status, {}).get(lang, r.status)
            lines[lang].append(f"• {r.code} ({local_date(r.created_at)}) {field}: {status}")
    return ActionDone("some", {"reports_list": {lang: "\n".join(v) for lang, v in lines.items()}})


@action("find_report")
async def find_report(ctx: ActionContext, args: Mapping[str, str]) -> ActionDone:
    """One of this citizen's reports; another citizen's code is answered as not found."""
    raw = args.get("code", "").strip()
    code = find_report_code(raw)
    if not code:
        shown = re.sub(r"^/\w+\s*", "", raw)[:40]
        return ActionDone("not_found", {"report_code": shown})
    row = (
        await ctx.session.exec(
            select(Report, Agency)
            .join(Agency, Agency.id == Report.agency_id, isouter=True)  # type: ignore[arg-type]
            .where(Report.code == code, Report.citizen_id == ctx.citizen_id)
        )
    ).first()
    if row is None:
        return ActionDone("not_found", {"report_code": code})
    report, agency = row
    names = await _field_names(ctx.session)
    return ActionDone(
        "found",
        {
            "report_code": code,
            "report": {
                "code": code,
                "created": local_date(report.created_at),
                "field_name": names.get(report.field or "", ""),
                "agency": agency.name if agency else "",
                "status": REPORT_STATUS.get(report.status, {"vi": report.status}),
                "excerpt": _excerpt(report.text),
            },
        },
    )
