"""One event of one conversation, in one transaction.

Takes the oldest pending inbox event of a conversation (the conversation row is locked,
so events of one conversation are handled one at a time and in order, even with several
processes), runs the flow engine and the actions it asks for, and writes the new state,
the domain rows and the outgoing messages together.

External actions (asking Rasa) never run inside that transaction. Before it opens, the
engine is run once on a snapshot of the conversation ("look-ahead"): each external action
it reaches is carried out then, and its outcome is kept. Inside the transaction the same
call (same action, same arguments) takes the kept outcome; a call the look-ahead did not
foresee (the conversation moved in between) gets the action's "unavailable" outcome.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime

from sqlmodel import select
from sqlmodel.ext.asyncio.session import AsyncSession

from bot import official_desk
from bot.actions import (
    ActionContext,
    ExternalContext,
    is_external,
    is_pure,
    offline,
    run_action,
    run_external,
)
from bot.channels.base import message_body
from bot.clock import Clock
from bot.config import Settings
from bot.flowstore import FlowCache
from bot.logs import mask
from bot.metrics import Metrics
from bot.nlu import NluClient
from bot.workdays import WorkCalendar
from flows import engine
from storage.db import Database
from storage.models import Citizen, Conversation, InboxEvent, OutboxMessage
from storage.ops import insert_ignore

log = logging.getLogger(__name__)

MAX_ATTEMPTS = 3
APOLOGY = {
    "vi": "Xin lỗi anh/chị, hệ thống gặp sự cố khi xử lý tin nhắn vừa rồi. Tin nhắn đã được "
    "lưu lại. Anh/chị vui lòng thử lại sau ít phút hoặc gõ «menu» để bắt đầu lại.",
    "en": "Sorry, something went wrong while handling your last message. It has been kept. "
    'Please try again in a few minutes or type "menu" to start over.',
}


MERGE_UP_TO = 1500  # characters; keeps a merged message under Zalo's 2,000

CallKey = tuple[str, tuple[tuple[str, str], ...]]


def call_key(call: engine.Call) -> CallKey:
    return call.action, tuple(sorted(call.args.items()))


def merge_sends(sends: list[engine.Send]) -> list[engine.Send]:
    """Join a message without buttons to the one that follows it, as paragraphs.

    One answer then arrives as one message (its question and buttons last), which is
    easier to read and stays within the platforms' per-chat rate (about 1 message/s).
    """
    out: list[engine.Send] = []
    for send in sends:
        prev = out[-1] if out else None
        if prev is not None and not prev.buttons and len(prev.text) + len(send.text) < MERGE_UP_TO:
            out[-1] = engine.Send(f"{prev.text}\n\n{send.text}", send.buttons, send.turn)
        else:
            out.append(send)
    return out


def to_engine_event(ev: InboxEvent) -> engine.Event:
    if ev.kind == "button":
        return engine.Tap(ev.payload or "", ev.turn)
    if ev.kind == "start":
        return engine.Start(ev.payload)
    if ev.kind == "unsupported":
        return engine.Unsupported(ev.text or "attachment")
    return engine.Text(ev.text or "")


class ConversationService:
    def __init__(
        self,
        db: Database,
        settings: Settings,
        clock: Clock,
        flows: FlowCache,
        on_outbox: Callable[[], None] = lambda: None,
        metrics: Metrics | None = None,
        nlu: NluClient | None = None,
        calendar: WorkCalendar | None = None,
    ) -> None:
        self.metrics = metrics or Metrics()
        self.nlu = nlu
        self.calendar = calendar or WorkCalendar(
            settings.workdays.extra_days_off, settings.workdays.makeup_working_days
        )
        self.db = db
        self.settings = settings
        self.clock = clock
        self.flows = flows
        self.on_outbox = on_outbox

    async def process_next(self, channel: str, user_key: str) -> bool:
        """Handle the conversation's oldest pending event; False when there is none.

        Raises nothing: a failure is recorded on the inbox row (retried, then marked
        failed with an apology to the citizen) and logged with the event's id.
        """
        now = self.clock.now()
        event_id: int | None = None
        try:
            known = await self._look_ahead(channel, user_key, now)
            async with self.db.transaction() as s:
                conv = await self._lock_conversation(s, channel, user_key, now)
                ev = await s.scalar(
                    select(InboxEvent)
                    .where(
                        InboxEvent.channel == channel,
                        InboxEvent.user_key == user_key,
                        InboxEvent.status == "pending",
                    )
                    .order_by(InboxEvent.id)  # type: ignore[arg-type]
                    .limit(1)
                )
                if ev is None:
                    return False
                event_id = ev.id
                with self.metrics.processing.time():
                    await self._apply(s, conv, ev, now, known)
                ev.status = "done"
                ev.processed_at = now
        except Exception as exc:
            if event_id is None:
                log.exception("conversation %s:%s could not be loaded", channel, mask(user_key))
                return False
            await self._record_failure(channel, user_key, event_id, exc)
            return False
        self.on_outbox()
        return True

    async def _lock_conversation(
        self, s: AsyncSession, channel: str, user_key: str, now: datetime
    ) -> Conversation:
        query = (
            select(Conversation)
            .where(Conversation.channel == channel, Conversation.user_key == user_key)
            .with_for_update()
        )
        conv = await s.scalar(query)
        if conv is not None:
            return conv
        citizen = Citizen(created_at=now)
        s.add(citizen)
        await s.flush()
        values = dict(
            channel=channel,
            user_key=user_key,
            citizen_id=citizen.id,
            lang=self.settings.chat.default_language,
            vars={},
            started_at=now,
            updated_at=now,
        )
        if await insert_ignore(s, Conversation, values, ["channel", "user_key"]) is None:
            await s.delete(citizen)  # another process created the conversation first
        conv = await s.scalar(query)
        assert conv is not None
        return conv

    async def _look_ahead(
        self, channel: str, user_key: str, now: datetime
    ) -> dict[CallKey, engine.ActionDone]:
        """Carry out, outside any transaction, the external actions the next event needs."""
        known: dict[CallKey, engine.ActionDone] = {}
        async with self.db.sessions() as s:
            ev = await s.scalar(
                select(InboxEvent)
                .where(
                    InboxEvent.channel == channel,
                    InboxEvent.user_key == user_key,
                    InboxEvent.status == "pending",
                )
                .order_by(InboxEvent.id)  # type: ignore[arg-type]
                .limit(1)
            )
            if ev is None or ev.kind != "text":
                return known  # only typed text can lead to an external action
            conv = await s.scalar(
                select(Conversation).where(
                    Conversation.channel == channel, Conversation.user_key == user_key
                )
            )
            if conv is not None and conv.vars.get("_desk"):
                return known  # an official's reply or reason: for the desk, not for Rasa
            lang = conv.lang if conv else self.settings.chat.default_language
            lib = await self.flows.library(s, conv.flow_version_id if conv else None)
        state = self._state(conv, ev, lang)
        result = engine.handle(lib, state, to_engine_event(ev), now)
        while (call := result.call) is not None and (
            is_external(call.action) or is_pure(call.action)
        ):
            done = await run_external(self._external_context(lib), call.action, call.args)
            if is_external(call.action):
                known[call_key(call)] = done
            result = engine.handle(lib, result.state, done, now)
        return known

    def _external_context(self, lib: engine.Library) -> ExternalContext:
        return ExternalContext(self.settings, self.nlu, list(lib.lists.get("fields", [])))

    @staticmethod
    def _state(conv: Conversation | None, ev: InboxEvent, lang: str) -> engine.State:
        if conv is None:
            return engine.State(lang=ev.lang if ev.lang in ("vi", "en") else lang)
        if ev.lang in ("vi", "en") and (ev.kind == "start" or conv.step is None):
            lang = ev.lang
        return engine.State(
            lang=lang,
            version=conv.flow_version_id,
            step=conv.step,
            vars=conv.vars,
            updated_at=None if conv.step is None else conv.updated_at,
        )

    async def _apply(
        self,
        s: AsyncSession,
        conv: Conversation,
        ev: InboxEvent,
        now: datetime,
        known: dict[CallKey, engine.ActionDone] | None = None,
    ) -> None:
        if ev.lang in ("vi", "en") and (ev.kind == "start" or conv.step is None):
            conv.lang = ev.lang
        replies = await official_desk.handle(s, conv, ev, self.settings, self.calendar, now)
        if replies is not None:  # an official's button or reply, a citizen's "is it solved?"
            for text, buttons in replies:
                self._queue(s, conv, message_body(text, buttons, None), now)
            return
        lib = await self.flows.library(s, conv.flow_version_id)
        state = self._state(conv, ev, conv.lang)
        result = engine.handle(lib, state, to_engine_event(ev), now)
        effects = list(result.effects)
        while (call := result.call) is not None:
            if is_external(call.action) or is_pure(call.action):
                if is_external(call.action):
                    done = (known or {}).get(call_key(call)) or offline(call.action)
                else:
                    ext = self._external_context(lib)
                    done = await run_external(ext, call.action, call.args)
                result = engine.handle(lib, result.state, done, now)
                effects.extend(result.effects)
                continue
            ctx = ActionContext(
                s,
                self.settings,
                conv.citizen_id,
                conv.channel,
                conv.user_key,
                now,
                result.state.vars,
                self.calendar,
            )
            done = await run_action(ctx, call.action, call.args)
            result = engine.handle(lib, result.state, done, now)
            effects.extend(result.effects)
        state = result.state
        conv.flow_version_id = state.version
        conv.step = state.step
        conv.vars = dict(state.vars)
        conv.updated_at = now
        for send in merge_sends([e for e in effects if isinstance(e, engine.Send)]):
            buttons = [{"payload": b.payload, "title": b.title} for b in send.buttons]
            self._queue(s, conv, message_body(send.text, buttons, send.turn), now)

    def _queue(self, s: AsyncSession, conv: Conversation, body: dict, now: datetime) -> None:
        s.add(
            OutboxMessage(
                channel=conv.channel,
                recipient=conv.user_key,
                conversation_id=conv.id,
                body=body,
                next_attempt_at=now,
                created_at=now,
            )
        )

    async def _record_failure(
        self, channel: str, user_key: str, event_id: int, exc: Exception
    ) -> None:
        now = self.clock.now()
        permanent = isinstance(exc, engine.FlowError)
        try:
            async with self.db.transaction() as s:
                ev = await s.get(InboxEvent, event_id, with_for_update=True)
                if ev is None or ev.status != "pending":
                    return
                ev.attempts += 1
                ev.error = f"{type(exc).__name__}: {exc}"[:2000]
                if not permanent and ev.attempts < MAX_ATTEMPTS:
                    log.warning(
                        "inbox event %s (%s) failed, attempt %s of %s, will retry: %s",
                        event_id,
                        channel,
                        ev.attempts,
                        MAX_ATTEMPTS,
                        ev.error,
                        exc_info=exc,
                    )
                    return
                log.error(
                    "inbox event %s (%s) failed for good, kept in the inbox as failed: %s",
                    event_id,
                    channel,
                    ev.error,
                    exc_info=exc,
                )
                ev.status = "failed"
                ev.processed_at = now
                conv = await self._lock_conversation(s, channel, user_key, now)
                conv.step = None
                conv.vars = {"_turn": conv.vars.get("_turn", 0)}
                conv.updated_at = now
                self._queue(
                    s, conv, message_body(APOLOGY.get(conv.lang, APOLOGY["vi"]), [], None), now
                )
        except Exception:
            log.exception(
                "could not record the failure of inbox event %s; it stays pending", event_id
            )
            return
        self.on_outbox()
