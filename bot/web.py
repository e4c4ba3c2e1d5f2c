"""Small pieces shared by the HTTP handlers."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from storage import jsonio


def json_error(status: int, message: str, field: str | None = None) -> web.Response:
    """A JSON error: {"error": message, "field": the part of the request at fault}."""
    body: dict[str, Any] = {"error": message}
    if field:
        body["field"] = field
    return web.json_response(body, status=status)


def json_ok(body: Any = None, status: int = 200) -> web.Response:
    """A JSON answer (default {"ok": true}), written with the fast JSON encoder."""
    return web.Response(
        body=jsonio.dumpb({"ok": True} if body is None else body),
        status=status,
        content_type="application/json",
    )
