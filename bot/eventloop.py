"""Which event loop `bot.py run` (and the benches beside it) run on."""

from __future__ import annotations

from typing import Any


def event_loop_factory(wanted: str) -> Any:
    """For asyncio.Runner: uvloop's event loop if wanted and installed (not on Windows),
    the same asyncio with sockets and callbacks handled in C; else asyncio's own (None)."""
    if wanted != "uvloop":
        return None
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop
