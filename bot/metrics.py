"""Prometheus metrics (`GET /metrics`): what came in, what went out, what is stuck.

Counters are kept per process; queue lengths are read from the database at each scrape,
so they are the same whichever process answers.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from sqlalchemy import func
from sqlmodel import select

from storage.db import Database
from storage.models import InboxEvent, OutboxMessage

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.inbox = Counter(
            "hailong_inbox_events",
            "Incoming events by channel and result (new, duplicate).",
            ["channel", "result"],
            registry=r,
        )
        self.rejected = Counter(
            "hailong_webhook_rejected",
            "Webhook calls refused (bad signature or secret, bad body).",
            ["channel", "reason"],
            registry=r,
        )
        self.sent = Counter("hailong_outbox_sent", "Messages delivered.", ["channel"], registry=r)
        self.retried = Counter(
            "hailong_outbox_retries",
            "Sends that failed and will be retried.",
            ["channel"],
            registry=r,
        )
        self.parked = Counter(
            "hailong_outbox_parked",
            "Messages parked as failed (never silently dropped).",
            ["channel"],
            registry=r,
        )
        self.processing = Histogram(
            "hailong_batch_processing_seconds",
            "Time to handle one batch of conversations' inbox events (one transaction).",
            registry=r,
            buckets=(0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
        )
        self.nlu = Counter(
            "hailong_nlu_requests",
            "Classifications asked of Rasa by result (ok, timeout, error, busy, open, refused).",
            ["result"],
            registry=r,
        )
        self.nlu_seconds = Histogram(
            "hailong_nlu_seconds",
            "Time of one classification by Rasa, as the bot sees it.",
            registry=r,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
        )
        self.queue = Gauge(
            "hailong_queue_length",
            "Rows waiting, by queue and status (read at scrape).",
            ["queue", "status"],
            registry=r,
        )

    async def render(self, db: Database) -> bytes:
        async with db.sessions() as s:
            inbox = await s.exec(
                select(InboxEvent.status, func.count())
                .where(InboxEvent.status != "done")
                .group_by(InboxEvent.status)  # type: ignore[call-overload]
            )
            counts = {("inbox", st): n for st, n in inbox}
            outbox = await s.exec(
                select(OutboxMessage.status, func.count())
                .where(OutboxMessage.status != "sent")
                .group_by(OutboxMessage.status)  # type: ignore[call-overload]
            )
            counts.update({("outbox", st): n for st, n in outbox})
        for queue, statuses in (
            ("inbox", ("pending", "failed")),
            ("outbox", ("pending", "sending", "failed")),
        ):
            for st in statuses:
                self.queue.labels(queue, st).set(counts.get((queue, st), 0))
        return generate_latest(self.registry)
