"""The platform fakes behave like the platforms: FakeTelegram driven by the real
`telegram.Bot`, FakeZalo by plain aiohttp as our client speaks to Zalo."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import time
import warnings
from collections.abc import AsyncIterator, Iterator
from datetime import timedelta
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from telegram import Bot, InlineKeyboardButton, InlineKeyboardMarkup, Update
from telegram.error import (
    BadRequest,
    Conflict,
    Forbidden,
    InvalidToken,
    NetworkError,
    RetryAfter,
    TimedOut,
)
from telegram.request import HTTPXRequest

from tests.fakes import FakeTelegram, FakeZalo
from tests.fakes.telegram import SECRET_HEADER

USER = 5_123_456_789  # a 10-digit Telegram user id; its private chat has the same id
ZALO_USER = "8451827349283745123"  # > 2**53: Zalo ids only survive as strings


# ---------------------------------------------------------------- Telegram


@pytest.fixture
async def tg() -> AsyncIterator[FakeTelegram]:
    async with FakeTelegram() as fake:
        yield fake


@pytest.fixture
async def bot(tg: FakeTelegram) -> AsyncIterator[Bot]:
    bot = Bot(
        tg.token,
        base_url=tg.base_url,
        base_file_url=tg.base_file_url,
        request=HTTPXRequest(read_timeout=5),
        get_updates_request=HTTPXRequest(read_timeout=5),
    )
    async with bot:  # getMe
        yield bot


def keyboard(*data: str) -> InlineKeyboardMarkup:
    return InlineKeyboardMarkup([[InlineKeyboardButton(f"Nút {d}", callback_data=d)] for d in data])


def seconds(exc: RetryAfter) -> float:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        value = exc.retry_after
    return value.total_seconds() if isinstance(value, timedelta) else float(value)


async def test_get_me_logs_the_bot_in(tg: FakeTelegram, bot: Bot) -> None:
    assert bot.username == tg.username
    assert bot.id == tg.bot_id
    me = await bot.get_me()
    assert me.is_bot and me.can_join_groups is True
    call = tg.calls("getMe")[0]
    assert call.http_method == "POST" and call.params == {}


async def test_a_wrong_token_is_unauthorized(tg: FakeTelegram) -> None:
    with pytest.raises(InvalidToken):
        async with Bot("7012345678:AAwrongwrongwrong", base_url=tg.base_url):
            pass
    assert tg.requests[-1].status == 401
    assert tg.requests[-1].response == {
        "ok": False,
        "error_code": 401,
        "description": "Unauthorized",
    }


async def test_send_message_records_the_parsed_keyboard(tg: FakeTelegram, bot: Bot) -> None:
    message = await bot.send_message(USER, "Chọn một mục", reply_markup=keyboard("a:1", "b:2"))
    assert message.message_id == 1
    assert message.chat.id == USER and message.chat.type == "private"
    assert message.from_user is not None and message.from_user.id == tg.bot_id
    assert message.text == "Chọn một mục"
    assert message.reply_markup is not None
    assert message.reply_markup.inline_keyboard[1][0].callback_data == "b:2"

    [sent] = tg.sent_to(USER)
    assert sent.method == "sendMessage" and sent.chat_id == USER
    assert sent.reply_markup == {
        "inline_keyboard": [
            [{"text": "Nút a:1", "callback_data": "a:1"}],
            [{"text": "Nút b:2", "callback_data": "b:2"}],
        ]
    }
    assert sent.callback_data == ["a:1", "b:2"]
    # What PTB 22 sends: a form, nested objects as JSON strings.
    call = tg.calls("sendMessage")[0]
    assert call.content_type == "application/x-www-form-urlencoded"
    assert call.params["chat_id"] == str(USER)

    second = await bot.send_message(USER, "Tiếp")
    assert second.message_id == 2
    assert second.reply_markup is None


async def test_long_polling_waits_and_returns_a_queued_update(tg: FakeTelegram, bot: Bot) -> None:
    loop = asyncio.get_running_loop()
    loop.call_later(0.3, lambda: tg.queue_update(tg.text_update(USER, "Xin chào")))
    started = time.monotonic()
    updates = await bot.get_updates(timeout=4)
    waited = time.monotonic() - started
    assert 0.25 < waited < 2

    [update] = updates
    assert isinstance(update, Update)
    message = update.message
    assert message is not None and message.text == "Xin chào"
    assert message.chat.id == USER and message.chat.type == "private"
    assert message.from_user is not None
    assert message.from_user.id == USER and message.from_user.first_name == "Lan"
    assert message.from_user.language_code == "vi"
    assert abs(message.date.timestamp() - time.time()) < 5

    # Asking with the next offset confirms (drops) it, as Telegram does.
    assert tg.pending_updates
    assert await bot.get_updates(offset=update.update_id + 1, timeout=0) == ()
    assert tg.pending_updates == []


async def test_long_polling_honours_the_timeout(bot: Bot) -> None:
    started = time.monotonic()
    assert await bot.get_updates(timeout=1) == ()
    assert time.monotonic() - started >= 0.95


async def test_a_newer_get_updates_ends_the_older_with_conflict(bot: Bot) -> None:
    older = asyncio.create_task(bot.get_updates(timeout=3))
    await asyncio.sleep(0.2)
    assert await bot.get_updates(timeout=0) == ()
    with pytest.raises(Conflict):
        await older


async def test_start_sticker_and_photo_updates(tg: FakeTelegram, bot: Bot) -> None:
    tg.queue_update(tg.start_update(USER, "H12_2026_000123"))
    tg.queue_update(tg.sticker_update(USER))
    tg.queue_update(tg.photo_update(USER, caption="ảnh"))
    start, sticker, photo = await bot.get_updates(timeout=0)
    assert start.message is not None and start.message.text == "/start H12_2026_000123"
    assert start.message.entities[0].type == "bot_command"
    assert start.message.entities[0].length == len("/start")
    assert sticker.message is not None and sticker.message.sticker is not None
    assert photo.message is not None and len(photo.message.photo) == 3
    assert photo.message.caption == "ảnh"
    ids = [start.update_id, sticker.update_id, photo.update_id]
    assert ids == sorted(ids) and len(set(ids)) == 3


async def test_callback_query_answered_once_and_keyboard_removed(
    tg: FakeTelegram, bot: Bot
) -> None:
    sent = await bot.send_message(USER, "Hài lòng?", reply_markup=keyboard("3|yes", "3|no"))
    tg.queue_update(tg.callback_update(USER, "3|no"))
    [update] = await bot.get_updates(timeout=0)
    query = update.callback_query
    assert query is not None and query.data == "3|no"
    assert query.from_user.id == USER and query.chat_instance
    assert query.message is not None
    assert query.message.message_id == sent.message_id
    assert query.message.chat.id == USER
    assert query.message.reply_markup is not None  # the keyboard the button was on

    assert await bot.answer_callback_query(query.id, text="Cảm ơn")
    assert tg.answered_callbacks[0].callback_query_id == query.id
    assert tg.answered_callbacks[0].text == "Cảm ơn"
    with pytest.raises(BadRequest, match=r"(?i)query is too old"):
        await bot.answer_callback_query(query.id)
    with pytest.raises(BadRequest, match=r"(?i)query is too old"):
        await bot.answer_callback_query("123456789")

    edited = await bot.edit_message_reply_markup(USER, sent.message_id, reply_markup=None)
    assert not isinstance(edited, bool) and edited.reply_markup is None
    assert tg.edits[0].message_id == sent.message_id and tg.edits[0].reply_markup is None
    with pytest.raises(BadRequest, match=r"(?i)not modified"):
        await bot.edit_message_reply_markup(USER, sent.message_id, reply_markup=None)
    with pytest.raises(BadRequest, match=r"(?i)message to edit not found"):
        await bot.edit_message_reply_markup(USER, 999, reply_markup=keyboard("x"))


async def test_webhook_set_blocks_get_updates(tg: FakeTelegram, bot: Bot) -> None:
    assert await bot.set_webhook(
        "https://hailong.example/webhooks/telegram",
        secret_token="s3cr3t-_token",
        allowed_updates=["message", "callback_query"],
    )
    assert tg.webhook is not None and tg.webhook.secret_token == "s3cr3t-_token"
    assert tg.webhook.allowed_updates == ["message", "callback_query"]
    info = await bot.get_webhook_info()
    assert info.url == "https://hailong.example/webhooks/telegram"
    with pytest.raises(Conflict):
        await bot.get_updates(timeout=0)
    assert await bot.delete_webhook()
    assert tg.webhook is None
    assert await bot.get_updates(timeout=0) == ()
    with pytest.raises(BadRequest, match=r"(?i)HTTPS"):
        await bot.set_webhook("http://hailong.example/hook")


async def test_post_webhook_sends_the_secret_header(tg: FakeTelegram, bot: Bot) -> None:
    received: list[tuple[str | None, dict[str, Any]]] = []

    async def hook(request: web.Request) -> web.Response:
        received.append((request.headers.get(SECRET_HEADER), await request.json()))
        return web.json_response({"ok": True})

    app = web.Application()
    app.router.add_post("/webhooks/telegram", hook)
    async with TestServer(app) as server:
        url = str(server.make_url("/webhooks/telegram"))
        await bot.set_webhook("https://hailong.example/webhooks/telegram", secret_token="abc")
        update = tg.text_update(USER, "qua webhook")
        assert await tg.post_webhook(url, update) == 200
        assert await tg.post_webhook(url, update, secret_token=None) == 200
    assert received[0] == ("abc", update)
    assert received[1][0] is None
    parsed = Update.de_json(received[0][1], bot)
    assert parsed.message is not None and parsed.message.text == "qua webhook"


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # PTB: retry_after's int form
async def test_429_raises_retry_after(tg: FakeTelegram, bot: Bot) -> None:
    tg.fail_next("sendMessage", 1, "429", retry_after=7)
    with pytest.raises(RetryAfter) as caught:
        await bot.send_message(USER, "một")
    assert seconds(caught.value) == 7
    assert tg.calls("sendMessage")[-1].response == {
        "ok": False,
        "error_code": 429,
        "description": "Too Many Requests: retry after 7",
        "parameters": {"retry_after": 7},
    }
    assert tg.sent == []
    await bot.send_message(USER, "hai")  # only the next call failed
    assert [s.text for s in tg.sent] == ["hai"]


async def test_403_raises_forbidden(tg: FakeTelegram, bot: Bot) -> None:
    tg.fail_next("sendMessage", 1, "403")
    with pytest.raises(Forbidden, match=r"(?i)bot was blocked by the user"):
        await bot.send_message(USER, "một")
    tg.block(USER)
    with pytest.raises(Forbidden):
        await bot.send_message(USER, "hai")
    await bot.send_message(USER + 1, "ba")


async def test_500_and_timeout_faults(tg: FakeTelegram) -> None:
    bot = Bot(tg.token, base_url=tg.base_url, request=HTTPXRequest(read_timeout=0.5))
    async with bot:
        tg.fail_next("sendMessage", 1, "500")
        with pytest.raises(NetworkError, match=r"(?i)Internal Server Error"):
            await bot.send_message(USER, "một")
        tg.fail_next("*", 1, "timeout")
        with pytest.raises(TimedOut):
            await bot.send_message(USER, "hai")
        tg.fail_next("sendMessage", 1, "disconnect")
        with pytest.raises(NetworkError):
            await bot.send_message(USER, "ba")
        await bot.send_message(USER, "bốn")
    assert [s.text for s in tg.sent] == ["bốn"]


async def test_text_limits(tg: FakeTelegram, bot: Bot) -> None:
    await bot.send_message(USER, "x" * 4096)
    with pytest.raises(BadRequest, match=r"(?i)message is too long"):
        await bot.send_message(USER, "x" * 4097)
    with pytest.raises(BadRequest, match=r"(?i)text is empty"):
        await bot.send_message(USER, "   ")
    # With parse_mode the limit applies to the text after entity parsing ...
    await bot.send_message(USER, "<b>" + "x" * 4096 + "</b>", parse_mode="HTML")
    # ... and the markup must be valid.
    with pytest.raises(BadRequest, match=r"(?i)parse entities"):
        await bot.send_message(USER, "1 < 2", parse_mode="HTML")
    with pytest.raises(BadRequest, match=r"(?i)reserved"):
        await bot.send_message(USER, "Hồ sơ số 12.", parse_mode="MarkdownV2")
    assert len(tg.sent) == 2


async def test_callback_data_over_64_bytes_is_rejected(tg: FakeTelegram, bot: Bot) -> None:
    await bot.send_message(USER, "ok", reply_markup=keyboard("d" * 64))
    with pytest.raises(BadRequest, match=r"(?i)BUTTON_DATA_INVALID"):
        await bot.send_message(USER, "too long", reply_markup=keyboard("d" * 65))
    # Bytes, not characters: 33 Vietnamese letters of 2 bytes each.
    with pytest.raises(BadRequest, match=r"(?i)BUTTON_DATA_INVALID"):
        await bot.send_message(USER, "too long", reply_markup=keyboard("ư" * 33))
    assert len(tg.sent) == 1


async def test_violations_list_sends_over_the_flood_limits(tg: FakeTelegram, bot: Bot) -> None:
    await bot.send_message(USER, "một")
    await bot.send_message(USER + 1, "khác")
    assert tg.violations() == []
    await bot.send_message(USER, "hai")  # same chat within a second
    [violation] = tg.violations()
    assert violation.kind == "chat" and violation.chat_id == USER and violation.count == 2
    assert tg.violations(per_chat_per_second=2) == []
    assert [v.kind for v in tg.violations(per_chat_per_second=5, global_per_second=2)] == ["global"]


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
async def test_enforced_rate_limits_answer_429() -> None:
    async with FakeTelegram(enforce_rate_limits=True) as strict:
        strict_bot = Bot(strict.token, base_url=strict.base_url)
        async with strict_bot:
            await strict_bot.send_message(USER, "một")
            with pytest.raises(RetryAfter):
                await strict_bot.send_message(USER, "hai")


async def test_reset_forgets_everything(tg: FakeTelegram, bot: Bot) -> None:
    await bot.send_message(USER, "một")
    tg.queue_update(tg.text_update(USER, "x"))
    tg.fail_next("sendMessage")
    tg.reset()
    assert tg.sent == [] and tg.requests == [] and tg.pending_updates == []
    await bot.send_message(USER, "hai")


# ---------------------------------------------------------------- Zalo


@pytest.fixture
async def zalo() -> AsyncIterator[FakeZalo]:
    async with FakeZalo() as fake:
        yield fake


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session:
        yield session


async def zalo_send(
    http: aiohttp.ClientSession, zalo: FakeZalo, message: dict[str, Any], **kw: Any
) -> tuple[int, dict[str, Any]]:
    token = kw.pop("token", zalo.access_token)
    headers = kw.pop("headers", {"access_token": token})
    user_id = kw.pop("user_id", ZALO_USER)
    body = {"recipient": {"user_id": user_id}, "message": message}
    async with http.post(f"{zalo.api_base}/v3.0/oa/message/cs", json=body, headers=headers) as r:
        return r.status, await r.json(content_type=None)


async def zalo_refresh(
    http: aiohttp.ClientSession, zalo: FakeZalo, refresh_token: str, secret: str | None = None
) -> dict[str, Any]:
    form = {"app_id": zalo.app_id, "grant_type": "refresh_token", "refresh_token": refresh_token}
    headers = {"secret_key": zalo.app_secret if secret is None else secret}
    url = f"{zalo.oauth_base}/v4/oa/access_token"
    async with http.post(url, data=form, headers=headers) as r:
        assert r.status == 200
        return await r.json()


def buttons(n: int) -> dict[str, Any]:
    return {
        "type": "template",
        "payload": {
            "buttons": [
                {"title": f"Mục {i}", "type": "oa.query.show", "payload": f"Mục {i}"}
                for i in range(n)
            ]
        },
    }


async def test_zalo_send_succeeds(zalo: FakeZalo, http: aiohttp.ClientSession) -> None:
    status, body = await zalo_send(
        http, zalo, {"text": "Xin chào", "attachment": buttons(5)}, user_id=ZALO_USER
    )
    assert status == 200 and body["error"] == 0 and body["message"] == "Success"
    assert body["data"]["user_id"] == ZALO_USER
    int(body["data"]["message_id"], 16)
    [sent] = zalo.sent_to(ZALO_USER)
    assert sent.text == "Xin chào" and sent.message_id == body["data"]["message_id"]
    assert [b["title"] for b in sent.buttons] == [f"Mục {i}" for i in range(5)]


async def test_zalo_send_rejects_bad_tokens(zalo: FakeZalo, http: aiohttp.ClientSession) -> None:
    status, body = await zalo_send(http, zalo, {"text": "x"}, token="wrong")
    assert status == 200 and body["error"] == -216
    bearer = {"Authorization": f"Bearer {zalo.access_token}"}
    _, body = await zalo_send(http, zalo, {"text": "x"}, headers=bearer)
    assert body["error"] == -216
    zalo.expire_access_token()
    _, body = await zalo_send(http, zalo, {"text": "x"})
    assert body["error"] == -220
    assert zalo.sent == []


async def test_zalo_send_validates_the_message(zalo: FakeZalo, http: aiohttp.ClientSession) -> None:
    _, body = await zalo_send(http, zalo, {"text": "x" * 2000})
    assert body["error"] == 0
    _, body = await zalo_send(http, zalo, {"text": "x" * 2001})
    assert body["error"] == -210 and "text length" in body["message"]
    _, body = await zalo_send(http, zalo, {"text": "x", "attachment": buttons(6)})
    assert body["error"] == -210
    _, body = await zalo_send(http, zalo, {"text": "x"}, user_id=int(ZALO_USER))
    assert body["error"] == -210
    assert len(zalo.sent) == 1


async def test_zalo_refresh_rotates_a_single_use_pair(
    zalo: FakeZalo, http: aiohttp.ClientSession
) -> None:
    old_access, old_refresh = zalo.access_token, zalo.refresh_token
    data = await zalo_refresh(http, zalo, old_refresh)
    assert set(data) == {"access_token", "refresh_token", "expires_in"}
    assert data["expires_in"] == "90000"  # a string, as Zalo sends it
    assert data["access_token"] != old_access and data["refresh_token"] != old_refresh
    assert zalo.access_token == data["access_token"]

    again = await zalo_refresh(http, zalo, old_refresh)  # single use
    assert again["error"] == -14014 and "access_token" not in again
    _, body = await zalo_send(http, zalo, {"text": "x"}, token=old_access)
    assert body["error"] == -216
    _, body = await zalo_send(http, zalo, {"text": "x"}, token=data["access_token"])
    assert body["error"] == 0

    wrong = await zalo_refresh(http, zalo, data["refresh_token"], secret="not-the-secret")
    assert wrong["error"] != 0 and wrong["error_name"] == "Invalid secret key"
    assert [c.refresh_token for c in zalo.refresh_calls] == [
        old_refresh,
        old_refresh,
        data["refresh_token"],
    ]
    assert [c.error for c in zalo.refresh_calls] == [0, -14014, -14004]
    assert zalo.refresh_count == 1


async def test_zalo_fault_injection(zalo: FakeZalo, http: aiohttp.ClientSession) -> None:
    zalo.fail_next(1, "-32")
    status, body = await zalo_send(http, zalo, {"text": "x"})
    assert status == 200 and body["error"] == -32
    zalo.fail_next(1, "-230")
    _, body = await zalo_send(http, zalo, {"text": "x"})
    assert body["error"] == -230
    zalo.fail_next(1, "500")
    status, _ = await zalo_send(http, zalo, {"text": "x"})
    assert status == 500
    _, body = await zalo_send(http, zalo, {"text": "x"})
    assert body["error"] == 0
    assert len(zalo.sent) == 1

    zalo.close_window(ZALO_USER)
    _, body = await zalo_send(http, zalo, {"text": "x"})
    assert body["error"] == -230
    zalo.text_event(ZALO_USER, "tôi đây")  # the citizen writes: the window reopens
    _, body = await zalo_send(http, zalo, {"text": "x"})
    assert body["error"] == 0


async def test_zalo_timeout_fault(zalo: FakeZalo) -> None:
    zalo.fail_next(1, "timeout")
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=0.5)) as http:
        with pytest.raises(TimeoutError):
            await zalo_send(http, zalo, {"text": "x"})


def all_ids(value: Any, path: str = "") -> Iterator[tuple[str, Any]]:
    """Every (path, value) whose key looks like an id."""
    if isinstance(value, dict):
        for k, v in value.items():
            p = f"{path}.{k}" if path else k
            if k in ("id", "app_id", "oa_id", "user_id_by_app", "msg_id", "timestamp"):
                yield p, v
            yield from all_ids(v, p)
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from all_ids(v, f"{path}[{i}]")


def test_zalo_events_carry_string_ids(zalo: FakeZalo) -> None:
    events = [
        zalo.text_event(ZALO_USER, "Chào"),
        zalo.follow_event(ZALO_USER),
        zalo.sticker_event(ZALO_USER),
        zalo.image_event(ZALO_USER),
        zalo.oa_echo_event(ZALO_USER, "Dạ"),
        zalo.seen_event(ZALO_USER, ["abc"]),
    ]
    for event in events:
        ids = list(all_ids(event))
        assert ids and all(isinstance(v, str) for _, v in ids), ids
        assert event["timestamp"].isdigit() and len(event["timestamp"]) == 13
        assert event["app_id"] == zalo.app_id
    text, follow, sticker, image, echo, seen = events
    assert text["event_name"] == "user_send_text"
    assert text["sender"]["id"] == ZALO_USER and text["recipient"]["id"] == zalo.oa_id
    assert text["message"]["text"] == "Chào" and text["message"]["msg_id"]
    assert text["user_id_by_app"] != ZALO_USER
    assert follow["event_name"] == "follow" and follow["follower"]["id"] == ZALO_USER
    assert sticker["message"]["attachments"][0]["type"] == "sticker"
    assert image["message"]["attachments"][0]["payload"]["url"].startswith("https://")
    assert echo["event_name"] == "oa_send_text" and echo["sender"]["id"] == zalo.oa_id
    assert seen["event_name"] == "user_seen_message" and seen["message"]["msg_ids"] == ["abc"]
    assert zalo.text_event(ZALO_USER, "x", msg_id="m1")["message"]["msg_id"] == "m1"


def test_zalo_signature_variants(zalo: FakeZalo) -> None:
    event = zalo.text_event(ZALO_USER, "Chào bạn")
    body = zalo.encode(event)
    assert "Chào".encode() in body  # raw UTF-8, not \\u escapes
    ts = event["timestamp"].encode()
    expected = {
        "app_id": zalo.app_id.encode() + body + ts + zalo.oa_secret_key.encode(),
        "oa_id": zalo.oa_id.encode() + body + ts + zalo.oa_secret_key.encode(),
        "app_secret": zalo.app_id.encode() + body + ts + zalo.app_secret.encode(),
    }
    macs = set()
    for variant, data in expected.items():
        header = zalo.signed_headers(body, variant)["X-ZEvent-Signature"]
        assert header == "mac=" + hashlib.sha256(data).hexdigest()
        macs.add(header)
    assert len(macs) == 3
    forged = zalo.signed_headers(body, forge=True)["X-ZEvent-Signature"]
    assert forged.startswith("mac=") and forged not in macs


async def test_zalo_post_webhook_signs_the_raw_body(zalo: FakeZalo) -> None:
    seen: list[tuple[bytes, dict[str, str]]] = []

    async def hook(request: web.Request) -> web.Response:
        raw = await request.read()
        seen.append((raw, dict(request.headers)))
        given = request.headers.get("X-ZEvent-Signature", "").removeprefix("mac=")
        ts = (await request.json()).get("timestamp", "")
        want = hashlib.sha256(
            zalo.app_id.encode() + raw + ts.encode() + zalo.oa_secret_key.encode()
        ).hexdigest()
        ok = hmac.compare_digest(given, want)
        return web.Response(status=200 if ok else 401, text="ok" if ok else "bad")

    app = web.Application()
    app.router.add_post("/webhooks/zalo", hook)
    async with TestServer(app) as server:
        url = str(server.make_url("/webhooks/zalo"))
        event = zalo.text_event(ZALO_USER, "Tôi muốn phản ánh")
        assert await zalo.post_webhook(url, event) == (200, "ok")
        assert await zalo.post_webhook(url, event, forge=True) == (401, "bad")
        assert await zalo.post_webhook(url, event, num_retry=2) == (200, "ok")
        assert await zalo.post_webhook(url, b"{}", signed=False) == (401, "bad")
    assert seen[0][0] == zalo.encode(event)
    assert seen[2][1]["num_retry"] == "2"
    assert [d.status for d in zalo.deliveries] == [200, 401, 200, 401]
