"""Benchmark: citizens rating dossiers over signed platform webhooks, against a floor.

Starts the real bot (`bot.py run`, SQLite by default, --pg URL for PostgreSQL) with its Zalo
OA (or, with --channel telegram, its Telegram bot) pointed at a lean fake platform API in
this process that records every send. Completed dossiers are pushed through the dossier API,
then C concurrent citizens rate them, each a closed loop: one webhook event (the dossier
code, five scale taps, "Bỏ qua"), then wait until the bot's answer to that citizen reaches
the fake, check it is the expected one, send the next event. Latency is from the start of
the webhook POST to the answer arriving at the fake.

The floor, measured in the same invocation before the bot: a bare aiohttp handler in its
own process that checks the event (Zalo signature over the raw body, or Telegram's secret
header, in constant time), parses the JSON, inserts one inbox row into the same kind of
database (aiosqlite on a WAL file with the bot's pragmas, or asyncpg on the same server)
and answers 200; its latency is POST → 200. It prints events/s, latency percentiles, peak
RSS and CPU per event of both, and the bot/floor ratios the targets are about.

    .venv/bin/python bench/webhook.py                    # Zalo OA, SQLite, C=50, 10 ratings each
    .venv/bin/python bench/webhook.py -n 6 --pg postgresql://postgres@127.0.0.1/bench_webhook
    .venv/bin/python bench/webhook.py --channel telegram -n 6
    .venv/bin/python bench/webhook.py --floor-only       # the floor alone
    .venv/bin/python bench/webhook.py -n 20 --versus-sqlite --pg postgresql://postgres@127.0.0.1

The PostgreSQL database must exist and be empty (the bot migrates it; the floor's table is
dropped when the floor stops). One rating is 7 events; every citizen rates -n dossiers.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import hmac
import itertools
import json
import math
import os
import re
import shutil
import signal
import statistics
import sys
import tempfile
import time
import uuid
from collections import Counter, defaultdict, deque
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import aiohttp
from aiohttp import web

HERE = Path(__file__).resolve()
ROOT = HERE.parent.parent
sys.path.insert(0, str(ROOT))

from bench.webchat import (  # noqa: E402
    bot_settings,
    free_port,
    pct,
    push_dossiers,
    rss_mb,
)

# The Zalo app and OA the bot is configured with (and the fake and the floor check).
ZALO_APP_ID = "1832749185736492817"
ZALO_APP_SECRET = "Zq8vB2mL0xT4kS9pW3eR"
ZALO_OA_SECRET_KEY = "Nf3Yt7Kp2Qw9Lm5Xc8VbHd1J"
ZALO_OA_ID = "2848361927384651932"
ZALO_ACCESS_TOKEN = "bench-zalo-access-token"
ZALO_SIGNATURE = "X-ZEvent-Signature"
ZALO_SEND_PATH = "/v3.0/oa/message/cs"
ZALO_BUTTON_TYPES = frozenset(
    {"oa.query.show", "oa.query.hide", "oa.open.url", "oa.open.phone", "oa.open.sms"}
)
# Far above what the bench can reach: the platform's own limit is not what is measured.
ZALO_RATE_PER_MINUTE = 60_000_000

TELEGRAM_TOKEN = "7012345678:AAHbenchbenchbenchbenchbenchbench01"
TELEGRAM_SECRET = "bench-secret-0123456789abcdef"
TELEGRAM_SECRET_HEADER = "X-Telegram-Bot-Api-Secret-Token"
TELEGRAM_BOT_ID = 7012345678
TELEGRAM_BOT_USERNAME = "hailong_bench_bot"
# Far above what the bench can reach (the per-chat pace: one citizen's answers follow
# one another within milliseconds here).
TELEGRAM_RATE_PER_SECOND = 1_000_000
TELEGRAM_RATE_PER_CHAT_PER_SECOND = 1000

SCALE = ["Rất không hài lòng", "Không hài lòng", "Bình thường", "Hài lòng", "Rất hài lòng"]
TAP = "Hài lòng"
SKIP = "Bỏ qua"
THANKS = "Cảm ơn anh/chị đã dành thời gian đánh giá"
CRITERIA = 5
EVENTS_PER_RATING = CRITERIA + 2  # the code, five taps, "Bỏ qua"
CLK_TCK = os.sysconf("SC_CLK_TCK")
LOG_RECORD = re.compile(r"^\d{4}-\d\d-\d\d [\d:,]+ (WARNING|ERROR|CRITICAL) ([\w.]+): ")


class BenchError(Exception):
    """The bench cannot go on: a wrong answer, a timeout, a server gone."""


# ---------------------------------------------------------------- what the bot sent


@dataclass
class Send:
    """One message the bot sent through the platform API, as the fake received it."""

    user: str
    text: str
    buttons: list[dict[str, str]]  # {"title", "payload"}: payload = Zalo payload or callback_data
    at: float  # time.perf_counter() when the request reached the fake
    raw: dict[str, Any] = field(default_factory=dict)  # Telegram: the message as returned


class Mailboxes:
    """The sends of each citizen, in order of arrival; sends to nobody we know are strays."""

    def __init__(self) -> None:
        self._boxes: dict[str, asyncio.Queue[Send]] = {}
        self.strays: list[Send] = []
        self.count = 0

    def open(self, user: str) -> asyncio.Queue[Send]:
        return self._boxes.setdefault(user, asyncio.Queue())

    def close(self, user: str) -> None:
        box = self._boxes.pop(user, None)
        while box is not None and not box.empty():
            self.strays.append(box.get_nowait())

    def deliver(self, send: Send) -> None:
        self.count += 1
        box = self._boxes.get(send.user)
        if box is None:
            self.strays.append(send)
        else:
            box.put_nowait(send)


class FakeApi:
    """A platform API served on 127.0.0.1 in this process; refusals are kept as errors."""

    def __init__(self, mail: Mailboxes) -> None:
        self.mail = mail
        self.app = web.Application()
        self.errors: list[str] = []
        self.port = free_port()
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        self._runner = web.AppRunner(self.app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    def refuse(self, what: str) -> None:
        if len(self.errors) < 100:
            self.errors.append(what)


# ---------------------------------------------------------------- a lean fake Zalo OA API


class FakeZaloApi(FakeApi):
    """`POST /v3.0/oa/message/cs` as Zalo answers it: HTTP 200 always, `error` 0 or not."""

    def __init__(self, mail: Mailboxes) -> None:
        super().__init__(mail)
        self._ids = itertools.count(1)
        self.app.router.add_post(ZALO_SEND_PATH, self._send)

    def _error(self, code: int, message: str) -> web.Response:
        self.refuse(f"zalo {code}: {message}")
        return web.json_response({"error": code, "message": message})

    async def _send(self, request: web.Request) -> web.Response:
        at = time.perf_counter()
        if request.headers.get("access_token") != ZALO_ACCESS_TOKEN:
            return self._error(-216, "Access token is invalid")
        try:
            body = json.loads(await request.read())
            user = body["recipient"]["user_id"]
            message = body["message"]
        except (ValueError, KeyError, TypeError):
            return self._error(-201, "Parameters invalid: recipient.user_id and message")
        text = message.get("text") if isinstance(message, dict) else None
        if not isinstance(user, str) or not user.isdigit():
            return self._error(-210, "Parameters invalid: user_id must be a string of digits")
        if not isinstance(text, str) or not text.strip():
            return self._error(-210, "Parameters invalid: text is empty")
        if len(text) > 2000:
            return self._error(-210, "Parameters invalid: text length must be at most 2000")
        buttons: list[dict[str, str]] = []
        attachment = message.get("attachment")
        if attachment is not None:
            payload = attachment.get("payload") if isinstance(attachment, dict) else None
            raw_buttons = payload.get("buttons") if isinstance(payload, dict) else None
            if attachment.get("type") != "template" or not isinstance(raw_buttons, list):
                return self._error(-210, "Parameters invalid: attachment must be a template")
            if not 1 <= len(raw_buttons) <= 5:
                return self._error(-210, "Parameters invalid: 1 to 5 buttons")
            for b in raw_buttons:
                if (
                    not isinstance(b, dict)
                    or not b.get("title")
                    or b.get("type") not in ZALO_BUTTON_TYPES
                    or not b.get("payload")
                ):
                    return self._error(-210, f"Parameters invalid: button {b!r}")
                buttons.append({"title": str(b["title"]), "payload": str(b["payload"])})
        message_id = f"{next(self._ids):032x}"
        self.mail.deliver(Send(user, text, buttons, at))
        return web.json_response(
            {"error": 0, "message": "Success", "data": {"message_id": message_id, "user_id": user}}
        )


# ---------------------------------------------------------------- a lean fake Telegram Bot API


class FakeBotApi(FakeApi):
    """The Bot API methods the bot calls (form-encoded, `reply_markup` a JSON string)."""

    def __init__(self, mail: Mailboxes) -> None:
        super().__init__(mail)
        self._message_ids: dict[int, int] = defaultdict(int)
        self._messages: dict[tuple[int, int], dict[str, Any]] = {}
        self.queries: set[str] = set()  # callback queries delivered, not answered yet
        self.answered = 0
        self.edits = 0
        self._methods: dict[str, Callable[[dict[str, Any]], Awaitable[Any]]] = {
            "getme": self._get_me,
            "sendmessage": self._send_message,
            "answercallbackquery": self._answer_callback_query,
            "editmessagereplymarkup": self._edit_message_reply_markup,
        }
        self.app.router.add_post("/bot{token}/{method}", self._call)

    @staticmethod
    def bot_user() -> dict[str, Any]:
        return {
            "id": TELEGRAM_BOT_ID,
            "is_bot": True,
            "first_name": "Hài lòng",
            "username": TELEGRAM_BOT_USERNAME,
        }

    def next_message_id(self, chat: int) -> int:
        """Message ids count per chat, the citizen's and the bot's messages together."""
        self._message_ids[chat] += 1
        return self._message_ids[chat]

    async def _call(self, request: web.Request) -> web.Response:
        at = time.perf_counter()
        method = request.match_info["method"]
        if request.match_info["token"] != TELEGRAM_TOKEN:
            return self._fail(401, "Unauthorized", method)
        handler = self._methods.get(method.lower())
        if handler is None:
            return self._fail(404, "Not Found", method)
        if request.content_type == "application/json":
            params = await request.json()
        else:
            params = dict(await request.post())
        params["_at"] = at
        try:
            result = await handler(params)
        except (KeyError, ValueError, TypeError) as exc:
            return self._fail(400, f"Bad Request: {exc}", method)
        if isinstance(result, web.Response):
            return result
        return web.json_response({"ok": True, "result": result})

    def _fail(self, status: int, description: str, method: str) -> web.Response:
        self.refuse(f"telegram {method}: {status} {description}")
        return web.json_response(
            {"ok": False, "error_code": status, "description": description}, status=status
        )

    async def _get_me(self, p: dict[str, Any]) -> dict[str, Any]:
        return {**self.bot_user(), "can_join_groups": True, "supports_inline_queries": False}

    async def _send_message(self, p: dict[str, Any]) -> dict[str, Any] | web.Response:
        chat = int(p["chat_id"])
        text = str(p.get("text") or "")
        if not 1 <= len(text.strip()) <= 4096:
            return self._fail(400, "Bad Request: message text is empty or too long", "sendMessage")
        buttons: list[dict[str, str]] = []
        markup = p.get("reply_markup")
        if isinstance(markup, str):
            markup = json.loads(markup)
        for row in (markup or {}).get("inline_keyboard") or []:
            for b in row:
                data = str(b.get("callback_data") or "")
                if not b.get("text") or not 1 <= len(data.encode()) <= 64:
                    return self._fail(400, "Bad Request: BUTTON_DATA_INVALID", "sendMessage")
                buttons.append({"title": str(b["text"]), "payload": data})
        message: dict[str, Any] = {
            "message_id": self.next_message_id(chat),
            "from": self.bot_user(),
            "chat": {"id": chat, "first_name": "Dân", "type": "private"},
            "date": int(time.time()),
            "text": text,
        }
        if buttons:
            message["reply_markup"] = {"inline_keyboard": markup["inline_keyboard"]}
        self._messages[(chat, message["message_id"])] = message
        self.mail.deliver(Send(str(chat), text, buttons, p["_at"], message))
        return message

    async def _answer_callback_query(self, p: dict[str, Any]) -> bool | web.Response:
        query = str(p.get("callback_query_id") or "")
        if query not in self.queries:
            return self._fail(
                400, "Bad Request: query is too old or query ID is invalid", "answerCallbackQuery"
            )
        self.queries.discard(query)
        self.answered += 1
        return True

    async def _edit_message_reply_markup(self, p: dict[str, Any]) -> dict[str, Any] | web.Response:
        method = "editMessageReplyMarkup"
        message = self._messages.get((int(p["chat_id"]), int(p["message_id"])))
        if message is None:
            return self._fail(400, "Bad Request: message to edit not found", method)
        markup = p.get("reply_markup")
        if isinstance(markup, str):
            markup = json.loads(markup)
        keyboard = (markup or {}).get("inline_keyboard") or None
        if keyboard == (message.get("reply_markup") or {}).get("inline_keyboard"):
            return self._fail(400, "Bad Request: message is not modified", method)
        if keyboard:
            message["reply_markup"] = {"inline_keyboard": keyboard}
        else:
            message.pop("reply_markup", None)
        message["edit_date"] = int(time.time())
        self.edits += 1
        return message


# ---------------------------------------------------------------- events as platforms send them

Request = tuple[bytes, dict[str, str]]  # a webhook POST: raw body and headers


class Platform(Protocol):
    name: str
    path: str

    def user(self, k: int) -> str: ...

    def first(self, user: str, code: str) -> Request:
        """The citizen's first event of a rating (the dossier code)."""
        ...

    def tap(self, user: str, answer: Send, title: str) -> Request:
        """A tap on the button titled `title` of the bot's message `answer`."""
        ...


def floor_message(user: str, text: str, titles: list[str], telegram: bool) -> Send:
    """A made-up bot message with buttons to tap, for the floor (which sends nothing); the
    payloads are what the bot would give: `<turn>|<payload>` on Telegram, the title on Zalo."""
    buttons = [{"title": t, "payload": f"1|{t}" if telegram else t} for t in titles]
    raw = {
        "message_id": 1,
        "from": FakeBotApi.bot_user(),
        "chat": {"id": int(user), "first_name": "Dân", "type": "private"},
        "date": int(time.time()),
        "text": text,
        "reply_markup": {
            "inline_keyboard": [
                [{"text": b["title"], "callback_data": b["payload"]}] for b in buttons
            ]
        },
    }
    return Send(user, text, buttons, 0.0, raw)


def _button(answer: Send, title: str) -> dict[str, str]:
    for b in answer.buttons:
        if b["title"] == title:
            return b
    raise BenchError(f"no button {title!r} in the answer to {answer.user}: {_titles(answer)}")


class ZaloEvents:
    """`user_send_text` events signed as Zalo signs them; a tap is the button's payload."""

    name = "Zalo OA"
    path = "/webhooks/zalo"

    def user(self, k: int) -> str:
        return str(8_100_000_000_000_000_000 + k)  # ids exceed 2^53: always strings

    def text(self, user: str, text: str) -> Request:
        timestamp = str(int(time.time() * 1000))
        event = {
            "app_id": ZALO_APP_ID,
            "sender": {"id": user},
            "user_id_by_app": str(int(user) + 1_000_000_000_000_000_000),
            "recipient": {"id": ZALO_OA_ID},
            "event_name": "user_send_text",
            "message": {"text": text, "msg_id": uuid.uuid4().hex},
            "timestamp": timestamp,
        }
        raw = json.dumps(event, ensure_ascii=False, separators=(",", ":")).encode()
        mac = zalo_mac(raw, timestamp)
        return raw, {"Content-Type": "application/json", ZALO_SIGNATURE: f"mac={mac}"}

    def first(self, user: str, code: str) -> Request:
        return self.text(user, code)

    def tap(self, user: str, answer: Send, title: str) -> Request:
        return self.text(user, _button(answer, title)["payload"])


def zalo_mac(raw: bytes, timestamp: str) -> str:
    """mac = SHA-256 of app id + raw body + timestamp + OA secret key."""
    data = ZALO_APP_ID.encode() + raw + timestamp.encode() + ZALO_OA_SECRET_KEY.encode()
    return hashlib.sha256(data).hexdigest()


class TelegramUpdates:
    """Updates as Telegram posts them: `/start <code>`, then callback queries."""

    name = "Telegram"
    path = "/webhooks/telegram"

    def __init__(self, api: FakeBotApi | None) -> None:
        self.api = api
        self._update_ids = itertools.count(1)
        self._query_ids = itertools.count(4_000_000_000_000_000_000)

    def user(self, k: int) -> str:
        return str(5_100_000_000 + k)

    @staticmethod
    def person(user: str) -> dict[str, Any]:
        return {"id": int(user), "is_bot": False, "first_name": "Dân", "language_code": "vi"}

    def _post(self, update: dict[str, Any]) -> Request:
        raw = json.dumps(update, ensure_ascii=False, separators=(",", ":")).encode()
        return raw, {"Content-Type": "application/json", TELEGRAM_SECRET_HEADER: TELEGRAM_SECRET}

    def first(self, user: str, code: str) -> Request:
        chat = int(user)
        text = f"/start {code.replace('.', '_')}"  # the receipt's deep link payload
        message = {
            "message_id": self.api.next_message_id(chat) if self.api else 1,
            "from": self.person(user),
            "chat": {"id": chat, "first_name": "Dân", "type": "private"},
            "date": int(time.time()),
            "text": text,
            "entities": [{"offset": 0, "length": len("/start"), "type": "bot_command"}],
        }
        return self._post({"update_id": next(self._update_ids), "message": message})

    def tap(self, user: str, answer: Send, title: str) -> Request:
        query = str(next(self._query_ids))
        if self.api is not None:
            self.api.queries.add(query)
        callback = {
            "id": query,
            "from": self.person(user),
            "message": answer.raw,
            "chat_instance": str(-4_611_686_018_427_387_904 + int(user)),
            "data": _button(answer, title)["payload"],
        }
        return self._post({"update_id": next(self._update_ids), "callback_query": callback})


# ---------------------------------------------------------------- the citizens

Check = Callable[[Send], bool]


@dataclass
class Step:
    name: str
    check: Check


def rating_steps(code: str) -> list[Step]:
    """What the bot must answer to each of a rating's events (flows/data/rating.yaml)."""

    def criterion(n: int) -> Check:
        return lambda s: s.text.startswith(f"({n}/{CRITERIA})") and _titles(s) == SCALE

    return [
        Step(
            "code → intro (1/5)",
            lambda s: code in s.text and f"(1/{CRITERIA})" in s.text and _titles(s) == SCALE,
        ),
        *(Step(f"tap → ({n}/5)", criterion(n)) for n in range(2, CRITERIA + 1)),
        Step("tap → comment", lambda s: "góp ý" in s.text and _titles(s) == [SKIP]),
        Step("Bỏ qua → thanks", lambda s: THANKS in s.text and not s.buttons),
    ]


def _titles(send: Send) -> list[str]:
    return [b["title"] for b in send.buttons]


@dataclass
class Run:
    """What one measured run collected."""

    latencies: list[float] = field(default_factory=list)
    statuses: dict[int, int] = field(default_factory=lambda: defaultdict(int))
    seconds: float = 0.0

    @property
    def events(self) -> int:
        return len(self.latencies)


class Citizen:
    """One closed loop: an event, the bot's answer to it at the fake, the next event."""

    def __init__(
        self,
        http: aiohttp.ClientSession,
        url: str,
        platform: Platform,
        mail: Mailboxes,
        run: Run,
        timeout: float,
    ) -> None:
        self.http, self.url, self.platform = http, url, platform
        self.mail, self.run, self.timeout = mail, run, timeout

    async def post(self, request: Request, what: str) -> float:
        """POST one event; the time it started. Anything but 200 stops the bench."""
        body, headers = request
        t0 = time.perf_counter()
        try:
            async with self.http.post(self.url, data=body, headers=headers) as r:
                answer = await r.read()
                self.run.statuses[r.status] += 1
        except TimeoutError:
            raise BenchError(f"{what}: no HTTP answer within {self.timeout:.0f} s") from None
        except aiohttp.ClientError as exc:
            raise BenchError(f"{what}: the webhook POST failed: {exc!r}") from None
        if r.status != 200:
            raise BenchError(f"{what}: the webhook answered HTTP {r.status}: {answer[:300]!r}")
        return t0

    async def rate(self, user: str, code: str) -> None:
        box = self.mail.open(user)
        try:
            answer: Send | None = None
            for i, step in enumerate(rating_steps(code)):
                what = f"user {user}, dossier {code}, step {step.name!r}"
                if not box.empty():
                    stray = box.get_nowait()
                    raise BenchError(f"{what}: an unexpected send before the event: {stray.text!r}")
                if answer is None:
                    request = self.platform.first(user, code)
                else:
                    request = self.platform.tap(user, answer, SKIP if i == CRITERIA + 1 else TAP)
                t0 = await self.post(request, what)
                try:
                    answer = await asyncio.wait_for(box.get(), self.timeout)
                except TimeoutError:
                    raise BenchError(
                        f"{what}: no answer reached the fake within {self.timeout:.0f} s"
                    ) from None
                if not step.check(answer) or answer.at < t0:
                    raise BenchError(f"{what}: unexpected answer {answer.text[:160]!r}")
                self.run.latencies.append(answer.at - t0)
        finally:
            self.mail.close(user)

    async def floor(self, user: str, code: str) -> None:
        """The same events to the floor, which answers 200 and sends nothing."""
        telegram = isinstance(self.platform, TelegramUpdates)
        scale = floor_message(user, f"(1/{CRITERIA}) …", SCALE, telegram)
        skip = floor_message(user, "góp ý", [SKIP], telegram)
        requests = [
            lambda: self.platform.first(user, code),
            *[lambda: self.platform.tap(user, scale, TAP)] * CRITERIA,
            lambda: self.platform.tap(user, skip, SKIP),
        ]
        for make in requests:
            request = make()
            t0 = await self.post(request, f"floor, user {user}")
            self.run.latencies.append(time.perf_counter() - t0)


# ---------------------------------------------------------------- processes


class Server:
    """A child process (the bot or the floor): its output kept, its memory sampled."""

    def __init__(self, name: str, proc: asyncio.subprocess.Process) -> None:
        self.name = name
        self.proc = proc
        self.tail: deque[str] = deque(maxlen=30)
        self.records: Counter[str] = Counter()  # "LEVEL logger" of each log record
        self.first_record: dict[str, str] = {}
        self.peak_rss = 0.0
        self._tasks: list[asyncio.Task[None]] = []

    @classmethod
    async def start(
        cls, name: str, argv: list[str], env: dict[str, str], ready: str, timeout: float = 180
    ) -> Server:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            cwd=ROOT,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **env},
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        server = cls(name, proc)
        try:
            async with asyncio.timeout(timeout):
                while True:
                    line = await server._readline()
                    if line is None:
                        raise BenchError(f"{name} exited during start-up:\n{server.output()}")
                    if ready in line:
                        break
        except BaseException:
            await server.stop()
            raise
        server.records.clear()  # what it logs from now on
        server.first_record.clear()
        server._tasks = [asyncio.create_task(server._drain()), asyncio.create_task(server._rss())]
        return server

    async def _readline(self) -> str | None:
        assert self.proc.stdout is not None
        raw = await self.proc.stdout.readline()
        if not raw:
            return None
        line = raw.decode(errors="replace").rstrip()
        self.tail.append(line)
        record = LOG_RECORD.match(line)
        if record:
            key = f"{record[1]} {record[2]}"
            self.records[key] += 1
            self.first_record.setdefault(key, line)
        return line

    async def _drain(self) -> None:
        """Keep reading its output (a full pipe would stall it)."""
        while await self._readline() is not None:
            pass

    async def _rss(self) -> None:
        while self.proc.returncode is None:
            try:
                self.peak_rss = max(self.peak_rss, rss_mb(self.proc.pid))
            except OSError:
                return
            await asyncio.sleep(0.1)

    def cpu_seconds(self) -> float:
        """User + system CPU time of the process so far."""
        with open(f"/proc/{self.proc.pid}/stat") as f:
            fields = f.read().rpartition(")")[2].split()
        return (int(fields[11]) + int(fields[12])) / CLK_TCK

    def output(self, n: int = 15) -> str:
        return "\n".join(f"  | {line}" for line in list(self.tail)[-n:])

    async def stop(self) -> None:
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.proc.wait(), 30)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


async def closed_loops(server: Server, loops: list[Coroutine[Any, Any, None]]) -> None:
    """Run the citizens; the first failure, or the server exiting, stops them all."""
    tasks = [asyncio.create_task(loop) for loop in loops]
    exited = asyncio.create_task(server.proc.wait())
    pending: set[asyncio.Task[Any]] = {*tasks, exited}
    try:
        while not all(t.done() for t in tasks):
            done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            if exited in done:
                raise BenchError(
                    f"{server.name} exited with code {exited.result()} during the run:\n"
                    + server.output()
                )
            for task in done:
                task.result()  # raises the citizen's error
    finally:
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)


# ---------------------------------------------------------------- the floor server


class FloorStore:
    """One inbox row per event, unique per (channel, platform id), as the bot stores it."""

    COLUMNS = "channel, platform_id, user_key, kind, text, received_at, status"

    def __init__(self, db: str) -> None:
        self.db = db
        self.pg = db.startswith("postgresql://")
        self._conn: Any = None
        self._pool: Any = None

    async def open(self) -> None:
        if self.pg:
            import asyncpg

            # The bot's pool: storage.pool_size = 10.
            self._pool = await asyncpg.create_pool(self.db, min_size=10, max_size=10)
            await self._pool.execute(
                "CREATE TABLE floor_inbox (id BIGSERIAL PRIMARY KEY, channel VARCHAR(20) NOT"
                " NULL, platform_id VARCHAR(120) NOT NULL, user_key VARCHAR(100) NOT NULL,"
                " kind VARCHAR(20) NOT NULL, text TEXT, received_at TIMESTAMP NOT NULL,"
                " status VARCHAR(10) NOT NULL, UNIQUE (channel, platform_id))"
            )
            self._sql = (
                f"INSERT INTO floor_inbox ({self.COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7)"
                " ON CONFLICT (channel, platform_id) DO NOTHING RETURNING id"
            )
        else:
            import aiosqlite

            self._conn = await aiosqlite.connect(self.db, isolation_level=None)
            for pragma in (  # storage/db.py's
                "PRAGMA journal_mode=WAL",
                "PRAGMA busy_timeout=10000",
                "PRAGMA synchronous=NORMAL",
                "PRAGMA foreign_keys=ON",
            ):
                await self._conn.execute(pragma)
            await self._conn.execute(
                "CREATE TABLE floor_inbox (id INTEGER PRIMARY KEY, channel VARCHAR(20) NOT NULL,"
                " platform_id VARCHAR(120) NOT NULL, user_key VARCHAR(100) NOT NULL, kind"
                " VARCHAR(20) NOT NULL, text TEXT, received_at DATETIME NOT NULL, status"
                " VARCHAR(10) NOT NULL, UNIQUE (channel, platform_id))"
            )
            self._sql = (
                f"INSERT INTO floor_inbox ({self.COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?)"
                " ON CONFLICT (channel, platform_id) DO NOTHING RETURNING id"
            )
        for index in (  # the inbox's indexes (storage/models.py)
            "CREATE INDEX ix_floor_pending ON floor_inbox (status, id)",
            "CREATE INDEX ix_floor_conv ON floor_inbox (channel, user_key, status, id)",
        ):
            await (self._pool or self._conn).execute(index)

    async def insert(self, channel: str, platform_id: str, user: str, kind: str, text: str) -> None:
        now = datetime.now(UTC).replace(tzinfo=None)
        row = (channel, platform_id, user, kind, text, now, "pending")
        if self._pool is not None:
            await self._pool.fetchval(self._sql, *row)
        else:
            await self._conn.execute_fetchall(self._sql, row)  # one autocommit transaction

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.execute("DROP TABLE floor_inbox")
            await self._pool.close()
        if self._conn is not None:
            await self._conn.close()


def floor_app(channel: str, store: FloorStore) -> web.Application:
    async def zalo(request: web.Request) -> web.Response:
        raw = await request.read()
        try:
            event = json.loads(raw)
            message = event["message"]
            user = str(event["sender"]["id"])
        except (ValueError, KeyError, TypeError):
            return web.json_response({"error": "not an event"}, status=400)
        given = request.headers.get(ZALO_SIGNATURE, "").strip().removeprefix("mac=")
        expected = zalo_mac(raw, str(event.get("timestamp", "")))
        if not hmac.compare_digest(given.encode(), expected.encode()):
            return web.json_response({"error": "bad signature"}, status=401)
        await store.insert("zalo", str(message["msg_id"]), user, "text", message.get("text"))
        return web.json_response({"ok": True})

    async def telegram(request: web.Request) -> web.Response:
        given = request.headers.get(TELEGRAM_SECRET_HEADER, "")
        if not hmac.compare_digest(given.encode(), TELEGRAM_SECRET.encode()):
            return web.json_response({"error": "forbidden"}, status=403)
        try:
            update = json.loads(await request.read())
            if "callback_query" in update:
                query = update["callback_query"]
                kind, chat, text = "button", query["message"]["chat"]["id"], query["data"]
            else:
                message = update["message"]
                kind, chat, text = "text", message["chat"]["id"], message["text"]
        except (ValueError, KeyError, TypeError):
            return web.json_response({"error": "not an update"}, status=400)
        await store.insert("telegram", str(update["update_id"]), str(chat), kind, text)
        return web.json_response({"ok": True})

    app = web.Application()
    app.router.add_post(f"/webhooks/{channel}", zalo if channel == "zalo" else telegram)
    return app


async def serve_floor(channel: str, db: str, port: int) -> None:
    store = FloorStore(db)
    await store.open()
    runner = web.AppRunner(floor_app(channel, store), access_log=None, handle_signals=False)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    print("floor is running", flush=True)
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        asyncio.get_running_loop().add_signal_handler(sig, stop.set)
    await stop.wait()
    await runner.cleanup()
    await store.close()


# ---------------------------------------------------------------- the measured runs


@dataclass
class Figures:
    label: str
    run: Run
    peak_rss: float
    cpu_seconds: float
    client_cpu_seconds: float

    @property
    def rate(self) -> float:
        return self.run.events / self.run.seconds

    def ms(self, p: float) -> float:
        return pct(self.run.latencies, p) * 1000


def platform_for(channel: str, api: FakeApi | None) -> Platform:
    if channel == "zalo":
        return ZaloEvents()
    return TelegramUpdates(api if isinstance(api, FakeBotApi) else None)


async def measure(
    server: Server,
    url: str,
    citizens: int,
    ratings: int,
    loop: Callable[[Citizen, str, str], Coroutine[Any, Any, None]],
    platform: Platform,
    mail: Mailboxes,
    codes: list[str],
    timeout: float,
) -> Figures:
    run = Run()
    connector = aiohttp.TCPConnector(limit=0)
    http_timeout = aiohttp.ClientTimeout(total=timeout)
    async with aiohttp.ClientSession(connector=connector, timeout=http_timeout) as http:

        async def citizen(i: int) -> None:
            c = Citizen(http, url, platform, mail, run, timeout)
            for j in range(ratings):
                k = i * ratings + j
                await loop(c, platform.user(k), codes[k % len(codes)])

        cpu0, client0 = server.cpu_seconds(), time.process_time()
        # On stderr, for a profiler to attach to the server now (e.g. py-spy -p PID).
        print(
            f"[bench] {server.name} (pid {server.proc.pid}): measuring", file=sys.stderr, flush=True
        )
        t0 = time.perf_counter()
        await closed_loops(server, [citizen(i) for i in range(citizens)])
        run.seconds = time.perf_counter() - t0
        cpu, client = server.cpu_seconds() - cpu0, time.process_time() - client0
    return Figures(server.name, run, server.peak_rss, cpu, client)


async def run_floor(args: argparse.Namespace, tmp: str, codes: list[str]) -> Figures:
    port = free_port()
    db = args.pg or f"{tmp}/floor.db"
    argv = [sys.executable, str(HERE), "--floor-server"]
    server = await Server.start(
        "floor",
        [*argv, "--channel", args.channel, "--db", db, "--port", str(port), "--loop", args.loop],
        {},
        "floor is running",
        timeout=30,
    )
    try:
        return await measure(
            server,
            f"http://127.0.0.1:{port}/webhooks/{args.channel}",
            args.citizens,
            args.floor_ratings,
            Citizen.floor,
            platform_for(args.channel, None),
            Mailboxes(),
            codes,
            args.timeout,
        )
    finally:
        await server.stop()


def bot_env(args: argparse.Namespace, db_url: str, port: int, api: FakeApi) -> dict[str, str]:
    env = {**bot_settings(db_url, port), "HAILONG_SERVER_EVENT_LOOP": args.loop}
    if args.channel == "zalo":
        env |= {
            "HAILONG_ZALO_APP_ID": ZALO_APP_ID,
            "HAILONG_ZALO_APP_SECRET": ZALO_APP_SECRET,
            "HAILONG_ZALO_OA_SECRET_KEY": ZALO_OA_SECRET_KEY,
            "HAILONG_ZALO_OA_ID": ZALO_OA_ID,
            "HAILONG_ZALO_ACCESS_TOKEN": ZALO_ACCESS_TOKEN,
            "HAILONG_ZALO_REFRESH_TOKEN": "bench-zalo-refresh-token",
            "HAILONG_ZALO_API_BASE": api.url,
            "HAILONG_ZALO_OAUTH_BASE": api.url,
            "HAILONG_ZALO_RATE_PER_MINUTE": str(ZALO_RATE_PER_MINUTE),
        }
    else:
        env |= {
            "HAILONG_TELEGRAM_TOKEN": TELEGRAM_TOKEN,
            "HAILONG_TELEGRAM_API_BASE": api.url,
            "HAILONG_TELEGRAM_WEBHOOK_URL": "https://hailong.example.vn/webhooks/telegram",
            "HAILONG_TELEGRAM_SECRET_TOKEN": TELEGRAM_SECRET,
            "HAILONG_TELEGRAM_RATE_PER_SECOND": str(TELEGRAM_RATE_PER_SECOND),
            "HAILONG_TELEGRAM_RATE_PER_CHAT_PER_SECOND": str(TELEGRAM_RATE_PER_CHAT_PER_SECOND),
        }
    return env


async def run_bot(
    args: argparse.Namespace, tmp: str, db_url: str | None = None
) -> tuple[Figures, list[str]]:
    """The bot's run, and the checks made on what the fake saw."""
    mail = Mailboxes()
    api: FakeApi = FakeZaloApi(mail) if args.channel == "zalo" else FakeBotApi(mail)
    await api.start()
    port = free_port()
    db_url = db_url or args.pg or f"sqlite:///{tmp}/bot.db"
    argv = [sys.executable, "bot.py", "run"]
    server = await Server.start("bot", argv, bot_env(args, db_url, port, api), "hailong is running")
    try:
        base = f"http://127.0.0.1:{port}"
        codes = await push_dossiers(base, args.citizens * args.ratings)
        platform = platform_for(args.channel, api)
        figures = await measure(
            server,
            base + platform.path,
            args.citizens,
            args.ratings,
            Citizen.rate,
            platform,
            mail,
            codes,
            args.timeout,
        )
        await asyncio.sleep(1.0)  # late sends, callback answers and keyboard edits
        notes = [
            f"{figures.run.statuses[200]}/{sum(figures.run.statuses.values())} webhook POSTs"
            f" answered 200; {figures.run.events} answers matched, {mail.count} sends in all,"
            f" {len(mail.strays)} unexpected"
        ]
        problems = list(api.errors)
        problems += [f"unexpected send to {s.user}: {s.text[:80]!r}" for s in mail.strays[:10]]
        if isinstance(api, FakeBotApi):
            taps = args.citizens * args.ratings * (EVENTS_PER_RATING - 1)
            notes.append(
                f"callback queries answered {api.answered}/{taps}, keyboards removed {api.edits}"
            )
            if api.answered != taps or api.edits != taps:
                problems.append("not every callback query was answered and its keyboard removed")
        for key, n in server.records.most_common():
            notes.append(f"the bot logged {n}× {key} during the run, the first:")
            notes.append(f"  | {server.first_record[key][:300]}")
        if problems:
            raise BenchError("the fake saw problems:\n  " + "\n  ".join(problems))
        return figures, notes
    finally:
        await server.stop()
        await api.stop()


async def check_empty(url: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(url)
    try:
        tables = await conn.fetchval(
            "SELECT count(*) FROM information_schema.tables WHERE table_schema = 'public'"
        )
    finally:
        await conn.close()
    if tables:
        raise BenchError(f"{url} is not an empty database ({tables} tables): give an empty one")


async def _pg_admin(url: str, sql: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(url)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


async def versus_sqlite(args: argparse.Namespace, tmp: str) -> None:
    """The bot on SQLite and on PostgreSQL in alternation, each round on a new database
    (a scratch database next to --pg's, made and dropped here): their events/s, side by
    side, and the ratio of each pair."""
    server = args.pg.rsplit("/", 1)[0]
    pairs: list[tuple[Figures, Figures]] = []
    for n in range(1, args.rounds + 1):
        sqlite, _ = await run_bot(args, tmp, f"sqlite:///{tmp}/versus-{n}.db")
        name = f"hailong_bench_versus_{os.getpid()}_{n}"
        await _pg_admin(f"{server}/postgres", f"CREATE DATABASE {name}")
        try:
            pg, _ = await run_bot(args, tmp, f"{server}/{name}")
        finally:
            await _pg_admin(f"{server}/postgres", f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        pairs.append((sqlite, pg))
        print(f"[bench] round {n}: SQLite {sqlite.rate:.1f}, PostgreSQL {pg.rate:.1f} events/s",
              file=sys.stderr, flush=True)  # fmt: skip
    channel = "Zalo OA" if args.channel == "zalo" else "Telegram"
    print(
        f"{channel} webhook rating, the bot on SQLite and on PostgreSQL in alternation, "
        f"{args.citizens} concurrent citizens, {args.ratings} ratings each, {args.rounds} rounds"
    )
    print(
        f"  {'round':<6} {'SQLite ev/s':>11} {'p99 ms':>7} {'CPU ms/ev':>9}   "
        f"{'PostgreSQL ev/s':>15} {'p99 ms':>7} {'CPU ms/ev':>9}   {'SQLite/PostgreSQL':>17}"
    )
    ratios = []
    for n, (sq, pg) in enumerate(pairs, 1):
        ratios.append(sq.rate / pg.rate)
        cpu = [f.cpu_seconds / f.run.events * 1000 for f in (sq, pg)]
        print(
            f"  {n:<6} {sq.rate:>11.1f} {sq.ms(99):>7.1f} {cpu[0]:>9.2f}"
            f"   {pg.rate:>15.1f} {pg.ms(99):>7.1f} {cpu[1]:>9.2f}   {ratios[-1]:>16.2f}×"
        )
    median = statistics.median(ratios)
    verdict = "met" if median <= 1.5 else "MISSED"
    print(
        f"  median SQLite/PostgreSQL {median:.2f}× (pairs {min(ratios):.2f}–{max(ratios):.2f}×)"
        f"   target PostgreSQL within 1.5× of SQLite: {verdict}"
    )


def report(args: argparse.Namespace, bot: Figures | None, floor: Figures) -> None:
    backend = "PostgreSQL" if args.pg else "SQLite"
    channel = "Zalo OA" if args.channel == "zalo" else "Telegram"
    who = f"{args.citizens} concurrent citizen{'s' if args.citizens > 1 else ''}"
    print(f"{channel} webhook rating, {backend}, {who}, {args.ratings} ratings each")
    print(
        f"  {'':<11} {'events':>7} {'events/s':>9} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8}"
        f" {'mean ms':>8} {'RSS MB':>7} {'CPU ms/ev':>9} {'client CPU':>10}"
    )
    for f in (bot, floor):
        if f is None:
            continue
        print(
            f"  {f.label:<11} {f.run.events:>7} {f.rate:>9.1f} {f.ms(50):>8.1f} {f.ms(95):>8.1f}"
            f" {f.ms(99):>8.1f} {statistics.mean(f.run.latencies) * 1000:>8.1f}"
            f" {f.peak_rss:>7.1f} {f.cpu_seconds / f.run.events * 1000:>9.2f}"
            f" {f.client_cpu_seconds / f.run.seconds:>9.0%}"
        )
    print(
        "  latency: bot = webhook POST → the answer at the fake API; floor = POST → 200."
        " client CPU = this process (citizens and fake API) per second of the run"
    )
    if bot is None:
        return
    rate, p99 = bot.rate / floor.rate, bot.ms(99) / floor.ms(99)
    print(f"  bot/floor   events/s {rate:.3f}×   p99 {p99:.1f}×")
    verdict = {True: "met", False: "MISSED"}
    print(
        f"  targets     events/s ≥ 0.5× floor: {verdict[rate >= 0.5]}   "
        f"p99 ≤ 2× floor: {verdict[p99 <= 2]}   RSS ≤ 200 MB: {verdict[bot.peak_rss <= 200]}"
    )


async def main(args: argparse.Namespace) -> int:
    if args.floor_ratings is None:
        # At least ~10,000 floor events: a thousand events per second ends in a second.
        per_citizen = math.ceil(10_000 / (args.citizens * EVENTS_PER_RATING))
        args.floor_ratings = max(args.ratings, per_citizen)
    tmp = tempfile.mkdtemp(prefix="hailong-bench-webhook-")
    try:
        if args.versus_sqlite:
            if not args.pg:
                raise BenchError("--versus-sqlite needs --pg (a server's URL)")
            await versus_sqlite(args, tmp)
            return 0
        if args.pg:
            await check_empty(args.pg)
        codes = [f"H42.51.01-260101-{i:06d}" for i in range(args.citizens * args.ratings)]
        floor = await run_floor(args, tmp, codes)
        if args.floor_only:
            report(args, None, floor)
            return 0
        bot, notes = await run_bot(args, tmp)
        report(args, bot, floor)
        for note in notes:
            print("  " + note)
        return 0
    except BenchError as exc:
        print(f"bench failed: {exc}", file=sys.stderr)
        return 1
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("-c", "--citizens", type=int, default=50, help="concurrent citizens")
    ap.add_argument("-n", "--ratings", type=int, default=10, help="ratings per citizen (7 events)")
    ap.add_argument("--channel", choices=["zalo", "telegram"], default="zalo")
    ap.add_argument(
        "--pg", metavar="URL", help="PostgreSQL URL (an empty database) instead of SQLite"
    )
    ap.add_argument(
        "--timeout", type=float, default=30.0, help="seconds to wait for each answer (30)"
    )
    ap.add_argument(
        "--floor-ratings",
        type=int,
        help="ratings per citizen sent to the floor (default: -n, at least 10,000 events)",
    )
    ap.add_argument("--floor-only", action="store_true", help="measure the floor alone")
    ap.add_argument(
        "--versus-sqlite",
        action="store_true",
        help="with --pg: the bot on SQLite and on PostgreSQL in alternation, --rounds times"
        " (scratch databases made and dropped on --pg's server), no floor",
    )
    ap.add_argument("--rounds", type=int, default=3, help="pairs for --versus-sqlite (3)")
    ap.add_argument(
        "--loop",
        choices=["uvloop", "asyncio"],
        default="uvloop",
        help="event loop of the bot, the floor and this process (uvloop, as bot.py run)",
    )
    # Internal: the floor server's process.
    ap.add_argument("--floor-server", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--db", help=argparse.SUPPRESS)
    ap.add_argument("--port", type=int, help=argparse.SUPPRESS)
    return ap.parse_args()


if __name__ == "__main__":
    from bot.eventloop import event_loop_factory  # the floor and this process run on it too

    arguments = parse_args()
    with asyncio.Runner(loop_factory=event_loop_factory(arguments.loop)) as runner:
        if arguments.floor_server:
            runner.run(serve_floor(arguments.channel, arguments.db, arguments.port))
        else:
            sys.exit(runner.run(main(arguments)))
