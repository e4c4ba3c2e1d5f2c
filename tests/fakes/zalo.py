"""A fake Zalo Official Account server: Open API v3 (send) and OAuth v4 (token refresh).

    async with FakeZalo() as zalo:
        # client configured with api_base=zalo.api_base, oauth_base=zalo.oauth_base
        event = zalo.text_event("8451827349283745123", "Chào")
        status, body = await zalo.post_webhook(our_url, event)

As Zalo does: errors come back as HTTP 200 with `"error" != 0`; the send needs the
`access_token` header (not Bearer) holding the current token (-216 invalid, -220 expired);
text is at most 2,000 characters and a message has at most 5 buttons (-210); a refresh
token works once. Webhook events carry every id as a string and `timestamp` as a string
of epoch milliseconds; they are signed with `X-ZEvent-Signature: mac=<sha256 hex>` over
app id + raw body + timestamp + OA secret key (variants: OA id prefix, app secret key).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import secrets
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp import web

from tests.fakes import LocalServer

SEND_PATH = "/v3.0/oa/message/cs"
TOKEN_PATH = "/v4/oa/access_token"
SIGNATURE_HEADER = "X-ZEvent-Signature"
MAX_TEXT = 2000
MAX_BUTTONS = 5
BUTTON_TYPES = frozenset(
    {"oa.query.show", "oa.query.hide", "oa.open.url", "oa.open.phone", "oa.open.sms"}
)
SIGNATURE_VARIANTS = ("app_id", "oa_id", "app_secret")
FAULT_KINDS = ("-32", "-230", "-216", "-220", "-210", "500", "timeout", "disconnect")
MESSAGES = {
    -32: "Rate limit exceeded",
    -201: "Parameters invalid",
    -210: "Parameters invalid",
    -216: "Access token is invalid",
    -220: "Access token has expired",
    -230: "User has not interacted with the OA in the past 7 days",
}
OAUTH_ERRORS = {
    -14002: "Invalid appId",
    -14004: "Invalid secret key",
    -14014: "Invalid refresh token",
    -14018: "Invalid grant type",
}
REF_DOC = (
    "https://developers.zalo.me/docs/official-account/bat-dau/xac-thuc-va-uy-quyen-cho-ung-dung-new"
)


@dataclass
class Call:
    """One HTTP call to the fake, as received."""

    path: str
    headers: dict[str, str]
    body: Any  # parsed JSON, the form as a dict, or None
    raw: bytes
    time: float  # time.monotonic()
    status: int = 0
    response: dict[str, Any] | None = None


@dataclass
class Sent:
    """A message the OA sent successfully."""

    user_id: str
    text: str | None
    buttons: list[dict[str, Any]]
    time: float  # time.monotonic()
    message_id: str
    message: dict[str, Any] = field(default_factory=dict)  # the body's "message", as sent


@dataclass
class RefreshCall:
    """One call of the token endpoint."""

    refresh_token: str | None
    app_id: str | None
    grant_type: str | None
    secret_key: str | None
    error: int  # 0 on success
    time: float
    new_access_token: str | None = None
    new_refresh_token: str | None = None


@dataclass
class Delivery:
    """One event posted to a webhook by post_webhook()."""

    url: str
    event_name: str | None
    status: int
    elapsed: float
    headers: dict[str, str]


class FakeZalo(LocalServer):
    """The OA Open API and the OAuth server of one Zalo app; see the module docstring."""

    def __init__(
        self,
        *,
        app_id: str = "1832749185736492817",
        app_secret: str = "Zq8vB2mL0xT4kS9pW3eR",
        oa_secret_key: str = "Nf3Yt7Kp2Qw9Lm5Xc8VbHd1J",
        oa_id: str = "2848361927384651932",
        access_token: str = "zalo-access-token-0",
        refresh_token: str = "zalo-refresh-token-0",
        expires_in: int = 90_000,
    ) -> None:
        super().__init__()
        self.app_id = app_id
        self.app_secret = app_secret
        self.oa_secret_key = oa_secret_key
        self.oa_id = oa_id
        self.access_token = access_token
        self.refresh_token = refresh_token
        self.expires_in = expires_in

        self.sent: list[Sent] = []
        self.requests: list[Call] = []
        self.refresh_calls: list[RefreshCall] = []
        self.deliveries: list[Delivery] = []
        self.silent_users: set[str] = set()  # answered -230

        self.used_refresh_tokens: set[str] = set()  # rejected with -14014 from now on
        self._expired_tokens: set[str] = set()
        self._generation = itertools.count(1)
        self._faults: dict[str, deque[str]] = {"send": deque(), "oauth": deque()}

        self.app.router.add_post(SEND_PATH, self._handle_send)
        self.app.router.add_post(TOKEN_PATH, self._handle_token)

    # ---- addresses

    @property
    def api_base(self) -> str:
        """`http://127.0.0.1:PORT`: the send URL is `{api_base}/v3.0/oa/message/cs`."""
        return self.url

    @property
    def oauth_base(self) -> str:
        """Same server: `{oauth_base}/v4/oa/access_token`."""
        return self.url

    # ---- control

    def fail_next(self, n: int = 1, kind: str = "-32", *, endpoint: str = "send") -> None:
        """Make the next n calls of the send endpoint (or "oauth") fail.

        kind: "-32" (rate limit), "-230" (user silent for 7 days), "-216", "-220", "-210"
        (HTTP 200 with that error), "500", "timeout" (no answer until stop()), "disconnect".
        """
        if kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault kind {kind!r}; one of {FAULT_KINDS}")
        if endpoint not in self._faults:
            raise ValueError("endpoint is 'send' or 'oauth'")
        self._faults[endpoint].extend([kind] * n)

    def expire_access_token(self) -> str:
        """The current access token expires (-220 until refreshed); returns it."""
        self._expired_tokens.add(self.access_token)
        return self.access_token

    def close_window(self, user_id: str | int) -> None:
        """The user has been silent for 7 days: sends to them get -230 until they write."""
        self.silent_users.add(str(user_id))

    def open_window(self, user_id: str | int) -> None:
        self.silent_users.discard(str(user_id))

    def reset(self) -> None:
        """Forget records, faults and closed windows (tokens stay as they are)."""
        self.sent.clear()
        self.requests.clear()
        self.refresh_calls.clear()
        self.deliveries.clear()
        self.silent_users.clear()
        for queue in self._faults.values():
            queue.clear()

    # ---- inspection

    def sent_to(self, user_id: str | int) -> list[Sent]:
        key = str(user_id)
        return [s for s in self.sent if s.user_id == key]

    @property
    def refresh_count(self) -> int:
        """Successful refreshes."""
        return sum(1 for c in self.refresh_calls if c.error == 0)

    # ---- webhook events, built as Zalo sends them

    def user_id_by_app(self, user_id: str | int) -> str:
        """The user's app-scoped id (stable, 19 digits, different from the OA-scoped one)."""
        digest = hashlib.sha256(f"{self.app_id}:{user_id}".encode()).hexdigest()
        return str(1_000_000_000_000_000_000 + int(digest[:15], 16) % 8_000_000_000_000_000_000)

    def user_event(
        self,
        event_name: str,
        user_id: str | int,
        message: dict[str, Any] | None = None,
        *,
        timestamp: int | str | None = None,
    ) -> dict[str, Any]:
        """Any event a user causes (`sender` = user, `recipient` = OA)."""
        user = str(user_id)
        event: dict[str, Any] = {
            "app_id": self.app_id,
            "sender": {"id": user},
            "user_id_by_app": self.user_id_by_app(user),
            "recipient": {"id": self.oa_id},
            "event_name": event_name,
        }
        if message is not None:
            event["message"] = message
        event["timestamp"] = _timestamp(timestamp)
        if event_name.startswith("user_send_"):
            self.open_window(user)  # writing reopens the consultation window
        return event

    def text_event(
        self,
        user_id: str | int,
        text: str,
        msg_id: str | None = None,
        *,
        timestamp: int | str | None = None,
    ) -> dict[str, Any]:
        """`user_send_text`; a tapped button arrives like this, with its payload as text."""
        message = {"text": text, "msg_id": msg_id or _msg_id()}
        return self.user_event("user_send_text", user_id, message, timestamp=timestamp)

    def follow_event(
        self, user_id: str | int, *, source: str = "oa_profile", timestamp: int | str | None = None
    ) -> dict[str, Any]:
        """`follow` (the user is in `follower.id`, the OA in `oa_id`)."""
        return self._follow("follow", user_id, source, timestamp)

    def unfollow_event(
        self, user_id: str | int, *, source: str = "oa_profile", timestamp: int | str | None = None
    ) -> dict[str, Any]:
        return self._follow("unfollow", user_id, source, timestamp)

    def sticker_event(
        self,
        user_id: str | int,
        sticker_id: str = "bfe5a4cc4089a9d7f098",
        msg_id: str | None = None,
        *,
        timestamp: int | str | None = None,
    ) -> dict[str, Any]:
        url = f"https://zalo-api.zadn.vn/api/emoticon/sticker/webpc?eid={sticker_id}&size=130"
        message = {
            "msg_id": msg_id or _msg_id(),
            "attachments": [{"type": "sticker", "payload": {"id": sticker_id, "url": url}}],
        }
        return self.user_event("user_send_sticker", user_id, message, timestamp=timestamp)

    def image_event(
        self,
        user_id: str | int,
        url: str = "https://s240-ava-talk.zadn.vn/6/a/2/1/photo.jpg",
        caption: str | None = None,
        msg_id: str | None = None,
        *,
        timestamp: int | str | None = None,
    ) -> dict[str, Any]:
        message: dict[str, Any] = {"msg_id": msg_id or _msg_id()}
        if caption is not None:
            message["text"] = caption
        message["attachments"] = [{"type": "image", "payload": {"thumbnail": url, "url": url}}]
        return self.user_event("user_send_image", user_id, message, timestamp=timestamp)

    def oa_echo_event(
        self,
        user_id: str | int,
        text: str,
        msg_id: str | None = None,
        *,
        timestamp: int | str | None = None,
    ) -> dict[str, Any]:
        """`oa_send_text`: the echo of the OA's own message (sender = OA, recipient = user)."""
        user = str(user_id)
        return {
            "app_id": self.app_id,
            "sender": {"id": self.oa_id},
            "user_id_by_app": self.user_id_by_app(user),
            "recipient": {"id": user},
            "event_name": "oa_send_text",
            "message": {"text": text, "msg_id": msg_id or _msg_id()},
            "timestamp": _timestamp(timestamp),
        }

    def seen_event(
        self,
        user_id: str | int,
        msg_ids: list[str] | None = None,
        *,
        timestamp: int | str | None = None,
    ) -> dict[str, Any]:
        """`user_seen_message` (default: every message sent to the user so far)."""
        ids = msg_ids if msg_ids is not None else [s.message_id for s in self.sent_to(user_id)]
        message = {"msg_ids": [str(i) for i in ids]}
        return self.user_event("user_seen_message", user_id, message, timestamp=timestamp)

    # ---- signatures and delivery

    def signature(self, body: bytes, variant: str = "app_id") -> str:
        """The mac (hex) Zalo puts in X-ZEvent-Signature for this raw body."""
        if variant not in SIGNATURE_VARIANTS:
            raise ValueError(f"variant is one of {SIGNATURE_VARIANTS}")
        prefix = self.oa_id if variant == "oa_id" else self.app_id
        key = self.app_secret if variant == "app_secret" else self.oa_secret_key
        data = prefix.encode() + body + _body_timestamp(body).encode() + key.encode()
        return hashlib.sha256(data).hexdigest()

    def signed_headers(
        self, body: bytes, variant: str = "app_id", *, forge: bool = False
    ) -> dict[str, str]:
        """Headers of a webhook POST of `body` (forge=True: a wrong mac of the right form)."""
        mac = self.signature(body, variant)
        if forge:
            mac = hashlib.sha256(b"forged" + body).hexdigest()
        return {"Content-Type": "application/json", SIGNATURE_HEADER: f"mac={mac}"}

    @staticmethod
    def encode(event: dict[str, Any]) -> bytes:
        """An event's raw body as Zalo sends it: compact UTF-8 JSON."""
        return json.dumps(event, ensure_ascii=False, separators=(",", ":")).encode()

    async def post_webhook(
        self,
        url: str,
        event: dict[str, Any] | bytes,
        variant: str = "app_id",
        forge: bool = False,
        num_retry: int | None = None,
        *,
        signed: bool = True,
        timeout: float = 10.0,
    ) -> tuple[int, str]:
        """POST an event (a dict, or raw bytes such as the unsigned `{}` probe) to a
        webhook; (status, body text)."""
        body = event if isinstance(event, bytes) else self.encode(event)
        if signed:
            headers = self.signed_headers(body, variant, forge=forge)
        else:
            headers = {"Content-Type": "application/json"}
        if num_retry is not None:
            headers["num_retry"] = str(num_retry)
        started = time.monotonic()
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as http,
            http.post(url, data=body, headers=headers) as r,
        ):
            text = await r.text()
            status = r.status
        name = event.get("event_name") if isinstance(event, dict) else None
        self.deliveries.append(Delivery(url, name, status, time.monotonic() - started, headers))
        return status, text

    # ---- HTTP

    async def _record(self, request: web.Request) -> Call:
        raw = await request.read()
        body: Any = None
        if request.content_type == "application/json":
            try:
                body = json.loads(raw)
            except ValueError:
                body = None
        elif request.content_type in ("application/x-www-form-urlencoded", "multipart/form-data"):
            body = {k: str(v) for k, v in (await request.post()).items()}
        call = Call(request.path, dict(request.headers), body, raw, time.monotonic())
        self.requests.append(call)
        return call

    async def _fault(self, request: web.Request, call: Call, endpoint: str) -> web.Response | None:
        queue = self._faults[endpoint]
        if not queue:
            return None
        kind = queue.popleft()
        if kind == "timeout":
            await self._hang()
            return _answer(call, {"error": -1, "message": "Timeout"}, 504)
        if kind == "disconnect":
            self._drop_connection(request)
            call.status = -1
            return web.Response(status=500)
        if kind == "500":
            return _answer(call, {"error": -500, "message": "Internal Server Error"}, 500)
        code = int(kind)
        if endpoint == "oauth":
            return _answer(call, _oauth_error(code))
        return _answer(call, {"error": code, "message": MESSAGES.get(code, "Error")})

    async def _handle_send(self, request: web.Request) -> web.Response:
        call = await self._record(request)
        faulted = await self._fault(request, call, "send")
        if faulted is not None:
            return faulted
        token = request.headers.get("access_token", "")
        if token in self._expired_tokens:
            return _answer(call, _error(-220))
        if not token or token != self.access_token:
            return _answer(call, _error(-216))
        body = call.body
        if not isinstance(body, dict):
            return _answer(call, _error(-210, "body must be a JSON object"))
        recipient = body.get("recipient")
        user_id = recipient.get("user_id") if isinstance(recipient, dict) else None
        if not isinstance(user_id, str) or not user_id.isdigit():
            return _answer(call, _error(-210, "recipient.user_id must be a string of digits"))
        message = body.get("message")
        if not isinstance(message, dict):
            return _answer(call, _error(-210, "message is missing"))
        text = message.get("text")
        attachment = message.get("attachment")
        if text is None and attachment is None:
            return _answer(call, _error(-210, "message has neither text nor attachment"))
        if text is not None and (not isinstance(text, str) or not text.strip()):
            return _answer(call, _error(-210, "text is empty"))
        if isinstance(text, str) and len(text) > MAX_TEXT:
            return _answer(call, _error(-210, f"text length must be at most {MAX_TEXT}"))
        try:
            buttons = _check_attachment(attachment)
        except ValueError as exc:
            return _answer(call, _error(-210, str(exc)))
        if user_id in self.silent_users:
            return _answer(call, _error(-230))
        message_id = secrets.token_hex(16)
        self.sent.append(Sent(user_id, text, buttons, time.monotonic(), message_id, message))
        return _answer(
            call,
            {
                "data": {"message_id": message_id, "user_id": user_id},
                "error": 0,
                "message": "Success",
            },
        )

    async def _handle_token(self, request: web.Request) -> web.Response:
        call = await self._record(request)
        form = call.body if isinstance(call.body, dict) else {}
        record = RefreshCall(
            refresh_token=form.get("refresh_token"),
            app_id=form.get("app_id"),
            grant_type=form.get("grant_type"),
            secret_key=request.headers.get("secret_key"),
            error=0,
            time=time.monotonic(),
        )
        self.refresh_calls.append(record)
        faulted = await self._fault(request, call, "oauth")
        if faulted is not None:
            record.error = int((call.response or {}).get("error", -1))
            return faulted
        if record.app_id != self.app_id:
            record.error = -14002
        elif record.secret_key != self.app_secret:
            record.error = -14004
        elif record.grant_type != "refresh_token":
            record.error = -14018
        elif not record.refresh_token or record.refresh_token != self.refresh_token:
            record.error = -14014
        if record.error:
            return _answer(call, _oauth_error(record.error))
        # The refresh token is single-use; the old access token dies with the new pair (-216).
        self.used_refresh_tokens.add(self.refresh_token)
        n = next(self._generation)
        self.access_token = f"zalo-access-token-{n}-{secrets.token_urlsafe(24)}"
        self.refresh_token = f"zalo-refresh-token-{n}-{secrets.token_urlsafe(24)}"
        record.new_access_token = self.access_token
        record.new_refresh_token = self.refresh_token
        return _answer(
            call,
            {
                "access_token": self.access_token,
                "refresh_token": self.refresh_token,
                "expires_in": str(self.expires_in),
            },
        )

    def _follow(
        self, name: str, user_id: str | int, source: str, timestamp: int | str | None
    ) -> dict[str, Any]:
        user = str(user_id)
        if name == "follow":
            self.open_window(user)
        return {
            "oa_id": self.oa_id,
            "follower": {"id": user},
            "user_id_by_app": self.user_id_by_app(user),
            "event_name": name,
            "source": source,
            "app_id": self.app_id,
            "timestamp": _timestamp(timestamp),
        }


def _check_attachment(attachment: Any) -> list[dict[str, Any]]:
    """The buttons of a template attachment; ValueError when Zalo would refuse it."""
    if attachment is None:
        return []
    if not isinstance(attachment, dict) or attachment.get("type") != "template":
        raise ValueError("attachment.type must be template")
    payload = attachment.get("payload")
    if not isinstance(payload, dict):
        raise ValueError("attachment.payload is missing")
    buttons = payload.get("buttons")
    if not isinstance(buttons, list) or not buttons:
        raise ValueError("attachment.payload.buttons must be a non-empty array")
    if len(buttons) > MAX_BUTTONS:
        raise ValueError(f"at most {MAX_BUTTONS} buttons")
    for b in buttons:
        if not isinstance(b, dict) or not isinstance(b.get("title"), str) or not b["title"]:
            raise ValueError("button.title is missing")
        kind = b.get("type")
        if kind not in BUTTON_TYPES:
            raise ValueError(f"button.type {kind!r} is invalid")
        payload_ = b.get("payload")
        if kind in ("oa.query.show", "oa.query.hide"):
            if not isinstance(payload_, str) or not payload_:
                raise ValueError("button.payload must be a non-empty string")
        elif kind == "oa.open.url":
            url = payload_.get("url") if isinstance(payload_, dict) else None
            if not isinstance(url, str) or not url.startswith(("http://", "https://")):
                raise ValueError("button.payload.url is invalid")
        elif not isinstance(payload_, dict):
            raise ValueError("button.payload must be an object")
    return [dict(b) for b in buttons]


def _error(code: int, detail: str | None = None) -> dict[str, Any]:
    message = MESSAGES.get(code, "Error")
    return {"error": code, "message": f"{message}: {detail}" if detail else message}


def _oauth_error(code: int) -> dict[str, Any]:
    name = OAUTH_ERRORS.get(code) or MESSAGES.get(code, "Error")
    return {
        "error": code,
        "error_name": name,
        "error_description": name,
        "error_reason": "",
        "ref_doc": REF_DOC,
    }


def _answer(call: Call, body: dict[str, Any], status: int = 200) -> web.Response:
    call.status = status
    call.response = body
    return web.Response(
        status=status, text=json.dumps(body, ensure_ascii=False), content_type="application/json"
    )


def _timestamp(value: int | str | None) -> str:
    return str(int(time.time() * 1000) if value is None else value)


def _msg_id() -> str:
    return secrets.token_hex(16)


def _body_timestamp(body: bytes) -> str:
    """The `timestamp` field of a raw webhook body ("" when absent or unreadable)."""
    try:
        data = json.loads(body)
    except ValueError:
        return ""
    value = data.get("timestamp") if isinstance(data, dict) else None
    return "" if value is None else str(value)
