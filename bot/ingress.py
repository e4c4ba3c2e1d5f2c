"""Ingress: store an incoming event in the inbox, once, then let the dispatcher run it."""

from __future__ import annotations

from bot.channels.base import Inbound
from bot.clock import Clock
from bot.dispatcher import Dispatcher
from bot.metrics import Metrics
from storage.db import Database
from storage.models import InboxEvent
from storage.ops import insert_ignore


class Ingress:
    def __init__(
        self, db: Database, dispatcher: Dispatcher, clock: Clock, metrics: Metrics | None = None
    ) -> None:
        self.metrics = metrics or Metrics()
        self.db = db
        self.dispatcher = dispatcher
        self.clock = clock

    async def accept(self, event: Inbound) -> bool:
        """Store the event; False when the same (channel, platform id) was seen before."""
        values = dict(
            channel=event.channel,
            platform_id=event.platform_id,
            user_key=event.user_key,
            kind=event.kind,
            text=event.text,
            payload=event.payload,
            turn=event.turn,
            lang=event.lang,
            received_at=self.clock.now(),
            status="pending",
            attempts=0,
        )
        async with self.db.transaction() as s:
            new_id = await insert_ignore(s, InboxEvent, values, ["channel", "platform_id"])
        self.metrics.inbox.labels(event.channel, "duplicate" if new_id is None else "new").inc()
        if new_id is None:
            return False
        self.dispatcher.notify(event.channel, event.user_key)
        return True
