"""Flow versions in the database: seeding from flows/data, publishing, rolling back.

Versions are immutable; `flow.current_version_id` says which one new conversations start
on. A conversation keeps the version it started with (its `flow_version_id`).
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import yaml
from sqlalchemy import func
from sqlmodel import select
from sqlmodel.ext.asyncio.session import AsyncSession

from bot.config import Settings
from flows.engine import Library
from flows.model import FlowDef
from flows.validate import parse_flow, validate_flow
from storage.models import FieldOfWork, Flow, FlowVersion

FLOW_DIR = Path(__file__).resolve().parent.parent / "flows" / "data"
SEED_AUTHOR = "seed:flows/data"


def read_flow_files(folder: Path = FLOW_DIR) -> dict[str, dict[str, Any]]:
    """The flow definitions shipped as files, by flow id."""
    out: dict[str, dict[str, Any]] = {}
    for path in sorted(folder.glob("*.yaml")):
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
        if not isinstance(data, dict) or "id" not in data:
            raise ValueError(f"{path}: not a flow definition (no id)")
        out[str(data["id"])] = data
    return out


# The fields a new database starts with (migration 0001); the running bot offers the
# fields in the table, which admins can extend.
DEFAULT_FIELDS = [
    {"value": "land", "label": {"vi": "Đất đai", "en": "Land"}},
    {"value": "construction", "label": {"vi": "Xây dựng", "en": "Construction"}},
    {"value": "judicial_records", "label": {"vi": "Lý lịch tư pháp", "en": "Judicial records"}},
    {"value": "other", "label": {"vi": "Lĩnh vực khác", "en": "Other"}},
]
FIELDS_TTL_SECONDS = 30.0
MAX_LIBRARIES = 256


def configured_lists(settings: Settings) -> dict[str, list[dict[str, Any]]]:
    """The lists flows can iterate or offer as choices: the rating scale and criteria,
    and the fields of a complaint."""
    return {
        "fields": DEFAULT_FIELDS,
        "scale": [
            {"value": lv.value, "label": {"vi": lv.vi, "en": lv.en}, "counts_as": lv.counts_as}
            for lv in settings.rating.scale
        ],
        "criteria": [
            {"key": c.key, "label": {"vi": c.vi, "en": c.en}} for c in settings.rating.criteria
        ],
    }


def configured_limits(settings: Settings) -> dict[str, int]:
    return {
        "max_text_chars": settings.conversation.max_text_chars,
        "comment_max_chars": settings.rating.comment_max_chars,
    }


def checksum(definition: Mapping[str, Any]) -> str:
    return hashlib.sha256(
        json.dumps(definition, sort_keys=True, ensure_ascii=False).encode()
    ).hexdigest()


def validate_set(
    definitions: Mapping[str, Mapping[str, Any]], lists: Mapping[str, list[Any]]
) -> dict[str, FlowDef]:
    """Parse and validate flows together (they may point into each other)."""
    parsed = {fid: parse_flow(d) for fid, d in definitions.items()}
    for flow in parsed.values():
        validate_flow(flow, parsed, lists)
    return parsed


async def publish(
    session: AsyncSession,
    definition: Mapping[str, Any],
    author: str,
    now: datetime,
    lists: Mapping[str, list[Any]],
    note: str = "",
    alongside: Mapping[str, Mapping[str, Any]] | None = None,
) -> FlowVersion:
    """Validate and store a new version of a flow and make it current.

    It is validated together with the current versions of the other flows (or with
    `alongside`, when several flows are published together).
    """
    flow_id = str(definition.get("id"))
    others = await current_definitions(session) if alongside is None else dict(alongside)
    validate_set({**others, flow_id: definition}, lists)
    last = await session.scalar(
        select(func.max(FlowVersion.version)).where(FlowVersion.flow_id == flow_id)
    )
    version = FlowVersion(
        flow_id=flow_id,
        version=(last or 0) + 1,
        definition=dict(definition),
        checksum=checksum(definition),
        author=author,
        note=note,
        created_at=now,
    )
    session.add(version)
    await session.flush()
    await _point(session, flow_id, version, author, now)
    return version


async def rollback(
    session: AsyncSession, flow_id: str, version: int, author: str, now: datetime
) -> None:
    """Make an earlier stored version current again."""
    row = await session.scalar(
        select(FlowVersion).where(FlowVersion.flow_id == flow_id, FlowVersion.version == version)
    )
    if row is None:
        raise LookupError(f"flow {flow_id!r} has no version {version}")
    await _point(session, flow_id, row, author, now)


async def _point(
    session: AsyncSession, flow_id: str, version: FlowVersion, author: str, now: datetime
) -> None:
    flow = await session.get(Flow, flow_id)
    if flow is None:
        session.add(
            Flow(id=flow_id, current_version_id=version.id, published_by=author, published_at=now)
        )
    else:
        flow.current_version_id = version.id  # type: ignore[assignment]
        flow.published_by = author
        flow.published_at = now
    await session.flush()


async def current_definitions(session: AsyncSession) -> dict[str, dict[str, Any]]:
    rows = await session.exec(
        select(FlowVersion).join(Flow, Flow.current_version_id == FlowVersion.id)
    )
    return {v.flow_id: v.definition for v in rows}


async def seed_flows(
    session: AsyncSession, settings: Settings, now: datetime, folder: Path = FLOW_DIR
) -> list[str]:
    """Publish each shipped flow file that is new or changed since it was last seeded.

    A flow an admin has edited since (its current version is not the seeded one) is left
    alone: the admin's version wins, and the caller is told so through the return value.
    """
    files = read_flow_files(folder)
    lists = configured_lists(settings)
    validate_set(files, lists)
    alongside = {**await current_definitions(session), **files}
    published = []
    for flow_id, definition in files.items():
        seeded = await session.scalar(
            select(FlowVersion)
            .where(FlowVersion.flow_id == flow_id, FlowVersion.author == SEED_AUTHOR)
            .order_by(FlowVersion.version.desc())  # type: ignore[attr-defined]
            .limit(1)
        )
        if seeded is not None and seeded.checksum == checksum(definition):
            continue
        flow = await session.get(Flow, flow_id)
        if flow is not None and seeded is not None and flow.current_version_id != seeded.id:
            published.append(f"{flow_id} (kept the admin's version; the shipped file changed)")
            continue
        await publish(
            session, definition, SEED_AUTHOR, now, lists, note="shipped flow", alongside=alongside
        )
        published.append(flow_id)
    return published


class FlowCache:
    """Parsed flow versions by id (immutable, so cached forever) and current pointers."""

    def __init__(self, settings: Settings) -> None:
        self._defs: dict[int, FlowDef] = {}
        # The same library for the same versions, batch after batch (it keeps what the
        # engine worked out about its flows).
        self._libraries: dict[tuple[Any, ...], Library] = {}
        self.lists = configured_lists(settings)
        self.limits = configured_limits(settings)
        self.idle_reset = timedelta(minutes=settings.conversation.idle_reset_minutes)
        self._fields_at = float("-inf")

    async def _refresh_fields(self, session: AsyncSession) -> None:
        """Re-read the fields (an admin may add one) at most every FIELDS_TTL_SECONDS."""
        if time.monotonic() - self._fields_at < FIELDS_TTL_SECONDS:
            return
        rows = await session.exec(select(FieldOfWork).order_by(FieldOfWork.position))  # type: ignore[arg-type]
        fields = [{"value": f.key, "label": {"vi": f.name_vi, "en": f.name_en}} for f in rows]
        if fields:
            self.lists = {**self.lists, "fields": fields}
        self._fields_at = time.monotonic()

    async def libraries(
        self, session: AsyncSession, pinned: Iterable[int | None]
    ) -> dict[int | None, Library]:
        """What the engine may read, for conversations pinned to these versions (None:
        not started), loaded inside the transaction of the events they are for: the
        current versions once, and whichever pinned versions are not cached yet."""
        pointers = {f.id: f.current_version_id for f in await session.exec(select(Flow))}

        async def same() -> AsyncSession:
            return session

        return await self.libraries_for(pointers, pinned, same)

    async def libraries_for(
        self,
        pointers: dict[str, int],
        pinned: Iterable[int | None],
        session: Callable[[], Awaitable[AsyncSession]],
    ) -> dict[int | None, Library]:
        """`libraries`, with the current versions (`pointers`) already read; `session`
        is asked for only when something is not cached (a version, the fields)."""
        if time.monotonic() - self._fields_at >= FIELDS_TTL_SECONDS:
            await self._refresh_fields(await session())
        pins = set(pinned)
        wanted = set(pointers.values()) | {p for p in pins if p}
        missing = wanted - self._defs.keys()
        if missing:
            s = await session()
            rows = await s.exec(select(FlowVersion).where(FlowVersion.id.in_(missing)))  # type: ignore[union-attr]
            for row in rows:
                self._defs[row.id] = FlowDef.parse(row.definition)  # type: ignore[index]
        current = {v: self._defs[v] for v in pointers.values() if v in self._defs}
        out: dict[int | None, Library] = {}
        now_current = tuple(sorted(pointers.items()))
        # A conversation may start, or move to, a current version within the batch too.
        for pin in pins | set(current) | {None}:
            versions = dict(current)
            if pin and pin in self._defs:
                versions[pin] = self._defs[pin]
            key = (pin, now_current)
            lib = self._libraries.get(key)
            if lib is None or lib.lists is not self.lists or lib.versions.keys() != versions.keys():
                if len(self._libraries) > MAX_LIBRARIES:
                    self._libraries.clear()
                lib = self._libraries[key] = Library(
                    current=dict(pointers),
                    versions=versions,
                    lists=self.lists,
                    limits=self.limits,
                    idle_reset=self.idle_reset,
                )
            out[pin] = lib
        return out

    async def library(self, session: AsyncSession, pinned: int | None) -> Library:
        """The library for one conversation pinned to `pinned` (see `libraries`)."""
        return (await self.libraries(session, [pinned]))[pinned]
