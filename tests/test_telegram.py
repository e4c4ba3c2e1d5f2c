"""Telegram: the real python-telegram-bot client against a fake Bot API server."""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp.test_utils import TestClient
from sqlmodel import select

from bot.app import Service
from bot.clock import ManualClock
from bot.links import deep_link_payload
from storage.models import InboxEvent, OutboxMessage, Rating
from tests.chat import settle
from tests.conftest import API_TOKEN
from tests.factories import COMPLETED
from tests.fakes import FakeTelegram
from tests.telegram_users import CITIZEN, TelegramCitizen, start, telegram_env

Bot = tuple[Service, TestClient]


async def test_a_citizen_rates_a_dossier_over_telegram_webhooks(
    telegram_bot: Bot, fake_telegram: FakeTelegram, clock: ManualClock
) -> None:
    service, http = telegram_bot
    citizen = TelegramCitizen(fake_telegram, http, clock)
    assert (
        await citizen.deliver(fake_telegram.start_update(CITIZEN, deep_link_payload(COMPLETED)))
        == 200
    )
    intro = await citizen.replies()
    assert len(intro) == 1
    assert COMPLETED in intro[0].text and intro[0].text.endswith(
        "(1/5) Thời gian giải quyết hồ sơ so với ngày hẹn trả kết quả"
    )
    assert [b["text"] for b in intro[0].buttons] == [
        "Rất không hài lòng",
        "Không hài lòng",
        "Bình thường",
        "Hài lòng",
        "Rất hài lòng",
    ]
    assert all(len(b["callback_data"].encode()) <= 64 for b in intro[0].buttons)
    for n, level in enumerate(["Rất hài lòng", "Hài lòng", "Hài lòng", "Bình thường"], 2):
        asked = await citizen.tap(level)
        assert [m.text for m in asked] == [asked[0].text] and asked[0].text.startswith(f"({n}/5)")
    comment = await citizen.tap("Rất hài lòng")
    assert "góp ý" in comment[0].text and [b["text"] for b in comment[0].buttons] == ["Bỏ qua"]
    thanks = await citizen.tap("Bỏ qua")
    assert "Cảm ơn anh/chị đã dành thời gian đánh giá" in thanks[0].text and not thanks[0].buttons

    # Every tap was answered (the spinner stops) and its keyboard taken away.
    await asyncio.sleep(0.05)
    assert len(fake_telegram.answered_callbacks) == 6
    assert len(fake_telegram.edits) == 6
    async with service.db.sessions() as s:
        rating = (await s.exec(select(Rating))).one()
    assert rating.channel == "telegram"
    assert len(fake_telegram.sent_to(CITIZEN)) == 7
    assert fake_telegram.violations(per_chat_per_second=50) == []  # the pace configured here


async def test_wrong_or_missing_secret_stores_nothing_and_sends_nothing(
    telegram_bot: Bot, fake_telegram: FakeTelegram, clock: ManualClock
) -> None:
    service, http = telegram_bot
    citizen = TelegramCitizen(fake_telegram, http, clock)
    assert (
        await citizen.deliver(
            fake_telegram.text_update(CITIZEN, "xin chào"), secret="forged-secret-000000"
        )
        == 403
    )
    assert await citizen.deliver(fake_telegram.text_update(CITIZEN, "xin chào"), secret=None) == 403
    await settle(http)
    async with service.db.sessions() as s:
        assert not (await s.exec(select(InboxEvent))).all()
    assert fake_telegram.sent == []


async def test_the_same_update_delivered_twice_is_processed_once(
    telegram_bot: Bot, fake_telegram: FakeTelegram, clock: ManualClock
) -> None:
    service, http = telegram_bot
    citizen = TelegramCitizen(fake_telegram, http, clock)
    update = fake_telegram.text_update(CITIZEN, "xin chào")
    assert await citizen.deliver(update) == 200
    assert await citizen.deliver(update) == 200  # Telegram redelivers after a slow answer
    replies = await citizen.replies()
    assert len(replies) == 1 and replies[0].text.startswith("Xin chào anh/chị")
    async with service.db.sessions() as s:
        assert len((await s.exec(select(InboxEvent))).all()) == 1


async def test_stickers_and_photos_get_a_polite_please_type(
    telegram_bot: Bot, fake_telegram: FakeTelegram, clock: ManualClock
) -> None:
    _, http = telegram_bot
    citizen = TelegramCitizen(fake_telegram, http, clock)
    assert await citizen.deliver(fake_telegram.sticker_update(CITIZEN)) == 200
    replies = await citizen.replies()
    assert "chỉ đọc được tin nhắn chữ" in replies[0].text
    assert await citizen.deliver(fake_telegram.photo_update(CITIZEN)) == 200
    assert "chỉ đọc được tin nhắn chữ" in (await citizen.replies())[0].text


async def test_a_stale_button_is_not_taken_as_the_current_answer(
    telegram_bot: Bot, fake_telegram: FakeTelegram, clock: ManualClock
) -> None:
    service, http = telegram_bot
    citizen = TelegramCitizen(fake_telegram, http, clock)
    await citizen.deliver(fake_telegram.start_update(CITIZEN, deep_link_payload(COMPLETED)))
    first = (await citizen.replies())[0]
    await citizen.tap("Hài lòng")
    # The citizen scrolls up and taps question 1's keyboard again.
    old = next(b for b in first.buttons if b["text"] == "Rất không hài lòng")
    await citizen.deliver(
        fake_telegram.callback_update(CITIZEN, old["callback_data"], first.message_id)
    )
    replies = await citizen.replies()
    assert "câu hỏi trước" in replies[0].text and "(2/5)" in replies[-1].text
    async with service.db.sessions() as s:
        conv_vars = [e.payload for e in (await s.exec(select(InboxEvent))).all()]
    assert conv_vars[-1] == "1"


async def test_429_and_500_from_telegram_delay_but_deliver_everything_once_in_order(
    telegram_bot: Bot, fake_telegram: FakeTelegram, clock: ManualClock
) -> None:
    service, http = telegram_bot
    citizen = TelegramCitizen(fake_telegram, http, clock)
    fake_telegram.fail_next("sendMessage", 2, "429", retry_after=7)
    fake_telegram.fail_next("sendMessage", 2, "500")
    for text in ("xin chào", "Hướng dẫn", "menu"):
        assert await citizen.deliver(fake_telegram.text_update(CITIZEN, text)) == 200
    replies = await citizen.replies()
    assert [r.text.split("\n")[0][:20] for r in replies] == [
        "Xin chào anh/chị! Đâ",
        "Hướng dẫn:",
        "Xin chào anh/chị! Đâ",
    ]
    async with service.db.sessions() as s:
        rows = (await s.exec(select(OutboxMessage).order_by(OutboxMessage.id))).all()  # type: ignore[arg-type]
    assert [m.status for m in rows] == ["sent"] * 3
    assert rows[0].attempts == 5  # 2 × 429, 2 × 500, then delivered
    assert rows[0].platform_message_id == str(replies[0].message_id)


async def test_a_citizen_who_blocked_the_bot_gets_the_message_parked_with_the_reason(
    telegram_bot: Bot, fake_telegram: FakeTelegram, clock: ManualClock
) -> None:
    service, http = telegram_bot
    citizen = TelegramCitizen(fake_telegram, http, clock)
    fake_telegram.block(CITIZEN)
    await citizen.deliver(fake_telegram.text_update(CITIZEN, "xin chào"))
    await settle(http, clock=clock)
    async with service.db.sessions() as s:
        m = (await s.exec(select(OutboxMessage))).one()
    assert m.status == "failed" and m.last_error is not None and "blocked" in m.last_error


async def test_a_long_message_is_split_at_4096_characters(
    telegram_bot: Bot, fake_telegram: FakeTelegram, clock: ManualClock
) -> None:
    service, http = telegram_bot
    async with service.db.transaction() as s:
        s.add(
            OutboxMessage(
                channel="telegram",
                recipient=str(CITIZEN),
                body={
                    "text": ("Đoạn văn dài. " * 200 + "\n\n") * 3,
                    "buttons": [{"payload": "ok", "title": "OK"}],
                    "turn": 3,
                },
                next_attempt_at=clock.now(),
                created_at=clock.now(),
            )
        )
    service.sender.wake()
    await settle(http, clock=clock)
    parts = fake_telegram.sent_to(CITIZEN)
    # Three paragraphs of 2,800 characters: no two fit in 4,096, so one part each.
    assert [p.text for p in parts] == [("Đoạn văn dài. " * 200).strip()] * 3
    assert not parts[0].buttons and not parts[1].buttons
    assert [b["callback_data"] for b in parts[2].buttons] == ["3|ok"]


async def test_many_citizens_at_once_stay_within_telegrams_rate_limits(
    db_url: str, clock: ManualClock, fake_telegram: FakeTelegram
) -> None:
    # Telegram's real pace: 1 message/s per chat, 30/s overall.
    _, http = await start(db_url, clock, telegram_env(fake_telegram, pace=1))
    try:
        citizens = [
            TelegramCitizen(fake_telegram, http, clock, user=6_000_000_000 + i) for i in range(40)
        ]
        hello = [c.deliver(fake_telegram.text_update(c.user, "xin chào")) for c in citizens]
        await asyncio.gather(*hello)
        menu = [c.deliver(fake_telegram.text_update(c.user, "menu")) for c in citizens]
        await asyncio.gather(*menu)
        await settle(http, clock=clock, timeout=20)
    finally:
        await http.close()
    assert len(fake_telegram.sent) == 80
    assert fake_telegram.violations() == []


async def test_a_full_rating_over_long_polling_when_no_webhook_is_configured(
    db_url: str, clock: ManualClock, fake_telegram: FakeTelegram
) -> None:
    service, http = await start(db_url, clock, telegram_env(fake_telegram, webhook=False))

    async def answer(update: dict) -> Any:
        """Queue an update for getUpdates and wait for the bot's reply."""
        before = len(fake_telegram.sent_to(CITIZEN))
        fake_telegram.queue_update(update)
        for _ in range(500):
            await asyncio.sleep(0.01)
            if len(fake_telegram.sent_to(CITIZEN)) > before:
                return fake_telegram.sent_to(CITIZEN)[-1]
        raise AssertionError("no reply over long polling")

    try:
        message = await answer(fake_telegram.start_update(CITIZEN, deep_link_payload(COMPLETED)))
        assert COMPLETED in message.text and len(message.buttons) == 5
        for title in ["Hài lòng"] * 5 + ["Bỏ qua"]:
            tap = next(b for b in message.buttons if b["text"] == title)
            message = await answer(
                fake_telegram.callback_update(CITIZEN, tap["callback_data"], message.message_id)
            )
        assert "Cảm ơn anh/chị đã dành thời gian đánh giá" in message.text
        await settle(http, clock=clock)
        assert len(fake_telegram.answered_callbacks) == 6
        async with service.db.sessions() as s:
            rating = (await s.exec(select(Rating))).one()
        assert rating.channel == "telegram" and rating.comment is None
    finally:
        await http.close()


async def test_the_dossier_api_returns_the_telegram_deep_link(telegram_bot: Bot) -> None:
    _, http = telegram_bot
    body = {
        "code": "H42.15.01-261120-0042",
        "procedure_code": "1.004227",
        "agency_code": "H42.15.01",
        "event": "completed",
        "at": "2026-11-20T08:15:00+07:00",
    }
    r = await http.post(
        "/api/v1/dossiers", json=body, headers={"Authorization": f"Bearer {API_TOKEN}"}
    )
    links = (await r.json())["dossier"]["links"]
    assert links["telegram"] == "https://t.me/hailong_test_bot?start=H42_15_01-261120-0042"
    assert links["chat"].endswith("/chat?start=H42.15.01-261120-0042")


async def test_metrics_count_traffic_duplicates_and_refusals(
    telegram_bot: Bot, fake_telegram: FakeTelegram, clock: ManualClock
) -> None:
    _, http = telegram_bot
    citizen = TelegramCitizen(fake_telegram, http, clock)
    update = fake_telegram.text_update(CITIZEN, "xin chào")
    await citizen.deliver(update)
    await citizen.deliver(update)
    await citizen.deliver(fake_telegram.text_update(CITIZEN, "menu"), secret="forged-secret-00000")
    await citizen.replies()
    r = await http.get("/metrics")
    assert r.status == 200 and r.headers["Content-Type"].startswith("text/plain")
    text = await r.text()
    for line in (
        'hailong_inbox_events_total{channel="telegram",result="new"} 1.0',
        'hailong_inbox_events_total{channel="telegram",result="duplicate"} 1.0',
        'hailong_webhook_rejected_total{channel="telegram",reason="secret"} 1.0',
        'hailong_outbox_sent_total{channel="telegram"} 1.0',
        'hailong_queue_length{queue="outbox",status="failed"} 0.0',
    ):
        assert line in text, line


async def test_set_webhook_registers_the_url_and_secret(fake_telegram: FakeTelegram) -> None:
    from bot.channels.telegram import Telegram
    from tests.conftest import make_settings
    from tests.telegram_users import SECRET, WEBHOOK_URL

    settings = make_settings("sqlite:///unused.db", **telegram_env(fake_telegram)).telegram
    assert await Telegram(settings).set_webhook() is True
    assert fake_telegram.webhook is not None
    assert fake_telegram.webhook.url == WEBHOOK_URL
    assert fake_telegram.webhook.secret_token == SECRET
