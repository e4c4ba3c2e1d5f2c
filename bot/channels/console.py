"""A conversation in the terminal (`python bot.py chat`), on the same path as the others.

Lines typed become inbox events; the bot's messages come back through the outbox and are
printed with numbered buttons. Typing a button's number taps it.
"""

from __future__ import annotations

import sys
from typing import TextIO

from bot.channels.base import Inbound, Message

NAME = "console"


class Console:
    name = NAME

    def __init__(self, out: TextIO = sys.stdout) -> None:
        self.out = out
        self.buttons: list[dict[str, str]] = []
        self.turn: int | None = None
        self._seq = 0

    async def send(self, message: Message) -> str | None:
        body = message.body
        print(f"\n🤖 {body['text']}", file=self.out)
        if body.get("buttons"):
            self.buttons, self.turn = body["buttons"], body.get("turn")
            for i, b in enumerate(self.buttons, 1):
                print(f"   [{i}] {b['title']}", file=self.out)
        self.out.flush()
        return None

    def inbound(self, user: str, line: str, session: str) -> Inbound:
        """A typed line: a button's number taps it, anything else is text."""
        self._seq += 1
        base = dict(channel=NAME, platform_id=f"{session}-{self._seq}", user_key=user)
        choice = line.strip()
        if choice.isdigit() and 1 <= int(choice) <= len(self.buttons):
            b = self.buttons[int(choice) - 1]
            return Inbound(
                kind="button", payload=b["payload"], text=b["title"], turn=self.turn, **base
            )
        return Inbound(kind="text", text=line, **base)
