"""Where a report goes: the competent agency, by field and commune.

- A report about a dossier goes to the agency that handled the dossier.
- Otherwise the routing table decides: (field, commune) first, then the field's
  province-wide default (commune None), then the "other" field's rules.
- A conduct complaint goes one level above (DOMAIN.md: never only to the unit whose
  official is accused).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from sqlmodel import select
from sqlmodel.ext.asyncio.session import AsyncSession

from nlu.text import fold
from storage.models import Agency, Dossier, Route

FALLBACK_FIELD = "other"
# Words in front of a commune's name: "UBND xã Tam Đảo", "phường Việt Trì", "tt Hương Canh".
_PREFIXES = re.compile(r"^(?:ubnd\s+)?(?:xa|phuong|thi tran|dac khu|p|x|tt)\s+")


@dataclass(frozen=True)
class Routed:
    agency: Agency
    # Why it went there, for the audit trail and the admin.
    reason: str


async def route_report(
    s: AsyncSession,
    field: str | None,
    category: str | None,
    dossier_id: int | None = None,
    commune_id: int | None = None,
) -> Routed | None:
    """The competent agency for a report, or None when no rule and no dossier says."""
    base: Agency | None = None
    reason = ""
    if dossier_id is not None:
        dossier = await s.get(Dossier, dossier_id)
        if dossier is not None:
            base = await s.get(Agency, dossier.agency_id)
            reason = f"dossier {dossier.code}"
    if base is None:
        for f in dict.fromkeys([field or FALLBACK_FIELD, FALLBACK_FIELD]):
            for commune in dict.fromkeys([commune_id, None]):
                agency_id = await s.scalar(
                    select(Route.agency_id).where(
                        Route.field == f,
                        Route.commune_id == commune  # type: ignore[arg-type]
                        if commune is not None
                        else Route.commune_id.is_(None),  # type: ignore[union-attr]
                    )
                )
                if agency_id is not None:
                    base = await s.get(Agency, agency_id)
                    reason = f"route {f} × {'commune ' + str(commune) if commune else 'province'}"
                    break
            if base is not None:
                break
    if base is None:
        return None
    if category == "conduct" and base.parent_id is not None:
        parent = await s.get(Agency, base.parent_id)
        if parent is not None:
            return Routed(parent, f"{reason}; conduct: one level above {base.code}")
    return Routed(base, reason)


def _bare(name: str) -> str:
    return _PREFIXES.sub("", fold(name)).strip()


async def find_commune(s: AsyncSession, text: str) -> Agency | None:
    """The commune or ward whose name the citizen typed ("phuong viet tri", "Tam Đảo")."""
    words = f" {fold(text)} "
    if not words.strip():
        return None
    communes = list(await s.exec(select(Agency).where(Agency.kind == "commune")))
    hits = [c for c in communes if (bare := _bare(c.name)) and f" {bare} " in words]
    if not hits:
        return None
    hits.sort(key=lambda c: len(_bare(c.name)), reverse=True)
    if len(hits) > 1 and len(_bare(hits[0].name)) == len(_bare(hits[1].name)):
        # "Việt Trì" both a ward and …: the typed kind (xã / phường) decides, if given.
        kind_word = next((w for w in ("phuong", "xa") if f" {w} " in words), None)
        same = [c for c in hits if kind_word and fold(c.name).split()[1] == kind_word]
        return same[0] if len(same) == 1 else None
    return hits[0]
