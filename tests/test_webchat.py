"""The web chat over HTTP: what a browser (or a mischievous script) can send."""

from __future__ import annotations

import pytest
from aiohttp.test_utils import TestClient
from sqlmodel import select

from bot.app import Service
from bot.clock import ManualClock
from storage.models import InboxEvent
from tests.chat import ChatClient, texts
from tests.factories import small_province


@pytest.fixture
async def province(service: Service, clock: ManualClock) -> dict[str, int]:
    async with service.db.transaction() as s:
        return await small_province(s, clock.now())


async def test_the_chat_page_sets_a_session_cookie_and_speaks_vietnamese(http: TestClient) -> None:
    r = await http.get("/chat")
    assert r.status == 200
    page = await r.text()
    assert '<html lang="vi">' in page and "Lấy ý kiến người dân" in page
    assert "hl_chat" in r.cookies
    root = await http.get("/", allow_redirects=False)
    assert root.status == 302 and root.headers["Location"] == "/chat"


async def test_a_first_visit_is_greeted_with_the_menu(chat: ChatClient) -> None:
    replies = await chat.start()
    assert replies[0]["text"].startswith("Xin chào anh/chị!")
    assert len(replies[0]["buttons"]) == 4


@pytest.mark.parametrize(
    ("kwargs", "status", "error"),
    [
        (
            {"data": "{not json", "headers": {"Content-Type": "application/json"}},
            400,
            "not valid JSON",
        ),
        (
            {"data": "text=hi", "headers": {"Content-Type": "application/x-www-form-urlencoded"}},
            415,
            "JSON",
        ),
        ({"json": ["hi"]}, 400, "JSON object"),
        ({"json": {"text": "hi"}}, 400, "id must be"),
        ({"json": {"id": "x" * 65, "text": "hi"}}, 400, "id must be"),
        ({"json": {"id": "abcdefgh12", "text": 42}}, 400, "text must be a string"),
        ({"json": {"id": "abcdefgh12", "payload": "p" * 65}}, 400, "payload"),
        ({"json": {"id": "abcdefgh12", "payload": "5", "turn": "two"}}, 400, "turn"),
        ({"json": {"id": "abcdefgh12", "start": "s" * 65}}, 400, "start"),
    ],
)
async def test_malformed_chat_requests_get_a_clear_error_and_store_nothing(
    chat: ChatClient, http: TestClient, service: Service, kwargs: dict, status: int, error: str
) -> None:
    r = await http.post("/chat/api/events", **kwargs)
    assert r.status == status
    assert error in (await r.json())["error"]
    async with service.db.sessions() as s:
        assert not (await s.exec(select(InboxEvent))).all()


async def test_without_a_session_cookie_nothing_is_accepted(
    service: Service, http: TestClient
) -> None:
    r = await http.post("/chat/api/events", json={"id": "abcdefgh12", "text": "hi"})
    assert r.status == 401
    r = await http.get("/chat/api/messages")
    assert r.status == 401


async def test_a_10000_character_message_is_kept_and_answered_clearly(
    chat: ChatClient, service: Service, province: dict[str, int]
) -> None:
    await chat.start()
    await chat.tap("Đánh giá hồ sơ")
    huge = "Tôi rất bức xúc vì hồ sơ trễ hẹn. " * 300
    replies = await chat.say(huge[:10_000])
    assert "10000 ký tự" in texts(replies) and "4000" in texts(replies)
    async with service.db.sessions() as s:
        stored = (await s.exec(select(InboxEvent).order_by(InboxEvent.id.desc()))).first()  # type: ignore[union-attr]
    assert stored is not None and stored.text == huge[:10_000]  # nothing lost


async def test_emoji_only_and_empty_text_get_a_clear_answer(
    chat: ChatClient, province: dict[str, int]
) -> None:
    await chat.start()
    await chat.tap("Đánh giá hồ sơ")
    assert "chưa đúng dạng mã hồ sơ" in texts(await chat.say("🙏👍😡"))
    assert "chưa nhập nội dung" in texts(await chat.say(""))
    at_menu = await chat.say("menu")
    assert "Xin chào" in texts(at_menu)
    assert "chưa nhập nội dung" in texts(await chat.say("   "))


async def test_a_greeting_after_a_finished_conversation_brings_the_menu_back(
    chat: ChatClient,
) -> None:
    await chat.start()
    assert "Mã liên kết không đúng" in texts(await chat.say("LK-AAAA-BBBB"))  # ends there
    replies = await chat.say("xin chao")
    assert replies[0]["text"].startswith("Xin chào anh/chị!")
    assert "chưa hiểu" not in texts(replies)


async def test_the_page_is_english_on_request(http: TestClient) -> None:
    citizen = ChatClient(http)
    page = await citizen.open("?lang=en")
    assert '<html lang="en">' in page
    await citizen.post({"start": "", "lang": "en"})
    replies = await citizen.replies()
    assert replies[0]["text"].startswith("Hello!")
