"""Ingress: store an incoming event in the inbox, once, then let the dispatcher run it.

Events arriving together are stored together: while one write is under way, the next
events wait for it and then go in one statement, in one transaction (a group commit).
Each caller gets its answer — new, or a repeat of a stored (channel, platform id) — only
once its event is committed, so a webhook is answered 200 only for what is kept.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from bot.channels.base import Inbound
from bot.clock import Clock
from bot.dispatcher import Dispatcher
from bot.metrics import Metrics
from storage.db import Database

log = logging.getLogger(__name__)

MAX_BATCH = 500  # events per statement: well under SQLite's limit on bound variables

Waiting = tuple[Inbound, "asyncio.Future[bool]"]


class Ingress:
    def __init__(
        self, db: Database, dispatcher: Dispatcher, clock: Clock, metrics: Metrics | None = None
    ) -> None:
        self.metrics = metrics or Metrics()
        self.db = db
        self.dispatcher = dispatcher
        self.clock = clock
        self._waiting: list[Waiting] = []
        self._writer: asyncio.Task[None] | None = None

    async def accept(self, event: Inbound) -> bool:
        """Store the event; False when the same (channel, platform id) was seen before."""
        future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._waiting.append((event, future))
        if self._writer is None or self._writer.done():
            self._writer = asyncio.create_task(self._write_all(), name="inbox-writer")
        return await future

    async def _write_all(self) -> None:
        while self._waiting:
            batch, self._waiting = self._waiting[:MAX_BATCH], self._waiting[MAX_BATCH:]
            try:
                new = await self._store([event for event, _ in batch])
            except Exception as exc:
                log.exception("could not store %s incoming event(s); the senders get an error")
                for _, future in batch:
                    if not future.done():
                        future.set_exception(exc)
                continue
            for i, (event, future) in enumerate(batch):
                fresh = i in new
                self.metrics.inbox.labels(event.channel, "new" if fresh else "duplicate").inc()
                if fresh:
                    self.dispatcher.notify(event.channel, event.user_key, event)
                if not future.done():
                    future.set_result(fresh)

    async def _store(self, events: list[Inbound]) -> set[int]:
        """Insert the events; the positions of those that were not stored before."""
        now = self.clock.now()
        first: dict[tuple[str, str], int] = {}
        rows: list[dict[str, Any]] = []
        for i, e in enumerate(events):
            if first.setdefault((e.channel, e.platform_id), i) != i:
                continue  # the same delivery twice in one batch: the first one counts
            rows.append(
                {
                    "channel": e.channel,
                    "platform_id": e.platform_id,
                    "user_key": e.user_key,
                    "kind": e.kind,
                    "text": e.text,
                    "payload": e.payload,
                    "turn": e.turn,
                    "lang": e.lang,
                    "received_at": now,
                    "status": "pending",
                    "attempts": 0,
                }
            )
        stored = await self.db.writer.store_inbox(rows)
        return {first[key] for key in stored}
