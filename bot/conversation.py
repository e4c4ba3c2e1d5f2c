"""Conversations' events, a batch of conversations in one transaction.

`process(keys)` takes the pending inbox events of those conversations (their rows locked,
so each conversation is handled by one process at a time, its events in order), runs
each event through the flow engine and the actions it asks for, and writes the new
states, the domain rows and the outgoing messages together: a handful of statements for
the whole batch, however many conversations are in it.

One conversation's failure is its own: the table work of an event (an official's button,
an action) runs in a savepoint, rolled back if the event fails; the event is retried
later, then kept as failed with an apology to the citizen. The rest of the batch commits.

External actions (asking Rasa) never run inside the transaction. An event that reaches
one whose outcome is not known yet is left as it was (its savepoint rolled back, nothing
written); the batch reports the call, the dispatcher carries it out outside any
transaction, and the event is processed again with the outcome known (same action, same
arguments; a call that was not foreseen — the conversation moved in between — gets the
action's "unavailable" outcome).

Messages whose recipient has nothing else waiting are handed to the outbox sender
already claimed, so they go out at once; the others wait their turn in the outbox.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import bindparam, insert, select, update
from sqlalchemy.ext.asyncio import AsyncSessionTransaction
from sqlmodel.ext.asyncio.session import AsyncSession

from bot import official_desk
from bot.actions import (
    ActionContext,
    ExternalContext,
    is_external,
    is_pure,
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
from bot.outbox import LEASE, OutboxSender
from bot.workdays import WorkCalendar
from flows import engine
from storage.db import Database
from storage.models import Citizen, Conversation, InboxEvent, OutboxMessage
from storage.ops import insert_ignore

log = logging.getLogger(__name__)

Key = tuple[str, str]  # (channel, user key)
CallKey = tuple[str, tuple[tuple[str, str], ...]]
# What external calls answered, for one inbox event: (event id, outcome by call).
Known = tuple[int, dict[CallKey, engine.ActionDone]]

MAX_ATTEMPTS = 3
EVENTS_PER_CONVERSATION = 20  # in one batch; the rest in the next one
APOLOGY = {
    "vi": "Xin lỗi anh/chị, hệ thống gặp sự cố khi xử lý tin nhắn vừa rồi. Tin nhắn đã được "
    "lưu lại. Anh/chị vui lòng thử lại sau ít phút hoặc gõ «menu» để bắt đầu lại.",
    "en": "Sorry, something went wrong while handling your last message. It has been kept. "
    'Please try again in a few minutes or type "menu" to start over.',
}
MERGE_UP_TO = 1500  # characters; keeps a merged message under Zalo's 2,000

CITIZEN = Citizen.__table__  # type: ignore[attr-defined]
CONVERSATION = Conversation.__table__  # type: ignore[attr-defined]
INBOX = InboxEvent.__table__  # type: ignore[attr-defined]
OUTBOX = OutboxMessage.__table__  # type: ignore[attr-defined]


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


@dataclass
class External:
    """An event waiting for external calls (Rasa) before it can be processed."""

    event_id: int
    calls: list[engine.Call]
    context: ExternalContext


@dataclass
class Batch:
    """What one batch did, for the dispatcher."""

    events: int = 0
    # Conversations whose next event waits for external calls.
    external: dict[Key, External] = field(default_factory=dict)
    # Conversations with events left (more than one batch takes): to be run again now.
    more: set[Key] = field(default_factory=set)
    # Conversations another process holds (PostgreSQL): to be run again shortly.
    again: set[Key] = field(default_factory=set)
    # Conversations with an event that failed (retried by the sweeper, later).
    failed: set[Key] = field(default_factory=set)


class _NeedsExternal(Exception):
    def __init__(self, call: engine.Call, context: ExternalContext) -> None:
        self.call, self.context = call, context


@dataclass
class _Round:
    """The writes a batch collects and makes together at the end."""

    now: datetime
    conversations: dict[int, Conversation] = field(default_factory=dict)
    done: list[int] = field(default_factory=list)
    retries: list[dict[str, Any]] = field(default_factory=list)
    messages: list[tuple[Conversation, dict[str, Any]]] = field(default_factory=list)
    # Recipients whose messages go straight to the sender (their lanes are held for them).
    reserved: list[Key] = field(default_factory=list)


class _Event:
    """One event of a conversation being processed: its savepoint, its messages."""

    def __init__(self, s: AsyncSession) -> None:
        self.s = s
        self.savepoint: AsyncSessionTransaction | None = None
        self.messages: list[dict[str, Any]] = []

    async def tables(self) -> AsyncSession:
        """The session, inside this event's savepoint (opened on first use)."""
        if self.savepoint is None:
            self.savepoint = await self.s.begin_nested()
        return self.s

    async def commit(self) -> None:
        if self.savepoint is not None:
            await self.savepoint.commit()

    async def rollback(self) -> None:
        if self.savepoint is not None and self.savepoint.is_active:
            await self.savepoint.rollback()


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
        sender: OutboxSender | None = None,
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
        self.sender = sender

    # ---------------------------------------------------------------- a batch

    async def process(self, keys: Sequence[Key], known: Mapping[Key, Known] | None = None) -> Batch:
        """Handle the pending events of these conversations. Raises nothing: a batch that
        fails as a whole (the database, a bug outside any one conversation) writes nothing
        and is tried again one conversation at a time; one that fails alone has its
        first event's failure recorded."""
        batch = Batch()
        known = known or {}
        out = _Round(self.clock.now())
        try:
            handed = await self._batch(keys, known, batch, out)
        except Exception as exc:
            if self.sender is not None:
                self.sender.release(out.reserved)
            if len(keys) > 1:
                log.warning(
                    "a batch of %s conversations failed, one at a time now: %r", len(keys), exc
                )
                for key in keys:
                    one = await self.process([key], known)
                    batch.events += one.events
                    batch.external.update(one.external)
                    batch.more |= one.more
                    batch.again |= one.again
                    batch.failed |= one.failed
                return batch
            await self._record_failure(keys[0], exc)
            batch.failed.add(keys[0])
            return batch
        if self.sender is not None and out.reserved:
            self.sender.handoff(handed, out.reserved)
        self.on_outbox()
        return batch

    async def _batch(
        self, keys: Sequence[Key], known: Mapping[Key, Known], batch: Batch, out: _Round
    ) -> list[OutboxMessage]:
        now = out.now
        with self.metrics.processing.time():
            async with self.db.transaction() as s:
                convs = await self._conversations(s, keys, now, batch)
                events = await self._pending(s, list(convs))
                libs = await self.flows.libraries(s, (c.flow_version_id for c in convs.values()))
                for key, conv in convs.items():
                    queue = events.get(key, [])
                    if len(queue) > EVENTS_PER_CONVERSATION:
                        queue = queue[:EVENTS_PER_CONVERSATION]
                        batch.more.add(key)
                    for ev in queue:
                        if not await self._one(s, conv, ev, libs, known.get(key), out, batch):
                            break
                        batch.events += 1
                return await self._write(s, out)

    async def _conversations(
        self, s: AsyncSession, keys: Sequence[Key], now: datetime, batch: Batch
    ) -> dict[Key, Conversation]:
        """The conversations, locked for this transaction (created for a first message).

        On PostgreSQL one locked by another process is skipped, to be run again: that
        process is running it, and waiting for it would hold up the whole batch.
        """
        pg = not self.db.is_sqlite
        by_channel: dict[str, list[str]] = defaultdict(list)
        for channel, user_key in keys:
            by_channel[channel].append(user_key)
        found: dict[Key, Conversation] = {}
        for channel, users in by_channel.items():
            query = select(CONVERSATION).where(
                CONVERSATION.c.channel == channel, CONVERSATION.c.user_key.in_(users)
            )
            if pg:
                query = query.with_for_update(skip_locked=True)
            for row in (await s.exec(query)).mappings():
                found[(channel, row["user_key"])] = Conversation(**row)
            missing = [u for u in users if (channel, u) not in found]
            if missing and pg:
                elsewhere = await s.exec(
                    select(CONVERSATION.c.user_key).where(
                        CONVERSATION.c.channel == channel, CONVERSATION.c.user_key.in_(missing)
                    )
                )
                for (user_key,) in elsewhere:
                    batch.again.add((channel, user_key))
                    missing.remove(user_key)
            for user_key in missing:
                found[(channel, user_key)] = await self._new_conversation(s, channel, user_key, now)
        return {k: found[k] for k in keys if k in found}

    async def _new_conversation(
        self, s: AsyncSession, channel: str, user_key: str, now: datetime
    ) -> Conversation:
        citizen_id = (
            await s.exec(insert(CITIZEN).values(created_at=now).returning(CITIZEN.c.id))
        ).scalar_one()
        values = dict(
            channel=channel,
            user_key=user_key,
            citizen_id=citizen_id,
            lang=self.settings.chat.default_language,
            vars={},
            started_at=now,
            updated_at=now,
        )
        if await insert_ignore(s, Conversation, values, ["channel", "user_key"]) is None:
            # Another process created it first: theirs counts (this citizen row goes).
            await s.exec(CITIZEN.delete().where(CITIZEN.c.id == citizen_id))
        query = select(CONVERSATION).where(
            CONVERSATION.c.channel == channel, CONVERSATION.c.user_key == user_key
        )
        if not self.db.is_sqlite:
            query = query.with_for_update()
        row = (await s.exec(query)).mappings().one()
        return Conversation(**row)

    async def _pending(self, s: AsyncSession, keys: list[Key]) -> dict[Key, list[InboxEvent]]:
        """Each conversation's pending events, oldest first."""
        by_channel: dict[str, list[str]] = defaultdict(list)
        for channel, user_key in keys:
            by_channel[channel].append(user_key)
        out: dict[Key, list[InboxEvent]] = defaultdict(list)
        for channel, users in by_channel.items():
            rows = await s.exec(
                select(INBOX)
                .where(
                    INBOX.c.channel == channel,
                    INBOX.c.user_key.in_(users),
                    INBOX.c.status == "pending",
                )
                .order_by(INBOX.c.id)
            )
            for row in rows.mappings():
                out[(channel, row["user_key"])].append(InboxEvent(**row))
        return out

    # ---------------------------------------------------------------- one event

    async def _one(
        self,
        s: AsyncSession,
        conv: Conversation,
        ev: InboxEvent,
        libs: Mapping[int | None, engine.Library],
        known: Known | None,
        out: _Round,
        batch: Batch,
    ) -> bool:
        """Process one event; False when the conversation stops here for this batch."""
        key = (conv.channel, conv.user_key)
        step = _Event(s)
        before = (conv.lang, conv.flow_version_id, conv.step, conv.vars, conv.updated_at)
        outcomes = known[1] if known is not None and known[0] == ev.id else {}
        try:
            await self._apply(step, conv, ev, out.now, libs[conv.flow_version_id], outcomes)
            await step.commit()
        except _NeedsExternal as need:
            await step.rollback()
            conv.lang, conv.flow_version_id, conv.step, conv.vars, conv.updated_at = before
            batch.external[key] = External(ev.id, [need.call], need.context)  # type: ignore[arg-type]
            return False
        except Exception as exc:
            await step.rollback()
            conv.lang, conv.flow_version_id, conv.step, conv.vars, conv.updated_at = before
            self._failed(conv, ev, exc, out)
            batch.failed.add(key)
            return False
        out.conversations[conv.id] = conv  # type: ignore[index]
        out.done.append(ev.id)  # type: ignore[arg-type]
        out.messages.extend((conv, body) for body in step.messages)
        return True

    async def _apply(
        self,
        step: _Event,
        conv: Conversation,
        ev: InboxEvent,
        now: datetime,
        lib: engine.Library,
        known: Mapping[CallKey, engine.ActionDone],
    ) -> None:
        if ev.lang in ("vi", "en") and (ev.kind == "start" or conv.step is None):
            conv.lang = ev.lang
        if official_desk.concerns(conv, ev):
            s = await step.tables()
            replies = await official_desk.handle(s, conv, ev, self.settings, self.calendar, now)
            if replies is not None:  # an official's button or reply; "is it solved?"
                step.messages += [message_body(text, buttons, None) for text, buttons in replies]
                conv.updated_at = now
                return
        state = self._state(conv, ev)
        result = engine.handle(lib, state, to_engine_event(ev), now)
        effects = list(result.effects)
        while (call := result.call) is not None:
            if is_external(call.action):
                done = known.get(call_key(call))
                if done is None:
                    raise _NeedsExternal(call, self._external_context(lib))
            elif is_pure(call.action):
                done = await run_external(self._external_context(lib), call.action, call.args)
            else:
                ctx = ActionContext(
                    await step.tables(),
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
            step.messages.append(message_body(send.text, buttons, send.turn))

    def _external_context(self, lib: engine.Library) -> ExternalContext:
        return ExternalContext(self.settings, self.nlu, list(lib.lists.get("fields", [])))

    def _state(self, conv: Conversation, ev: InboxEvent) -> engine.State:
        lang = conv.lang or self.settings.chat.default_language
        return engine.State(
            lang=lang,
            version=conv.flow_version_id,
            step=conv.step,
            vars=conv.vars or {},
            updated_at=None if conv.step is None else conv.updated_at,
        )

    def _failed(self, conv: Conversation, ev: InboxEvent, exc: Exception, out: _Round) -> None:
        """Count the failure; after the last attempt the event is kept as failed, the
        conversation starts over and the citizen gets an apology."""
        attempts = (ev.attempts or 0) + 1
        error = f"{type(exc).__name__}: {exc}"[:2000]
        final = isinstance(exc, engine.FlowError) or attempts >= MAX_ATTEMPTS
        row: dict[str, Any] = {"_id": ev.id, "attempts": attempts, "error": error}
        if not final:
            log.warning(
                "inbox event %s (%s) failed, attempt %s of %s, will retry: %s",
                ev.id,
                ev.channel,
                attempts,
                MAX_ATTEMPTS,
                error,
                exc_info=exc,
            )
            row.update(status="pending", processed_at=None)
            out.retries.append(row)
            return
        log.error(
            "inbox event %s (%s) failed for good, kept in the inbox as failed: %s",
            ev.id,
            ev.channel,
            error,
            exc_info=exc,
        )
        row.update(status="failed", processed_at=out.now)
        out.retries.append(row)
        conv.step = None
        conv.vars = {"_turn": (conv.vars or {}).get("_turn", 0)}
        conv.updated_at = out.now
        out.conversations[conv.id] = conv  # type: ignore[index]
        apology = message_body(APOLOGY.get(conv.lang, APOLOGY["vi"]), [], None)
        out.messages.append((conv, apology))

    # ---------------------------------------------------------------- the writes

    async def _write(self, s: AsyncSession, out: _Round) -> list[OutboxMessage]:
        """States, inbox marks and messages in a few statements; the messages that can be
        sent at once, claimed, for the sender."""
        now = out.now
        if out.conversations:
            await s.exec(
                update(CONVERSATION).where(CONVERSATION.c.id == bindparam("_id")),
                params=[
                    {
                        "_id": c.id,
                        "lang": c.lang,
                        "flow_version_id": c.flow_version_id,
                        "step": c.step,
                        "vars": c.vars,
                        "updated_at": c.updated_at,
                    }
                    for c in out.conversations.values()
                ],
            )
        if out.done:
            await s.exec(
                update(INBOX)
                .where(INBOX.c.id.in_(out.done))
                .values(status="done", processed_at=now)
            )
        if out.retries:
            await s.exec(update(INBOX).where(INBOX.c.id == bindparam("_id")), params=out.retries)
        if not out.messages:
            return []
        await s.flush()  # the actions' own messages first: they hold their place in line
        ready = await self._ready(s, {(c.channel, c.user_key) for c, _ in out.messages})
        for key in ready:
            self.sender.reserve(key)  # type: ignore[union-attr]  # ready: there is a sender
            out.reserved.append(key)
        rows = []
        for conv, body in out.messages:
            now_sending = (conv.channel, conv.user_key) in ready
            rows.append(
                {
                    "channel": conv.channel,
                    "recipient": conv.user_key,
                    "conversation_id": conv.id,
                    "body": body,
                    "status": "sending" if now_sending else "pending",
                    "attempts": 1 if now_sending else 0,
                    "next_attempt_at": now,
                    "claimed_until": now + LEASE if now_sending else None,
                    "created_at": now,
                }
            )
        ids = (
            await s.exec(
                insert(OUTBOX).returning(OUTBOX.c.id, sort_by_parameter_order=True), params=rows
            )
        ).scalars()
        return [
            OutboxMessage(id=i, **row)
            for i, row in zip(ids, rows, strict=True)
            if row["status"] == "sending"
        ]

    async def _ready(self, s: AsyncSession, recipients: set[Key]) -> set[Key]:
        """The recipients whose new messages can be handed to the sender now: nothing of
        theirs waits in the outbox but what this process's sender is sending already."""
        if self.sender is None or not self.sender.running:
            return set()
        by_channel: dict[str, list[str]] = defaultdict(list)
        for channel, recipient in recipients:
            by_channel[channel].append(recipient)
        ready = set(recipients)
        for channel, users in by_channel.items():
            rows = await s.exec(
                select(OUTBOX.c.recipient, OUTBOX.c.id).where(
                    OUTBOX.c.channel == channel,
                    OUTBOX.c.recipient.in_(users),
                    OUTBOX.c.status.in_(("pending", "sending")),
                )
            )
            for recipient, message_id in rows:
                if not self.sender.in_flight(message_id):
                    ready.discard((channel, recipient))
        return ready

    async def _record_failure(self, key: Key, exc: Exception) -> None:
        """A conversation whose batch could not run at all: its first pending event gets
        the failure (retried, then kept as failed with an apology)."""
        channel, user_key = key
        log.warning("conversation %s:%s could not be processed: %r", channel, mask(user_key), exc)
        now = self.clock.now()
        out = _Round(now)
        try:
            async with self.db.transaction() as s:
                batch = Batch()
                convs = await self._conversations(s, [key], now, batch)
                conv = convs.get(key)
                events = await self._pending(s, [key]) if conv is not None else {}
                queue = events.get(key, [])
                if conv is None or not queue:
                    return
                self._failed(conv, queue[0], exc, out)
                handed = await self._write(s, out)
        except Exception:
            if self.sender is not None:
                self.sender.release(out.reserved)
            log.exception(
                "could not record the failure of %s:%s; its events stay pending",
                channel,
                mask(user_key),
            )
            return
        if self.sender is not None and out.reserved:
            self.sender.handoff(handed, out.reserved)
        self.on_outbox()
