"""Zalo Official Account (OA), Open API v3, through our own aiohttp client.

Ingress: `POST /webhooks/zalo`. The `X-ZEvent-Signature` (mac = SHA-256 of app id + raw
body + timestamp + OA secret key) is checked over the raw bytes before anything else;
the documented variants (OA id as prefix, app secret as key) are accepted too and the
one that matched is logged. Events are stored once (keyed by msg_id) and answered 200 at
once. A button tap arrives as plain text: buttons are sent with their title as payload.

Egress: `POST {api_base}/v3.0/oa/message/cs` with the `access_token` header; text cut at
2,000 characters; at most 5 buttons. Errors come back as HTTP 200 with `error != 0`:
-216/-220 refresh the token once and retry, -32 backs off, -230 (the user has been silent
for 7 days) parks the message with the reason.

Tokens: the access token lives 25 hours; the refresh token is single-use. Refreshes are
serialised (an in-process lock and a lease row in the database for other processes) and
the new pair is stored before it is used.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
from datetime import datetime, timedelta
from typing import Any

import aiohttp
from aiohttp import web
from aiolimiter import AsyncLimiter
from sqlalchemy import or_, update

from bot.channels.base import Inbound, Message, TemporaryFailure, Undeliverable
from bot.channels.http1 import Http1Client, HttpError
from bot.channels.text import split_text
from bot.clock import Clock
from bot.config import ZaloSettings
from bot.logs import mask
from bot.web import json_ok
from storage import jsonio
from storage.db import Database
from storage.models import ChannelToken
from storage.ops import insert_new

log = logging.getLogger(__name__)

NAME = "zalo"
MAX_TEXT = 2000
MAX_BUTTONS = 5
SIGNATURE_HEADER = "X-ZEvent-Signature"
TOKEN_LIFETIME = timedelta(hours=25)
REFRESH_LEASE = timedelta(seconds=30)
UNSUPPORTED = {
    "user_send_image": "image",
    "user_send_gif": "image",
    "user_send_sticker": "sticker",
    "user_send_audio": "audio",
    "user_send_video": "video",
    "user_send_file": "file",
    "user_send_location": "location",
    "user_send_link": "link",
    "user_send_business_card": "business_card",
}


def signature_keys(settings: ZaloSettings) -> dict[str, tuple[str, str]]:
    """The accepted ways of signing a webhook body, by variant: (what comes before the
    body, the key after the timestamp)."""
    out = {"app_id": (settings.app_id, settings.oa_secret_key)}
    if settings.oa_id:
        out["oa_id"] = (settings.oa_id, settings.oa_secret_key)
    if settings.app_secret:
        out["app_secret"] = (settings.app_id, settings.app_secret)
    return out


def mac(prefix: str, body: bytes, timestamp: str, key: str) -> str:
    return hashlib.sha256(prefix.encode() + body + timestamp.encode() + key.encode()).hexdigest()


class ZaloTokens:
    """The current access token; refreshed once at a time, the new pair stored first."""

    def __init__(self, db: Database, settings: ZaloSettings, clock: Clock) -> None:
        self.db = db
        self.settings = settings
        self.clock = clock
        self._access: str | None = None
        self._expires_at: datetime | None = None
        self._lock = asyncio.Lock()
        self.http: aiohttp.ClientSession | None = None

    async def current(self) -> str:
        """The access token to use now (loaded, seeded from config, or refreshed if due)."""
        if self._access is None:
            await self._load()
        assert self._access is not None
        if self._expires_at is not None and self._expires_at - self.clock.now() < timedelta(
            minutes=10
        ):
            return await self.refresh(self._access)
        return self._access

    async def _load(self) -> None:
        """The stored pair; on the very first start, the pair from the configuration."""
        async with self._lock:
            if self._access is not None:
                return  # loaded by another send meanwhile
            seed = {
                "channel": NAME,
                "access_token": self.settings.access_token,
                "refresh_token": self.settings.refresh_token,
                "expires_at": None,
                "updated_at": self.clock.now(),
            }
            async with self.db.transaction() as s:
                # Another process may be seeding it too: the first row stays.
                await insert_new(s, ChannelToken, [seed], ["channel"])
                row = await s.get(ChannelToken, NAME)
            assert row is not None
            self._access, self._expires_at = row.access_token, row.expires_at

    async def refresh(self, stale: str) -> str:
        """Replace the access token that just failed, unless someone already did."""
        async with self._lock:
            if self._access is not None and self._access != stale:
                return self._access  # refreshed by another coroutine meanwhile
            for _ in range(int(REFRESH_LEASE.total_seconds() * 4)):
                now = self.clock.now()
                async with self.db.transaction() as s:
                    claimed = await s.exec(
                        update(ChannelToken)
                        .where(
                            ChannelToken.channel == NAME,
                            ChannelToken.access_token == stale,
                            or_(
                                ChannelToken.refreshing_until.is_(None),
                                ChannelToken.refreshing_until < now,
                            ),  # type: ignore[union-attr,operator]
                        )
                        .values(refreshing_until=now + REFRESH_LEASE)
                    )
                    row = await s.get(ChannelToken, NAME)
                if claimed.rowcount == 1 and row is not None:
                    return await self._refresh_with(row.refresh_token)
                if row is not None and row.access_token != stale:
                    self._access, self._expires_at = row.access_token, row.expires_at
                    return row.access_token  # another process refreshed it
                await asyncio.sleep(0.25)  # another process is refreshing: wait for it
            raise TemporaryFailure("zalo: token refresh by another process did not finish")

    async def _refresh_with(self, refresh_token: str) -> str:
        assert self.http is not None
        url = f"{self.settings.oauth_base}/v4/oa/access_token"
        form = {
            "app_id": self.settings.app_id,
            "grant_type": "refresh_token",
            "refresh_token": refresh_token,
        }
        try:
            async with self.http.post(
                url, data=form, headers={"secret_key": self.settings.app_secret}
            ) as r:
                data = await r.json(content_type=None)
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            await self._release()
            raise TemporaryFailure(f"zalo: token refresh failed: {exc}") from exc
        if (
            not isinstance(data, dict)
            or not data.get("access_token")
            or not data.get("refresh_token")
        ):
            await self._release()
            log.error(
                "zalo: the refresh token was refused (%s). Give a new pair with "
                "`bot.py zalo set-tokens ACCESS REFRESH`.",
                data,
            )
            raise TemporaryFailure(f"zalo: token refresh refused: {data}")
        lifetime = timedelta(seconds=int(data.get("expires_in") or TOKEN_LIFETIME.total_seconds()))
        now = self.clock.now()
        async with self.db.transaction() as s:
            await s.exec(
                update(ChannelToken)
                .where(ChannelToken.channel == NAME)
                .values(
                    access_token=data["access_token"],
                    refresh_token=data["refresh_token"],
                    expires_at=now + lifetime,
                    refreshing_until=None,
                    updated_at=now,
                )
            )
        self._access, self._expires_at = data["access_token"], now + lifetime
        log.info("zalo: access token refreshed, valid until %s", self._expires_at.isoformat())
        return self._access

    async def _release(self) -> None:
        async with self.db.transaction() as s:
            await s.exec(
                update(ChannelToken)
                .where(ChannelToken.channel == NAME)
                .values(refreshing_until=None)
            )

    async def set_pair(self, access: str, refresh: str) -> None:
        """Store a new pair given by an admin (after the refresh token was lost)."""
        now = self.clock.now()
        async with self.db.transaction() as s:
            row = await s.get(ChannelToken, NAME)
            if row is None:
                s.add(
                    ChannelToken(
                        channel=NAME, access_token=access, refresh_token=refresh, updated_at=now
                    )
                )
            else:
                row.access_token, row.refresh_token = access, refresh
                row.expires_at, row.refreshing_until, row.updated_at = None, None, now
        self._access, self._expires_at = access, None


# Buttons whose payload names a report (officials' "of:…", citizens' "rc:…") must come
# back with that payload: Zalo sends it as a hidden message (oa.query.hide).
HIDDEN_PAYLOADS = ("of:", "rc:")


def _button(b: dict[str, Any]) -> dict[str, str]:
    """A Zalo OA button. Usually the title is the payload: a tap comes back as that text,
    which is also what the citizen sees as their own message."""
    if str(b.get("payload", "")).startswith(HIDDEN_PAYLOADS):
        return {"title": b["title"], "type": "oa.query.hide", "payload": b["payload"]}
    return {"title": b["title"], "type": "oa.query.show", "payload": b["title"]}


class ZaloOA:
    """Channel adapter for a Zalo Official Account."""

    name = NAME

    def __init__(
        self, db: Database, settings: ZaloSettings, clock: Clock, timeout: float = 15.0
    ) -> None:
        self.settings = settings
        self.timeout = timeout
        # bot.ingress.Ingress and bot.metrics.Metrics, set when the service is built
        self.ingress: Any = None
        self.metrics: Any = None
        self.tokens = ZaloTokens(db, settings, clock)
        self.limiter = AsyncLimiter(settings.rate_per_minute, 60)
        self.http: aiohttp.ClientSession | None = None  # the token's refreshes
        self.api: Http1Client | None = None  # the sends
        # The ways of signing a body, the one that matched last first.
        self._signing = list(signature_keys(settings).items())
        self._variants_seen: set[str] = set()

    async def start(self) -> None:
        self.http = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=self.timeout), json_serialize=jsonio.dumps
        )
        self.tokens.http = self.http
        self.api = Http1Client(self.settings.api_base, timeout=self.timeout)

    async def stop(self) -> None:
        if self.api is not None:
            await self.api.close()
        if self.http is not None:
            await self.http.close()

    # ---- ingress

    def _rejected(self, reason: str) -> None:
        if self.metrics is not None:
            self.metrics.rejected.labels(NAME, reason).inc()

    def routes(self) -> list[web.RouteDef]:
        return [web.post("/webhooks/zalo", self.webhook)]

    async def webhook(self, request: web.Request) -> web.Response:
        """One event from Zalo: verified over the raw bytes, stored once, 200 at once."""
        raw = await request.read()
        try:
            event = jsonio.loads(raw)
        except ValueError:
            log.warning("zalo webhook: body is not JSON; dropped")
            self._rejected("body")
            return web.json_response({"error": "not JSON"}, status=400)
        if event == {}:
            return json_ok()  # the probe Zalo sends when the URL is saved
        if not isinstance(event, dict):
            return web.json_response({"error": "not an event"}, status=400)
        variant = self.verify(
            request.headers.get(SIGNATURE_HEADER, ""), raw, str(event.get("timestamp", ""))
        )
        if variant is None:
            log.warning(
                "zalo webhook: %s signature from %s (event %s); dropped",
                "missing" if SIGNATURE_HEADER not in request.headers else "wrong",
                request.remote,
                str(event.get("event_name"))[:40],
            )
            self._rejected("signature")
            return web.json_response({"error": "bad signature"}, status=401)
        inbound = self.to_inbound(event)
        if inbound is not None:
            new = await self.ingress.accept(inbound)
            if not new:
                log.info(
                    "zalo webhook: repeated delivery of %s (num_retry=%s) ignored",
                    inbound.platform_id,
                    request.headers.get("num_retry", "-"),
                )
        return json_ok()

    def verify(self, header: str, raw: bytes, timestamp: str) -> str | None:
        """The signature variant that matches, or None."""
        given = header.strip().removeprefix("mac=").strip().lower()
        if not given or not timestamp:
            return None
        for i, (variant, (prefix, key)) in enumerate(self._signing):
            if hmac.compare_digest(given.encode(), mac(prefix, raw, timestamp, key).encode()):
                if i:  # tried first from now on
                    self._signing.insert(0, self._signing.pop(i))
                if variant not in self._variants_seen:
                    self._variants_seen.add(variant)
                    log.info("zalo webhook: signatures match the %r variant", variant)
                return variant
        return None

    def to_inbound(self, event: dict[str, Any]) -> Inbound | None:
        name = str(event.get("event_name", ""))
        timestamp = str(event.get("timestamp", ""))
        if name == "follow":
            user = str((event.get("follower") or {}).get("id", ""))
            if not user:
                return None
            return Inbound(NAME, f"follow:{user}:{timestamp}", user, kind="start", lang="vi")
        if not name.startswith("user_send_"):
            return None  # oa_send_* echoes, receipts, unfollow, …
        user = str((event.get("sender") or {}).get("id", ""))
        message = event.get("message") or {}
        if not user or not isinstance(message, dict):
            return None
        platform_id = str(message.get("msg_id") or f"{name}:{user}:{timestamp}")
        if name == "user_send_text":
            return Inbound(NAME, platform_id, user, kind="text", text=str(message.get("text", "")))
        kind = UNSUPPORTED.get(name, name.removeprefix("user_send_"))
        return Inbound(NAME, platform_id, user, kind="unsupported", text=kind)

    # ---- egress

    async def send(self, message: Message) -> str | None:
        body = message.body
        parts = split_text(body["text"], MAX_TEXT)
        buttons = body.get("buttons") or []
        sent_id: str | None = None
        for i, part in enumerate(parts):
            payload: dict[str, Any] = {"text": part}
            if buttons and i == len(parts) - 1:
                payload["attachment"] = {
                    "type": "template",
                    "payload": {"buttons": [_button(b) for b in buttons[:MAX_BUTTONS]]},
                }
            data = await self._call(
                "/v3.0/oa/message/cs",
                {"recipient": {"user_id": message.recipient}, "message": payload},
            )
            sent_id = str((data.get("data") or {}).get("message_id") or "") or None
        log.debug("zalo: sent outbox %s to %s", message.id, mask(message.recipient))
        return sent_id

    async def _call(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        """POST to the OpenAPI; refresh the token once if it is refused."""
        assert self.api is not None, "ZaloOA.start() was not called"
        token = await self.tokens.current()
        for attempt in (1, 2):
            async with self.limiter:
                try:
                    answer = await self.api.post(
                        path,
                        jsonio.dumpb(body),
                        {"access_token": token, "Content-Type": "application/json"},
                    )
                    if answer.status >= 500:
                        raise TemporaryFailure(f"zalo: HTTP {answer.status}")
                    data = jsonio.loads(answer.body)
                except (HttpError, OSError, TimeoutError, ValueError) as exc:
                    raise TemporaryFailure(f"zalo: {type(exc).__name__}: {exc}") from exc
            code = int(data.get("error", 0)) if isinstance(data, dict) else -1
            if code == 0:
                return data
            message = str(data.get("message", "")) if isinstance(data, dict) else str(data)
            if code in (-216, -220) and attempt == 1:
                token = await self.tokens.refresh(token)
                continue
            if code == -32:
                raise TemporaryFailure("zalo -32: rate limit", retry_after=60)
            if code == -230:
                raise Undeliverable(
                    "zalo -230: the citizen has not written for 7 days (consultation window closed)"
                )
            if code in (-216, -220):
                raise TemporaryFailure(f"zalo {code}: token still refused after a refresh")
            raise Undeliverable(f"zalo {code}: {message}")
        raise AssertionError("unreachable")
