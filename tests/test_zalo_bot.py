"""Zalo Bot Platform: secret-token webhook, sendMessage, choices as a numbered list."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from aiohttp.test_utils import TestClient, TestServer
from sqlmodel import select

from bot.app import Service, build_app, build_service
from bot.clock import ManualClock
from storage.models import InboxEvent, Rating
from tests.chat import settle
from tests.conftest import make_settings
from tests.factories import COMPLETED, small_province
from tests.fakes.zalo_bot import FakeZaloBot

SECRET = "zb-secret-2468"
USER = "a1b2c3d4e5f60718"


@pytest.fixture
async def bot(
    db_url: str, clock: ManualClock
) -> AsyncIterator[tuple[Service, TestClient, FakeZaloBot]]:
    async with FakeZaloBot() as fake:
        env = {
            "HAILONG_ZALO_BOT_TOKEN": fake.token,
            "HAILONG_ZALO_BOT_SECRET_TOKEN": SECRET,
            "HAILONG_ZALO_BOT_API_BASE": fake.api_base,
        }
        service = build_service(make_settings(db_url, **env), clock)
        http = TestClient(TestServer(build_app(service)))
        await http.start_server()
        async with service.db.transaction() as s:
            await small_province(s, clock.now())
        yield service, http, fake
        await http.close()


async def test_a_rating_over_the_zalo_bot_platform_with_numbered_choices(
    bot: tuple[Service, TestClient, FakeZaloBot], clock: ManualClock
) -> None:
    service, http, fake = bot
    url = str(http.make_url("/webhooks/zalo-bot"))

    async def say(text: str) -> str:
        assert await fake.post_webhook(url, fake.text_update(USER, text), SECRET) == 200
        await settle(http, clock=clock)
        return fake.sent_to(USER)[-1].text

    intro = await say(COMPLETED)
    assert "(1/5)" in intro and "\n5. Rất hài lòng\n(Trả lời bằng số thứ tự)" in intro
    for n in range(2, 6):
        assert f"({n}/5)" in await say("4")
    assert "1. Bỏ qua" in await say("5")
    assert "Cảm ơn anh/chị" in await say("1")
    async with service.db.sessions() as s:
        rating = (await s.exec(select(Rating))).one()
    assert rating.channel == "zalo_bot" and rating.comment is None


async def test_a_wrong_secret_is_refused_and_nothing_stored(
    bot: tuple[Service, TestClient, FakeZaloBot],
) -> None:
    service, http, fake = bot
    url = str(http.make_url("/webhooks/zalo-bot"))
    assert await fake.post_webhook(url, fake.text_update(USER, "xin chào"), "wrong") == 403
    assert await fake.post_webhook(url, fake.text_update(USER, "xin chào"), None) == 403
    async with service.db.sessions() as s:
        assert not (await s.exec(select(InboxEvent))).all()
