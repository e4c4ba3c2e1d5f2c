"""Messages the clock writes in bulk: to citizens (their latest conversation) and to
officials (every linked messenger account), queued in the outbox in one statement.

    notices = Notices()
    notices.to_citizen(report.citizen_id, "…")
    notices.to_official(head.id, "…", buttons)
    queued = await notices.write(session, now)   # in the transaction that claimed the work
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import insert
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from bot.channels.base import message_body
from storage.models import Conversation, OfficialAccount, OutboxMessage

Button = dict[str, str]


@dataclass
class Notices:
    citizens: dict[int, list[str]] = field(default_factory=dict)
    officials: dict[int, list[tuple[str, list[Button]]]] = field(default_factory=dict)

    def to_citizen(self, citizen_id: int, text: str) -> None:
        self.citizens.setdefault(citizen_id, []).append(text)

    def to_official(self, official_id: int, text: str, buttons: list[Button]) -> None:
        self.officials.setdefault(official_id, []).append((text, buttons))

    async def write(self, s: AsyncSession, now: datetime) -> int:
        """Queue them all, in order; returns how many outbox rows were written. A citizen
        with no conversation, or an official with no linked account, gets nothing."""
        rows: list[dict[str, Any]] = []
        if self.citizens:
            convs = await s.exec(
                select(
                    Conversation.citizen_id,
                    Conversation.id,
                    Conversation.channel,
                    Conversation.user_key,
                )
                .where(col(Conversation.citizen_id).in_(list(self.citizens)))
                .order_by(col(Conversation.updated_at))
            )
            latest = {c.citizen_id: c for c in convs}
            for citizen_id, texts in self.citizens.items():
                conv = latest.get(citizen_id)
                for text in texts if conv is not None else []:
                    body = message_body(text, [], None)
                    rows.append(_row(conv.channel, conv.user_key, conv.id, body, now))
        if self.officials:
            accounts = await s.exec(
                select(OfficialAccount).where(
                    col(OfficialAccount.official_id).in_(list(self.officials))
                )
            )
            by_official: dict[int, list[OfficialAccount]] = {}
            for a in accounts:
                by_official.setdefault(a.official_id, []).append(a)
            for official_id, messages in self.officials.items():
                for account in by_official.get(official_id, []):
                    for text, buttons in messages:
                        body = message_body(text, buttons, None)
                        rows.append(_row(account.channel, account.user_key, None, body, now))
        if rows:
            await s.exec(insert(OutboxMessage.__table__), params=rows)  # type: ignore[arg-type]
        return len(rows)


def _row(
    channel: str, recipient: str, conversation_id: int | None, body: dict[str, Any], now: datetime
) -> dict[str, Any]:
    return {
        "channel": channel,
        "recipient": recipient,
        "conversation_id": conversation_id,
        "body": body,
        "status": "pending",
        "attempts": 0,
        "next_attempt_at": now,
        "created_at": now,
    }
