"""The shape of a flow definition (the data admins edit).

A flow is a set of named steps. A step may:
- ``say`` a text (Vietnamese and English), templated with ``{variable}``;
- offer ``buttons`` (each with a payload, a title and where it goes) or ``choices``
  built from a configured list (the rating scale);
- accept free text through ``input`` (validated, saved in a variable);
- repeat itself ``for_each`` item of a configured list (the rating criteria);
- call a named ``action`` and branch on its ``outcomes``;
- ``goto`` another step (``step``, ``flow:<id>`` or ``flow:<id>#<step>``) or ``end``.

A step that offers buttons, choices or input waits for the citizen; any other step
runs straight on.
"""

from __future__ import annotations

import re
from functools import cached_property
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field

from nlu.text import fold

LANGUAGES = ("vi", "en")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# A text in every language, e.g. {"vi": "Xin chào", "en": "Hello"}.
Text = dict[str, str]


class Button(_Strict):
    payload: Annotated[str, Field(min_length=1)]
    title: Text
    goto: str
    # Words a citizen may type instead of tapping (compared without diacritics).
    match: list[str] = []


class Input(_Strict):
    # Name of a validator: "text" (any non-empty text) or "dossier_code".
    validate_as: Annotated[str, Field(alias="validate")] = "text"
    save_as: Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]*$")]
    # Name of a setting holding the maximum length, or a number.
    max_chars: int | str | None = None
    # Said when the text does not pass validation; {input} is what was typed.
    invalid: Text | None = None
    goto: str | None = None


class Step(_Strict):
    say: Text | None = None
    buttons: list[Button] = []
    choices: str | None = None
    for_each: str | None = None
    save_as: str | None = None
    input: Input | None = None
    action: str | None = None
    args: dict[str, str] = {}
    outcomes: dict[str, str] = {}
    goto: str | None = None
    end: bool = False
    # Said (with the same buttons) when a reply matches nothing; a flow default exists.
    unmatched: Text | None = None
    # Free text that matches no button runs this action-step instead of `unmatched`.
    on_text: str | None = None

    @property
    def waits(self) -> bool:
        return bool(self.buttons or self.choices or self.input)


class Command(_Strict):
    """Words that work anywhere in a conversation, e.g. "menu" → back to the main menu.

    `match` lists whole messages (compared without diacritics); `pattern` is a regular
    expression the whole message (upper-cased) must match, e.g. an official's link code.
    The message is kept in the variable `input`.
    """

    match: list[str] = []
    pattern: str | None = None
    goto: str

    @cached_property
    def folded(self) -> frozenset[str]:
        """`match`, without diacritics (what a typed message is compared with)."""
        return frozenset(fold(m) for m in self.match)

    @cached_property
    def regex(self) -> re.Pattern[str] | None:
        return re.compile(self.pattern) if self.pattern else None


class FlowDef(_Strict):
    id: Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]*$")]
    name: Text
    start: str
    # Named ways in from outside (a deep link with a dossier code, the menu…).
    entries: dict[str, str] = {}
    steps: dict[str, Step]
    commands: list[Command] = []
    # Said when a reply matches no button of the step waiting for it.
    unmatched: Text | None = None
    # Texts the engine says itself (unmatched, unsupported, too_long, empty,
    # stale_button); only the main flow's are used.
    messages: dict[str, Text] = {}

    @classmethod
    def parse(cls, data: dict[str, Any]) -> FlowDef:
        return cls.model_validate(data)
