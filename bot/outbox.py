"""Egress: deliver outbox messages through their channel, in order per recipient.

Most messages come straight from the batch that wrote them (`handoff`): already claimed
in that transaction, because nothing else of their recipient was waiting, they are sent
at once, each recipient's in order on a lane of its own. The rest wait in the outbox for
a sending loop; each channel has its own, so a slow or rate-limited platform never
delays another one's messages.

A round claims the first unsent message of each recipient (and the due messages right
behind it), marks them `sending` with a lease, sends them in order, and records each
result. A failure puts the message back with a growing delay (or the platform's
retry_after) and holds the recipient's later messages behind it; after
`outbox.max_attempts` it is parked as `failed` with its last error, logged, never
silently dropped. A process that dies mid-send leaves a lease that expires: the message
is sent again (at-least-once at the platform's door; once everywhere else).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import OrderedDict, defaultdict, deque
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, exists, or_, tuple_, update
from sqlalchemy.orm import aliased
from sqlmodel import select

from bot.channels.base import Channel, Message, TemporaryFailure, Undeliverable
from bot.clock import Clock
from bot.config import OutboxSettings
from bot.logs import mask
from bot.metrics import Metrics
from storage.db import Database
from storage.messages import Outgoing
from storage.models import OutboxMessage

log = logging.getLogger(__name__)

Recipient = tuple[str, str]  # (channel, recipient)

LEASE = timedelta(seconds=120)
RECENTLY_RECORDED = 4096  # message ids remembered after they are recorded sent
BATCH = 200


@dataclass
class _Lane:
    """One recipient's handed-over messages, sent in order by one task."""

    queue: deque[Message] = field(default_factory=deque)
    task: asyncio.Task[None] | None = None
    # Transactions under way that will hand messages to this lane.
    holds: int = 0
    # A message failed: the rest go back to the outbox, behind it.
    failed: bool = False

    @property
    def idle(self) -> bool:
        return self.task is None and not self.queue and self.holds <= 0


def _claimable(o: type[OutboxMessage], now: datetime):  # type: ignore[no-untyped-def]
    return and_(
        o.status.in_(("pending", "sending")),  # type: ignore[attr-defined]
        or_(*(and_(*due) for due in _due(o, now))),
    )


def _due(o: type[OutboxMessage], now: datetime) -> tuple[tuple[Any, ...], ...]:
    """Waiting and due; or claimed by a process whose lease ran out. Each of the two is
    found through the (status, next_attempt_at) index on its own."""
    return (
        (o.status == "pending", o.next_attempt_at <= now),
        (o.status == "sending", o.claimed_until < now),  # type: ignore[operator]
    )


class OutboxSender:
    def __init__(
        self,
        db: Database,
        clock: Clock,
        channels: Mapping[str, Channel],
        settings: OutboxSettings,
        metrics: Metrics | None = None,
        idle_poll: float = 1.0,
    ) -> None:
        self.metrics = metrics or Metrics()
        self.db = db
        self.clock = clock
        self.channels = channels
        self.settings = settings
        self.idle_poll = idle_poll
        self._wakes: dict[str, asyncio.Event] = {name: asyncio.Event() for name in channels}
        self._tasks: list[asyncio.Task[None]] = []
        # Handed-off messages: each recipient's lane, and every id not yet recorded sent.
        self._lanes: dict[Recipient, _Lane] = {}
        self._lane_tasks: set[asyncio.Task[None]] = set()
        self._in_flight: set[int] = set()
        # The last messages recorded sent: a batch may have read one as unsent just before.
        self._recorded: OrderedDict[int, None] = OrderedDict()
        # Sent, waiting to be recorded (one transaction for all that are ready).
        self._sent: list[tuple[Message, str | None]] = []
        self._recorder: asyncio.Task[None] | None = None

    @property
    def running(self) -> bool:
        """Whether the sending loops run (messages may be handed to this sender)."""
        return bool(self._tasks)

    def in_flight(self, message_id: int) -> bool:
        """Whether this sender holds the message: handed to it and not recorded sent, or
        recorded sent a moment ago (a batch that read it as unsent just before may hand
        the next message of its recipient over all the same)."""
        return message_id in self._in_flight or message_id in self._recorded

    def wake(self) -> None:
        for event in self._wakes.values():
            event.set()

    # ---- messages handed over by the batch that wrote them

    def reserve(self, recipient: Recipient) -> None:
        """Keep this recipient's lane for messages a transaction under way will hand over
        (`handoff`, or `release` if it does not commit): if a message before them fails
        meanwhile, they are put back behind it instead of overtaking it."""
        self._lanes.setdefault(recipient, _Lane()).holds += 1

    def release(self, recipients: Collection[Recipient]) -> None:
        for key in recipients:
            lane = self._lanes.get(key)
            if lane is None:
                continue
            lane.holds -= 1
            if lane.idle:
                del self._lanes[key]

    def handoff(self, messages: list[Outgoing], reserved: Collection[Recipient]) -> None:
        """Send these claimed messages now, each after those of its recipient before it."""
        back: list[Message] = []
        for m in messages:
            key = (m.channel, m.recipient)
            lane = self._lanes.setdefault(key, _Lane())
            if lane.failed:
                back.append(m)  # one before it failed: it waits in the outbox behind it
                continue
            self._in_flight.add(m.id)  # type: ignore[arg-type]
            lane.queue.append(m)
            if lane.task is None:
                lane.task = asyncio.create_task(self._run_lane(key), name=f"lane-{m.channel}")
                self._lane_tasks.add(lane.task)
                lane.task.add_done_callback(self._lane_tasks.discard)
        self.release(reserved)
        if back:
            task = asyncio.create_task(self._give_back(back), name="outbox-give-back")
            self._lane_tasks.add(task)
            task.add_done_callback(self._lane_tasks.discard)

    async def _run_lane(self, key: Recipient) -> None:
        lane = self._lanes[key]
        queue = lane.queue
        try:
            while queue:
                message = queue[0]
                channel = self.channels[message.channel]
                try:
                    platform_id = await channel.send(message)
                except Undeliverable as exc:
                    await self._park(message, f"undeliverable: {exc}")
                except Exception as exc:
                    # Put back, with every message queued behind it (also those handed
                    # over while that is written, and those of transactions under way).
                    lane.failed = True
                    retry_after = exc.retry_after if isinstance(exc, TemporaryFailure) else None
                    given = len(queue)
                    await self._retry_later(message, exc, retry_after, behind=list(queue)[1:])
                    while len(queue) > given:
                        late, given = list(queue)[given:], len(queue)
                        await self._give_back(late)
                    for m in queue:
                        self._in_flight.discard(m.id)  # type: ignore[arg-type]
                    queue.clear()
                    break
                else:
                    self._sent.append((message, platform_id))
                    if self._recorder is None or self._recorder.done():
                        self._recorder = asyncio.create_task(
                            self._record_sent(), name="outbox-recorder"
                        )
                    queue.popleft()
                    continue
                self._in_flight.discard(message.id)  # type: ignore[arg-type]
                queue.popleft()  # parked: the next one may go
        except asyncio.CancelledError:
            for m in queue:  # their leases run out: the sending loops take them then
                self._in_flight.discard(m.id)  # type: ignore[arg-type]
            queue.clear()
            raise
        finally:
            lane.task = None
            if lane.idle:
                del self._lanes[key]

    async def _record_sent(self) -> None:
        """Record what was sent, all that is ready in one transaction, until none is left."""
        while self._sent:
            sent, self._sent = self._sent, []
            try:
                await self._mark_sent(sent)
            except Exception:
                log.exception(
                    "could not record %s message(s) as sent; their leases run out and they "
                    "are sent again",
                    len(sent),
                )
            else:
                for m, _ in sent:
                    self._recorded[m.id] = None  # type: ignore[index]
                while len(self._recorded) > RECENTLY_RECORDED:
                    self._recorded.popitem(last=False)
            for m, _ in sent:
                self._in_flight.discard(m.id)  # type: ignore[arg-type]

    async def claim(self, channels: Collection[str] | None = None) -> list[OutboxMessage]:
        """Take due messages: each recipient's first unsent one and those right behind it."""
        now = self.clock.now()
        o = OutboxMessage
        earlier = aliased(OutboxMessage)
        unsent_before = exists().where(
            earlier.channel == o.channel,
            earlier.recipient == o.recipient,
            earlier.id < o.id,  # type: ignore[operator]
            earlier.status.in_(("pending", "sending")),  # type: ignore[attr-defined]
        )
        wanted = o.channel.in_(channels or self.channels)  # type: ignore[attr-defined]
        if self.db.is_sqlite:
            # SQLite has one writer: look first, take the write lock only if there is work.
            async with self.db.sessions() as s:
                if not await self._any_due(s, now, wanted):
                    return []
        async with self.db.transaction() as s:
            heads: list[OutboxMessage] = []
            for due in _due(o, now):
                heads += await s.exec(
                    select(o)
                    .where(*due, ~unsent_before, wanted)
                    .order_by(o.id)  # type: ignore[arg-type]
                    .limit(BATCH)
                    .with_for_update(skip_locked=True)
                )
            heads = sorted(heads, key=lambda m: m.id or 0)[:BATCH]
            if not heads:
                return []
            # Each head's recipient is ours now: take the due messages queued behind it.
            recipients = {(h.channel, h.recipient) for h in heads}
            claimed = list(
                await s.exec(
                    select(o)
                    .where(tuple_(o.channel, o.recipient).in_(recipients), _claimable(o, now))
                    .order_by(o.id)  # type: ignore[arg-type]
                    .limit(BATCH * 4)
                    .with_for_update()
                )
            )
            ids = [m.id for m in claimed]
            await s.exec(
                update(o)
                .where(o.id.in_(ids))  # type: ignore[union-attr]
                .values(status="sending", claimed_until=now + LEASE, attempts=o.attempts + 1)
            )  # also updates the loaded rows' attributes (synchronize_session)
        return claimed

    @staticmethod
    async def _any_due(s: Any, now: datetime, wanted: Any) -> bool:
        o = OutboxMessage
        for due in _due(o, now):
            if await s.scalar(select(o.id).where(*due, wanted).limit(1)) is not None:
                return True
        return False

    async def deliver(self, messages: list[OutboxMessage]) -> None:
        """Send claimed messages, each recipient's in order, recipients side by side.

        Successes are recorded together once every queue is done (one transaction per
        round); a channel with an `on_sent` hook hears about them after that commit.
        """
        queues: dict[tuple[str, str], list[OutboxMessage]] = defaultdict(list)
        for m in sorted(messages, key=lambda m: m.id or 0):
            queues[(m.channel, m.recipient)].append(m)
        sent: list[tuple[Message, str | None]] = []
        await asyncio.gather(*(self._deliver_queue(q, sent) for q in queues.values()))
        if sent:
            await self._mark_sent(sent)

    async def _mark_sent(self, sent: list[tuple[Message, str | None]]) -> None:
        now = self.clock.now()
        await self.db.writer.record_sent([(m.id, now, pid) for m, pid in sent])  # type: ignore[misc]
        for m, _ in sent:
            self.metrics.sent.labels(m.channel).inc()
            hook = getattr(self.channels[m.channel], "on_sent", None)
            if hook is not None:
                hook(m)

    async def _deliver_queue(
        self, queue: list[OutboxMessage], sent: list[tuple[Message, str | None]]
    ) -> None:
        for i, message in enumerate(queue):
            channel = self.channels[message.channel]
            try:
                platform_id = await channel.send(message)
            except Undeliverable as exc:
                await self._park(message, f"undeliverable: {exc}")
                continue
            except Exception as exc:
                retry_after = exc.retry_after if isinstance(exc, TemporaryFailure) else None
                await self._retry_later(message, exc, retry_after, behind=queue[i + 1 :])
                return
            sent.append((message, platform_id))

    async def _park(self, message: Message, error: str) -> None:
        self.metrics.parked.labels(message.channel).inc()
        log.error(
            "outbox message %s to %s on %s parked as failed after %s attempt(s): %s",
            message.id,
            mask(message.recipient),
            message.channel,
            message.attempts,
            error,
        )
        async with self.db.transaction() as s:
            await s.exec(
                update(OutboxMessage)
                .where(OutboxMessage.id == message.id)  # type: ignore[arg-type]
                .values(status="failed", last_error=error[:2000], claimed_until=None)
            )

    async def _retry_later(
        self,
        message: Message,
        exc: Exception,
        retry_after: float | None,
        behind: list[Message],
    ) -> None:
        error = f"{type(exc).__name__}: {exc}"
        if message.attempts >= self.settings.max_attempts:
            await self._park(message, error)
            delay = 0.0
        else:
            base = self.settings.backoff_base_seconds * 2 ** (message.attempts - 1)
            delay = min(self.settings.backoff_max_seconds, max(base, retry_after or 0.0))
            self.metrics.retried.labels(message.channel).inc()
            log.warning(
                "outbox message %s on %s failed (attempt %s), retrying in %.1fs: %s",
                message.id,
                message.channel,
                message.attempts,
                delay,
                error,
            )
        next_at = self.clock.now() + timedelta(seconds=delay)
        async with self.db.transaction() as s:
            if message.attempts < self.settings.max_attempts:
                await s.exec(
                    update(OutboxMessage)
                    .where(OutboxMessage.id == message.id)  # type: ignore[arg-type]
                    .values(
                        status="pending",
                        next_attempt_at=next_at,
                        last_error=error[:2000],
                        claimed_until=None,
                    )
                )
            if behind:
                # Later messages wait behind the failed one; their claim is given back.
                await _given_back(s, behind)

    async def _give_back(self, messages: list[Message]) -> None:
        async with self.db.transaction() as s:
            await _given_back(s, messages)

    async def run_once(self, channels: Collection[str] | None = None) -> int:
        """One round: claim and deliver; returns how many messages were claimed."""
        claimed = await self.claim(channels)
        if claimed:
            await self.deliver(claimed)
        return len(claimed)

    async def _run_forever(self, channel: str) -> None:
        """One loop per channel: a platform that is slow or pacing never holds up another."""
        wake = self._wakes[channel]
        while True:
            wake.clear()
            try:
                if await self.run_once([channel]):
                    continue
            except Exception:
                log.exception("outbox round on %s failed; trying again shortly", channel)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wake.wait(), self.idle_poll)

    def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._run_forever(name), name=f"outbox-{name}")
            for name in self.channels
        ]

    async def stop(self, grace: float = 5.0) -> None:
        """Stop the loops; messages handed over are sent first (for `grace` seconds at
        most: what is left then is sent again when its lease runs out)."""
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        lanes = list(self._lane_tasks)
        if lanes:
            _, late = await asyncio.wait(lanes, timeout=grace)
            for task in late:
                task.cancel()
            await asyncio.gather(*late, return_exceptions=True)
        if self._recorder is not None:
            await asyncio.gather(self._recorder, return_exceptions=True)


async def _given_back(s: Any, messages: list[Message]) -> None:
    """Claimed messages back to the outbox, unsent, as if never claimed."""
    await s.exec(
        update(OutboxMessage)
        .where(OutboxMessage.id.in_([m.id for m in messages]))  # type: ignore[union-attr]
        .values(status="pending", claimed_until=None, attempts=OutboxMessage.attempts - 1)
    )
