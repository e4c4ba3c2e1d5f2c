"""Where a citizen can rate a dossier: web chat, Telegram deep link, Zalo OA."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from bot.config import Settings


def deep_link_payload(code: str) -> str:
    """A dossier code as a Telegram /start payload (only A-Z a-z 0-9 _ - allowed there)."""
    return code.replace(".", "_")


def dossier_links(
    settings: Settings, code: str, channels: Mapping[str, Any] | None = None
) -> dict[str, str]:
    """The links to rate one dossier on each configured channel."""
    links = {"chat": f"{settings.public_url}/chat?start={code}"}
    telegram = (channels or {}).get("telegram")
    username = getattr(telegram, "username", "") or settings.telegram.username
    if settings.telegram.enabled and username:
        links["telegram"] = f"https://t.me/{username}?start={deep_link_payload(code)}"
    if settings.zalo.enabled and settings.zalo.oa_id:
        links["zalo"] = f"https://zalo.me/{settings.zalo.oa_id}"
    return links
