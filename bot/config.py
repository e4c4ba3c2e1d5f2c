"""Settings: read `config.toml`, apply `HAILONG_<SECTION>_<KEY>` overrides, validate once.

A wrong value raises `ConfigError` whose message names the key, where the value came
from and what is allowed; `bot.py` prints it and exits.
"""

from __future__ import annotations

import json
import os
import re
import tomllib
from datetime import date
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CONFIG = ROOT / "config.toml"
ENV_PREFIX = "HAILONG_"
# Environment variables with the prefix that are not settings: the config file's path and
# the test suite's own (HAILONG_TEST_PG, HAILONG_TEST_REQUIRE_PG).
NOT_SETTINGS = ("HAILONG_CONFIG", "HAILONG_TEST_")


class ConfigError(Exception):
    """A setting is missing, unknown or has a value that is not allowed."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ServerSettings(_Section):
    host: str = "127.0.0.1"
    port: Annotated[int, Field(ge=1, le=65535)] = 8080
    public_url: str = ""
    event_loop: Literal["uvloop", "asyncio"] = "uvloop"

    @field_validator("public_url")
    @classmethod
    def _url(cls, v: str) -> str:
        if v and not v.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https:// (or be empty)")
        return v.rstrip("/")


class StorageSettings(_Section):
    url: str = "sqlite:///data/hailong.db"
    pool_size: Annotated[int, Field(ge=1, le=200)] = 10

    @field_validator("url")
    @classmethod
    def _scheme(cls, v: str) -> str:
        allowed = ("sqlite", "postgresql", "postgres")
        scheme = v.split(":", 1)[0].split("+", 1)[0]
        if "://" not in v or scheme not in allowed:
            raise ValueError(
                "must be a database URL: sqlite:///path/to/file.db or "
                "postgresql://user@host:port/dbname"
            )
        return v


class ApiSettings(_Section):
    token: str = ""

    @field_validator("token")
    @classmethod
    def _long_enough(cls, v: str) -> str:
        if v and len(v) < 16:
            raise ValueError("must be empty (API off) or at least 16 characters")
        return v


class ChatSettings(_Section):
    enabled: bool = True
    default_language: Literal["vi", "en"] = "vi"


def _base_url(v: str) -> str:
    if not v.startswith(("http://", "https://")):
        raise ValueError("must be an http(s):// URL")
    return v.rstrip("/")


class TelegramSettings(_Section):
    token: str = ""
    username: str = ""
    secret_token: str = ""
    webhook_url: str = ""
    api_base: str = "https://api.telegram.org"
    rate_per_second: Annotated[float, Field(gt=0, le=1_000_000)] = 30
    rate_per_chat_per_second: Annotated[float, Field(gt=0, le=1000)] = 1

    @field_validator("token")
    @classmethod
    def _token(cls, v: str) -> str:
        if v and not re.fullmatch(r"\d+:[A-Za-z0-9_-]{20,}", v):
            raise ValueError("must look like 123456789:AAE… (from @BotFather), or be empty (off)")
        return v

    @field_validator("secret_token")
    @classmethod
    def _secret(cls, v: str) -> str:
        if v and not re.fullmatch(r"[A-Za-z0-9_-]{16,256}", v):
            raise ValueError("must be 16–256 characters of A-Z a-z 0-9 _ -")
        return v

    @field_validator("api_base")
    @classmethod
    def _api(cls, v: str) -> str:
        return _base_url(v)

    @model_validator(mode="after")
    def _webhook_needs_secret(self) -> TelegramSettings:
        if self.webhook_url and not self.secret_token:
            raise ValueError(
                "webhook_url needs secret_token (Telegram sends it back to prove it is Telegram)"
            )
        if self.webhook_url and not self.webhook_url.startswith("https://"):
            raise ValueError("webhook_url must be https:// (Telegram calls only HTTPS webhooks)")
        return self

    @property
    def enabled(self) -> bool:
        return bool(self.token)


class ZaloSettings(_Section):
    app_id: str = ""
    app_secret: str = ""
    oa_secret_key: str = ""
    oa_id: str = ""
    access_token: str = ""
    refresh_token: str = ""
    api_base: str = "https://openapi.zalo.me"
    oauth_base: str = "https://oauth.zaloapp.com"
    rate_per_minute: Annotated[int, Field(ge=1, le=100_000_000)] = 4000

    @field_validator("api_base", "oauth_base")
    @classmethod
    def _api(cls, v: str) -> str:
        return _base_url(v)

    @model_validator(mode="after")
    def _complete(self) -> ZaloSettings:
        if self.app_id:
            missing = [k for k in ("app_secret", "oa_secret_key") if not getattr(self, k)]
            if missing:
                raise ValueError(f"app_id is set, so {' and '.join(missing)} must be set too")
            if not (self.access_token or self.refresh_token):
                raise ValueError("app_id is set: give the first access_token / refresh_token pair")
        return self

    @property
    def enabled(self) -> bool:
        return bool(self.app_id)


class ZaloBotSettings(_Section):
    token: str = ""
    secret_token: str = ""
    webhook_url: str = ""
    api_base: str = "https://bot-api.zaloplatforms.com"

    @field_validator("api_base")
    @classmethod
    def _api(cls, v: str) -> str:
        return _base_url(v)

    @model_validator(mode="after")
    def _webhook_needs_secret(self) -> ZaloBotSettings:
        if self.token and not self.secret_token:
            raise ValueError("token is set: secret_token (8–256 characters) must be set too")
        if self.secret_token and not 8 <= len(self.secret_token) <= 256:
            raise ValueError("secret_token must be 8–256 characters")
        return self

    @property
    def enabled(self) -> bool:
        return bool(self.token)


class ConversationSettings(_Section):
    max_text_chars: Annotated[int, Field(ge=100, le=100_000)] = 4000
    idle_reset_minutes: Annotated[int, Field(ge=1)] = 120


class ScaleLevel(_Section):
    value: int
    vi: Annotated[str, Field(min_length=1)]
    en: Annotated[str, Field(min_length=1)]
    counts_as: Literal["satisfied", "neutral", "unsatisfied"]


class Criterion(_Section):
    key: Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]{0,31}$")]
    vi: Annotated[str, Field(min_length=1)]
    en: Annotated[str, Field(min_length=1)]


class RatingSettings(_Section):
    scale: Annotated[list[ScaleLevel], Field(min_length=2, max_length=5)]
    criteria: Annotated[list[Criterion], Field(min_length=1, max_length=20)]
    comment_max_chars: Annotated[int, Field(ge=10, le=10_000)] = 2000

    @model_validator(mode="after")
    def _consistent(self) -> RatingSettings:
        values = [level.value for level in self.scale]
        if values != sorted(set(values)):
            raise ValueError("scale: values must be distinct and listed lowest first")
        if not any(level.counts_as == "satisfied" for level in self.scale):
            raise ValueError('scale: at least one level must count as "satisfied"')
        keys = [c.key for c in self.criteria]
        if len(keys) != len(set(keys)):
            raise ValueError("criteria: keys must be distinct")
        return self

    def level(self, value: int) -> ScaleLevel | None:
        return next((lv for lv in self.scale if lv.value == value), None)


class OutboxSettings(_Section):
    max_attempts: Annotated[int, Field(ge=1, le=100)] = 8
    backoff_base_seconds: Annotated[float, Field(gt=0)] = 1.0
    backoff_max_seconds: Annotated[float, Field(gt=0)] = 300.0


class WorkdaySettings(_Section):
    extra_days_off: list[date] = []
    makeup_working_days: list[date] = []


class DeadlineOverride(_Section):
    """Other deadlines for one field and/or category (at least one of the two days)."""

    field: str | None = None
    category: Literal["procedure", "conduct"] | None = None
    answer_days: Annotated[int, Field(ge=1, le=365)] | None = None
    forward_days: Annotated[int, Field(ge=1, le=365)] | None = None

    @model_validator(mode="after")
    def _some_days(self) -> DeadlineOverride:
        if self.answer_days is None and self.forward_days is None:
            raise ValueError("an override needs answer_days or forward_days")
        return self


class DeadlineSettings(_Section):
    """Deadlines of feedback, in working days (DOMAIN.md: answer ≤ 15, forward ≤ 5)."""

    answer_days: Annotated[int, Field(ge=1, le=365)] = 15
    forward_days: Annotated[int, Field(ge=1, le=365)] = 5
    overrides: list[DeadlineOverride] = []
    # Remind the handling official when this share of the answer period has passed …
    remind_fractions: list[Annotated[float, Field(gt=0, lt=1)]] = [0.5]
    # … and this many working days before the deadline (0: no such reminder).
    remind_days_before: Annotated[int, Field(ge=0, le=30)] = 1
    # While a report is late, the citizen hears how it stands every this many days.
    update_every_days: Annotated[int, Field(ge=1, le=90)] = 7

    def answer_days_for(self, field: str | None, category: str | None) -> int:
        """Working days to answer: the most specific override, else the default."""
        return self._days_for("answer_days", field, category)

    def forward_days_for(self, field: str | None, category: str | None) -> int:
        """Working days to take a report up or pass it on to the competent agency."""
        return self._days_for("forward_days", field, category)

    def _days_for(self, which: str, field: str | None, category: str | None) -> int:
        """The most specific override setting `which` (field and category, then one of
        them), else the default."""
        best: tuple[int, int] | None = None
        for o in self.overrides:
            days = getattr(o, which)
            if days is None:
                continue
            if (o.field is None or o.field == field) and (
                o.category is None or o.category == category
            ):
                rank = (o.field is not None) + (o.category is not None)
                if best is None or rank > best[0]:
                    best = (rank, days)
        return best[1] if best else int(getattr(self, which))


class LadderLevel(_Section):
    # handling_official: the official handling it (or the officers of the handling unit)
    # unit_head: the head of the handling unit
    # agency_head: the head of the competent agency above the unit
    # province: the head of the provincial people's committee's office
    role: Literal["handling_official", "unit_head", "agency_head", "province"]
    # Working days this level gets, once the report reaches it, before it climbs again.
    # The first level has the answer deadline of [deadlines] instead.
    grace_days: Annotated[int, Field(ge=1, le=365)] | None = None


class LadderSettings(_Section):
    levels: Annotated[list[LadderLevel], Field(min_length=1, max_length=10)] = [
        LadderLevel(role="handling_official"),
        LadderLevel(role="unit_head", grace_days=5),
        LadderLevel(role="agency_head", grace_days=5),
        LadderLevel(role="province", grace_days=5),
    ]
    # How often every process looks for due work (escalations, reminders, digests).
    tick_seconds: Annotated[float, Field(gt=0, le=3600)] = 30.0
    # Weekly digest to heads: ISO weekday (1 = Monday) and local hour.
    digest_weekday: Annotated[int, Field(ge=1, le=7)] = 1
    digest_hour: Annotated[int, Field(ge=0, le=23)] = 8

    @model_validator(mode="after")
    def _grace(self) -> LadderSettings:
        if self.levels[0].grace_days is not None:
            raise ValueError(
                "levels: the first level's time is [deadlines] answer_days; remove its grace_days"
            )
        missing = [lv.role for lv in self.levels[1:] if lv.grace_days is None]
        if missing:
            raise ValueError(f"levels: grace_days missing for {', '.join(missing)}")
        return self


class DemoSettings(_Section):
    autoload: bool = True
    seed: int = 2025


class NluSettings(_Section):
    """The Rasa server the bot asks to classify free text (POST /model/parse)."""

    # Start (and train, if no model exists) a Rasa server with the bot and stop it on exit.
    autostart: bool = True
    # Where the Rasa server listens; with autostart it is started on this loopback port.
    url: str = "http://127.0.0.1:5005"
    # Rasa's --auth-token; empty with autostart = a random one for each run.
    token: str = ""
    # The model the server loads (relative to the config file); trained when missing.
    model: str = "nlu/models/hailong-nlu.tar.gz"
    # The Rasa pipeline used by `nlu train` (relative to the config file).
    config: str = "nlu/config.yml"
    # Give up on one classification after this long: the citizen picks the field instead.
    timeout_seconds: Annotated[float, Field(gt=0, le=60)] = 3.0
    # At most this many classifications in flight at once (Rasa parses one at a time).
    max_concurrency: Annotated[int, Field(ge=1, le=1000)] = 4
    # After this many failures in a row, stop asking Rasa for `breaker_reset_seconds`.
    breaker_failures: Annotated[int, Field(ge=1, le=1000)] = 3
    breaker_reset_seconds: Annotated[float, Field(gt=0, le=3600)] = 30.0
    # Below this field confidence the citizen picks the field from buttons.
    threshold: Annotated[float, Field(ge=0, le=1)] = 0.7
    # Seconds to wait for a started server to answer /status with its model loaded.
    start_timeout_seconds: Annotated[float, Field(gt=0, le=3600)] = 180.0
    # How often reports stored while Rasa was unavailable are classified again.
    backfill_every_seconds: Annotated[float, Field(gt=0, le=86_400)] = 30.0

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        return _base_url(v)

    @model_validator(mode="after")
    def _loopback_when_started(self) -> NluSettings:
        host = self.url.split("://", 1)[1].split("/", 1)[0].rsplit(":", 1)[0]
        if self.autostart and host not in ("127.0.0.1", "localhost", "[::1]"):
            raise ValueError(
                "autostart starts Rasa on this machine's loopback: url must be "
                "http://127.0.0.1:<port> (or set autostart = false for a remote Rasa)"
            )
        return self

    @property
    def port(self) -> int:
        hostport = self.url.split("://", 1)[1].split("/", 1)[0]
        _, _, port = hostport.rpartition(":")
        return int(port) if port.isdigit() else (443 if self.url.startswith("https") else 80)


class LogSettings(_Section):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    format: Literal["text", "json"] = "text"


class Settings(_Section):
    server: ServerSettings = ServerSettings()
    storage: StorageSettings = StorageSettings()
    api: ApiSettings = ApiSettings()
    chat: ChatSettings = ChatSettings()
    telegram: TelegramSettings = TelegramSettings()
    zalo: ZaloSettings = ZaloSettings()
    zalo_bot: ZaloBotSettings = ZaloBotSettings()
    conversation: ConversationSettings = ConversationSettings()
    rating: RatingSettings
    outbox: OutboxSettings = OutboxSettings()
    workdays: WorkdaySettings = WorkdaySettings()
    nlu: NluSettings = NluSettings()
    deadlines: DeadlineSettings = DeadlineSettings()
    ladder: LadderSettings = LadderSettings()
    demo: DemoSettings = DemoSettings()
    log: LogSettings = LogSettings()

    # Where the file was read from; relative paths in settings are relative to it.
    base_dir: Path = ROOT

    @property
    def public_url(self) -> str:
        return self.server.public_url or f"http://{self.server.host}:{self.server.port}"


def _sections() -> dict[str, type[BaseModel]]:
    out: dict[str, type[BaseModel]] = {}
    for name, field in Settings.model_fields.items():
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            out[name] = ann
    return out


def _env_overrides(environ: dict[str, str]) -> tuple[dict[str, dict[str, Any]], dict[str, str]]:
    """Map HAILONG_<SECTION>_<KEY> variables onto (section, key) values.

    Returns the overrides and, for error messages, where each (section.key) came from.
    """
    sections = _sections()
    overrides: dict[str, dict[str, Any]] = {}
    origin: dict[str, str] = {}
    for var, raw in environ.items():
        if not var.startswith(ENV_PREFIX) or var.startswith(NOT_SETTINGS):
            continue
        rest = var[len(ENV_PREFIX) :].lower()
        section = next(
            (s for s in sorted(sections, key=len, reverse=True) if rest.startswith(s + "_")), None
        )
        if section is None:
            raise ConfigError(
                f"{var}: unknown section; allowed: "
                + ", ".join(f"HAILONG_{s.upper()}_<KEY>" for s in sections)
            )
        key = rest[len(section) + 1 :]
        model = sections[section]
        if key not in model.model_fields:
            raise ConfigError(
                f"{var}: [{section}] has no key {key!r}; allowed: " + ", ".join(model.model_fields)
            )
        value: Any = raw
        if raw.startswith(("[", "{")):
            try:
                value = json.loads(raw)
            except json.JSONDecodeError as exc:
                raise ConfigError(f"{var}: not valid JSON ({exc.msg})") from exc
        overrides.setdefault(section, {})[key] = value
        origin[f"{section}.{key}"] = f"environment variable {var}"
    return overrides, origin


def _format_errors(exc: ValidationError, source: str, origin: dict[str, str]) -> str:
    lines = []
    for err in exc.errors():
        loc = [str(p) for p in err["loc"]]
        key = ".".join(loc) or "(top level)"
        where = origin.get(".".join(loc[:2]), source)
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown setting"
        elif err["type"] == "missing":
            msg = "required setting is missing"
        shown = "" if err["type"] in ("missing", "extra_forbidden") else f" = {err['input']!r}"
        lines.append(f"  {key}{shown} ({where}): {msg}")
    return "invalid configuration:\n" + "\n".join(lines)


def load_settings(
    path: Path | str | None = None, environ: dict[str, str] | None = None
) -> Settings:
    """Read the TOML file, apply environment overrides and validate everything once."""
    environ = dict(os.environ if environ is None else environ)
    path = Path(path or environ.get("HAILONG_CONFIG") or DEFAULT_CONFIG)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise ConfigError(f"configuration file not found: {path}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from exc
    overrides, origin = _env_overrides(environ)
    for section, values in overrides.items():
        current = data.setdefault(section, {})
        if not isinstance(current, dict):
            raise ConfigError(f"{path}: [{section}] must be a table")
        current.update(values)
    data["base_dir"] = path.resolve().parent
    try:
        return Settings.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_format_errors(exc, str(path), origin)) from None
