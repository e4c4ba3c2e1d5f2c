"""Rating invitations: a citizen who asked about a dossier still in progress is invited to
rate it when the dossier API reports it completed, and reminded once if they have not.

Due work for the clock tick (bot/scheduler.py): `dossier_watch.invite_at` is set when the
dossier is completed (bot/dossiers.py); the invitation sets `reminder_at`. Each is claimed
in the transaction that writes the message, so it is sent once. A batch is a handful of
statements whatever its size: the claim, the dossiers and the ratings of all its watches,
the watches written back, the messages.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from bot.config import Settings
from bot.notices import Notices
from storage.models import Dossier, DossierWatch, Procedure, Rating
from storage.ops import claim_due, save_columns

REMINDER_AFTER = timedelta(days=2)


async def invitations(
    s: AsyncSession, settings: Settings, now: datetime, batch: int, pg: bool
) -> tuple[int, int, int]:
    """Send due invitations and reminders; returns (invitations, reminders, messages)."""
    out = Notices()
    invited = reminded = 0
    due = await claim_due(s, DossierWatch, DossierWatch.invite_at, now, batch, pg)
    dossiers = await _unrated(s, {w.dossier_id for w in due})
    for watch in due:
        watch.invite_at = None
        if watch.dossier_id not in dossiers:
            continue
        dossier, procedure = dossiers[watch.dossier_id]
        watch.invited_at = now
        watch.reminder_at = now + REMINDER_AFTER
        out.to_citizen(
            watch.citizen_id,
            f"Hồ sơ {dossier.code} ({procedure}) của anh/chị đã có kết quả. Mời anh/chị "
            f"đánh giá mức độ hài lòng: gõ mã hồ sơ {dossier.code} vào đây, hoặc mở "
            f"{settings.public_url}/chat?start={dossier.code}. Ý kiến của anh/chị giúp cơ "
            "quan phục vụ tốt hơn.",
        )
        invited += 1
    await save_columns(s, due, ("invite_at", "invited_at", "reminder_at"))

    due = await claim_due(s, DossierWatch, DossierWatch.reminder_at, now, batch, pg)
    dossiers = await _unrated(s, {w.dossier_id for w in due})
    for watch in due:
        watch.reminder_at = None
        if watch.dossier_id not in dossiers:
            continue
        code = dossiers[watch.dossier_id][0].code
        out.to_citizen(
            watch.citizen_id,
            f"Nhắc lại: hồ sơ {code} đã có kết quả và chưa được đánh giá. Anh/chị gõ "
            f"mã hồ sơ {code} để đánh giá (chỉ mất khoảng một phút). Đây là lời nhắc "
            "duy nhất.",
        )
        reminded += 1
    await save_columns(s, due, ("reminder_at",))
    return invited, reminded, await out.write(s, now)


async def _unrated(s: AsyncSession, ids: set[int]) -> dict[int, tuple[Dossier, str]]:
    """Of these dossiers, the ones nobody has rated yet, with their procedure's name."""
    if not ids:
        return {}
    rows = await s.exec(
        select(Dossier, Procedure.name)
        .join(Procedure, col(Procedure.id) == col(Dossier.procedure_id))
        .join(Rating, col(Rating.dossier_id) == col(Dossier.id), isouter=True)
        .where(col(Dossier.id).in_(ids), col(Rating.id).is_(None))
    )
    return {d.id: (d, name) for d, name in rows}  # type: ignore[misc]
