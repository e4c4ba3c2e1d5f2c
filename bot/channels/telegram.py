"""Telegram, through python-telegram-bot's real client (`telegram.Bot`).

Ingress: `POST /webhooks/telegram` (the secret header compared in constant time) or, when
no webhook URL is configured, long polling with getUpdates. Each update becomes one
`Inbound` event keyed by its update_id; a tapped button's callback query is answered and
its keyboard removed once the event is stored.

Egress: text split at 4,096 characters, buttons as an inline keyboard on the last part,
about 1 message/s per chat and 30/s overall, 429 answers turned into `retry_after`.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import os
import re
import warnings
from collections import OrderedDict
from datetime import timedelta
from typing import Any

from aiohttp import web
from aiolimiter import AsyncLimiter

# RetryAfter.retry_after as a timedelta, as PTB will give it by default in its next major.
os.environ.setdefault("PTB_TIMEDELTA", "1")

from telegram import Bot, InlineKeyboardButton, InlineKeyboardMarkup, Update
from telegram.error import (
    BadRequest,
    ChatMigrated,
    Conflict,
    Forbidden,
    InvalidToken,
    NetworkError,
    RetryAfter,
    TelegramError,
    TimedOut,
)
from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_attempt, wait_exponential

from bot.channels.base import Inbound, Message, TemporaryFailure, Undeliverable
from bot.channels.telegram_http import AiohttpRequest
from bot.channels.text import split_text
from bot.config import TelegramSettings
from bot.logs import mask
from bot.web import json_ok
from storage import jsonio

log = logging.getLogger(__name__)

NAME = "telegram"
MAX_TEXT = 4096
MAX_CALLBACK_DATA = 64
SECRET_HEADER = "X-Telegram-Bot-Api-Secret-Token"
POLL_TIMEOUT = 30
_TURN = re.compile(r"^(\d{1,6})\|(.+)$", re.S)


def callback_data(payload: str, turn: int | None) -> str:
    """`<turn>|<payload>` when it fits in Telegram's 64 bytes, else the payload alone."""
    if turn is not None:
        data = f"{turn}|{payload}"
        if len(data.encode()) <= MAX_CALLBACK_DATA:
            return data
    return payload


def retry_seconds(exc: RetryAfter) -> float:
    """Seconds Telegram asks us to wait (an int or a timedelta, by PTB's settings)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # PTB warns that the int form is deprecated
        value = exc.retry_after
    return value.total_seconds() if isinstance(value, timedelta) else float(value)


class _ChatPacer:
    """Keeps sends to one chat at least 1/rate seconds apart (the least recent forgotten)."""

    def __init__(self, rate: float, size: int = 10_000) -> None:
        self.interval = 1 / rate
        self.size = size
        self._last: OrderedDict[str, float] = OrderedDict()

    async def wait(self, chat: str) -> None:
        last = self._last.get(chat)
        if last is not None:
            delay = last + self.interval - asyncio.get_running_loop().time()
            if delay > 0:
                await asyncio.sleep(delay)

    def sent(self, chat: str) -> None:
        self._last.pop(chat, None)
        self._last[chat] = asyncio.get_running_loop().time()
        while len(self._last) > self.size:
            self._last.popitem(last=False)


class Telegram:
    """Channel adapter for a Telegram bot."""

    name = NAME

    def __init__(self, settings: TelegramSettings) -> None:
        self.settings = settings
        # bot.ingress.Ingress and bot.metrics.Metrics, set when the service is built
        self.ingress: Any = None
        self.metrics: Any = None
        base = settings.api_base
        self.bot = Bot(
            settings.token,
            base_url=f"{base}/bot",
            base_file_url=f"{base}/file/bot",
            request=AiohttpRequest(connections=64, read_timeout=10, write_timeout=10),
            get_updates_request=AiohttpRequest(connections=1, read_timeout=POLL_TIMEOUT + 10),
        )
        self.username = settings.username
        # No bursts: evenly spaced sends never exceed the rate in any one-second window.
        self._overall = AsyncLimiter(1, 1 / settings.rate_per_second)
        self._per_chat = _ChatPacer(settings.rate_per_chat_per_second)
        self._poller: asyncio.Task[None] | None = None
        self._background: set[asyncio.Task[Any]] = set()

    # ---- life cycle

    @property
    def polling(self) -> bool:
        return not self.settings.webhook_url

    async def start(self) -> None:
        """Log in (getMe); start long polling when no webhook is configured."""
        try:
            await self.bot.initialize()
        except InvalidToken as exc:
            raise RuntimeError("telegram.token was refused by Telegram (InvalidToken)") from exc
        self.username = self.username or self.bot.username
        log.info(
            "telegram: logged in as @%s (%s)",
            self.username,
            "polling" if self.polling else "webhook",
        )
        if self.polling:
            self._poller = asyncio.create_task(self._poll_forever(), name="telegram-polling")

    async def stop(self) -> None:
        if self._poller is not None:
            self._poller.cancel()
            await asyncio.gather(self._poller, return_exceptions=True)
        await asyncio.gather(*self._background, return_exceptions=True)
        await self.bot.shutdown()

    async def set_webhook(self) -> bool:
        """Register webhook_url with Telegram, with the secret it must send back."""
        await self.bot.initialize()
        try:
            return await self.bot.set_webhook(
                self.settings.webhook_url,
                secret_token=self.settings.secret_token,
                allowed_updates=["message", "callback_query"],
            )
        finally:
            await self.bot.shutdown()

    # ---- ingress

    def _rejected(self, reason: str) -> None:
        if self.metrics is not None:
            self.metrics.rejected.labels(NAME, reason).inc()

    def routes(self) -> list[web.RouteDef]:
        return [web.post("/webhooks/telegram", self.webhook)]

    async def webhook(self, request: web.Request) -> web.Response:
        """One update from Telegram: checked, stored once, answered 200 at once."""
        given = request.headers.get(SECRET_HEADER, "")
        expected = self.settings.secret_token
        if not expected or not hmac.compare_digest(given.encode(), expected.encode()):
            log.warning("telegram webhook: wrong or missing secret token from %s", request.remote)
            self._rejected("secret")
            return web.json_response({"error": "forbidden"}, status=403)
        try:
            data = jsonio.loads(await request.read())
            update = Update.de_json(data, self.bot)
        except (ValueError, TypeError, KeyError) as exc:
            log.warning("telegram webhook: unreadable update dropped: %s", exc)
            self._rejected("body")
            return web.json_response({"error": "not an update"}, status=400)
        await self.accept(update)
        return json_ok()

    async def accept(self, update: Update) -> bool:
        """Store an update in the inbox (once) and settle its callback query."""
        event = self.to_inbound(update)
        if event is None:
            return False
        new = await self.ingress.accept(event)
        if update.callback_query is not None:
            self._spawn(self._settle_callback(update))
        return bool(new)

    def to_inbound(self, update: Update) -> Inbound | None:
        """The update as an inbox event; None for what the bot does not take part in."""
        base: dict[str, Any] = {"channel": NAME, "platform_id": str(update.update_id)}
        query = update.callback_query
        if query is not None:
            message = query.message
            if message is None or message.chat.type != "private" or not query.data:
                return None
            turn: int | None = None
            payload = query.data
            m = _TURN.match(payload)
            if m:
                turn, payload = int(m[1]), m[2]
            return Inbound(
                kind="button",
                user_key=str(message.chat.id),
                payload=payload,
                turn=turn,
                text=_button_title(message, query.data),
                lang=_lang(query.from_user.language_code),
                **base,
            )
        message = update.message
        if message is None or message.chat.type != "private":
            return None  # edited messages, channels, groups: not a citizen's conversation
        user = str(message.chat.id)
        lang = _lang(message.from_user.language_code if message.from_user else None)
        text = message.text
        if text is not None:
            if text == "/start" or text.startswith("/start "):
                payload = text[len("/start") :].strip() or None
                return Inbound(kind="start", user_key=user, payload=payload, lang=lang, **base)
            return Inbound(kind="text", user_key=user, text=text, lang=lang, **base)
        kind = next(
            (
                k
                for k in ("sticker", "photo", "voice", "video", "document", "location", "contact")
                if getattr(message, k, None)
            ),
            "attachment",
        )
        return Inbound(kind="unsupported", user_key=user, text=kind, lang=lang, **base)

    async def _settle_callback(self, update: Update) -> None:
        """Answer the callback query (Telegram expects it) and take the tapped keyboard away."""
        query = update.callback_query
        assert query is not None
        try:
            async for attempt in AsyncRetrying(
                stop=stop_after_attempt(3),
                wait=wait_exponential(multiplier=0.3, max=2),
                retry=retry_if_exception_type((NetworkError, RetryAfter)),
                reraise=True,
            ):
                with attempt:
                    await self.bot.answer_callback_query(query.id)
        except TelegramError as exc:
            log.warning("telegram: callback query %s not answered: %s", query.id, exc)
        message = query.message
        if message is not None:
            try:
                await self.bot.edit_message_reply_markup(
                    message.chat.id, message.message_id, reply_markup=None
                )
            except TelegramError as exc:
                log.info(
                    "telegram: keyboard of message %s not removed: %s", message.message_id, exc
                )

    async def _poll_forever(self) -> None:
        """Long polling: fetch updates, store them, confirm them with the next offset."""
        offset: int | None = None
        delay = 1.0
        try:
            await self.bot.delete_webhook(drop_pending_updates=False)
        except TelegramError as exc:
            log.warning("telegram: could not delete the webhook before polling: %s", exc)
        while True:
            try:
                updates = await self.bot.get_updates(
                    offset=offset,
                    timeout=POLL_TIMEOUT,
                    allowed_updates=["message", "callback_query"],
                )
                for update in updates:
                    await self.accept(update)
                    offset = update.update_id + 1
                delay = 1.0
            except asyncio.CancelledError:
                raise
            except Conflict as exc:
                log.error(
                    "telegram polling: %s (is a webhook set, or another poller running?)", exc
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, 60)
            except RetryAfter as exc:
                await asyncio.sleep(retry_seconds(exc))
            except (NetworkError, TimedOut) as exc:
                log.warning("telegram polling: %s; retrying in %.0fs", exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 60)
            except Exception:
                log.exception("telegram polling failed; retrying in %.0fs", delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 60)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # ---- egress

    async def send(self, message: Message) -> str | None:
        """Send one stored message (in several parts if long); the last part's id."""
        body = message.body
        chat = message.recipient
        parts = split_text(body["text"], MAX_TEXT)
        markup = None
        if body.get("buttons"):
            markup = InlineKeyboardMarkup(
                [
                    [
                        InlineKeyboardButton(
                            b["title"], callback_data=callback_data(b["payload"], body.get("turn"))
                        )
                    ]
                    for b in body["buttons"]
                ]
            )
        sent_id: str | None = None
        for i, part in enumerate(parts):
            last = i == len(parts) - 1
            # The chat's pace first (a slot of the overall rate is not held while waiting);
            # waiting for the overall rate after it only spaces this chat's sends further.
            await self._per_chat.wait(chat)
            async with self._overall:
                self._per_chat.sent(chat)
                try:
                    sent = await self.bot.send_message(
                        chat, part, reply_markup=markup if last else None
                    )
                except RetryAfter as exc:
                    raise TemporaryFailure(f"429 {exc}", retry_after=retry_seconds(exc)) from exc
                except Forbidden as exc:
                    raise Undeliverable(f"forbidden: {exc.message}") from exc
                except ChatMigrated as exc:
                    raise Undeliverable(f"chat migrated to {exc.new_chat_id}") from exc
                except BadRequest as exc:
                    raise Undeliverable(f"bad request: {exc.message}") from exc
                except (NetworkError, TimedOut) as exc:
                    raise TemporaryFailure(f"network: {exc}") from exc
            sent_id = str(sent.message_id)
        log.debug("telegram: sent outbox %s to %s as %s", message.id, mask(chat), sent_id)
        return sent_id


def _lang(code: str | None) -> str | None:
    if not code:
        return None
    code = code.split("-")[0].lower()
    return code if code in ("vi", "en") else None


def _button_title(message: Any, data: str) -> str | None:
    """The title of the tapped button, read from the message it was on."""
    markup = getattr(message, "reply_markup", None)
    for row in getattr(markup, "inline_keyboard", ()) or ():
        for button in row:
            if button.callback_data == data:
                return str(button.text)
    return None
