"""Conversations' events, a batch of conversations written together.

`process(keys)` takes the pending inbox events of those conversations, runs each event,
in order, through the flow engine and the actions it asks for, and writes the new
states, the domain rows and the outgoing messages together, in one transaction: a
handful of statements for the whole batch, however many conversations are in it. Each
conversation is handled by one process at a time: on SQLite the batch holds the write
lock; on PostgreSQL a batch whose conversation another process wrote meanwhile writes
nothing (storage/messages.py, `Conflict`) and that conversation is run again.

One conversation's failure is its own. An event that fails before any table work (an
official's button, a table action) is counted and the rest of the batch commits. One
that fails after table work undoes the batch, which is then run one conversation at a
time; there each event's table work runs in a savepoint, rolled back when the event
fails. A failed event is retried later, then kept as failed with an apology to the
citizen. (Savepoints for every event of every batch would cost more than such a rare
second pass.)

External actions (asking Rasa) never run inside the transaction. An event that reaches
one whose outcome is not known yet is left as it was (nothing of it written: after table
work, by the same undo and second pass); the batch reports the call, the dispatcher
carries it out outside any transaction, and the event is processed again with the
outcome known (same action, same arguments; a call that was not foreseen — the
conversation moved in between — gets the action's "unavailable" outcome).

Messages whose recipient has nothing else waiting are handed to the outbox sender
already claimed, so they go out at once; the others wait their turn in the outbox.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSessionTransaction
from sqlmodel.ext.asyncio.session import AsyncSession

from bot import official_desk
from bot.actions import (
    ActionContext,
    ExternalContext,
    is_external,
    is_pure,
    look_up_dossiers,
    reads_only,
    run_action,
    run_external,
    writes_later,
)
from bot.channels.base import Inbound, message_body
from bot.clock import Clock
from bot.config import Settings
from bot.flowstore import FlowCache
from bot.logs import mask
from bot.metrics import Metrics
from bot.nlu import NluClient
from bot.outbox import LEASE, OutboxSender
from bot.workdays import WorkCalendar
from flows import engine
from storage import messages
from storage.db import Database
from storage.messages import ConversationRow, EventRow, Outgoing
from storage.models import OutboxMessage
from storage.ops import insert_rating

log = logging.getLogger(__name__)

Key = tuple[str, str]  # (channel, user key)
CallKey = tuple[str, tuple[tuple[str, str], ...]]
# What external calls answered for a conversation, by call (action and arguments: the same
# call gets the same answer, whichever event it is for).
Known = dict[CallKey, engine.ActionDone]

MAX_ATTEMPTS = 3
RECENT_STATES = 10_000  # conversations whose last state is kept in memory
EVENTS_PER_CONVERSATION = 20  # in one batch; the rest in the next one
APOLOGY = {
    "vi": "Xin lỗi anh/chị, hệ thống gặp sự cố khi xử lý tin nhắn vừa rồi. Tin nhắn đã được "
    "lưu lại. Anh/chị vui lòng thử lại sau ít phút hoặc gõ «menu» để bắt đầu lại.",
    "en": "Sorry, something went wrong while handling your last message. It has been kept. "
    'Please try again in a few minutes or type "menu" to start over.',
}
MERGE_UP_TO = 1500  # characters; keeps a merged message under Zalo's 2,000


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


def to_engine_event(ev: EventRow) -> engine.Event:
    if ev.kind == "button":
        return engine.Tap(ev.payload or "", ev.turn)
    if ev.kind == "start":
        return engine.Start(ev.payload)
    if ev.kind == "unsupported":
        return engine.Unsupported(ev.text or "attachment")
    return engine.Text(ev.text or "")


@dataclass
class External:
    """External calls (Rasa) an event waits for before it can be processed."""

    calls: list[engine.Call]
    context: ExternalContext


@dataclass
class Processed:
    """What one batch did, for the dispatcher."""

    # Table work in a savepoint per event (a batch of one conversation). Without, one
    # failing event undoes the batch, which is then run one conversation at a time.
    savepoints: bool = False
    events: int = 0
    # Conversations whose next event waits for external calls.
    external: dict[Key, External] = field(default_factory=dict)
    # Conversations with events left (more than one batch takes): to be run again now.
    more: set[Key] = field(default_factory=set)
    # Conversations another process wrote while the batch ran (PostgreSQL): nothing of
    # theirs was written; to be run again shortly.
    again: set[Key] = field(default_factory=set)
    # Conversations with an event that failed (retried by the sweeper, later).
    failed: set[Key] = field(default_factory=set)


class _Redo(Exception):
    """An event failed, or stepped out to Rasa, after table work that no savepoint can
    undo alone: the batch is undone and its conversations are run one by one."""


class _NeedsExternal(Exception):
    def __init__(self, call: engine.Call, context: ExternalContext) -> None:
        self.call, self.context = call, context


@dataclass
class _Round:
    """The writes a batch collects and makes together at the end."""

    now: datetime
    conversations: dict[int, ConversationRow] = field(default_factory=dict)
    done: list[int] = field(default_factory=list)
    retries: list[dict[str, Any]] = field(default_factory=list)
    messages: list[tuple[ConversationRow, dict[str, Any]]] = field(default_factory=list)
    # Dossiers the batch's texts name, looked up ahead (bot/actions.py, look_up_dossiers).
    dossiers: dict[str, Any] = field(default_factory=dict)
    # Recipients whose messages go straight to the sender (their lanes are held for them).
    reserved: list[Key] = field(default_factory=list)
    # Messages were left waiting in the outbox (the sending loops must look).
    waiting: bool = False


class _Tables:
    """The ORM session of a batch, for the events with table work (official's buttons,
    table actions): made on first use, on the batch's connection; its first write asks
    the batch for a transaction (`writes`)."""

    def __init__(self, conn: AsyncConnection, rows: messages.Batch) -> None:
        self.conn = conn
        self.rows = rows
        self._session: AsyncSession | None = None

    @property
    def used(self) -> bool:
        return self._session is not None

    async def session(self) -> AsyncSession:
        if self._session is None:
            self._session = AsyncSession(
                bind=self.conn,
                expire_on_commit=False,
                join_transaction_mode="rollback_only",
            )
        return self._session

    async def writes(self) -> AsyncSession:
        """The session, for writing: inside the batch's transaction."""
        await self.rows.begin()
        return await self.session()

    async def flush(self) -> None:
        if self._session is not None:
            await self._session.flush()

    def queued_for(self) -> set[Key]:
        """Recipients of outbox messages the table work added (flushed or not)."""
        if self._session is None:
            return set()
        objects = [*self._session.identity_map.values(), *self._session.new]
        return {(o.channel, o.recipient) for o in objects if isinstance(o, OutboxMessage)}

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()


class _Event:
    """One event of a conversation being processed: its savepoint, its messages."""

    def __init__(self, tables: _Tables, savepoints: bool) -> None:
        self.tables_ = tables
        self.savepoints = savepoints
        self.savepoint: AsyncSessionTransaction | None = None
        self.wrote = False  # table work outside a savepoint: a failure undoes the batch
        self.messages: list[dict[str, Any]] = []

    async def tables(self) -> AsyncSession:
        """The session for table work: inside this event's savepoint (opened on first
        use) when the batch has them; else the work stands or falls with the batch."""
        s = await self.tables_.writes()
        if not self.savepoints:
            self.wrote = True
        elif self.savepoint is None:
            self.savepoint = await s.begin_nested()
        return s

    async def store_rating(self, rating: messages.DeferredRating) -> bool:
        """Store a rating: left to the batch's last statement where it can be (PostgreSQL,
        outside a transaction, no savepoints), where it stands or falls with the batch as
        table work does; else now. False when the dossier has a rating already."""
        if not self.savepoints and self.tables_.rows.defer_rating(rating):
            self.wrote = True
            return True
        return await insert_rating(await self.tables(), rating.values, rating.answers) is not None

    async def reads(self) -> AsyncSession:
        """The session, for reading only (nothing to roll back, so no savepoint)."""
        return await self.tables_.session()

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
        # The states this process last wrote, and the flows then: to foresee Rasa calls.
        self._recent: OrderedDict[Key, ConversationRow] = OrderedDict()
        self._libs: Mapping[int | None, engine.Library] = {}

    # ---------------------------------------------------------------- foreseeing Rasa

    def _remember(self, conv: ConversationRow) -> None:
        key = (conv.channel, conv.user_key)
        self._recent[key] = conv
        self._recent.move_to_end(key)
        if len(self._recent) > RECENT_STATES:
            self._recent.popitem(last=False)

    def foreseeable(self, event: Inbound) -> bool:
        """Whether `foresee` may find a Rasa call for this text (no I/O: most texts are
        taps, at steps where no answer leads to Rasa)."""
        return self._foreseen(event) is not None

    def _foreseen(
        self, event: Inbound
    ) -> tuple[engine.Library, engine.State, EventRow, datetime] | None:
        conv = self._recent.get((event.channel, event.user_key))
        if conv is None or event.kind != "text":
            return None
        ev = EventRow(0, event.channel, event.user_key, "text", event.text, None, None, None, 0)
        lib = self._libs.get(conv.flow_version_id)
        if lib is None or official_desk.concerns(conv, ev):
            return None  # an official's answer is for the desk, not for Rasa
        state, now = self._state(conv, ev), self.clock.now()
        fresh = engine.is_fresh(lib, state, now)
        if not engine.may_call(lib, conv.flow_version_id, conv.step, is_external, fresh):
            return None  # no answer here leads to Rasa (a scale tap…): nothing to foresee
        return lib, state, ev, now

    async def foresee(self, event: Inbound) -> External | None:
        """The Rasa call a just-stored text will need, foreseen from the state this process
        last wrote for its conversation: it can be made while the event waits for its
        batch, which then runs it once instead of stopping at the call and running again.
        None when nothing says so. A wrong guess (the state moved in another process)
        costs one Rasa call; the batch asks for the right one."""
        step = self._foreseen(event)
        if step is None:
            return None
        lib, state, ev, now = step
        result = engine.handle(lib, state, to_engine_event(ev), now)
        while (call := result.call) is not None:
            if is_external(call.action):
                return External([call], self._external_context(lib))
            if not is_pure(call.action):
                return None  # table work comes first: the batch decides
            done = await run_external(self._external_context(lib), call.action, call.args)
            result = engine.handle(lib, result.state, done, self.clock.now())
        return None

    # ---------------------------------------------------------------- a batch

    async def process(
        self, keys: Sequence[Key], known: Mapping[Key, Known] | None = None
    ) -> Processed:
        """Handle the pending events of these conversations. Raises nothing: a batch that
        fails as a whole (the database, a bug outside any one conversation) writes nothing
        and is tried again one conversation at a time; one that fails alone has its
        first event's failure recorded."""
        batch = Processed(savepoints=len(keys) == 1)
        known = known or {}
        out = _Round(self.clock.now())
        try:
            with self.metrics.processing.time():
                handed = await self._batch(keys, known, batch, out)
        except Exception as exc:
            if self.sender is not None:
                self.sender.release(out.reserved)
            if len(keys) > 1:
                if not isinstance(exc, _Redo | messages.Conflict):
                    log.warning(
                        "a batch of %s conversations failed, one at a time now: %r",
                        len(keys),
                        exc,
                    )
                batch = Processed()  # what the undone attempt counted went with it
                for key in keys:
                    one = await self.process([key], known)
                    batch.events += one.events
                    batch.external.update(one.external)
                    batch.more |= one.more
                    batch.again |= one.again
                    batch.failed |= one.failed
                return batch
            if isinstance(exc, messages.Conflict):
                batch.again.add(keys[0])
                return batch
            await self._record_failure(keys[0], exc)
            batch.failed.add(keys[0])
            return batch
        if self.sender is not None and out.reserved:
            self.sender.handoff(handed, out.reserved)
        if out.waiting:
            self.on_outbox()
        for conv in out.conversations.values():
            self._remember(conv)
        return batch

    async def _batch(
        self, keys: Sequence[Key], known: Mapping[Key, Known], batch: Processed, out: _Round
    ) -> list[Outgoing]:
        async with self.db.batch() as conn:
            rows = messages.Batch(conn, self.db.is_sqlite, self.db.writer)
            tables = _Tables(conn, rows)
            try:
                loaded = await rows.load(list(keys), self.settings.chat.default_language, out.now)
                libs = await self.flows.libraries_for(
                    loaded.pointers,
                    (c.flow_version_id for c in loaded.conversations.values()),
                    tables.session,
                )
                self._libs = libs
                if len(keys) > 1:  # the dossier codes typed, looked up together
                    texts = (e.text for k in keys for e in loaded.events.get(k, []))
                    out.dossiers = await look_up_dossiers(await tables.session(), texts)
                for key in keys:
                    conv = loaded.conversations.get(key)
                    if conv is None:
                        continue
                    queue = loaded.events.get(key, [])
                    if len(queue) > EVENTS_PER_CONVERSATION:
                        queue = queue[:EVENTS_PER_CONVERSATION]
                        batch.more.add(key)
                    for ev in queue:
                        if not await self._one(tables, conv, ev, libs, known.get(key), out, batch):
                            break
                        batch.events += 1
                return await self._write(rows, tables, loaded, out)
            except BaseException:
                await rows.rollback()
                raise
            finally:
                await tables.close()

    # ---------------------------------------------------------------- one event

    async def _one(
        self,
        tables: _Tables,
        conv: ConversationRow,
        ev: EventRow,
        libs: Mapping[int | None, engine.Library],
        known: Known | None,
        out: _Round,
        batch: Processed,
    ) -> bool:
        """Process one event; False when the conversation stops here for this batch."""
        key = (conv.channel, conv.user_key)
        step = _Event(tables, savepoints=batch.savepoints)
        before = (conv.lang, conv.flow_version_id, conv.step, conv.vars, conv.updated_at)
        outcomes = known or {}
        try:
            lib = libs[conv.flow_version_id]
            await self._apply(step, conv, ev, out.now, lib, outcomes, out.dossiers)
            await step.commit()
        except Exception as exc:
            if step.wrote:
                raise _Redo from exc
            if not isinstance(exc, _NeedsExternal):
                await step.rollback()
                conv.lang, conv.flow_version_id, conv.step, conv.vars, conv.updated_at = before
                self._failed(conv, ev, exc, out)
                batch.failed.add(key)
                return False
            need = exc
            await step.rollback()
            conv.lang, conv.flow_version_id, conv.step, conv.vars, conv.updated_at = before
            batch.external[key] = External([need.call], need.context)
            return False
        out.conversations[conv.id] = conv
        out.done.append(ev.id)
        out.messages.extend((conv, body) for body in step.messages)
        return True

    async def _apply(
        self,
        step: _Event,
        conv: ConversationRow,
        ev: EventRow,
        now: datetime,
        lib: engine.Library,
        known: Mapping[CallKey, engine.ActionDone],
        dossiers: dict[str, Any],
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
                quiet = reads_only(call.action) or writes_later(call.action)
                ctx = ActionContext(
                    await (step.reads() if quiet else step.tables()),
                    self.settings,
                    conv.citizen_id,
                    conv.channel,
                    conv.user_key,
                    now,
                    result.state.vars,
                    self.calendar,
                    dossiers,
                    step.store_rating,
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

    def _state(self, conv: ConversationRow, ev: EventRow) -> engine.State:
        lang = conv.lang or self.settings.chat.default_language
        return engine.State(
            lang=lang,
            version=conv.flow_version_id,
            step=conv.step,
            vars=conv.vars or {},
            updated_at=None if conv.step is None else conv.updated_at,
        )

    def _failed(self, conv: ConversationRow, ev: EventRow, exc: Exception, out: _Round) -> None:
        """Count the failure; after the last attempt the event is kept as failed, the
        conversation starts over and the citizen gets an apology."""
        attempts = (ev.attempts or 0) + 1
        error = f"{type(exc).__name__}: {exc}"[:2000]
        final = isinstance(exc, engine.FlowError) or attempts >= MAX_ATTEMPTS
        row: dict[str, Any] = {"id": ev.id, "attempts": attempts, "error": error}
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
        out.conversations[conv.id] = conv
        apology = message_body(APOLOGY.get(conv.lang, APOLOGY["vi"]), [], None)
        out.messages.append((conv, apology))

    # ---------------------------------------------------------------- the writes

    async def _write(
        self, rows: messages.Batch, tables: _Tables, loaded: messages.Loaded, out: _Round
    ) -> list[Outgoing]:
        """States, inbox marks and messages, together; the messages that can be sent at
        once (claimed here) for the sender."""
        now = out.now
        if tables.used:
            await tables.flush()  # the table actions' own writes first
        queued = tables.queued_for()  # the table actions' own messages
        out.waiting |= bool(queued)
        ready = self._ready({(c.channel, c.user_key) for c, _ in out.messages}, loaded, queued)
        for key in ready:
            self.sender.reserve(key)  # type: ignore[union-attr]  # ready: there is a sender
            out.reserved.append(key)
        changes = messages.Changes(
            conversations=list(out.conversations.values()), done=out.done, failures=out.retries
        )
        lease_until = now + LEASE
        for conv, body in out.messages:
            now_sending = (conv.channel, conv.user_key) in ready
            out.waiting |= not now_sending
            changes.messages.append(
                {
                    "channel": conv.channel,
                    "recipient": conv.user_key,
                    "conversation_id": conv.id,
                    "body": body,
                    "status": "sending" if now_sending else "pending",
                    "attempts": 1 if now_sending else 0,
                    "next_attempt_at": now,
                    "claimed_until": lease_until if now_sending else None,
                    "created_at": now,
                }
            )
        ids = await rows.write(changes, now)
        return [
            Outgoing(i, m["channel"], m["recipient"], m["conversation_id"], m["body"], 1)
            for i, m in zip(ids, changes.messages, strict=True)
            if m["status"] == "sending"
        ]

    def _ready(self, recipients: set[Key], loaded: messages.Loaded, queued: set[Key]) -> set[Key]:
        """The recipients whose new messages can be handed to the sender now: nothing of
        theirs waits in the outbox but what this process's sender is sending already (and
        no table action of this batch queued a message for them)."""
        if self.sender is None or not self.sender.running:
            return set()
        return {
            key
            for key in recipients
            if key not in queued
            and all(self.sender.in_flight(i) for i in loaded.unsent.get(key, ()))
        }

    async def _record_failure(self, key: Key, exc: Exception) -> None:
        """A conversation whose batch could not run at all: its first pending event gets
        the failure (retried, then kept as failed with an apology)."""
        channel, user_key = key
        log.warning("conversation %s:%s could not be processed: %r", channel, mask(user_key), exc)
        out = _Round(self.clock.now())
        try:
            async with self.db.batch() as conn:
                rows = messages.Batch(conn, self.db.is_sqlite, self.db.writer)
                try:
                    loaded = await rows.load([key], self.settings.chat.default_language, out.now)
                    conv = loaded.conversations.get(key)
                    queue = loaded.events.get(key, [])
                    if conv is None or not queue:
                        await rows.rollback()
                        return
                    self._failed(conv, queue[0], exc, out)
                    handed = await self._write(rows, _Tables(conn, rows), loaded, out)
                except BaseException:
                    await rows.rollback()
                    raise
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
        if out.waiting:
            self.on_outbox()
