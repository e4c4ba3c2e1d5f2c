"""Rating invitations: a citizen who asked about a dossier still in progress is invited to
rate it when the dossier API reports it completed, and reminded once if they have not.

Due work for the clock tick (bot/scheduler.py): `dossier_watch.invite_at` is set when the
dossier is completed (bot/dossiers.py); the invitation sets `reminder_at`. Each is claimed
in the transaction that writes the message, so it is sent once.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from bot.channels.base import message_body
from bot.config import Settings
from storage.models import Conversation, Dossier, DossierWatch, OutboxMessage, Procedure, Rating
from storage.ops import due_rows

REMINDER_AFTER = timedelta(days=2)


async def _send(s: AsyncSession, citizen_id: int, text: str, now: datetime) -> int:
    conv = await s.scalar(
        select(Conversation)
        .where(Conversation.citizen_id == citizen_id)
        .order_by(col(Conversation.updated_at).desc())
        .limit(1)
    )
    if conv is None:
        return 0
    s.add(
        OutboxMessage(
            channel=conv.channel,
            recipient=conv.user_key,
            conversation_id=conv.id,
            body=message_body(text, [], None),
            next_attempt_at=now,
            created_at=now,
        )
    )
    return 1


async def invitations(
    s: AsyncSession, settings: Settings, now: datetime, batch: int, pg: bool
) -> tuple[int, int, int]:
    """Send due invitations and reminders; returns (invitations, reminders, messages)."""
    invited = reminded = messages = 0
    for watch in list(await s.exec(due_rows(DossierWatch, DossierWatch.invite_at, now, batch, pg))):
        watch.invite_at = None
        row = (
            await s.exec(
                select(Dossier, Procedure)
                .join(Procedure, col(Procedure.id) == col(Dossier.procedure_id))
                .where(Dossier.id == watch.dossier_id)
            )
        ).first()
        if row is None or await _rated(s, watch.dossier_id):
            continue
        dossier, procedure = row
        watch.invited_at = now
        watch.reminder_at = now + REMINDER_AFTER
        messages += await _send(
            s,
            watch.citizen_id,
            f"Hồ sơ {dossier.code} ({procedure.name}) của anh/chị đã có kết quả. Mời anh/chị "
            f"đánh giá mức độ hài lòng: gõ mã hồ sơ {dossier.code} vào đây, hoặc mở "
            f"{settings.public_url}/chat?start={dossier.code}. Ý kiến của anh/chị giúp cơ "
            "quan phục vụ tốt hơn.",
            now,
        )
        invited += 1
    for watch in list(
        await s.exec(due_rows(DossierWatch, DossierWatch.reminder_at, now, batch, pg))
    ):
        watch.reminder_at = None
        if await _rated(s, watch.dossier_id):
            continue
        dossier = await s.get(Dossier, watch.dossier_id)
        if dossier is None:
            continue
        messages += await _send(
            s,
            watch.citizen_id,
            f"Nhắc lại: hồ sơ {dossier.code} đã có kết quả và chưa được đánh giá. Anh/chị gõ "
            f"mã hồ sơ {dossier.code} để đánh giá (chỉ mất khoảng một phút). Đây là lời nhắc "
            "duy nhất.",
            now,
        )
        reminded += 1
    return invited, reminded, messages


async def _rated(s: AsyncSession, dossier_id: int) -> bool:
    return await s.scalar(select(Rating.id).where(Rating.dossier_id == dossier_id)) is not None
