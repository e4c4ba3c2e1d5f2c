"""Runs conversations: one at a time each, in order; many together in one batch.

`notify(channel, user)` says a conversation has new inbox events. Workers take the
conversations notified so far (up to `batch` of them, none already being run) and hand
them to `ConversationService.process`, which handles them in one transaction; what was
notified meanwhile goes in the next batch. The bot runs one worker, on SQLite (there
is one writer anyway) and on PostgreSQL (several processes share the work there).

An event waiting for an external call (Rasa) holds its conversation while the call runs
here, outside any transaction; the conversation is then run again with the outcome. A
sweeper finds events nobody was told about (written by a process that died, or a
failure to retry).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import timedelta

from sqlmodel import select

from bot.actions import run_external
from bot.channels.base import Inbound
from bot.clock import Clock
from bot.conversation import ConversationService, External, Key, Known, call_key
from storage.db import Database
from storage.models import InboxEvent

log = logging.getLogger(__name__)

AGAIN_AFTER = 0.05  # seconds, for a conversation another process wrote meanwhile


class Dispatcher:
    def __init__(
        self,
        service: ConversationService,
        db: Database,
        clock: Clock,
        workers: int = 1,
        batch: int = 64,
        sweep_every: float = 5.0,
        sweep_older_than: float = 2.0,
    ) -> None:
        self.service = service
        self.db = db
        self.clock = clock
        self.workers = workers
        self.batch = batch
        self._dirty: dict[Key, None] = {}  # notified, in order
        self._busy: set[Key] = set()  # in a batch, or waiting for an external call
        self._known: dict[Key, Known] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self.sweep_every = sweep_every
        self.sweep_older_than = timedelta(seconds=sweep_older_than)
        self._sweeper: asyncio.Task[None] | None = None

    def notify(self, channel: str, user_key: str, event: Inbound | None = None) -> None:
        """The conversation has new events; `event`, just stored, may say more: a text
        whose Rasa call can be foreseen has it made now, before its batch."""
        key = (channel, user_key)
        self._dirty[key] = None
        if (
            event is not None
            and event.kind == "text"
            and key not in self._busy
            and self.service.foreseeable(event)
        ):
            self._busy.add(key)  # held until the foresight says whether to wait for Rasa
            self._spawn(self._foresee(key, event), "external")
            return
        self._kick()

    async def _foresee(self, key: Key, event: Inbound) -> None:
        try:
            waiting = await self.service.foresee(event)
        except Exception:
            log.exception("foreseeing the Rasa call of %s:… failed; its batch will ask", key[0])
            waiting = None
        if waiting is None:
            self._busy.discard(key)
            self._kick()
            return
        await self._ask(key, waiting)

    def _kick(self) -> None:
        running = sum(1 for t in self._tasks if t.get_name() == "conversations" and not t.done())
        if running < self.workers and any(k not in self._busy for k in self._dirty):
            self._spawn(self._work(), "conversations")

    def _spawn(self, coro: object, name: str) -> None:
        task = asyncio.create_task(coro, name=name)  # type: ignore[arg-type]
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _take(self) -> list[Key]:
        keys = [k for k in self._dirty if k not in self._busy][: self.batch]
        for k in keys:
            del self._dirty[k]
            self._busy.add(k)
        return keys

    async def _work(self) -> None:
        while keys := self._take():
            try:
                done = await self.service.process(keys, self._known)
            finally:
                self._busy.difference_update(keys)
            for key in keys:
                if key not in done.external:
                    self._known.pop(key, None)
            for key, waiting in done.external.items():
                self._busy.add(key)
                self._spawn(self._ask(key, waiting), "external")
            for key in done.more:
                self.notify(*key)
            for key in done.again:
                asyncio.get_running_loop().call_later(AGAIN_AFTER, self.notify, *key)

    async def _ask(self, key: Key, waiting: External) -> None:
        """Carry out the calls an event waits for, outside any transaction; run it again."""
        try:
            outcomes = self._known.setdefault(key, {})
            for call in waiting.calls:
                outcomes[call_key(call)] = await run_external(
                    waiting.context, call.action, call.args
                )
        except Exception:
            log.exception("an external call for %s:… failed; its event is run without it", key[0])
        finally:
            self._busy.discard(key)
        self.notify(*key)

    async def idle(self) -> None:
        """Wait until every conversation that was notified has been handled."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    async def sweep(self) -> int:
        """Notify every conversation with events pending for a while; returns how many."""
        cutoff = self.clock.now() - self.sweep_older_than
        async with self.db.sessions() as s:
            rows = await s.exec(
                select(InboxEvent.channel, InboxEvent.user_key)
                .where(InboxEvent.status == "pending", InboxEvent.received_at <= cutoff)
                .distinct()
                .limit(1000)
            )
            keys = list(rows)
        for channel, user_key in keys:
            self.notify(channel, user_key)
        return len(keys)

    async def _sweep_forever(self) -> None:
        while True:
            try:
                await self.sweep()
            except Exception:
                log.exception("inbox sweep failed; trying again in %ss", self.sweep_every)
            await asyncio.sleep(self.sweep_every)

    def start(self) -> None:
        self._sweeper = asyncio.create_task(self._sweep_forever(), name="inbox-sweeper")

    async def stop(self) -> None:
        """Stop sweeping and let the conversations under way finish."""
        if self._sweeper:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
            self._sweeper = None
        await self.idle()
