"""A fake Telegram Bot API server, driven by the real `telegram.Bot` (python-telegram-bot 22).

    async with FakeTelegram() as tg:
        bot = telegram.Bot(tg.token, base_url=tg.base_url, base_file_url=tg.base_file_url)
        tg.queue_update(tg.text_update(812345678, "Xin chào"))
        updates = await bot.get_updates(timeout=10)

What it checks as Telegram does: the token (401), parameters as JSON, form-urlencoded or
multipart (PTB 22 POSTs every method as form-urlencoded, nested values such as
`reply_markup` and `allowed_updates` as JSON strings, booleans as "true"/"false"; getMe
has an empty body), text length (1-4096 after entity parsing), HTML / MarkdownV2 entity
syntax, `callback_data` (1-64 bytes), callback queries answered once, edits of unknown or
unchanged messages, getUpdates confirmation by offset and real long polling, 409 while a
webhook is set or when a newer getUpdates takes over. Faults are injected per method with
`fail_next`; `violations()` lists sends that broke Telegram's flood limits.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import math
import re
import secrets
import time
from collections import deque
from dataclasses import dataclass, field
from types import EllipsisType
from typing import Any
from urllib.parse import urlsplit

import aiohttp
from aiohttp import web

from tests.fakes import LocalServer

SECRET_HEADER = "X-Telegram-Bot-Api-Secret-Token"
MAX_TEXT = 4096
MAX_CALLBACK_DATA = 64
FAULT_KINDS = ("429", "500", "502", "403", "timeout", "disconnect")
SEND_METHODS = frozenset(
    {
        "sendMessage",
        "sendPhoto",
        "sendDocument",
        "sendSticker",
        "sendAudio",
        "sendVideo",
        "sendVoice",
        "sendLocation",
        "sendContact",
        "sendMediaGroup",
        "copyMessage",
        "forwardMessage",
    }
)
CHAT_ACTIONS = frozenset(
    {
        "typing",
        "upload_photo",
        "record_video",
        "upload_video",
        "record_voice",
        "upload_voice",
        "upload_document",
        "choose_sticker",
        "find_location",
        "record_video_note",
        "upload_video_note",
    }
)
# Update types Telegram leaves out unless asked for by name in allowed_updates.
OPT_IN_UPDATES = frozenset({"chat_member", "message_reaction", "message_reaction_count"})
BUTTON_ACTIONS = (
    "url",
    "callback_data",
    "web_app",
    "login_url",
    "switch_inline_query",
    "switch_inline_query_current_chat",
    "switch_inline_query_chosen_chat",
    "copy_text",
    "callback_game",
    "pay",
)
QUERY_INVALID = "Bad Request: query is too old and response timeout expired or query ID is invalid"
NOT_MODIFIED = (
    "Bad Request: message is not modified: specified new message content and reply markup "
    "are exactly the same as a current content and reply markup of the message"
)
_TOKEN_FORMAT = re.compile(r"^\d+:[A-Za-z0-9_-]+$")
_SECRET_FORMAT = re.compile(r"^[A-Za-z0-9_-]{1,256}$")


# ---------------------------------------------------------------- records


@dataclass
class Call:
    """One HTTP call to the Bot API, as received."""

    method: str  # as in the URL path, e.g. "sendMessage"
    params: dict[str, Any]  # decoded: JSON-encoded form values parsed, numbers still strings
    http_method: str
    content_type: str
    token: str
    time: float  # time.monotonic()
    status: int = 0  # the HTTP status answered (0 while pending)
    response: dict[str, Any] | None = None


@dataclass
class Sent:
    """A message the bot sent successfully."""

    method: str
    chat_id: int | str
    text: str | None  # as the bot passed it (markup included when parse_mode is set)
    reply_markup: dict[str, Any] | None
    time: float  # time.monotonic()
    message_id: int
    params: dict[str, Any] = field(default_factory=dict)

    @property
    def buttons(self) -> list[dict[str, Any]]:
        """The inline keyboard's buttons, row after row."""
        rows = (self.reply_markup or {}).get("inline_keyboard") or []
        return [button for row in rows for button in row]

    @property
    def callback_data(self) -> list[str]:
        return [b["callback_data"] for b in self.buttons if "callback_data" in b]


@dataclass
class AnsweredCallback:
    callback_query_id: str
    text: str | None
    show_alert: bool
    url: str | None
    time: float


@dataclass
class Edit:
    method: str
    chat_id: int | str | None
    message_id: int | None
    inline_message_id: str | None
    reply_markup: dict[str, Any] | None
    time: float


@dataclass
class Webhook:
    url: str
    secret_token: str | None
    allowed_updates: list[str] | None
    drop_pending_updates: bool
    max_connections: int
    ip_address: str | None


@dataclass
class Violation:
    """A send that broke one of Telegram's flood limits."""

    kind: str  # "chat" (per chat per second), "global" (per second), "group" (per minute)
    chat_id: int | str
    count: int  # sends in the window, this one included
    limit: float
    sent: Sent


@dataclass
class Delivery:
    """One update posted to a webhook by post_webhook()."""

    url: str
    update_id: int | None
    status: int
    elapsed: float


class ApiError(Exception):
    """An error answer of the Bot API."""

    def __init__(
        self, status: int, description: str, parameters: dict[str, Any] | None = None
    ) -> None:
        super().__init__(description)
        self.status = status
        self.description = description
        self.parameters = parameters

    def body(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "ok": False,
            "error_code": self.status,
            "description": self.description,
        }
        if self.parameters:
            out["parameters"] = self.parameters
        return out


def bad_request(detail: str) -> ApiError:
    return ApiError(400, f"Bad Request: {detail}")


# ---------------------------------------------------------------- the server


class FakeTelegram(LocalServer):
    """A Bot API server for one bot; see the module docstring."""

    def __init__(
        self,
        token: str = "7012345678:AAHfakeTokenForTests_0123456789abcdef",
        *,
        username: str = "hailong_test_bot",
        first_name: str = "Hải Long",
        retry_after: int = 5,
        strict_chats: bool = False,
        enforce_rate_limits: bool = False,
        callback_query_ttl: float | None = None,
        first_update_id: int = 512_000_001,
    ) -> None:
        """
        token: the one token accepted (others get 401). strict_chats: sending to a chat no
        update came from answers "chat not found", as Telegram does. enforce_rate_limits:
        sends beyond 1/s per chat or 30/s overall get a 429. callback_query_ttl: seconds
        after which a callback query can no longer be answered (None: never).
        """
        super().__init__()
        self.token = token
        head = token.split(":", 1)[0]
        self.bot_id = int(head) if head.isdigit() else 7012345678
        self.username = username
        self.first_name = first_name
        self.retry_after = retry_after
        self.strict_chats = strict_chats
        self.enforce_rate_limits = enforce_rate_limits
        self.callback_query_ttl = callback_query_ttl

        self.sent: list[Sent] = []
        self.answered_callbacks: list[AnsweredCallback] = []
        self.edits: list[Edit] = []
        self.requests: list[Call] = []
        self.deliveries: list[Delivery] = []
        self.webhook: Webhook | None = None
        self.blocked: set[int | str] = set()

        self._update_ids = itertools.count(first_update_id)
        self._callback_ids = itertools.count(4_382_915_000_000_000_001)
        self._file_ids = itertools.count(1)
        self._queue: list[dict[str, Any]] = []
        self._allowed_updates: list[str] = []
        self._changed = asyncio.Event()
        self._poll_generation = 0
        self._message_ids: dict[int | str, int] = {}
        self._messages: dict[tuple[int | str, int], dict[str, Any]] = {}
        self._users: dict[int, dict[str, Any]] = {}
        self._callbacks: dict[str, float] = {}  # pending callback query id -> created (monotonic)
        self._faults: dict[str, deque[tuple[str, int]]] = {}

        self._handlers = {
            "getme": self._get_me,
            "setwebhook": self._set_webhook,
            "deletewebhook": self._delete_webhook,
            "getwebhookinfo": self._get_webhook_info,
            "getupdates": self._get_updates,
            "sendmessage": self._send_message,
            "answercallbackquery": self._answer_callback_query,
            "editmessagereplymarkup": self._edit_message_reply_markup,
            "sendchataction": self._send_chat_action,
        }
        self.app.router.add_route("*", "/bot{token}/{method}", self._handle)
        self.app.router.add_route("*", "/file/bot{token}/{path:.*}", self._handle_file)

    # ---- addresses

    @property
    def base_url(self) -> str:
        """For `telegram.Bot(token, base_url=...)`: `http://127.0.0.1:PORT/bot`."""
        return f"{self.url}/bot"

    @property
    def base_file_url(self) -> str:
        return f"{self.url}/file/bot"

    # ---- control

    def fail_next(
        self, method: str, n: int = 1, kind: str = "429", *, retry_after: int | None = None
    ) -> None:
        """Make the next n calls of `method` ("*" for any) fail.

        kind: "429" (flood control, `parameters.retry_after`), "500", "502", "403" (bot
        blocked), "timeout" (never answers until stop()), "disconnect" (connection closed).
        """
        if kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault kind {kind!r}; one of {FAULT_KINDS}")
        queue = self._faults.setdefault(method.lower(), deque())
        for _ in range(n):
            queue.append((kind, self.retry_after if retry_after is None else retry_after))

    def block(self, chat_id: int | str) -> None:
        """The user blocks the bot: every send to the chat answers 403."""
        self.blocked.add(_norm_chat(chat_id))

    def unblock(self, chat_id: int | str) -> None:
        self.blocked.discard(_norm_chat(chat_id))

    def reset(self) -> None:
        """Forget records, faults, queued updates, the webhook and blocks (ids keep counting)."""
        self.sent.clear()
        self.answered_callbacks.clear()
        self.edits.clear()
        self.requests.clear()
        self.deliveries.clear()
        self.webhook = None
        self.blocked.clear()
        self._queue.clear()
        self._allowed_updates = []
        self._messages.clear()
        self._callbacks.clear()
        self._faults.clear()
        self._notify()

    # ---- inspection

    def sent_to(self, chat_id: int | str) -> list[Sent]:
        key = str(chat_id)
        return [s for s in self.sent if str(s.chat_id) == key]

    def calls(self, method: str) -> list[Call]:
        """Raw calls of one method (case-insensitive)."""
        return [c for c in self.requests if c.method.lower() == method.lower()]

    @property
    def pending_updates(self) -> list[dict[str, Any]]:
        """Queued updates not yet confirmed by a getUpdates offset."""
        return list(self._queue)

    def message(self, chat_id: int | str, message_id: int) -> dict[str, Any] | None:
        """A message as Telegram currently holds it (reply_markup reflects edits)."""
        return self._messages.get((_norm_chat(chat_id), message_id))

    def violations(
        self,
        per_chat_per_second: float = 1,
        global_per_second: float = 30,
        per_group_per_minute: float = 20,
        *,
        slack: float = 0.05,
    ) -> list[Violation]:
        """Sends that broke the flood limits (sliding windows shortened by `slack` seconds)."""
        out: list[Violation] = []
        sends = sorted((s for s in self.sent if s.method in SEND_METHODS), key=lambda s: s.time)
        for i, s in enumerate(sends):
            out.extend(
                _check_limits(
                    sends[: i + 1],
                    s,
                    per_chat_per_second,
                    global_per_second,
                    per_group_per_minute,
                    slack,
                )
            )
        return out

    # ---- incoming updates, built as Telegram sends them

    def queue_update(self, update: dict[str, Any]) -> dict[str, Any]:
        """Queue an update for getUpdates (wakes a waiting long poll)."""
        self._queue.append(update)
        self._notify()
        return update

    def text_update(
        self,
        user_id: int,
        text: str,
        first_name: str = "Lan",
        language_code: str | None = "vi",
        *,
        username: str | None = None,
        entities: list[dict[str, Any]] | None = None,
        date: int | None = None,
    ) -> dict[str, Any]:
        """A private text message from a user."""
        message = self._user_message(user_id, first_name, language_code, username, date)
        message["text"] = text
        if entities:
            message["entities"] = entities
        return self._update("message", message)

    def start_update(
        self,
        user_id: int,
        payload: str | None = None,
        first_name: str = "Lan",
        language_code: str | None = "vi",
    ) -> dict[str, Any]:
        """`/start <payload>` as a deep link `t.me/<bot>?start=<payload>` produces it."""
        text = f"/start {payload}" if payload else "/start"
        entities = [{"offset": 0, "length": len("/start"), "type": "bot_command"}]
        return self.text_update(user_id, text, first_name, language_code, entities=entities)

    def callback_update(
        self,
        user_id: int,
        data: str,
        message_id: int | None = None,
        first_name: str = "Lan",
        language_code: str | None = "vi",
    ) -> dict[str, Any]:
        """A tap on an inline button: the message it was on is the one the bot sent.

        Without message_id, the latest bot message in the chat carrying a button with this
        data is used (else the latest bot message). A message the fake never saw is made up,
        with one button carrying `data`.
        """
        chat_id = _norm_chat(user_id)
        user = self._remember_user(user_id, first_name, language_code, None)
        message = None
        if message_id is not None:
            message = self._messages.get((chat_id, message_id))
        else:
            message = self._find_bot_message(chat_id, data)
            if message is not None:
                message_id = message["message_id"]
        if message is None:
            if message_id is None:
                message_id = self._next_message_id(chat_id)
            message = {
                "message_id": message_id,
                "from": self._bot_user(),
                "chat": self._chat(chat_id),
                "date": int(time.time()) - 1,
                "text": "…",
                "reply_markup": {"inline_keyboard": [[{"text": data, "callback_data": data}]]},
            }
        query_id = str(next(self._callback_ids))
        self._callbacks[query_id] = time.monotonic()
        query = {
            "id": query_id,
            "from": user,
            "message": json.loads(json.dumps(message)),
            "chat_instance": str(-(4_611_686_018_427_387_904 - abs(int(user_id)))),
            "data": data,
        }
        return self._update("callback_query", query)

    def sticker_update(
        self, user_id: int, emoji: str = "👍", first_name: str = "Lan"
    ) -> dict[str, Any]:
        message = self._user_message(user_id, first_name, "vi", None, None)
        message["sticker"] = {
            "file_id": self._file_id("CAACAgIAAxkBAAI"),
            "file_unique_id": self._file_id("AgAD"),
            "type": "regular",
            "width": 512,
            "height": 512,
            "is_animated": False,
            "is_video": False,
            "emoji": emoji,
            "set_name": "HotCherry",
            "file_size": 24_576,
        }
        return self._update("message", message)

    def photo_update(
        self, user_id: int, caption: str | None = None, first_name: str = "Lan"
    ) -> dict[str, Any]:
        message = self._user_message(user_id, first_name, "vi", None, None)
        sizes = [(90, 67, 1_234), (320, 240, 15_678), (1280, 960, 98_765)]
        message["photo"] = [
            {
                "file_id": self._file_id("AgACAgUAAxkBAAI"),
                "file_unique_id": self._file_id("AQAD"),
                "width": w,
                "height": h,
                "file_size": size,
            }
            for w, h, size in sizes
        ]
        if caption:
            message["caption"] = caption
        return self._update("message", message)

    async def post_webhook(
        self,
        url: str,
        update: dict[str, Any],
        secret_token: str | EllipsisType | None = ...,
        *,
        timeout: float = 10.0,
    ) -> int:
        """POST an update to a webhook like Telegram does; the HTTP status.

        secret_token: the header value; `...` (default) uses the one given to setWebhook (no
        header when none was), None sends no header.
        """
        if secret_token is ...:
            secret_token = self.webhook.secret_token if self.webhook else None
        headers = {"Content-Type": "application/json"}
        if secret_token is not None:
            headers[SECRET_HEADER] = secret_token
        body = json.dumps(update, ensure_ascii=False).encode()
        started = time.monotonic()
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as http,
            http.post(url, data=body, headers=headers) as r,
        ):
            await r.read()
            status = r.status
        self.deliveries.append(
            Delivery(url, update.get("update_id"), status, time.monotonic() - started)
        )
        return status

    # ---- HTTP

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        token = request.match_info["token"]
        name = request.match_info["method"]
        try:
            params = await _read_params(request)
        except ApiError as exc:
            params = {}
            error: ApiError | None = exc
        else:
            error = None
        call = Call(name, params, request.method, request.content_type, token, time.monotonic())
        self.requests.append(call)
        try:
            if token != self.token:
                if _TOKEN_FORMAT.match(token):
                    raise ApiError(401, "Unauthorized")
                raise ApiError(404, "Not Found")
            handler = self._handlers.get(name.lower())
            if handler is None:
                raise ApiError(404, "Not Found")
            if error is not None:
                raise error
            fault = self._take_fault(name)
            if fault is not None:
                kind, retry_after = fault
                if kind == "timeout":
                    await self._hang()
                    raise ApiError(504, "Gateway Timeout")
                if kind == "disconnect":
                    self._drop_connection(request)
                    call.status = -1
                    return web.Response(status=500)
                raise _fault_error(kind, retry_after)
            result = await handler(params)
        except ApiError as exc:
            body = exc.body()
            call.status = exc.status
        else:
            body = {"ok": True, "result": result}
            if isinstance(result, _Described):
                body = {"ok": True, "result": result.result, "description": result.description}
            call.status = 200
        call.response = body
        return _json(body, call.status)

    async def _handle_file(self, request: web.Request) -> web.Response:
        return _json({"ok": False, "error_code": 404, "description": "Not Found"}, 404)

    def _take_fault(self, method: str) -> tuple[str, int] | None:
        for key in (method.lower(), "*"):
            queue = self._faults.get(key)
            if queue:
                return queue.popleft()
        return None

    # ---- methods

    async def _get_me(self, p: dict[str, Any]) -> dict[str, Any]:
        return {
            **self._bot_user(),
            "can_join_groups": True,
            "can_read_all_group_messages": False,
            "supports_inline_queries": False,
            "can_connect_to_business": False,
            "has_main_web_app": False,
        }

    async def _set_webhook(self, p: dict[str, Any]) -> _Described:
        url = str(p.get("url") or "")
        drop = _bool(p.get("drop_pending_updates"))
        if not url:
            return await self._delete_webhook(p)
        parts = urlsplit(url)
        if parts.scheme != "https" or not parts.hostname:
            raise bad_request("bad webhook: An HTTPS URL must be provided for webhook")
        if parts.port not in (None, 80, 88, 443, 8443):
            raise bad_request(
                "bad webhook: Webhook can be set up only on ports 80, 88, 443 or 8443"
            )
        secret = p.get("secret_token")
        if secret is not None and not _SECRET_FORMAT.match(str(secret)):
            raise bad_request("secret token contains unallowed characters")
        max_connections = _int(p.get("max_connections", 40), "max_connections")
        allowed = _json_list(p.get("allowed_updates"), "allowed updates")
        if allowed is not None:
            self._allowed_updates = allowed
        new = Webhook(
            url=url,
            secret_token=None if secret is None else str(secret),
            allowed_updates=allowed,
            drop_pending_updates=drop,
            max_connections=max(1, min(100, max_connections)),
            ip_address=p.get("ip_address"),
        )
        same = self.webhook is not None and self.webhook.url == url
        self.webhook = new
        if drop:
            self._queue.clear()
        self._notify()
        return _Described(True, "Webhook is already set" if same else "Webhook was set")

    async def _delete_webhook(self, p: dict[str, Any]) -> _Described:
        had = self.webhook is not None
        self.webhook = None
        if _bool(p.get("drop_pending_updates")):
            self._queue.clear()
        return _Described(True, "Webhook was deleted" if had else "Webhook is already deleted")

    async def _get_webhook_info(self, p: dict[str, Any]) -> dict[str, Any]:
        info: dict[str, Any] = {
            "url": self.webhook.url if self.webhook else "",
            "has_custom_certificate": False,
            "pending_update_count": len(self._queue),
        }
        if self.webhook:
            info["max_connections"] = self.webhook.max_connections
            if self.webhook.ip_address:
                info["ip_address"] = self.webhook.ip_address
            if self.webhook.allowed_updates:
                info["allowed_updates"] = self.webhook.allowed_updates
        return info

    async def _get_updates(self, p: dict[str, Any]) -> list[dict[str, Any]]:
        if self.webhook is not None:
            raise ApiError(
                409,
                "Conflict: can't use getUpdates method while webhook is active; "
                "use deleteWebhook to delete the webhook first",
            )
        offset = _int(p["offset"], "offset") if p.get("offset") not in (None, "") else None
        limit = max(1, min(100, _int(p.get("limit", 100), "limit")))
        timeout = max(0.0, _float(p.get("timeout", 0), "timeout"))
        allowed = _json_list(p.get("allowed_updates"), "allowed updates")
        if allowed is not None:
            self._allowed_updates = allowed
        self._poll_generation += 1
        generation = self._poll_generation
        self._notify()  # an older long poll ends with 409
        self._confirm(offset)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            updates = self._deliverable(limit)
            remaining = deadline - loop.time()
            if updates or remaining <= 0 or self.closing:
                return updates
            changed = self._changed
            try:
                await asyncio.wait_for(changed.wait(), remaining)
            except TimeoutError:
                pass
            if generation != self._poll_generation:
                raise ApiError(
                    409,
                    "Conflict: terminated by other getUpdates request; "
                    "make sure that only one bot instance is running",
                )

    async def _send_message(self, p: dict[str, Any]) -> dict[str, Any]:
        chat_id = self._target_chat(p)
        text = p.get("text")
        if text is None or not str(text).strip():
            raise bad_request("message text is empty")
        text = str(text)
        plain = _parse_entities(text, p.get("parse_mode"))
        if not plain.strip():
            raise bad_request("message text is empty")
        if len(plain) > MAX_TEXT:
            raise bad_request("message is too long")
        markup = _parse_markup(p.get("reply_markup"))
        now = time.monotonic()
        self._check_flood("sendMessage", chat_id, now)
        message_id = self._next_message_id(chat_id)
        message: dict[str, Any] = {
            "message_id": message_id,
            "from": self._bot_user(),
            "chat": self._chat(chat_id),
            "date": int(time.time()),
            "text": plain,
        }
        if markup is not None and markup.get("inline_keyboard"):
            message["reply_markup"] = {"inline_keyboard": markup["inline_keyboard"]}
        self._messages[(chat_id, message_id)] = message
        self.sent.append(Sent("sendMessage", chat_id, text, markup, now, message_id, p))
        return message

    async def _answer_callback_query(self, p: dict[str, Any]) -> bool:
        query_id = str(p.get("callback_query_id") or "")
        created = self._callbacks.get(query_id)
        if created is None:
            raise bad_request(QUERY_INVALID.removeprefix("Bad Request: "))
        if self.callback_query_ttl is not None and time.monotonic() - created > (
            self.callback_query_ttl
        ):
            raise bad_request(QUERY_INVALID.removeprefix("Bad Request: "))
        del self._callbacks[query_id]
        text = p.get("text")
        self.answered_callbacks.append(
            AnsweredCallback(
                query_id,
                None if text is None else str(text),
                _bool(p.get("show_alert")),
                p.get("url"),
                time.monotonic(),
            )
        )
        return True

    async def _edit_message_reply_markup(self, p: dict[str, Any]) -> dict[str, Any] | bool:
        markup = _parse_markup(p.get("reply_markup"))
        keyboard = (markup or {}).get("inline_keyboard") or None
        inline_id = p.get("inline_message_id")
        if inline_id:
            self.edits.append(
                Edit("editMessageReplyMarkup", None, None, str(inline_id), markup, time.monotonic())
            )
            return True
        chat_id = self._target_chat(p)
        if p.get("message_id") in (None, ""):
            raise bad_request("message identifier is not specified")
        message_id = _int(p["message_id"], "message_id")
        message = self._messages.get((chat_id, message_id))
        if message is None:
            raise bad_request("message to edit not found")
        if message["from"].get("id") != self.bot_id:
            raise bad_request("message can't be edited")
        current = (message.get("reply_markup") or {}).get("inline_keyboard") or None
        if current == keyboard:
            raise bad_request(NOT_MODIFIED.removeprefix("Bad Request: "))
        if keyboard:
            message["reply_markup"] = {"inline_keyboard": keyboard}
        else:
            message.pop("reply_markup", None)
        message["edit_date"] = int(time.time())
        self.edits.append(
            Edit("editMessageReplyMarkup", chat_id, message_id, None, markup, time.monotonic())
        )
        return json.loads(json.dumps(message))

    async def _send_chat_action(self, p: dict[str, Any]) -> bool:
        self._target_chat(p)
        if p.get("action") not in CHAT_ACTIONS:
            raise bad_request("wrong parameter action in request")
        return True

    # ---- helpers

    def _notify(self) -> None:
        """Wake every long poll (each waits on the event current when it started waiting)."""
        self._changed.set()
        self._changed = asyncio.Event()

    def _on_closing(self) -> None:
        self._notify()

    def _confirm(self, offset: int | None) -> None:
        if offset is None:
            return
        if offset < 0:
            keep = -offset
            self._queue[:] = self._queue[-keep:] if keep else []
        else:
            self._queue[:] = [u for u in self._queue if u["update_id"] >= offset]

    def _deliverable(self, limit: int) -> list[dict[str, Any]]:
        """Queued updates of the allowed types (others are dropped, as Telegram never makes
        them)."""
        allowed = set(self._allowed_updates)
        kept = []
        for u in self._queue:
            kind = _update_type(u)
            if (kind in allowed) if allowed else (kind not in OPT_IN_UPDATES):
                kept.append(u)
        self._queue[:] = kept
        return [json.loads(json.dumps(u)) for u in kept[:limit]]

    def _target_chat(self, p: dict[str, Any]) -> int | str:
        raw = p.get("chat_id")
        if raw in (None, ""):
            raise bad_request("chat_id is empty")
        if isinstance(raw, str) and raw.startswith("@"):
            raise bad_request("chat not found")
        try:
            chat_id = _norm_chat(raw)
        except ValueError:
            raise bad_request("chat not found") from None
        if chat_id in self.blocked:
            raise ApiError(403, "Forbidden: bot was blocked by the user")
        known = not isinstance(chat_id, int) or chat_id < 0 or chat_id in self._users
        if self.strict_chats and not known:
            raise bad_request("chat not found")
        return chat_id

    def _check_flood(self, method: str, chat_id: int | str, now: float) -> None:
        if not self.enforce_rate_limits:
            return
        probe = Sent(method, chat_id, None, None, now, 0)
        history = [s for s in self.sent if s.method in SEND_METHODS and now - s.time < 60]
        broken = _check_limits([*history, probe], probe, 1, 30, 20, 0.0)
        if not broken:
            return
        retry = 1
        if any(v.kind == "group" for v in broken):
            first = min(s.time for s in history if str(s.chat_id) == str(chat_id))
            retry = max(1, math.ceil(60 - (now - first)))
        raise ApiError(429, f"Too Many Requests: retry after {retry}", {"retry_after": retry})

    def _next_message_id(self, chat_id: int | str) -> int:
        self._message_ids[chat_id] = self._message_ids.get(chat_id, 0) + 1
        return self._message_ids[chat_id]

    def _bot_user(self) -> dict[str, Any]:
        return {
            "id": self.bot_id,
            "is_bot": True,
            "first_name": self.first_name,
            "username": self.username,
        }

    def _remember_user(
        self, user_id: int, first_name: str, language_code: str | None, username: str | None
    ) -> dict[str, Any]:
        user: dict[str, Any] = {"id": int(user_id), "is_bot": False, "first_name": first_name}
        if username:
            user["username"] = username
        if language_code:
            user["language_code"] = language_code
        self._users[int(user_id)] = user
        return dict(user)

    def _chat(self, chat_id: int | str) -> dict[str, Any]:
        if isinstance(chat_id, int) and chat_id > 0:
            chat: dict[str, Any] = {"id": chat_id}
            user = self._users.get(chat_id)
            chat["first_name"] = user["first_name"] if user else "User"
            if user and user.get("username"):
                chat["username"] = user["username"]
            chat["type"] = "private"
            return chat
        kind = "supergroup" if str(chat_id).startswith("-100") else "group"
        return {"id": chat_id, "title": "Nhóm thử", "type": kind}

    def _user_message(
        self,
        user_id: int,
        first_name: str,
        language_code: str | None,
        username: str | None,
        date: int | None,
    ) -> dict[str, Any]:
        user = self._remember_user(user_id, first_name, language_code, username)
        chat_id = int(user_id)
        message = {
            "message_id": self._next_message_id(chat_id),
            "from": user,
            "chat": self._chat(chat_id),
            "date": int(time.time()) if date is None else date,
        }
        self._messages[(chat_id, message["message_id"])] = message
        return message

    def _find_bot_message(self, chat_id: int | str, data: str) -> dict[str, Any] | None:
        mine = [
            m
            for (chat, _), m in sorted(self._messages.items(), key=lambda kv: kv[0][1])
            if chat == chat_id and m["from"].get("id") == self.bot_id
        ]
        for m in reversed(mine):
            rows = (m.get("reply_markup") or {}).get("inline_keyboard") or []
            if any(b.get("callback_data") == data for row in rows for b in row):
                return m
        return mine[-1] if mine else None

    def _update(self, kind: str, payload: dict[str, Any]) -> dict[str, Any]:
        return {"update_id": next(self._update_ids), kind: json.loads(json.dumps(payload))}

    def _file_id(self, prefix: str) -> str:
        return f"{prefix}{next(self._file_ids):04d}{secrets.token_urlsafe(18)}"


@dataclass
class _Described:
    """A result with Telegram's optional `description` (setWebhook, deleteWebhook)."""

    result: Any
    description: str


# ---------------------------------------------------------------- parameters


async def _read_params(request: web.Request) -> dict[str, Any]:
    """Query string plus body (JSON, form-urlencoded or multipart); nested JSON decoded."""
    params: dict[str, Any] = {k: _maybe_json(k, v) for k, v in request.query.items()}
    if not request.body_exists:
        return params
    ctype = request.content_type
    if ctype == "application/json":
        try:
            data = await request.json()
        except ValueError:
            raise bad_request("can't parse JSON object") from None
        if not isinstance(data, dict):
            raise bad_request("can't parse JSON object")
        params.update(data)
    elif ctype in ("application/x-www-form-urlencoded", "multipart/form-data"):
        form = await request.post()
        for key, value in form.items():
            if isinstance(value, web.FileField):
                params[key] = {"filename": value.filename, "content": value.file.read()}
            else:
                params[key] = _maybe_json(key, str(value))
    return params


_JSON_PARAMS = frozenset(
    {
        "reply_markup",
        "allowed_updates",
        "entities",
        "caption_entities",
        "link_preview_options",
        "reply_parameters",
        "media",
        "commands",
        "scope",
    }
)


def _maybe_json(key: str, value: str) -> Any:
    """Form values of the parameters Telegram takes as JSON-serialized objects or arrays."""
    if key in _JSON_PARAMS and value[:1] in ("{", "["):
        try:
            return json.loads(value)
        except ValueError:
            return value
    return value


def _norm_chat(value: Any) -> int | str:
    if isinstance(value, bool):
        raise ValueError(value)
    if isinstance(value, int):
        return value
    text = str(value).strip()
    if re.fullmatch(r"-?\d+", text):
        return int(text)
    if text.startswith("@"):
        return text
    raise ValueError(value)


def _int(value: Any, name: str) -> int:
    if isinstance(value, bool):
        raise bad_request(f"invalid {name} specified")
    if isinstance(value, int):
        return value
    try:
        return int(str(value).strip())
    except ValueError:
        raise bad_request(f"invalid {name} specified") from None


def _float(value: Any, name: str) -> float:
    if isinstance(value, bool):
        raise bad_request(f"invalid {name} specified")
    try:
        return float(value)
    except (TypeError, ValueError):
        raise bad_request(f"invalid {name} specified") from None


def _bool(value: Any) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in ("true", "1")
    return bool(value)


def _json_list(value: Any, what: str) -> list[str] | None:
    if value in (None, ""):
        return None
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            raise bad_request(f"can't parse {what} JSON object") from None
    if not isinstance(value, list):
        raise bad_request(f"can't parse {what} JSON object")
    return [str(v) for v in value]


def _update_type(update: dict[str, Any]) -> str:
    return next((k for k in update if k != "update_id"), "")


def _json(body: dict[str, Any], status: int) -> web.Response:
    return web.Response(
        status=status,
        text=json.dumps(body, ensure_ascii=False),
        content_type="application/json",
    )


def _fault_error(kind: str, retry_after: int) -> ApiError:
    if kind == "429":
        return ApiError(
            429, f"Too Many Requests: retry after {retry_after}", {"retry_after": retry_after}
        )
    if kind == "403":
        return ApiError(403, "Forbidden: bot was blocked by the user")
    if kind == "502":
        return ApiError(502, "Bad Gateway")
    return ApiError(500, "Internal Server Error")


def _check_limits(
    history: list[Sent],
    s: Sent,
    per_chat_per_second: float,
    global_per_second: float,
    per_group_per_minute: float,
    slack: float,
) -> list[Violation]:
    """Limits broken by send `s` given the sends up to it (s included)."""
    out = []
    second = 1.0 - slack
    same_chat = [x for x in history if str(x.chat_id) == str(s.chat_id)]
    count = sum(1 for x in same_chat if s.time - x.time < second)
    if count > per_chat_per_second:
        out.append(Violation("chat", s.chat_id, count, per_chat_per_second, s))
    count = sum(1 for x in history if s.time - x.time < second)
    if count > global_per_second:
        out.append(Violation("global", s.chat_id, count, global_per_second, s))
    if isinstance(s.chat_id, int) and s.chat_id < 0:
        count = sum(1 for x in same_chat if s.time - x.time < 60.0 - slack)
        if count > per_group_per_minute:
            out.append(Violation("group", s.chat_id, count, per_group_per_minute, s))
    return out


# ---------------------------------------------------------------- reply markup


def _parse_markup(raw: Any) -> dict[str, Any] | None:
    """reply_markup as a dict, checked like Telegram checks inline keyboards."""
    if raw in (None, ""):
        return None
    markup = raw
    if isinstance(raw, str):
        try:
            markup = json.loads(raw)
        except ValueError:
            raise bad_request("can't parse reply keyboard markup JSON object") from None
    if not isinstance(markup, dict):
        raise bad_request("can't parse reply keyboard markup JSON object")
    if "inline_keyboard" not in markup:
        return markup
    rows = markup["inline_keyboard"]
    if not isinstance(rows, list) or not all(isinstance(r, list) for r in rows):
        raise bad_request(
            'can\'t parse reply keyboard markup JSON object: "inline_keyboard" must be an Array '
            "of Arrays"
        )
    for row in rows:
        for button in row:
            _check_button(button)
    return markup


def _check_button(button: Any) -> None:
    if not isinstance(button, dict):
        raise bad_request(
            "can't parse inline keyboard button: InlineKeyboardButton must be an Object"
        )
    if not isinstance(button.get("text"), str):
        raise bad_request(
            'can\'t parse inline keyboard button: Field "text" must be of type String'
        )
    actions = [k for k in BUTTON_ACTIONS if k in button]
    if not actions:
        raise bad_request(
            "can't parse inline keyboard button: Text buttons are unallowed in the inline keyboard"
        )
    if "callback_data" in button:
        data = button["callback_data"]
        if not isinstance(data, str) or not 1 <= len(data.encode()) <= MAX_CALLBACK_DATA:
            raise bad_request("BUTTON_DATA_INVALID")
    if "url" in button:
        url = str(button["url"])
        if not re.match(r"^(https?|tg)://\S+$", url):
            raise bad_request("BUTTON_URL_INVALID")


# ---------------------------------------------------------------- entities


_HTML_TAGS = frozenset(
    {
        "a",
        "b",
        "strong",
        "i",
        "em",
        "u",
        "ins",
        "s",
        "strike",
        "del",
        "span",
        "tg-spoiler",
        "tg-emoji",
        "code",
        "pre",
        "blockquote",
    }
)
_NAMED_ENTITIES = {"lt": "<", "gt": ">", "amp": "&", "quot": '"'}
_HTML_ENTITY = re.compile(r"&(#x[0-9a-fA-F]{1,6}|#[0-9]{1,7}|[a-zA-Z]{1,16});")
_HTML_START = re.compile(r"<([^\s>/]*)")
_MDV2_RESERVED = frozenset("_*[]()~`>#+-=|{}.!")
_MDV2_LANGUAGE = re.compile(r"[A-Za-z0-9_+#.-]*\n")
_MDV2_NAMES = {
    "*": "Bold",
    "_": "Italic",
    "__": "Underline",
    "~": "Strikethrough",
    "||": "Spoiler",
    "`": "Code",
    "```": "Pre",
    "[": "TextUrl",
}


def _parse_entities(text: str, parse_mode: Any) -> str:
    """The text as the user will see it; 400 "can't parse entities" on bad markup."""
    if parse_mode in (None, ""):
        return text
    mode = str(parse_mode).lower()
    try:
        if mode == "html":
            return _parse_html(text)
        if mode == "markdownv2":
            return _parse_markdown_v2(text)
    except ValueError as exc:
        raise bad_request(f"can't parse entities: {exc}") from None
    if mode == "markdown":
        return text
    raise bad_request("unsupported parse_mode")


def _byte_offset(text: str, i: int) -> int:
    return len(text[:i].encode())


def _parse_html(text: str) -> str:
    """Telegram's HTML: a few tags, 4 named entities and numeric ones; tags must nest."""
    out: list[str] = []
    stack: list[str] = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c == "&":
            m = _HTML_ENTITY.match(text, i)
            char = None
            if m:
                name = m[1]
                if name.startswith("#x"):
                    char = _codepoint(int(name[2:], 16))
                elif name.startswith("#"):
                    char = _codepoint(int(name[1:]))
                else:
                    char = _NAMED_ENTITIES.get(name)
            if m and char is not None:
                out.append(char)
                i = m.end()
            else:
                out.append("&")
                i += 1
            continue
        if c != "<":
            out.append(c)
            i += 1
            continue
        start = i
        if text.startswith("</", i):
            end = text.find(">", i)
            if end < 0:
                raise ValueError(f"Unclosed end tag at byte offset {_byte_offset(text, start)}")
            name = text[i + 2 : end].strip().lower()
            if not stack:
                raise ValueError(f"Unexpected end tag at byte offset {_byte_offset(text, start)}")
            if name and name != stack[-1]:
                raise ValueError(
                    f"Unmatched end tag at byte offset {_byte_offset(text, start)}, "
                    f'expected "</{stack[-1]}>", found "</{name}>"'
                )
            stack.pop()
            i = end + 1
            continue
        m = _HTML_START.match(text, i)
        name = m[1].lower() if m else ""
        if name not in _HTML_TAGS:
            raise ValueError(
                f'Unsupported start tag "{name}" at byte offset {_byte_offset(text, start)}'
            )
        end = _tag_end(text, i)
        if end < 0:
            raise ValueError(f"Unclosed start tag at byte offset {_byte_offset(text, start)}")
        stack.append(name)
        i = end + 1
    if stack:
        raise ValueError(f'Can\'t find end tag corresponding to start tag "{stack[-1]}"')
    return "".join(out)


def _codepoint(value: int) -> str | None:
    if 0 < value <= 0x10FFFF and not 0xD800 <= value <= 0xDFFF:
        return chr(value)
    return None


def _tag_end(text: str, i: int) -> int:
    """Index of the `>` closing the start tag at i (quoted attribute values skipped)."""
    quote = ""
    for j in range(i + 1, len(text)):
        c = text[j]
        if quote:
            if c == quote:
                quote = ""
        elif c in "\"'":
            quote = c
        elif c == ">":
            return j
    return -1


def _parse_markdown_v2(text: str) -> str:
    """Telegram's MarkdownV2: reserved characters escaped, entities closed."""
    out: list[str] = []
    stack: list[tuple[str, int]] = []  # (marker, index)
    i, n = 0, len(text)

    def toggle(marker: str) -> None:
        if stack and stack[-1][0] == marker:
            stack.pop()
        elif any(m == marker for m, _ in stack):
            top, at = stack[-1]
            raise ValueError(
                f"Can't find end of {_MDV2_NAMES[top]} entity at byte offset "
                f"{_byte_offset(text, at)}"
            )
        else:
            stack.append((marker, i))

    while i < n:
        c = text[i]
        if c == "\\" and i + 1 < n and 0 < ord(text[i + 1]) <= 126:
            out.append(text[i + 1])
            i += 2
            continue
        top = stack[-1][0] if stack else ""
        if top in ("`", "```"):
            if text.startswith(top, i):
                stack.pop()
                i += len(top)
            else:
                out.append(c)
                i += 1
            continue
        if top == "](":  # inside a link's URL
            if c == ")":
                stack.pop()
            i += 1
            continue
        if c not in _MDV2_RESERVED:
            out.append(c)
            i += 1
            continue
        if c == "`":
            marker = "```" if text.startswith("```", i) else "`"
            stack.append((marker, i))
            i += len(marker)
            if marker == "```":  # the language line of a pre block is not text
                m = _MDV2_LANGUAGE.match(text, i)
                i = m.end() if m else i
        elif c in "*~":
            toggle(c)
            i += 1
        elif c == "_":
            marker = "__" if text.startswith("__", i) else "_"
            toggle(marker)
            i += len(marker)
        elif c == "|" and text.startswith("||", i):
            toggle("||")
            i += 2
        elif c == "[":
            stack.append(("[", i))
            i += 1
        elif c == "!" and text.startswith("![", i):
            stack.append(("[", i))
            i += 2
        elif c == "]" and top == "[" and text.startswith("](", i):
            stack.pop()
            stack.append(("](", i))
            i += 2
        elif c == ">" and (i == 0 or text[i - 1] == "\n"):
            i += 1  # a blockquote line
        else:
            raise ValueError(
                f"Character '{c}' is reserved and must be escaped with the preceding '\\'"
            )
    if stack:
        marker, at = stack[-1]
        name = _MDV2_NAMES.get(marker, "TextUrl")
        raise ValueError(f"Can't find end of {name} entity at byte offset {_byte_offset(text, at)}")
    return "".join(out)
