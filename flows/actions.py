"""The fixed set of named actions a flow may call, with the outcomes each can return.

Flows name actions; the service carries them out (bot/actions.py) inside the same
transaction as the conversation state and the outgoing messages. Declaring the outcomes
here lets the validator check that a flow handles every one of them.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ActionSpec:
    description: str
    args: tuple[str, ...]
    outcomes: tuple[str, ...]


ACTIONS: dict[str, ActionSpec] = {
    "find_dossier": ActionSpec(
        "Look up a dossier by code and say whether it can be rated.",
        args=("code",),
        outcomes=("ready", "not_found", "not_completed", "already_rated"),
    ),
    "save_rating": ActionSpec(
        "Store the answers and the comment as the dossier's one rating.",
        args=(),
        outcomes=("saved", "unsatisfied", "already_rated"),
    ),
    "create_feedback": ActionSpec(
        "Store the citizen's text as feedback (phản ánh) and give a receipt code.",
        args=("text",),
        outcomes=("created", "need_text"),
    ),
    "link_official": ActionSpec(
        "Link this messenger account to the official a one-time code was issued for.",
        args=("code",),
        outcomes=("linked", "invalid"),
    ),
    "read_menu_text": ActionSpec(
        "Understand free text typed at the main menu (a dossier code, a greeting, …).",
        args=("text",),
        outcomes=("dossier_code", "greeting", "unknown"),
    ),
}

# Validators a free-text input may name.
VALIDATORS: tuple[str, ...] = ("text", "dossier_code")
