"""The named actions flows call, carried out against the tables.

Each runs inside the transaction of the event that triggered it, so the rating or report
it writes commits together with the conversation state and the outgoing messages.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy.exc import IntegrityError
from sqlmodel import select
from sqlmodel.ext.asyncio.session import AsyncSession

from bot.clock import VIETNAM, local_date
from bot.config import Settings
from bot.officials import link_account
from flows.actions import ACTIONS
from flows.engine import ActionDone, FlowError
from nlu.text import find_dossier_code, is_greeting
from storage.models import Agency, Dossier, Procedure, Rating, RatingAnswer, Report
from storage.ops import next_in_sequence


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


Handler = Callable[[ActionContext, Mapping[str, str]], Awaitable[ActionDone]]
HANDLERS: dict[str, Handler] = {}


def action(name: str) -> Callable[[Handler], Handler]:
    if name not in ACTIONS:
        raise ValueError(f"action {name!r} is not declared in flows/actions.py")

    def register(fn: Handler) -> Handler:
        HANDLERS[name] = fn
        return fn

    return register


async def run_action(ctx: ActionContext, name: str, args: Mapping[str, str]) -> ActionDone:
    handler = HANDLERS.get(name)
    if handler is None:
        raise FlowError(f"action {name!r} has no handler")
    done = await handler(ctx, args)
    if done.outcome not in ACTIONS[name].outcomes:
        raise FlowError(f"action {name!r} returned undeclared outcome {done.outcome!r}")
    return done


def _dossier_vars(d: Dossier, procedure: Procedure, agency: Agency) -> dict[str, Any]:
    return {
        "id": d.id,
        "code": d.code,
        "procedure": procedure.name,
        "field": procedure.field,
        "agency": agency.name,
        "received": local_date(d.received_at),
        "due": local_date(d.due_at) if d.due_at else "",
        "completed": local_date(d.completed_at) if d.completed_at else "",
    }


@action("find_dossier")
async def find_dossier(ctx: ActionContext, args: Mapping[str, str]) -> ActionDone:
    """Is there a completed, not yet rated dossier with this code?"""
    code = find_dossier_code(args.get("code", "")) or args.get("code", "")
    row = (
        await ctx.session.exec(
            select(Dossier, Procedure, Agency)
            .join(Procedure, Procedure.id == Dossier.procedure_id)
            .join(Agency, Agency.id == Dossier.agency_id)
            .where(Dossier.code == code)
        )
    ).first()
    if row is None:
        return ActionDone("not_found", {"dossier_code": code, "dossier": None})
    dossier, procedure, agency = row
    found = {"dossier_code": code, "dossier": _dossier_vars(dossier, procedure, agency)}
    if dossier.status != "completed":
        return ActionDone("not_completed", found)
    rating = await ctx.session.scalar(select(Rating).where(Rating.dossier_id == dossier.id))
    if rating is not None:
        return ActionDone("already_rated", {**found, "rated_on": local_date(rating.created_at)})
    fresh = {"answers": {}, "comment": None, "rating_id": None, "report_code": None}
    return ActionDone(
        "ready", {**found, **fresh, "criteria_count": len(ctx.settings.rating.criteria)}
    )


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
    rating = Rating(
        dossier_id=dossier["id"],
        citizen_id=ctx.citizen_id,
        channel=ctx.channel,
        comment=comment,
        created_at=ctx.now,
    )
    try:
        async with ctx.session.begin_nested():
            ctx.session.add(rating)
            await ctx.session.flush()
    except IntegrityError:
        # Someone rated this dossier a moment ago, between lookup and save.
        existing = await ctx.session.scalar(
            select(Rating).where(Rating.dossier_id == dossier["id"])
        )
        rated_on = local_date(existing.created_at) if existing else local_date(ctx.now)
        return ActionDone("already_rated", {"rated_on": rated_on})
    for key, level in levels:
        ctx.session.add(
            RatingAnswer(
                rating_id=rating.id,  # type: ignore[arg-type]
                criterion=key,
                value=level.value,
                label=level.vi,
                counts_as=level.counts_as,
            )
        )
    unsatisfied = any(level.counts_as == "unsatisfied" for _, level in levels)
    return ActionDone("unsatisfied" if unsatisfied else "saved", {"rating_id": rating.id})


async def new_report_code(session: AsyncSession, now: datetime) -> str:
    """A receipt code PAKN.YYYYMMDD.NNNN, numbered per Vietnam calendar day."""
    day = now.astimezone(VIETNAM).strftime("%Y%m%d")
    n = await next_in_sequence(session, f"pakn:{day}")
    return f"PAKN.{day}.{n:04d}"


@action("create_feedback")
async def create_feedback(ctx: ActionContext, args: Mapping[str, str]) -> ActionDone:
    """Store the citizen's text as a report (phản ánh) with a receipt code."""
    text = (args.get("text") or "").strip()
    if not text:
        return ActionDone("need_text")
    dossier = ctx.vars.get("dossier") or {}
    code = await new_report_code(ctx.session, ctx.now)
    ctx.session.add(
        Report(
            code=code,
            citizen_id=ctx.citizen_id,
            channel=ctx.channel,
            text=text,
            dossier_id=dossier.get("id"),
            rating_id=ctx.vars.get("rating_id"),
            source="rating" if ctx.vars.get("rating_id") else "chat",
            field=dossier.get("field"),
            created_at=ctx.now,
        )
    )
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


@action("read_menu_text")
async def read_menu_text(ctx: ActionContext, args: Mapping[str, str]) -> ActionDone:
    """Free text at the menu: a dossier code goes straight to its rating."""
    text = args.get("text", "")
    code = find_dossier_code(text)
    if code:
        return ActionDone("dossier_code", {"dossier_code": code})
    if is_greeting(text):
        return ActionDone("greeting")
    return ActionDone("unknown")
