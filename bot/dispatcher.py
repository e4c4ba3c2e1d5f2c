"""Runs conversations: one at a time each, in order; different conversations in parallel.

`notify(channel, user)` says a conversation has new inbox events. A sweeper finds events
nobody was told about (written by a process that died, or a failure to retry).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import timedelta

from sqlmodel import select

from bot.clock import Clock
from bot.conversation import ConversationService
from storage.db import Database
from storage.models import InboxEvent

log = logging.getLogger(__name__)

Key = tuple[str, str]


class Dispatcher:
    def __init__(
        self,
        service: ConversationService,
        db: Database,
        clock: Clock,
        concurrency: int = 8,
        sweep_every: float = 5.0,
        sweep_older_than: float = 2.0,
    ) -> None:
        self.service = service
        self.db = db
        self.clock = clock
        self._limit = asyncio.Semaphore(concurrency)
        self._running: dict[Key, asyncio.Task[None]] = {}
        self._dirty: set[Key] = set()
        self.sweep_every = sweep_every
        self.sweep_older_than = timedelta(seconds=sweep_older_than)
        self._sweeper: asyncio.Task[None] | None = None

    def notify(self, channel: str, user_key: str) -> None:
        key = (channel, user_key)
        self._dirty.add(key)
        if key not in self._running:
            self._running[key] = asyncio.create_task(self._drain(key), name=f"conv:{channel}")

    async def _drain(self, key: Key) -> None:
        try:
            while key in self._dirty:
                self._dirty.discard(key)
                async with self._limit:
                    while await self.service.process_next(*key):
                        pass
        finally:
            self._running.pop(key, None)

    async def idle(self) -> None:
        """Wait until every conversation that was notified has been handled."""
        while self._running:
            await asyncio.gather(*list(self._running.values()), return_exceptions=True)

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
