"""Small pieces shared by the HTTP handlers."""

from __future__ import annotations

from typing import Any

from aiohttp import web


def json_error(status: int, message: str, field: str | None = None) -> web.Response:
    """A JSON error: {"error": message, "field": the part of the request at fault}."""
    body: dict[str, Any] = {"error": message}
    if field:
        body["field"] = field
    return web.json_response(body, status=status)
