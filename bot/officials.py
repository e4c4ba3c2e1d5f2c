"""Officials on the messengers: one-time link codes, linked accounts, notices.

An admin issues a code (`bot.py official link-code <id>`); the official sends it to the
bot on Telegram or Zalo and that account is linked. Notices to officials are outbox
messages like any other, so they get the same retries and ordering.
"""

from __future__ import annotations

import hashlib
import secrets
from datetime import datetime, timedelta
from typing import Any

from sqlmodel import select
from sqlmodel.ext.asyncio.session import AsyncSession

from bot.channels.base import message_body
from storage.models import Agency, LinkCode, Official, OfficialAccount, OutboxMessage

# No 0/O, 1/I/L: read aloud or copied by hand without mistakes.
ALPHABET = "23456789ABCDEFGHJKMNPQRSTUVWXYZ"
LINK_CODE_LIFETIME = timedelta(hours=72)


def _hash(code: str) -> str:
    return hashlib.sha256(code.encode()).hexdigest()


def normalise_code(typed: str) -> str:
    """ "lk 4x7k-9pqr" → "LK-4X7K-9PQR"."""
    chars = "".join(ch for ch in typed.upper() if ch.isalnum())
    body = chars.removeprefix("LK")
    return f"LK-{body[:4]}-{body[4:]}"


async def issue_link_code(
    session: AsyncSession, official_id: int, now: datetime, lifetime: timedelta = LINK_CODE_LIFETIME
) -> str:
    """A new one-time code for this official; only its hash is stored."""
    if await session.get(Official, official_id) is None:
        raise LookupError(f"no official with id {official_id}")
    body = "".join(secrets.choice(ALPHABET) for _ in range(8))
    code = f"LK-{body[:4]}-{body[4:]}"
    session.add(
        LinkCode(
            code_hash=_hash(code),
            official_id=official_id,
            created_at=now,
            expires_at=now + lifetime,
        )
    )
    return code


async def link_account(
    session: AsyncSession, typed_code: str, channel: str, user_key: str, now: datetime
) -> dict[str, Any] | None:
    """Use a code: link (channel, user) to its official. None if wrong, used or expired."""
    code = await session.scalar(
        select(LinkCode)
        .where(LinkCode.code_hash == _hash(normalise_code(typed_code)))
        .with_for_update()
    )
    if code is None or code.used_at is not None or code.expires_at <= now:
        return None
    code.used_at, code.used_by = now, f"{channel}:{user_key}"
    account = await session.scalar(
        select(OfficialAccount).where(
            OfficialAccount.channel == channel, OfficialAccount.user_key == user_key
        )
    )
    if account is None:
        session.add(
            OfficialAccount(
                official_id=code.official_id, channel=channel, user_key=user_key, linked_at=now
            )
        )
    else:
        account.official_id, account.linked_at = code.official_id, now
    official = await session.get(Official, code.official_id)
    agency = await session.get(Agency, official.agency_id) if official else None
    return {
        "id": code.official_id,
        "name": official.name if official else "",
        "title": official.title if official else "",
        "agency": agency.name if agency else "",
    }


async def notify_official(
    session: AsyncSession,
    official_id: int,
    text: str,
    now: datetime,
    buttons: list[dict[str, str]] | None = None,
) -> int:
    """Queue a notice to every linked account of the official; how many were queued."""
    accounts = (
        await session.exec(
            select(OfficialAccount).where(OfficialAccount.official_id == official_id)
        )
    ).all()
    for account in accounts:
        session.add(
            OutboxMessage(
                channel=account.channel,
                recipient=account.user_key,
                body=message_body(text, buttons or [], None),
                next_attempt_at=now,
                created_at=now,
            )
        )
    return len(accounts)
