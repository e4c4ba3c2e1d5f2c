"""The shipped flows as an engine Library, without a database."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

from bot.config import Settings, load_settings
from bot.flowstore import configured_limits, configured_lists, read_flow_files, validate_set
from flows.engine import Library

ROOT = Path(__file__).resolve().parent.parent


def default_settings() -> Settings:
    return load_settings(ROOT / "config.toml", {})


def library(
    extra: dict[str, dict[str, Any]] | None = None, settings: Settings | None = None
) -> Library:
    settings = settings or default_settings()
    definitions = {**read_flow_files(), **(extra or {})}
    lists = configured_lists(settings)
    parsed = validate_set(definitions, lists)
    ids = {fid: i for i, fid in enumerate(sorted(parsed), 1)}
    return Library(
        current=ids,
        versions={ids[fid]: flow for fid, flow in parsed.items()},
        lists=lists,
        limits=configured_limits(settings),
        idle_reset=timedelta(minutes=settings.conversation.idle_reset_minutes),
    )
