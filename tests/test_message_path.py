"""Ingress → inbox → conversation → outbox → channel: nothing lost, nothing twice."""

from __future__ import annotations

import asyncio
import shutil
import sqlite3
import threading
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from sqlalchemy.engine import make_url
from sqlmodel import select

from bot import actions
from bot.app import SERVICE, Service
from bot.channels.base import TemporaryFailure, Undeliverable
from bot.clock import ManualClock
from storage import messages
from storage.models import Dossier, InboxEvent, OutboxMessage, Rating
from tests.chat import ChatClient, question, texts
from tests.factories import COMPLETED, COMPLETED_2, small_province


@pytest.fixture
async def province(service: Service, clock: ManualClock) -> dict[str, int]:
    async with service.db.transaction() as s:
        return await small_province(s, clock.now())


@pytest.fixture
async def manual_sender(http: TestClient, service: Service) -> Service:
    """The background sender stopped: the test runs sending rounds itself."""
    await service.sender.stop()
    return service


class FlakyChannel:
    """Wraps the web chat: fails the first `failures` sends, recording every attempt."""

    def __init__(self, inner: Any, failures: int, error: Exception) -> None:
        self.name = inner.name
        self.inner = inner
        self.failures = failures
        self.error = error
        self.attempts: list[int] = []
        self.delivered: list[int] = []

    async def send(self, message: OutboxMessage) -> str | None:
        self.attempts.append(message.id)  # type: ignore[arg-type]
        if len(self.attempts) <= self.failures:
            raise self.error
        self.delivered.append(message.id)  # type: ignore[arg-type]
        return await self.inner.send(message)


async def drive_clock(
    http: TestClient, clock: ManualClock, step_seconds: float, rounds: int
) -> None:
    """Move the clock forward and let the sender retry, until the outbox is empty."""
    service = http.server.app[SERVICE]
    for _ in range(rounds):
        await service.dispatcher.idle()
        await service.sender.run_once()
        async with service.db.sessions() as s:
            left = (
                await s.exec(
                    select(OutboxMessage).where(OutboxMessage.status.in_(("pending", "sending")))
                )
            ).all()  # type: ignore[attr-defined]
        if not left:
            return
        clock.advance(seconds=step_seconds)
    raise AssertionError("outbox not drained")


async def test_failed_sends_are_retried_with_backoff_and_arrive_once_in_order(
    http: TestClient,
    service: Service,
    province: dict[str, int],
    clock: ManualClock,
    manual_sender: Service,
) -> None:
    flaky = FlakyChannel(
        service.channels["webchat"], failures=3, error=TemporaryFailure("HTTP 500")
    )
    service.channels["webchat"] = flaky
    chat = ChatClient(http)
    await chat.open()
    await chat.post({"start": COMPLETED})
    await chat.post({"text": "menu"})
    await drive_clock(http, clock, step_seconds=10, rounds=20)
    async with service.db.sessions() as s:
        rows = (await s.exec(select(OutboxMessage).order_by(OutboxMessage.id))).all()  # type: ignore[arg-type]
    assert [m.status for m in rows] == ["sent", "sent"]
    assert rows[0].attempts == 4 and rows[1].attempts == 1
    # The second message waited behind the first: delivered strictly in order, once each.
    assert flaky.delivered == [rows[0].id, rows[1].id]
    messages = await chat.replies()
    assert [m["id"] for m in messages] == [rows[0].id, rows[1].id]
    assert question(messages[0]).startswith("(1/5)")
    assert messages[1]["text"].startswith("Xin chào")


async def test_retry_after_from_the_platform_is_honoured(
    http: TestClient,
    service: Service,
    province: dict[str, int],
    clock: ManualClock,
    manual_sender: Service,
) -> None:
    flaky = FlakyChannel(
        service.channels["webchat"], failures=1, error=TemporaryFailure("429", retry_after=30)
    )
    service.channels["webchat"] = flaky
    chat = ChatClient(http)
    await chat.open()
    await chat.post({"text": "xin chào"})
    await service.dispatcher.idle()
    await service.sender.run_once()
    async with service.db.sessions() as s:
        m = (await s.exec(select(OutboxMessage))).one()
    assert m.status == "pending"
    assert (m.next_attempt_at - clock.now()).total_seconds() == pytest.approx(30)
    clock.advance(seconds=29)
    await service.sender.run_once()
    assert len(flaky.attempts) == 1
    clock.advance(seconds=2)
    await service.sender.run_once()
    assert flaky.delivered == [m.id]


async def test_a_message_that_keeps_failing_is_parked_with_its_error_not_dropped(
    http: TestClient,
    service: Service,
    province: dict[str, int],
    clock: ManualClock,
    manual_sender: Service,
) -> None:
    service.channels["webchat"] = FlakyChannel(
        service.channels["webchat"], 10**6, TemporaryFailure("HTTP 502")
    )
    chat = ChatClient(http)
    await chat.open()
    await chat.post({"text": "xin chào"})
    await drive_clock(http, clock, step_seconds=400, rounds=30)
    async with service.db.sessions() as s:
        m = (await s.exec(select(OutboxMessage))).one()
    assert m.status == "failed"
    assert m.attempts == service.settings.outbox.max_attempts
    assert m.last_error == "TemporaryFailure: HTTP 502"
    health = await (await http.get("/healthz")).json()
    assert health["outbox_failed"] == 1


async def test_an_undeliverable_message_is_parked_at_once_and_the_next_one_still_goes(
    http: TestClient,
    service: Service,
    province: dict[str, int],
    clock: ManualClock,
    manual_sender: Service,
) -> None:
    flaky = FlakyChannel(service.channels["webchat"], 1, Undeliverable("user blocked the bot"))
    service.channels["webchat"] = flaky
    chat = ChatClient(http)
    await chat.open()
    await chat.post({"start": COMPLETED})
    await chat.post({"text": "menu"})
    await drive_clock(http, clock, step_seconds=1, rounds=5)
    async with service.db.sessions() as s:
        rows = (await s.exec(select(OutboxMessage).order_by(OutboxMessage.id))).all()  # type: ignore[arg-type]
    assert [(m.status, m.attempts) for m in rows] == [("failed", 1), ("sent", 1)]
    assert rows[0].last_error == "undeliverable: user blocked the bot"


async def test_a_crash_while_handling_a_message_loses_nothing(
    http: TestClient,
    service: Service,
    province: dict[str, int],
    clock: ManualClock,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    real = actions.HANDLERS["find_dossier"]
    calls = 0

    async def crashing_once(ctx, args):  # type: ignore[no-untyped-def]
        nonlocal calls
        calls += 1
        if calls == 1:
            raise ConnectionResetError("database connection lost")
        return await real(ctx, args)

    monkeypatch.setitem(actions.HANDLERS, "find_dossier", crashing_once)
    chat = ChatClient(http)
    await chat.open()
    await chat.post({"text": COMPLETED})
    await service.dispatcher.idle()
    async with service.db.sessions() as s:
        ev = (await s.exec(select(InboxEvent))).one()
        assert (ev.status, ev.attempts) == ("pending", 1)
        assert "database connection lost" in (ev.error or "")
        assert not (await s.exec(select(OutboxMessage))).all()  # the failed attempt sent nothing
    clock.advance(seconds=10)
    assert await service.dispatcher.sweep() == 1
    replies = await chat.replies()
    assert question(replies[-1]).startswith("(1/5)")
    async with service.db.sessions() as s:
        ev = (await s.exec(select(InboxEvent))).one()
    assert ev.status == "done"


async def test_a_message_that_always_fails_is_kept_and_the_citizen_gets_an_apology(
    http: TestClient,
    service: Service,
    province: dict[str, int],
    clock: ManualClock,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async def broken(ctx, args):  # type: ignore[no-untyped-def]
        raise RuntimeError("bug in find_dossier")

    monkeypatch.setitem(actions.HANDLERS, "find_dossier", broken)
    chat = ChatClient(http)
    await chat.open()
    await chat.post({"text": COMPLETED})
    for _ in range(3):
        await service.dispatcher.idle()
        clock.advance(seconds=10)
        await service.dispatcher.sweep()
    replies = await chat.replies()
    assert "hệ thống gặp sự cố" in texts(replies)
    async with service.db.sessions() as s:
        ev = (await s.exec(select(InboxEvent))).one()
    assert (ev.status, ev.attempts, ev.text) == ("failed", 3, COMPLETED)
    assert "bug in find_dossier" in (ev.error or "")
    # The conversation is usable again.
    monkeypatch.undo()
    again = await chat.say(COMPLETED)
    assert question(again[-1]).startswith("(1/5)")


async def test_events_stored_by_a_process_that_died_are_handled_after_restart(
    http: TestClient, service: Service, province: dict[str, int], clock: ManualClock
) -> None:
    chat = ChatClient(http)
    await chat.open()
    user = http.session.cookie_jar.filter_cookies(http.make_url("/chat"))["hl_chat"].value
    async with service.db.transaction() as s:
        s.add(
            InboxEvent(
                channel="webchat",
                platform_id="before-crash-1",
                user_key=user,
                kind="text",
                text=COMPLETED,
                received_at=clock.now(),
                status="pending",
            )
        )
    clock.advance(seconds=5)
    service.dispatcher.start()  # what startup does: the sweeper runs at once
    for _ in range(100):
        await asyncio.sleep(0.01)
        async with service.db.sessions() as s:
            if (await s.exec(select(InboxEvent))).one().status == "done":
                break
    replies = await chat.replies()
    assert question(replies[-1]).startswith("(1/5)")


async def test_many_citizens_at_once_each_conversation_in_order(
    http: TestClient, service: Service, province: dict[str, int]
) -> None:
    citizens = [ChatClient(http) for _ in range(15)]
    # Separate cookie jars: each citizen is a different browser.
    for c in citizens:
        c.http = TestClient(http.server)
        await c.http.start_server()
        await c.open()

    async def burst(c: ChatClient) -> None:
        for text in ("xin chào", "Menu", "hướng dẫn", "đánh giá"):
            await c.post({"text": text})

    await asyncio.gather(*(burst(c) for c in citizens))
    for c in citizens:
        replies = await c.replies()
        said = texts(replies)
        assert said.index("Xin chào") < said.index("Hướng dẫn") < said.index("nhập mã hồ sơ")
        assert replies[-1]["text"].startswith("Anh/chị vui lòng nhập mã hồ sơ")
    for c in citizens:
        await c.http.close()
    async with service.db.sessions() as s:
        assert not (await s.exec(select(Rating))).all()


async def _at_the_comment(http: TestClient, codes: list[str]) -> list[ChatClient]:
    """Citizens (a browser each) who rated these dossiers up to the comment."""
    citizens = []
    for code in codes:
        c = ChatClient(TestClient(http.server))
        await c.http.start_server()
        await c.open()
        await c.start(code)
        for _ in range(5):
            last = await c.tap("Hài lòng")
        assert "góp ý" in question(last[-1])
        citizens.append(c)
    return citizens


async def test_a_conversation_failing_after_table_work_does_not_hold_back_its_batch(
    http: TestClient,
    service: Service,
    province: dict[str, int],
    clock: ManualClock,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Two citizens finish their ratings in one batch; saving one rating fails after its
    row was written. That rating is not kept half-done, the other one is saved and thanked,
    and the failed event is retried later, then succeeds."""
    citizens = await _at_the_comment(http, [COMPLETED, COMPLETED_2])
    real = actions.HANDLERS["save_rating"]
    failing = True

    async def fails_after_writing(ctx, args):  # type: ignore[no-untyped-def]
        done = await real(ctx, args)
        if failing and ctx.vars["dossier"]["code"] == COMPLETED:
            raise ConnectionResetError("lost the database right after the insert")
        return done

    monkeypatch.setitem(actions.HANDLERS, "save_rating", fails_after_writing)
    # Both answers arrive before the dispatcher looks: they go in one batch.
    monkeypatch.setattr(service.dispatcher, "notify", lambda *key: None)
    for c in citizens:
        await c.post({"payload": "skip", "title": "Bỏ qua", "turn": c.current_turn()})
    async with service.db.sessions() as s:
        pending = list(
            await s.exec(
                select(InboxEvent)
                .where(InboxEvent.status == "pending")
                .order_by(InboxEvent.id.desc())  # type: ignore[union-attr]
            )
        )
    # The two citizens, the one whose rating is saved first: its work in the batch is
    # undone with the batch's, and counted once, when it is run again alone.
    keys = [(e.channel, e.user_key) for e in pending]
    assert len(keys) == 2
    batch = await service.conversations.process(keys)
    assert batch.events == 1 and len(batch.failed) == 1

    async with service.db.sessions() as s:
        rated = set(
            await s.exec(select(Dossier.code).join(Rating, Rating.dossier_id == Dossier.id))  # type: ignore[arg-type]
        )
        events = {  # each citizen's latest event
            e.user_key: e
            for e in await s.exec(select(InboxEvent).order_by(InboxEvent.id))  # type: ignore[arg-type]
        }
    assert rated == {COMPLETED_2}  # the failed one left nothing behind
    failed_key = next(iter(batch.failed))[1]
    assert (events[failed_key].status, events[failed_key].attempts) == ("pending", 1)
    assert "lost the database" in (events[failed_key].error or "")
    async with service.db.sessions() as s:
        thanks = (
            await s.exec(
                select(OutboxMessage).where(
                    OutboxMessage.recipient == next(k for k in keys if k not in batch.failed)[1]
                )
            )
        ).all()
    assert any("Cảm ơn anh/chị đã dành thời gian đánh giá" in m.body["text"] for m in thanks)

    failing = False
    monkeypatch.undo()  # the sweeper's retry goes through the dispatcher as usual
    clock.advance(seconds=10)
    assert await service.dispatcher.sweep() == 1
    for c in citizens:
        assert "Cảm ơn anh/chị đã dành thời gian đánh giá" in texts(await c.replies())
    async with service.db.sessions() as s:
        assert len((await s.exec(select(Rating))).all()) == 2
    for c in citizens:
        await c.http.close()


def _sqlite_path(service: Service) -> Path:
    if not service.db.is_sqlite:
        pytest.skip("SQLite's write lock and WAL")
    return Path(make_url(service.db.url).database or "")


class OtherProcess:
    """Another process's connection to the same SQLite file, in a thread of its own: it
    takes the write lock, holds it for `hold` seconds, then commits and lets go."""

    def __init__(self, path: Path, hold: float) -> None:
        self.path = path
        self.hold = hold
        self.locked = threading.Event()
        self.released = threading.Event()

    def _run(self) -> None:
        conn = sqlite3.connect(self.path, isolation_level=None)
        try:
            conn.execute("BEGIN IMMEDIATE")
            self.locked.set()
            time.sleep(self.hold)
            conn.execute("COMMIT")
        finally:
            conn.close()
            self.released.set()

    async def __aenter__(self) -> OtherProcess:
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        assert await asyncio.to_thread(self.locked.wait, 10)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await asyncio.to_thread(self.thread.join)


async def test_a_write_lock_held_by_another_process_is_waited_for_while_the_bot_stays_up(
    http: TestClient, chat: ChatClient, clock: ManualClock
) -> None:
    """SQLite: another process (a report, a second bot) holds the write lock. The
    citizen's message waits for it, off the event loop: the bot answers other requests
    meanwhile, and the message is kept and answered once the lock is free. The same for
    a conversation batch that finds the lock taken when it begins."""
    service = http.server.app[SERVICE]
    path = _sqlite_path(service)
    assert texts(await chat.say("xin chào")).startswith("Xin chào anh/chị!")
    async with OtherProcess(path, hold=1.5) as other:
        sent = asyncio.create_task(chat.post({"text": "hướng dẫn"}))
        await asyncio.sleep(0.1)
        assert (await http.get("/healthz")).status == 200
        assert not other.released.is_set()  # answered while the message waits for the lock
        assert not sent.done()  # not acknowledged before it is kept
    await sent
    assert "hướng dẫn" in texts(await chat.replies()).lower()

    key = ("webchat", "a-citizen-of-another-process")

    async def first_batch() -> messages.Loaded:
        async with service.db.batch() as conn:
            rows = messages.Batch(conn, True, service.db.writer)
            loaded = await rows.load([key], "vi", clock.now())
            await rows.write(messages.Changes(), clock.now())
            return loaded

    async with OtherProcess(path, hold=1.5) as other:
        batch = asyncio.create_task(first_batch())
        await asyncio.sleep(0.1)
        assert (await http.get("/healthz")).status == 200
        assert not other.released.is_set() and not batch.done()
    assert key in (await batch).conversations  # made for its first message


async def test_the_database_file_is_kept_up_to_date_not_only_its_wal(
    http: TestClient, chat: ChatClient
) -> None:
    """SQLite: what the message path commits reaches the database file itself within
    moments (a WAL checkpoint), so the WAL does not grow while the bot runs: a copy of
    the file alone, without its WAL, holds every stored event."""
    service = http.server.app[SERVICE]
    path = _sqlite_path(service)
    service.db.writer.checkpoint_every = 0.05
    for text in ("xin chào", "menu", "hướng dẫn"):
        await chat.say(text)
    await asyncio.sleep(0.3)
    copy = path.with_name("copy-without-wal.db")
    shutil.copyfile(path, copy)
    with sqlite3.connect(copy) as conn:
        kept = conn.execute("SELECT text FROM inbox WHERE kind = 'text' ORDER BY id").fetchall()
    assert [t for (t,) in kept] == ["xin chào", "menu", "hướng dẫn"]


async def test_a_batch_starts_from_its_conversations_pending_events_and_unsent_messages(
    http: TestClient, service: Service, clock: ManualClock, db_url: str
) -> None:
    """What a batch loads, on both backends: the conversations asked for (made for a first
    message, on any channel), only their pending events, in order, their unsent messages,
    the flows' versions; on PostgreSQL without waiting for a conversation whose row
    another process has locked, read as it was."""
    import asyncpg  # type: ignore[import-untyped]

    from storage.models import Citizen, Conversation, Flow
    from tests.conftest import asyncpg_dsn

    now = clock.now()
    pg = db_url.startswith("postgresql")
    async with service.db.transaction() as s:
        convs = {}
        for user in ("u1", "held"):
            citizen = Citizen(created_at=now)
            s.add(citizen)
            await s.flush()
            conv = Conversation(
                channel="zalo", user_key=user, citizen_id=citizen.id, started_at=now, updated_at=now
            )
            s.add(conv)
            await s.flush()
            convs[user] = conv.id
        for user, status in [("u1", "pending"), ("u1", "sent"), ("held", "pending")]:
            s.add(
                OutboxMessage(
                    channel="zalo", recipient=user, conversation_id=convs[user],
                    body={"text": "x"}, status=status, next_attempt_at=now, created_at=now,
                )
            )  # fmt: skip
        for n, (channel, user, status) in enumerate(
            [
                ("zalo", "u1", "pending"),
                ("zalo", "u1", "done"),
                ("zalo", "held", "pending"),
                ("telegram", "t1", "pending"),
                ("zalo", "u1", "pending"),
            ]
        ):
            s.add(
                InboxEvent(
                    channel=channel, platform_id=f"e{n}", user_key=user, kind="text",
                    text=f"event {n}", received_at=now, status=status,
                )
            )  # fmt: skip
    async with service.db.sessions() as s:
        events = {e.platform_id: e.id for e in (await s.exec(select(InboxEvent))).all()}
        unsent = (
            await s.exec(
                select(OutboxMessage.id).where(
                    OutboxMessage.recipient == "u1", OutboxMessage.status == "pending"
                )
            )
        ).all()
        flows = {f.id: f.current_version_id for f in (await s.exec(select(Flow))).all()}
    assert flows

    holder = None
    if pg:  # another process is writing "held"
        holder = await asyncpg.connect(asyncpg_dsn(db_url))
        await holder.execute("BEGIN")
        await holder.execute("UPDATE conversation SET step = 'menu' WHERE user_key = 'held'")
    keys = [("zalo", "u1"), ("zalo", "held"), ("telegram", "t1")]
    try:
        async with service.db.batch() as conn:
            batch = messages.Batch(conn, service.db.is_sqlite, service.db.writer)
            loaded = await batch.load(keys, "vi", now)
            await batch.rollback()
    finally:
        if holder is not None:
            await holder.close()

    assert set(loaded.conversations) == set(keys)
    assert loaded.conversations[("zalo", "u1")].id == convs["u1"]
    assert loaded.conversations[("zalo", "held")].step is None  # as it was
    assert {k: [e.id for e in v] for k, v in loaded.events.items() if v} == {
        ("zalo", "u1"): [events["e0"], events["e4"]],
        ("zalo", "held"): [events["e2"]],
        ("telegram", "t1"): [events["e3"]],
    }
    assert loaded.events[("telegram", "t1")][0].text == "event 3"
    assert {k: len(v) for k, v in loaded.unsent.items() if v} == {
        ("zalo", "u1"): 1,
        ("zalo", "held"): 1,
    }
    assert loaded.unsent[("zalo", "u1")] == [unsent[0]]
    assert loaded.pointers == flows


async def test_a_batch_writes_its_states_events_done_and_messages_and_gives_their_ids_in_order(
    http: TestClient, service: Service, clock: ManualClock
) -> None:
    """What a batch writes, on both backends (one statement for the states and the
    messages on PostgreSQL): each conversation's new state, also for one that sends
    nothing; its events marked done; its messages, with their ids in the order given."""
    from storage.models import Conversation

    now = clock.now()
    async with service.db.transaction() as s:
        for n, user in enumerate(["talks", "quiet"]):
            s.add(
                InboxEvent(
                    channel="zalo", platform_id=f"w{n}", user_key=user, kind="text",
                    text="xin chào", received_at=now, status="pending",
                )
            )  # fmt: skip
    keys = [("zalo", "talks"), ("zalo", "quiet")]
    later = now + timedelta(seconds=1)
    async with service.db.batch() as conn:
        batch = messages.Batch(conn, service.db.is_sqlite, service.db.writer)
        loaded = await batch.load(keys, "vi", now)
        talks, quiet = (loaded.conversations[k] for k in keys)
        talks.step, talks.vars, talks.updated_at = "ask_code", {"code": "H01.2'x\"ă"}, later
        quiet.step, quiet.lang, quiet.updated_at = "ask_code", "en", later
        bodies = [{"text": f"tin nhắn {n}", "buttons": []} for n in range(3)]
        changes = messages.Changes(
            conversations=[talks, quiet],
            done=[e.id for k in keys for e in loaded.events[k]],
            messages=[
                {
                    "channel": "zalo", "recipient": "talks", "conversation_id": talks.id,
                    "body": body, "status": "pending", "attempts": 0, "next_attempt_at": now,
                    "claimed_until": None, "created_at": now,
                }
                for body in bodies
            ],
        )  # fmt: skip
        ids = await batch.write(changes, later)
    async with service.db.batch() as conn:  # a batch that sends nothing
        batch = messages.Batch(conn, service.db.is_sqlite, service.db.writer)
        quiet = (await batch.load([("zalo", "quiet")], "vi", now)).conversations[keys[1]]
        quiet.step = "menu"
        assert await batch.write(messages.Changes(conversations=[quiet]), later) == []

    async with service.db.sessions() as s:
        convs = {c.user_key: c for c in (await s.exec(select(Conversation))).all()}
        outbox = {m.id: m for m in (await s.exec(select(OutboxMessage))).all()}
        inbox = (await s.exec(select(InboxEvent.status))).all()
    assert (convs["talks"].step, convs["talks"].vars) == ("ask_code", {"code": "H01.2'x\"ă"})
    assert (convs["quiet"].step, convs["quiet"].lang, convs["quiet"].vars) == ("menu", "en", {})
    assert {c.updated_at.replace(tzinfo=None) for c in convs.values()} == {
        later.replace(tzinfo=None)
    }
    assert inbox == ["done", "done"]
    assert ids == sorted(ids) and [outbox[i].body for i in ids] == bodies
    assert {m.recipient for m in outbox.values()} == {"talks"}


def _message(conv: messages.ConversationRow, text: str, now: Any) -> dict[str, Any]:
    return {
        "channel": conv.channel, "recipient": conv.user_key, "conversation_id": conv.id,
        "body": {"text": text, "buttons": []}, "status": "pending", "attempts": 0,
        "next_attempt_at": now, "claimed_until": None, "created_at": now,
    }  # fmt: skip


async def test_a_batch_writes_nothing_over_what_another_process_wrote_since_it_read(
    http: TestClient, service: Service, province: dict[str, int], clock: ManualClock
) -> None:
    """PostgreSQL, where a batch locks nothing between its first statement and its last:
    when another process wrote one of its conversations, or rated a dossier it rates,
    after it read them, its last statement writes nothing at all (not its other
    conversation's state, events or messages either) and raises Conflict; what the other
    process wrote stands."""
    from storage.models import Conversation, RatingAnswer
    from storage.ops import insert_rating

    if service.db.is_sqlite:
        pytest.skip("SQLite: a batch holds the write lock from its first statement to its last")
    now = clock.now()
    keys = [("zalo", "u1"), ("zalo", "u2")]
    async with service.db.transaction() as s:
        for n, (channel, user) in enumerate(keys):
            s.add(
                InboxEvent(
                    channel=channel, platform_id=f"c{n}", user_key=user, kind="text",
                    text="xin chào", received_at=now, status="pending",
                )
            )  # fmt: skip
        dossier = (await s.exec(select(Dossier).where(Dossier.code == COMPLETED))).one()

    async def state() -> dict[str, tuple[str | None, list[str], list[str]]]:
        """Each conversation's step, its events' statuses, its messages."""
        async with service.db.sessions() as s:
            convs = (await s.exec(select(Conversation))).all()
            events = (await s.exec(select(InboxEvent).order_by(InboxEvent.id))).all()  # type: ignore[arg-type]
            sent = (await s.exec(select(OutboxMessage).order_by(OutboxMessage.id))).all()  # type: ignore[arg-type]
        return {
            c.user_key: (
                c.step,
                [e.status for e in events if e.user_key == c.user_key],
                [m.body["text"] for m in sent if m.recipient == c.user_key],
            )
            for c in convs
        }

    async def batch_of_both(meanwhile: Any, rate: bool) -> None:
        async with service.db.batch() as conn:
            batch = messages.Batch(conn, False)
            loaded = await batch.load(keys, "vi", now)
            if rate:
                citizen = loaded.conversations[keys[1]].citizen_id
                values = {
                    "dossier_id": dossier.id, "citizen_id": citizen, "channel": "zalo",
                    "comment": None, "created_at": now,
                }  # fmt: skip
                answer = {"criterion": "time", "value": 5, "label": "Rất hài lòng"}
                rating = messages.DeferredRating(values, [{**answer, "counts_as": "satisfied"}])
                assert batch.defer_rating(rating)
            await meanwhile()
            convs = [loaded.conversations[k] for k in keys]
            for conv in convs:
                conv.step = "ask_code"
            changes = messages.Changes(
                conversations=convs,
                done=[e.id for k in keys for e in loaded.events[k]],
                messages=[_message(c, "từ lô này", now) for c in convs],
            )
            with pytest.raises(messages.Conflict):
                await batch.write(changes, now)
            await batch.rollback()

    async def another_process_answers_u1() -> None:
        async with service.db.batch() as conn:
            other = messages.Batch(conn, False)
            loaded = await other.load([keys[0]], "vi", now)
            u1 = loaded.conversations[keys[0]]
            u1.step = "menu"
            changes = messages.Changes(
                conversations=[u1],
                done=[e.id for e in loaded.events[keys[0]]],
                messages=[_message(u1, "từ tiến trình khác", now)],
            )
            await other.write(changes, now)

    await batch_of_both(another_process_answers_u1, rate=False)
    assert await state() == {
        "u1": ("menu", ["done"], ["từ tiến trình khác"]),
        "u2": (None, ["pending"], []),
    }

    other_rating: list[int | None] = []

    async def another_process_rates_the_dossier() -> None:
        values = {
            "dossier_id": dossier.id, "citizen_id": 1, "channel": "telegram", "comment": "trước",
            "created_at": now,
        }  # fmt: skip
        answer = {"criterion": "time", "value": 2, "label": "Không hài lòng"}
        async with service.db.transaction() as s:
            other_rating.append(
                await insert_rating(s, values, [{**answer, "counts_as": "unsatisfied"}])
            )

    await batch_of_both(another_process_rates_the_dossier, rate=True)
    assert await state() == {
        "u1": ("menu", ["done"], ["từ tiến trình khác"]),
        "u2": (None, ["pending"], []),
    }
    async with service.db.sessions() as s:
        ratings = (await s.exec(select(Rating))).all()
        answers = (await s.exec(select(RatingAnswer))).all()
    assert [(r.id, r.comment) for r in ratings] == [(other_rating[0], "trước")]
    assert [(a.rating_id, a.value) for a in answers] == [(other_rating[0], 2)]


async def test_messages_sent_while_a_batch_runs_are_recorded_by_its_last_statement(
    http: TestClient, service: Service, clock: ManualClock
) -> None:
    """PostgreSQL: a message recorded sent while a batch runs is written sent by that
    batch's last statement (one commit fewer), or, when the batch fails, by the writer
    once the batch has ended; with no batch running, by the writer at once."""
    if service.db.is_sqlite:
        pytest.skip("SQLite: the writer's waiting writes go into the next batch (test_zalo)")
    now = clock.now()
    async with service.db.transaction() as s:
        claimed = [
            OutboxMessage(
                channel="zalo", recipient=f"r{n}", body={"text": "x"}, status="sending",
                attempts=1, next_attempt_at=now, claimed_until=now, created_at=now,
            )
            for n in range(3)
        ]  # fmt: skip
        s.add_all(claimed)
    ids = [m.id for m in claimed]
    writer = service.db.writer

    async def statuses() -> list[str]:
        async with service.db.sessions() as s:
            rows = (await s.exec(select(OutboxMessage).order_by(OutboxMessage.id))).all()  # type: ignore[arg-type]
        return [m.status for m in rows]

    await writer.record_sent([(ids[0], now, "p0")])  # no batch runs: written at once
    assert await statuses() == ["sent", "sending", "sending"]

    async with service.db.batch() as conn:
        batch = messages.Batch(conn, False, writer)
        await batch.load([("zalo", "u1")], "vi", now)
        recording = asyncio.create_task(writer.record_sent([(ids[1], now, "p1")]))
        await asyncio.sleep(0.05)
        assert not recording.done() and await statuses() == ["sent", "sending", "sending"]
        await batch.write(messages.Changes(), now)
        await asyncio.wait_for(recording, 5)
        assert await statuses() == ["sent", "sent", "sending"]

    async with service.db.batch() as conn:
        batch = messages.Batch(conn, False, writer)
        loaded = await batch.load([("zalo", "u1")], "vi", now)
        recording = asyncio.create_task(writer.record_sent([(ids[2], now, "p2")]))
        await asyncio.sleep(0.05)
        async with service.db.batch() as other:  # another process answers u1 meanwhile
            rival = messages.Batch(other, False)
            first = (await rival.load([("zalo", "u1")], "vi", now)).conversations
            await rival.write(messages.Changes(conversations=list(first.values())), now)
        with pytest.raises(messages.Conflict):
            await batch.write(
                messages.Changes(conversations=list(loaded.conversations.values())), now
            )
        await batch.rollback()
        assert not recording.done()
    await asyncio.wait_for(recording, 5)
    assert await statuses() == ["sent", "sent", "sent"]
    async with service.db.sessions() as s:
        pids = (
            await s.exec(select(OutboxMessage.platform_message_id).order_by(OutboxMessage.id))
        ).all()  # type: ignore[arg-type]
    assert pids == ["p0", "p1", "p2"]


async def test_two_citizens_finishing_ratings_of_one_dossier_in_one_batch_store_one(
    http: TestClient, service: Service, province: dict[str, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two citizens rate the same dossier and send their last answers together: the batch
    stores one rating with its answers, thanks one citizen and tells the other it was
    rated (on PostgreSQL the first rating waits for the batch's last statement)."""
    from storage.models import RatingAnswer

    citizens = await _at_the_comment(http, [COMPLETED, COMPLETED])
    monkeypatch.setattr(service.dispatcher, "notify", lambda *key: None)
    for c in citizens:
        await c.post({"payload": "skip", "title": "Bỏ qua", "turn": c.current_turn()})
    async with service.db.sessions() as s:
        pending = (await s.exec(select(InboxEvent).where(InboxEvent.status == "pending"))).all()
    keys = [(e.channel, e.user_key) for e in pending]
    assert len(set(keys)) == 2
    done = await service.conversations.process(keys)
    assert done.events == 2 and not done.failed and not done.again
    monkeypatch.undo()

    said = [texts(await c.replies()) for c in citizens]
    thanked = [s for s in said if "Cảm ơn anh/chị đã dành thời gian đánh giá" in s]
    told = [s for s in said if "Mỗi hồ sơ chỉ được đánh giá một lần" in s]
    assert len(thanked) == 1 and len(told) == 1
    async with service.db.sessions() as s:
        [rating] = (await s.exec(select(Rating))).all()
        answers = (await s.exec(select(RatingAnswer))).all()
    assert len(answers) == 5 and {a.rating_id for a in answers} == {rating.id}
    for c in citizens:
        await c.http.close()


async def test_sqlite_connections_keep_their_temporary_journals_in_memory(
    http: TestClient, chat: ChatClient
) -> None:
    """SQLite: the savepoints of a batch (each conversation's table work, the writer's
    waiting writes) journal into memory, not into a temporary file made and deleted for
    each transaction: on every connection of the message path and of the sessions."""
    service = http.server.app[SERVICE]
    _sqlite_path(service)
    await chat.say("xin chào")  # the writer's connection exists once something was stored
    async with service.db.batch() as conn:
        raw = (await conn.get_raw_connection()).driver_connection
        assert await (await raw.execute("PRAGMA temp_store")).fetchone() == (2,)
    writer = await service.db.writer._sqlite_conn()
    assert await (await writer.execute("PRAGMA temp_store")).fetchone() == (2,)
    async with service.db.sessions() as session:
        conn = await session.connection()
        assert (await conn.exec_driver_sql("PRAGMA temp_store")).one() == (2,)
    async with service.db.transaction() as session:
        conn = await session.connection()
        assert (await conn.exec_driver_sql("PRAGMA temp_store")).one() == (2,)
