"""Zalo OA: our aiohttp client and webhook against a fake OpenAPI + OAuth server."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient, TestServer
from sqlmodel import select

from bot.app import Service, build_app, build_service
from bot.channels.base import TemporaryFailure
from bot.channels.zalo import ZaloOA, ZaloTokens
from bot.clock import ManualClock
from storage import messages
from storage.db import Database
from storage.models import ChannelToken, InboxEvent, OutboxMessage, Rating
from tests.chat import PlatformCitizen, settle
from tests.conftest import make_settings
from tests.factories import COMPLETED, small_province
from tests.fakes import FakeZalo

USER = "8726354019283746512"  # Zalo ids exceed 2^53: always strings
Bot = tuple[Service, TestClient]
SCALE = ["Rất không hài lòng", "Không hài lòng", "Bình thường", "Hài lòng", "Rất hài lòng"]


@pytest.fixture
async def fake() -> AsyncIterator[FakeZalo]:
    async with FakeZalo() as zalo:
        yield zalo


def zalo_env(fake: FakeZalo) -> dict[str, str]:
    return {
        "HAILONG_ZALO_APP_ID": fake.app_id,
        "HAILONG_ZALO_APP_SECRET": fake.app_secret,
        "HAILONG_ZALO_OA_SECRET_KEY": fake.oa_secret_key,
        "HAILONG_ZALO_OA_ID": fake.oa_id,
        "HAILONG_ZALO_ACCESS_TOKEN": "zalo-access-token-0",
        "HAILONG_ZALO_REFRESH_TOKEN": "zalo-refresh-token-0",
        "HAILONG_ZALO_API_BASE": fake.api_base,
        "HAILONG_ZALO_OAUTH_BASE": fake.oauth_base,
    }


@pytest.fixture
async def bot(db_url: str, clock: ManualClock, fake: FakeZalo) -> AsyncIterator[Bot]:
    service = build_service(make_settings(db_url, **zalo_env(fake)), clock)
    http = TestClient(TestServer(build_app(service)))
    await http.start_server()
    async with service.db.transaction() as s:
        await small_province(s, clock.now())
    yield service, http
    await http.close()


class Citizen(PlatformCitizen):
    """A Zalo user whose events reach our webhook signed, as Zalo sends them."""

    def __init__(
        self, fake: FakeZalo, http: TestClient, clock: ManualClock, user: str = USER
    ) -> None:
        super().__init__(fake, http, clock, user)
        self.url = str(http.make_url("/webhooks/zalo"))

    async def deliver(self, event: dict[str, Any] | bytes, **kw: Any) -> int:
        status, _ = await self.fake.post_webhook(self.url, event, **kw)
        return status

    async def say(self, text: str) -> list[Any]:
        assert await self.deliver(self.fake.text_event(self.user, text)) == 200
        return await self.replies()

    async def tap(self, title: str) -> list[Any]:
        """A tap on an oa.query.show button arrives as a user_send_text of its payload."""
        last = next(s for s in reversed(self.fake.sent_to(self.user)) if s.buttons)
        button = next(b for b in last.buttons if b["title"] == title)
        return await self.say(button["payload"])


async def test_a_citizen_rates_a_dossier_over_signed_zalo_webhooks(
    bot: Bot, fake: FakeZalo, clock: ManualClock
) -> None:
    service, http = bot
    citizen = Citizen(fake, http, clock)
    greeting = await citizen.deliver(fake.follow_event(USER))
    assert greeting == 200
    menu = await citizen.replies()
    assert menu[0].text.startswith("Xin chào anh/chị!") and len(menu[0].buttons) == 4
    intro = await citizen.say(COMPLETED)
    assert len(intro) == 1 and COMPLETED in intro[0].text
    assert [b["title"] for b in intro[0].buttons] == SCALE
    assert all(b["type"] == "oa.query.show" for b in intro[0].buttons)
    for n, level in enumerate(["Hài lòng", "Rất hài lòng", "Hài lòng", "Bình thường"], 2):
        asked = await citizen.tap(level)
        assert len(asked) == 1 and asked[0].text.startswith(f"({n}/5)")
    await citizen.tap("Hài lòng")
    thanks = await citizen.tap("Bỏ qua")
    assert "Cảm ơn anh/chị đã dành thời gian đánh giá" in thanks[0].text
    async with service.db.sessions() as s:
        rating = (await s.exec(select(Rating))).one()
        assert rating.channel == "zalo"
    assert all(len(m.text) <= 2000 and len(m.buttons) <= 5 for m in fake.sent)


@pytest.mark.parametrize("variant", ["app_id", "oa_id", "app_secret"])
async def test_each_documented_signature_variant_is_accepted(
    bot: Bot, fake: FakeZalo, clock: ManualClock, variant: str
) -> None:
    citizen = Citizen(fake, bot[1], clock)
    assert await citizen.deliver(fake.text_event(USER, "xin chào"), variant=variant) == 200
    assert (await citizen.replies())[0].text.startswith("Xin chào anh/chị")


async def test_forged_and_unsigned_events_store_nothing_and_send_nothing(
    bot: Bot, fake: FakeZalo, clock: ManualClock
) -> None:
    service, http = bot
    citizen = Citizen(fake, http, clock)
    assert await citizen.deliver(fake.text_event(USER, "xin chào"), forge=True) == 401
    unsigned = fake.encode(fake.text_event(USER, "xin chào"))
    assert await citizen.deliver(unsigned, signed=False) == 401
    assert await citizen.deliver(b"{}", signed=False) == 200  # the probe when the URL is saved
    await settle(http)
    async with service.db.sessions() as s:
        assert not (await s.exec(select(InboxEvent))).all()
    assert fake.sent == []


async def test_zalos_retries_of_the_same_event_are_processed_once(
    bot: Bot, fake: FakeZalo, clock: ManualClock
) -> None:
    service, http = bot
    citizen = Citizen(fake, http, clock)
    event = fake.text_event(USER, "xin chào")
    for retry in (None, 1, 2):
        assert await citizen.deliver(event, num_retry=retry) == 200
    assert len(await citizen.replies()) == 1
    async with service.db.sessions() as s:
        assert len((await s.exec(select(InboxEvent))).all()) == 1


@asynccontextmanager
async def batch_waiting_for_the_database(
    service: Service, clock: ManualClock, user: str
) -> AsyncIterator[None]:
    """A write transaction held open, with a "menu" for `user` in it and its conversation
    notified: on SQLite, that conversation's batch waits for the write lock meanwhile."""
    async with service.db.transaction() as s:
        s.add(
            InboxEvent(
                channel="zalo",
                platform_id="written-elsewhere",
                user_key=user,
                kind="text",
                text="menu",
                received_at=clock.now(),
            )
        )
        service.dispatcher.notify("zalo", user)
        yield


async def test_deliveries_waiting_for_the_database_are_kept_once_each(
    bot: Bot, fake: FakeZalo, clock: ManualClock
) -> None:
    """Events that arrive while another write holds the database (on SQLite they wait for
    its write lock, then go in with the conversation batch waiting before them) are each
    stored once, a retry among them included, answered 200, handled, and every answer is
    recorded as sent."""
    service, http = bot
    first = Citizen(fake, http, clock, user="1000000000000000001")
    others = [Citizen(fake, http, clock, user=f"100000000000000000{i}") for i in (2, 3)]
    assert await first.deliver(fake.text_event(first.user, "xin chào")) == 200
    assert len(await first.replies()) == 1
    events = [fake.text_event(c.user, "xin chào") for c in others]
    async with batch_waiting_for_the_database(service, clock, first.user):
        deliveries = [
            asyncio.create_task(c.deliver(e)) for c, e in zip(others, events, strict=True)
        ]
        deliveries.append(asyncio.create_task(others[0].deliver(events[0], num_retry=1)))
        await asyncio.sleep(0.2)
    service.dispatcher.notify("zalo", first.user)  # PostgreSQL: the batch did not wait
    assert await asyncio.gather(*deliveries) == [200, 200, 200]
    menu = await first.replies()
    assert len(menu) == 1 and len(menu[0].buttons) == 4
    for c in others:
        greeting = await c.replies()
        assert len(greeting) == 1 and greeting[0].text.startswith("Xin chào anh/chị!")
    async with service.db.sessions() as s:
        inbox = (await s.exec(select(InboxEvent))).all()
        outbox = (await s.exec(select(OutboxMessage))).all()
    assert sorted(e.user_key for e in inbox) == sorted(
        [first.user, first.user] + [c.user for c in others]
    )
    assert all(e.status == "done" for e in inbox)
    assert len(outbox) == 4 and all(m.status == "sent" and m.sent_at for m in outbox)


async def greeted_and_another(
    bot: Bot, fake: FakeZalo, clock: ManualClock
) -> tuple[Citizen, Citizen]:
    """SQLite only (the waiting writes are its, one writer): a citizen greeted already,
    and another."""
    service, http = bot
    if not service.db.is_sqlite:
        pytest.skip("the waiting writes are SQLite's (one writer)")
    first = Citizen(fake, http, clock, user="1000000000000000001")
    other = Citizen(fake, http, clock, user="1000000000000000002")
    assert await first.deliver(fake.text_event(first.user, "xin chào")) == 200
    assert len(await first.replies()) == 1
    return first, other


def disk_error_once(monkeypatch: pytest.MonkeyPatch, name: str) -> list[Any]:
    """`storage.messages.<name>(conn, …)` fails once with a disk error; the failed calls'
    arguments."""
    real = getattr(messages, name)
    failures: list[Any] = []

    def failing(conn: Any, *args: Any) -> Any:
        if not failures:
            failures.append(args)
            raise sqlite3.OperationalError("disk I/O error")
        return real(conn, *args)

    monkeypatch.setattr(messages, name, failing)
    return failures


async def test_a_write_that_fails_while_waiting_is_refused_clearly_and_lost_nowhere(
    bot: Bot, fake: FakeZalo, clock: ManualClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SQLite: the waiting writes that the next conversation batch makes fail (a disk
    error): their webhooks get a 503, so Zalo delivers again; the batch's own
    conversation is still handled, and the delivery that comes again is kept once."""
    service, _ = bot
    first, other = await greeted_and_another(bot, fake, clock)
    failures = disk_error_once(monkeypatch, "_sqlite_queued_writes")
    event = fake.text_event(other.user, "xin chào")
    async with batch_waiting_for_the_database(service, clock, first.user):
        delivery = asyncio.create_task(other.deliver(event))
        await asyncio.sleep(0.2)
    assert await delivery == 503  # refused: Zalo delivers it again
    assert failures
    menu = await first.replies()
    assert len(menu) == 1 and len(menu[0].buttons) == 4  # the batch went on
    assert await other.deliver(event, num_retry=1) == 200
    greeting = await other.replies()
    assert len(greeting) == 1 and greeting[0].text.startswith("Xin chào anh/chị!")
    async with service.db.sessions() as s:
        mine = (await s.exec(select(InboxEvent).where(InboxEvent.user_key == other.user))).all()
    assert [e.status for e in mine] == ["done"]


async def test_waiting_writes_outlive_the_batch_that_carried_them(
    bot: Bot, fake: FakeZalo, clock: ManualClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SQLite: the waiting writes go into the transaction of the next conversation batch;
    when that batch fails as a whole (its final writes, once), they are made again on
    their own: the webhook still gets its 200 and its event is handled, once; the batch's
    own event is tried again later."""
    service, _ = bot
    first, other = await greeted_and_another(bot, fake, clock)
    failures = disk_error_once(monkeypatch, "_sqlite_write")
    event = fake.text_event(other.user, "xin chào")
    async with batch_waiting_for_the_database(service, clock, first.user):
        delivery = asyncio.create_task(other.deliver(event))
        await asyncio.sleep(0.2)
    assert await delivery == 200
    assert failures
    await service.dispatcher.idle()
    clock.advance(seconds=10)
    assert await service.dispatcher.sweep() == 1  # the failed batch's own event, again
    menu = await first.replies()
    assert len(menu) == 1 and len(menu[0].buttons) == 4
    greeting = await other.replies()
    assert len(greeting) == 1 and greeting[0].text.startswith("Xin chào anh/chị!")
    assert await other.deliver(event, num_retry=1) == 200  # a repeat: kept once
    async with service.db.sessions() as s:
        mine = (await s.exec(select(InboxEvent).where(InboxEvent.user_key == other.user))).all()
    assert [e.status for e in mine] == ["done"]
    assert await other.replies() == []


async def test_echoes_and_receipts_are_ignored_and_stickers_get_a_polite_answer(
    bot: Bot, fake: FakeZalo, clock: ManualClock
) -> None:
    service, http = bot
    citizen = Citizen(fake, http, clock)
    assert await citizen.deliver(fake.oa_echo_event(USER, "Xin chào")) == 200
    assert await citizen.deliver(fake.seen_event(USER)) == 200
    assert await citizen.replies() == []
    assert await citizen.deliver(fake.sticker_event(USER)) == 200
    assert "chỉ đọc được tin nhắn chữ" in (await citizen.replies())[0].text
    async with service.db.sessions() as s:
        assert [e.kind for e in (await s.exec(select(InboxEvent))).all()] == ["unsupported"]


async def test_an_expired_token_is_refreshed_once_stored_and_the_message_still_arrives(
    bot: Bot, fake: FakeZalo, clock: ManualClock
) -> None:
    service, http = bot
    citizen = Citizen(fake, http, clock)
    await citizen.say("xin chào")
    fake.expire_access_token()
    replies = await citizen.say("menu")
    assert len(replies) == 1
    assert fake.refresh_count == 1
    assert [c.refresh_token for c in fake.refresh_calls] == ["zalo-refresh-token-0"]
    async with service.db.sessions() as s:
        row = await s.get(ChannelToken, "zalo")
    new = fake.refresh_calls[-1]
    assert row is not None and row.access_token != "zalo-access-token-0"
    assert (row.access_token, row.refresh_token) == (new.new_access_token, new.new_refresh_token)
    assert row.expires_at is not None
    await citizen.say("hướng dẫn")
    assert fake.refresh_count == 1  # the new token keeps working


async def test_two_processes_hit_by_an_expired_token_refresh_it_only_once(
    db_url: str, clock: ManualClock, fake: FakeZalo
) -> None:
    settings = make_settings(db_url, **zalo_env(fake)).zalo
    dbs = [Database(db_url), Database(db_url)]
    tokens = [ZaloTokens(db, settings, clock) for db in dbs]
    async with aiohttp.ClientSession() as client:
        for t in tokens:
            t.http = client
        stale = await tokens[0].current()
        assert stale == await tokens[1].current()
        fresh = await asyncio.gather(*(t.refresh(stale) for t in tokens), tokens[0].refresh(stale))
    for db in dbs:
        await db.dispose()
    assert fake.refresh_count == 1  # the single-use refresh token was spent once
    assert len(set(fresh)) == 1 and fresh[0] != stale


async def test_rate_limit_and_server_errors_are_retried_and_arrive_once(
    bot: Bot, fake: FakeZalo, clock: ManualClock
) -> None:
    service, http = bot
    citizen = Citizen(fake, http, clock)
    fake.fail_next(2, "-32")
    fake.fail_next(1, "500")
    for text in ("xin chào", "hướng dẫn", "menu"):
        assert await citizen.deliver(fake.text_event(USER, text)) == 200
    replies = await citizen.replies()
    assert [r.text[:9] for r in replies] == ["Xin chào ", "Hướng dẫn", "Xin chào "]
    async with service.db.sessions() as s:
        rows = (await s.exec(select(OutboxMessage).order_by(OutboxMessage.id))).all()  # type: ignore[arg-type]
    assert [(m.status, m.attempts) for m in rows] == [("sent", 4), ("sent", 1), ("sent", 1)]


async def test_a_citizen_silent_for_7_days_is_marked_undeliverable_with_the_reason(
    bot: Bot, fake: FakeZalo, clock: ManualClock
) -> None:
    service, http = bot
    citizen = Citizen(fake, http, clock)
    fake.fail_next(1, "-230")
    await citizen.deliver(fake.text_event(USER, "xin chào"))
    await settle(http, clock=clock)
    async with service.db.sessions() as s:
        m = (await s.exec(select(OutboxMessage))).one()
    assert (
        m.status == "failed" and "-230" in (m.last_error or "") and "7 days" in (m.last_error or "")
    )


async def test_a_long_message_is_split_at_2000_characters(
    bot: Bot, fake: FakeZalo, clock: ManualClock
) -> None:
    service, http = bot
    async with service.db.transaction() as s:
        s.add(
            OutboxMessage(
                channel="zalo",
                recipient=USER,
                body={
                    "text": "Kết quả giải quyết hồ sơ. " * 180,
                    "buttons": [{"payload": "ok", "title": "Đồng ý"}],
                },
                next_attempt_at=clock.now(),
                created_at=clock.now(),
            )
        )
    service.sender.wake()
    await settle(http, clock=clock)
    parts = fake.sent_to(USER)
    assert len(parts) == 3 and all(len(p.text) <= 2000 for p in parts)
    assert [p.buttons for p in parts[:2]] == [[], []] and parts[2].buttons[0]["title"] == "Đồng ý"


async def test_a_platform_that_does_not_answer_is_a_temporary_failure_not_a_loss(
    db_url: str, clock: ManualClock, fake: FakeZalo
) -> None:
    db = Database(db_url)
    channel = ZaloOA(db, make_settings(db_url, **zalo_env(fake)).zalo, clock, timeout=0.5)
    await channel.start()
    try:
        fake.fail_next(1, "timeout")
        message = OutboxMessage(
            channel="zalo",
            recipient=USER,
            body={"text": "Xin chào"},
            next_attempt_at=clock.now(),
            created_at=clock.now(),
        )
        with pytest.raises(TemporaryFailure, match="TimeoutError"):
            await channel.send(message)
        assert await channel.send(message)  # the next attempt goes through
    finally:
        await channel.stop()
        await db.dispose()


async def test_an_official_on_zalo_takes_up_a_report_with_its_buttons(
    bot: Bot, fake: FakeZalo, clock: ManualClock
) -> None:
    """Report buttons travel as oa.query.hide: the tap brings back the payload, not the title."""
    from bot.officials import issue_link_code
    from storage.models import Agency, Official, Report
    from tests.factories import routing

    service, http = bot
    async with service.db.transaction() as s:
        ids = {a.code: a.id for a in await s.exec(select(Agency))}
        await routing(
            s,
            {
                "province": ids["000.00.00.H42"],
                "ward": ids["H42.15.01"],
                "police": ids["000.00.10.H42"],
            },
        )
        econ = await s.scalar(select(Agency).where(Agency.code == "H42.15.01.01"))
        assert econ is not None
        officer = Official(agency_id=econ.id, name="Phạm Văn An", role="officer")  # type: ignore[arg-type]
        s.add(officer)
        await s.flush()
        code = await issue_link_code(s, officer.id, clock.now())  # type: ignore[arg-type]
    official = Citizen(fake, http, clock, user="5550001112223334445")
    assert "Đã liên kết" in (await official.say(code))[0].text

    citizen = Citizen(fake, http, clock)
    await citizen.say("menu")
    await citizen.tap("Gửi phản ánh, kiến nghị")
    await citizen.say("Hồ sơ tách thửa nộp từ tháng 8 đến nay chưa có kết quả")
    await citizen.tap("Đất đai")
    await citizen.tap("Không có mã hồ sơ")
    await citizen.say("phường Việt Trì")

    [notice] = await official.replies()
    assert notice.text.startswith("Phản ánh mới") or "PAKN." in notice.text
    assert all(b["type"] == "oa.query.hide" for b in notice.buttons)
    assert notice.buttons[0]["payload"].startswith("of:accept:")
    await official.tap("Nhận xử lý")
    async with service.db.sessions() as s:
        report = await s.scalar(select(Report))
    assert report is not None and report.status == "in_progress"
    assert report.official_id == officer.id
    told = await citizen.replies()
    assert any("tiếp nhận xử lý" in m.text for m in told)
