"""Satisfaction figures: rate = (Hài lòng + Rất hài lòng) / all answers × 100%.

An answer counts as satisfied by what its level meant when it was given (stored with the
answer), so changing the scale later does not rewrite history.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any, Literal

from sqlalchemy import case, func
from sqlmodel import select
from sqlmodel.ext.asyncio.session import AsyncSession

from storage.models import Agency, Dossier, FieldOfWork, Procedure, Rating, RatingAnswer

Grouping = Literal["agency", "procedure", "field", "criterion"]


@dataclass(frozen=True)
class Line:
    key: str
    name: str
    ratings: int
    answers: int
    satisfied: int

    @property
    def rate(self) -> float | None:
        """Percentage of satisfied answers, one decimal; None without answers."""
        return round(100.0 * self.satisfied / self.answers, 1) if self.answers else None

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "rate": self.rate}


async def satisfaction(
    session: AsyncSession,
    by: Grouping,
    since: datetime | None = None,
    until: datetime | None = None,
) -> tuple[Line, list[Line]]:
    """The overall line and one line per agency / procedure / field / criterion."""
    satisfied = func.sum(case((RatingAnswer.counts_as == "satisfied", 1), else_=0))
    columns = {
        "agency": (Agency.code, Agency.name),
        "procedure": (Procedure.code, Procedure.name),
        "field": (FieldOfWork.key, FieldOfWork.name_vi),
        "criterion": (RatingAnswer.criterion, RatingAnswer.criterion),
    }[by]
    base = (
        select(
            *columns,
            func.count(func.distinct(Rating.id)),
            func.count(RatingAnswer.id),
            satisfied,
        )
        .select_from(RatingAnswer)
        .join(Rating, Rating.id == RatingAnswer.rating_id)
        .join(Dossier, Dossier.id == Rating.dossier_id)
        .join(Agency, Agency.id == Dossier.agency_id)
        .join(Procedure, Procedure.id == Dossier.procedure_id)
        .join(FieldOfWork, FieldOfWork.key == Procedure.field)
    )
    if since is not None:
        base = base.where(Rating.created_at >= since)
    if until is not None:
        base = base.where(Rating.created_at < until)
    rows = await session.exec(base.group_by(*columns).order_by(columns[0]))  # type: ignore[call-overload]
    lines = [Line(str(k), str(n), int(r), int(a), int(s or 0)) for k, n, r, a, s in rows]
    total_q = (
        select(func.count(func.distinct(Rating.id)), func.count(RatingAnswer.id), satisfied)
        .select_from(RatingAnswer)
        .join(Rating, Rating.id == RatingAnswer.rating_id)
    )
    if since is not None:
        total_q = total_q.where(Rating.created_at >= since)
    if until is not None:
        total_q = total_q.where(Rating.created_at < until)
    r, a, s = (await session.exec(total_q)).one()  # type: ignore[call-overload]
    return Line("*", "Tổng cộng / Total", int(r), int(a), int(s or 0)), lines


def format_table(title: str, total: Line, lines: list[Line]) -> str:
    """A plain-text table for the terminal."""
    name_w = min(60, max([len(ln.name) for ln in lines] + [len(total.name), 10]))
    head = (
        f"{'Mã / Code':<16} {'Tên / Name':<{name_w}} {'Lượt':>6} {'Câu trả lời':>11} "
        f"{'Hài lòng':>9} {'Tỷ lệ':>7}"
    )
    out = [title, head, "-" * len(head)]
    for ln in [*lines, total]:
        rate = f"{ln.rate:.1f}%" if ln.rate is not None else "—"
        name = ln.name if len(ln.name) <= name_w else ln.name[: name_w - 1] + "…"
        out.append(
            f"{ln.key:<16} {name:<{name_w}} {ln.ratings:>6} {ln.answers:>11} "
            f"{ln.satisfied:>9} {rate:>7}"
        )
    return "\n".join(out)
