"""The tables. Times are timezone-aware, stored in UTC and shown in Vietnam time (UTC+7).

Domain words: agency (cơ quan), official (cán bộ), head (người đứng đầu), procedure
(thủ tục hành chính), field (lĩnh vực), dossier (hồ sơ), rating (đánh giá), report
(phản ánh, kiến nghị).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Column, Index, UniqueConstraint, text
from sqlmodel import Field, SQLModel

# ---------------------------------------------------------------- administration


class FieldOfWork(SQLModel, table=True):
    """A field (lĩnh vực) complaints and procedures belong to: land, construction, …"""

    __tablename__ = "field"
    key: str = Field(primary_key=True, max_length=40)
    name_vi: str = Field(max_length=200)
    name_en: str = Field(max_length=200)
    position: int = 0


class Agency(SQLModel, table=True):
    """A node of the agency tree: province → departments / communes → units."""

    __tablename__ = "agency"
    id: int | None = Field(default=None, primary_key=True)
    code: str = Field(max_length=40, unique=True)
    name: str = Field(max_length=300)
    # province | department | police | office | commune | unit
    kind: str = Field(max_length=20)
    parent_id: int | None = Field(default=None, foreign_key="agency.id", index=True)
    # Title of the head of this agency, e.g. "Chủ tịch UBND xã", "Giám đốc Sở".
    head_title: str = Field(default="", max_length=200)


class Official(SQLModel, table=True):
    """A civil servant (cán bộ, công chức); role "head" marks the người đứng đầu."""

    __tablename__ = "official"
    id: int | None = Field(default=None, primary_key=True)
    agency_id: int = Field(foreign_key="agency.id", index=True)
    name: str = Field(max_length=200)
    title: str = Field(default="", max_length=200)
    # head | deputy | officer
    role: str = Field(default="officer", max_length=20)
    active: bool = True


class Procedure(SQLModel, table=True):
    """An administrative procedure (thủ tục hành chính) with its legal time limit."""

    __tablename__ = "procedure"
    id: int | None = Field(default=None, primary_key=True)
    code: str = Field(max_length=60, unique=True)
    name: str = Field(max_length=500)
    field: str = Field(foreign_key="field.key", max_length=40, index=True)
    # Legal time limit in working days.
    time_limit_days: int = 0


class Dossier(SQLModel, table=True):
    """A dossier (hồ sơ) as pushed by the one-stop system."""

    __tablename__ = "dossier"
    id: int | None = Field(default=None, primary_key=True)
    code: str = Field(max_length=60, unique=True)
    procedure_id: int = Field(foreign_key="procedure.id", index=True)
    agency_id: int = Field(foreign_key="agency.id", index=True)
    citizen_name: str | None = Field(default=None, max_length=200)
    citizen_phone: str | None = Field(default=None, max_length=20)
    received_at: datetime
    due_at: datetime | None = None
    completed_at: datetime | None = None
    # received | late | completed
    status: str = Field(default="received", max_length=20, index=True)
    updated_at: datetime


class DossierEvent(SQLModel, table=True):
    """One event of the dossier API, kept once per (dossier code, event)."""

    __tablename__ = "dossier_event"
    __table_args__ = (UniqueConstraint("dossier_code", "event"),)
    id: int | None = Field(default=None, primary_key=True)
    dossier_code: str = Field(max_length=60)
    event: str = Field(max_length=20)
    at: datetime
    payload: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    received_at: datetime


# ---------------------------------------------------------------- citizens and flows


class Citizen(SQLModel, table=True):
    """A person talking to the bot; holds no personal data beyond what they consented to."""

    __tablename__ = "citizen"
    id: int | None = Field(default=None, primary_key=True)
    created_at: datetime


class FlowVersion(SQLModel, table=True):
    """One immutable version of a flow definition."""

    __tablename__ = "flow_version"
    __table_args__ = (UniqueConstraint("flow_id", "version"),)
    id: int | None = Field(default=None, primary_key=True)
    flow_id: str = Field(max_length=60)
    version: int
    definition: dict[str, Any] = Field(sa_column=Column(JSON, nullable=False))
    checksum: str = Field(max_length=64)
    author: str = Field(max_length=200)
    note: str = Field(default="", max_length=500)
    created_at: datetime


class Flow(SQLModel, table=True):
    """Which version of a flow new conversations start on (publish and roll back move it)."""

    __tablename__ = "flow"
    id: str = Field(primary_key=True, max_length=60)
    current_version_id: int = Field(foreign_key="flow_version.id")
    published_by: str = Field(max_length=200)
    published_at: datetime


class Conversation(SQLModel, table=True):
    """A citizen's conversation on one channel, pinned to the flow version it started on."""

    __tablename__ = "conversation"
    __table_args__ = (UniqueConstraint("channel", "user_key"),)
    id: int | None = Field(default=None, primary_key=True)
    channel: str = Field(max_length=20)
    user_key: str = Field(max_length=100)
    citizen_id: int = Field(foreign_key="citizen.id", index=True)
    lang: str = Field(default="vi", max_length=5)
    flow_version_id: int | None = Field(default=None, foreign_key="flow_version.id")
    step: str | None = Field(default=None, max_length=60)
    vars: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    started_at: datetime
    updated_at: datetime


# ---------------------------------------------------------------- ratings and reports


class Rating(SQLModel, table=True):
    """A citizen's rating of one completed dossier: one per dossier."""

    __tablename__ = "rating"
    id: int | None = Field(default=None, primary_key=True)
    dossier_id: int = Field(foreign_key="dossier.id", unique=True)
    citizen_id: int = Field(foreign_key="citizen.id", index=True)
    channel: str = Field(max_length=20)
    comment: str | None = None
    created_at: datetime


class RatingAnswer(SQLModel, table=True):
    """The answer to one criterion, with what the level meant when it was given."""

    __tablename__ = "rating_answer"
    __table_args__ = (UniqueConstraint("rating_id", "criterion"),)
    id: int | None = Field(default=None, primary_key=True)
    rating_id: int = Field(foreign_key="rating.id", index=True)
    criterion: str = Field(max_length=40)
    value: int
    label: str = Field(max_length=100)
    # satisfied | neutral | unsatisfied
    counts_as: str = Field(max_length=20)


class Report(SQLModel, table=True):
    """Feedback (phản ánh, kiến nghị) from a citizen, with its receipt code.

    `field` and `category` are what the report is filed under; `nlu_*` keep what the
    classifier read (None while it could not be asked: `nlu_status` "pending" until it is
    classified later). A citizen's pick that differs from `nlu_field` is a correction,
    exported as a training example (`bot.py nlu export-corrections`).
    """

    __tablename__ = "report"
    __table_args__ = (Index("ix_report_nlu_pending", "nlu_status", "id"),)
    id: int | None = Field(default=None, primary_key=True)
    code: str = Field(max_length=40, unique=True)
    citizen_id: int = Field(foreign_key="citizen.id", index=True)
    channel: str = Field(max_length=20)
    text: str
    dossier_id: int | None = Field(default=None, foreign_key="dossier.id", index=True)
    rating_id: int | None = Field(default=None, foreign_key="rating.id")
    # rating (a dissatisfied rating turned into feedback) | chat
    source: str = Field(max_length=20)
    field: str | None = Field(default=None, max_length=40)
    # procedure (rules, delays, fees, forms) | conduct (how an official behaved)
    category: str | None = Field(default=None, max_length=20)
    # Who chose `field`: nlu (the citizen confirmed the reading) | citizen | dossier
    field_source: str | None = Field(default=None, max_length=20)
    nlu_field: str | None = Field(default=None, max_length=40)
    nlu_category: str | None = Field(default=None, max_length=20)
    nlu_confidence: float | None = None
    # done | pending (Rasa was unavailable: classified when it returns)
    nlu_status: str = Field(default="done", max_length=20)
    # The commune the citizen named (routing), when there is no dossier.
    commune_id: int | None = Field(default=None, foreign_key="agency.id")
    agency_id: int | None = Field(default=None, foreign_key="agency.id", index=True)
    # new → assigned (routed) → in_progress (taken up) → answered → resolved → closed;
    # reopened climbs again (bot/reports.py)
    status: str = Field(default="new", max_length=20, index=True)
    # Indexed for the weekly digest (reports of the last 7 days).
    created_at: datetime = Field(index=True)
    # The official handling it (accepted it), and the official it is about, when known.
    official_id: int | None = Field(default=None, foreign_key="official.id")
    accused_official_id: int | None = Field(default=None, foreign_key="official.id")
    # Ladder level now responsible (0 = the handling official; conduct starts at 1).
    level: int = 0
    # The current deadline; when it passes unanswered the report climbs one level.
    due_at: datetime | None = None
    # Due work, claimed by the clock tick (indexed: a tick never scans the table).
    next_escalation_at: datetime | None = Field(default=None, index=True)
    next_reminder_at: datetime | None = Field(default=None, index=True)
    next_update_at: datetime | None = Field(default=None, index=True)
    # While nobody has taken it up: the agency must take it up or pass it on by then.
    forward_due_at: datetime | None = Field(default=None, index=True)
    answered_at: datetime | None = None
    resolved_at: datetime | None = None
    closed_at: datetime | None = None


class ReportEvent(SQLModel, table=True):
    """The audit trail of a report: every transition, with who, when and why."""

    __tablename__ = "report_event"
    id: int | None = Field(default=None, primary_key=True)
    report_id: int = Field(foreign_key="report.id", index=True)
    at: datetime
    # citizen | official | system | admin
    actor: str = Field(max_length=20)
    official_id: int | None = Field(default=None, foreign_key="official.id")
    # created, assign, accept, reply, resolve, confirm, reopen, reassign, rerouted,
    # accused, escalated, apology, reminder, status_update, forward_overdue
    action: str = Field(max_length=30)
    from_status: str | None = Field(default=None, max_length=20)
    to_status: str | None = Field(default=None, max_length=20)
    level: int | None = None
    note: str | None = None


class DossierWatch(SQLModel, table=True):
    """A citizen waiting for a dossier's result, to be invited to rate it (once, plus one
    reminder). Made when they ask about a dossier still in progress."""

    __tablename__ = "dossier_watch"
    __table_args__ = (UniqueConstraint("dossier_id", "citizen_id"),)
    id: int | None = Field(default=None, primary_key=True)
    dossier_id: int = Field(foreign_key="dossier.id", index=True)
    citizen_id: int = Field(foreign_key="citizen.id")
    created_at: datetime
    # Due work for the clock: the invitation (set when the dossier is completed) and the
    # one reminder after it.
    invite_at: datetime | None = Field(default=None, index=True)
    reminder_at: datetime | None = Field(default=None, index=True)
    invited_at: datetime | None = None


class Digest(SQLModel, table=True):
    """A weekly digest sent to a head: one row per (head, week), so it is sent once."""

    __tablename__ = "digest"
    __table_args__ = (UniqueConstraint("official_id", "week"),)
    id: int | None = Field(default=None, primary_key=True)
    official_id: int = Field(foreign_key="official.id")
    # ISO week, e.g. "2026-W48"
    week: str = Field(max_length=10)
    created_at: datetime


class Route(SQLModel, table=True):
    """Routing table: a report of `field` from `commune` goes to `agency`.

    `commune_id` None is the field's province-wide default. A conduct complaint goes one
    level above the agency found here (DOMAIN.md: never only to the accused's unit).
    """

    __tablename__ = "route"
    __table_args__ = (UniqueConstraint("field", "commune_id"),)
    id: int | None = Field(default=None, primary_key=True)
    field: str = Field(foreign_key="field.key", max_length=40)
    commune_id: int | None = Field(default=None, foreign_key="agency.id")
    agency_id: int = Field(foreign_key="agency.id")


class Counter(SQLModel, table=True):
    """Named sequences, e.g. the daily number in PAKN.YYYYMMDD.NNNN."""

    __tablename__ = "counter"
    name: str = Field(primary_key=True, max_length=60)
    value: int = 0


class OfficialAccount(SQLModel, table=True):
    """An official's messenger account (linked once with a one-time code)."""

    __tablename__ = "official_account"
    __table_args__ = (UniqueConstraint("channel", "user_key"),)
    id: int | None = Field(default=None, primary_key=True)
    official_id: int = Field(foreign_key="official.id", index=True)
    channel: str = Field(max_length=20)
    user_key: str = Field(max_length=100)
    linked_at: datetime


class LinkCode(SQLModel, table=True):
    """A one-time code an admin gives an official to link a messenger account."""

    __tablename__ = "link_code"
    # SHA-256 of the code: the code itself is never stored.
    code_hash: str = Field(primary_key=True, max_length=64)
    official_id: int = Field(foreign_key="official.id", index=True)
    created_at: datetime
    expires_at: datetime
    used_at: datetime | None = None
    used_by: str | None = Field(default=None, max_length=130)


# ---------------------------------------------------------------- message path


class InboxEvent(SQLModel, table=True):
    """An incoming event, stored before any work; unique per (channel, platform id)."""

    __tablename__ = "inbox"
    __table_args__ = (
        UniqueConstraint("channel", "platform_id"),
        Index("ix_inbox_pending", "status", "id"),
        Index("ix_inbox_conversation", "channel", "user_key", "status", "id"),
        # Only the events still waiting: what a batch looks up (migration 0009).
        Index(
            "ix_inbox_waiting",
            "channel",
            "user_key",
            "id",
            postgresql_where=text("status = 'pending'"),
            sqlite_where=text("status = 'pending'"),
        ),
    )
    id: int | None = Field(default=None, primary_key=True)
    channel: str = Field(max_length=20)
    platform_id: str = Field(max_length=120)
    user_key: str = Field(max_length=100)
    # text | button | start | unsupported
    kind: str = Field(max_length=20)
    text: str | None = None
    payload: str | None = Field(default=None, max_length=200)
    # Which prompt a tapped button belonged to (stale taps are recognised).
    turn: int | None = None
    lang: str | None = Field(default=None, max_length=5)
    received_at: datetime
    # pending | done | failed
    status: str = Field(default="pending", max_length=10)
    attempts: int = 0
    processed_at: datetime | None = None
    error: str | None = None


class ChannelToken(SQLModel, table=True):
    """A platform's current access/refresh token pair (Zalo's refresh token is single-use).

    `refreshing_until` is a lease: the process holding it is refreshing; others wait.
    """

    __tablename__ = "channel_token"
    channel: str = Field(primary_key=True, max_length=20)
    access_token: str
    refresh_token: str
    expires_at: datetime | None = None
    refreshing_until: datetime | None = None
    updated_at: datetime


class OutboxMessage(SQLModel, table=True):
    """A message waiting to be sent, sent, or parked after too many failures."""

    __tablename__ = "outbox"
    __table_args__ = (
        Index("ix_outbox_due", "status", "next_attempt_at"),
        Index("ix_outbox_recipient", "channel", "recipient", "status", "id"),
        # Only the messages not sent yet: what a batch looks up (migration 0009).
        Index(
            "ix_outbox_unsent",
            "channel",
            "recipient",
            "id",
            postgresql_where=text("status IN ('pending', 'sending')"),
            sqlite_where=text("status IN ('pending', 'sending')"),
        ),
    )
    id: int | None = Field(default=None, primary_key=True)
    channel: str = Field(max_length=20)
    recipient: str = Field(max_length=100)
    conversation_id: int | None = Field(default=None, foreign_key="conversation.id")
    body: dict[str, Any] = Field(sa_column=Column(JSON, nullable=False))
    # pending | sending | sent | failed
    status: str = Field(default="pending", max_length=10)
    attempts: int = 0
    next_attempt_at: datetime
    claimed_until: datetime | None = None
    last_error: str | None = None
    platform_message_id: str | None = Field(default=None, max_length=120)
    created_at: datetime
    sent_at: datetime | None = None
