"""What every channel (web chat, Telegram, Zalo) offers the rest of the service.

Ingress: a channel turns a platform request into an `Inbound` event and hands it to
`bot.ingress.accept`. Egress: the outbox sender calls `Channel.send` with a stored
message; a channel raises `TemporaryFailure` (retry later) or `Undeliverable` (stop).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from storage.messages import Outgoing
from storage.models import OutboxMessage

# A message to send: an outbox row, or one handed over by the batch that wrote it.
Message = OutboxMessage | Outgoing


@dataclass(frozen=True)
class Inbound:
    """One incoming event, the same shape whatever the channel."""

    channel: str
    platform_id: str  # unique per channel: the platform's message/update id
    user_key: str  # the platform's id of the person writing
    kind: str  # text | button | start | unsupported
    text: str | None = None
    payload: str | None = None
    turn: int | None = None
    lang: str | None = None


class TemporaryFailure(Exception):
    """Sending failed but may work later; `retry_after` (seconds) if the platform said so."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class Undeliverable(Exception):
    """Sending can never work (blocked bot, closed window, bad recipient): park it."""


class Channel(Protocol):
    name: str

    async def send(self, message: Message) -> str | None:
        """Deliver one message; return the platform's message id if it gives one."""
        ...


def message_body(text: str, buttons: list[dict[str, str]], turn: int | None) -> dict[str, Any]:
    """The stored, channel-neutral form of an outgoing message."""
    body: dict[str, Any] = {"text": text}
    if buttons:
        body["buttons"] = buttons
        body["turn"] = turn
    return body
