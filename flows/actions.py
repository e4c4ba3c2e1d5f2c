"""The fixed set of named actions a flow may call, with the outcomes each can return.

Flows name actions; the service carries them out (bot/actions.py) inside the same
transaction as the conversation state and the outgoing messages. Declaring the outcomes
here lets the validator check that a flow handles every one of them.

An `external` action asks a service outside the database (Rasa) and touches no table: it
never runs inside a transaction, so a slow Rasa never holds one. An event that reaches it
is set aside, the call is made, and the event is processed again with the outcome (see
bot/conversation.py); it must have an outcome for "could not ask" (`unavailable`). A
`pure` action reads only its arguments (no table, no network): it runs wherever it is
needed. A `reads_only` action reads tables and writes none: it needs no savepoint. A
`writes_later` action hands its writes to the batch, which can make them with its last
statement (bot/conversation.py): it starts without a transaction.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ActionSpec:
    description: str
    args: tuple[str, ...]
    outcomes: tuple[str, ...]
    external: bool = False
    pure: bool = False
    reads_only: bool = False
    writes_later: bool = False


ACTIONS: dict[str, ActionSpec] = {
    "find_dossier": ActionSpec(
        "Look up a dossier by code and say whether it can be rated.",
        args=("code",),
        outcomes=("ready", "not_found", "not_completed", "already_rated"),
        reads_only=True,
    ),
    "watch_dossier": ActionSpec(
        "Remember that this citizen waits for the dossier's result (to invite them to rate).",
        args=(),
        outcomes=("watching",),
    ),
    "save_rating": ActionSpec(
        "Store the answers and the comment as the dossier's one rating.",
        args=(),
        outcomes=("saved", "unsatisfied", "already_rated"),
        writes_later=True,
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
        "Read free text typed at the main menu: a dossier code, a greeting, or other text.",
        args=("text",),
        outcomes=("dossier_code", "greeting", "other"),
        pure=True,
    ),
    "understand": ActionSpec(
        "Ask Rasa what free text at the main menu wants: rate, complain (with the complaint "
        "itself, or not yet), check a report, help, a formal complaint, thanks, a greeting.",
        args=("text",),
        outcomes=(
            "rate",
            "complaint",
            "complain",
            "ask_status",
            "help",
            "formal",
            "thanks",
            "greet",
            "unknown",
            "unavailable",
        ),
        external=True,
    ),
    "classify_complaint": ActionSpec(
        "Ask Rasa the field and category of a complaint; sure when the field confidence "
        "reaches [nlu] threshold.",
        args=("text",),
        outcomes=("sure", "unsure", "formal", "unavailable"),
        external=True,
    ),
    "link_dossier": ActionSpec(
        "Attach the dossier a complaint is about (any state), by its code.",
        args=("code",),
        outcomes=("found", "none", "not_found"),
        reads_only=True,
    ),
    "find_commune": ActionSpec(
        "Find the commune or ward a complaint concerns, by the name the citizen typed.",
        args=("name",),
        outcomes=("found", "not_found"),
        reads_only=True,
    ),
    "create_report": ActionSpec(
        "Store the complaint with its field, category and reading, route it to the "
        "competent agency and give a receipt code.",
        args=(),
        outcomes=("created",),
    ),
    "list_reports": ActionSpec(
        "List this citizen's own reports, newest first.",
        args=(),
        outcomes=("some", "none"),
        reads_only=True,
    ),
    "find_report": ActionSpec(
        "Look up one of this citizen's own reports by its receipt code.",
        args=("code",),
        outcomes=("found", "not_found"),
        reads_only=True,
    ),
}

# Validators a free-text input may name.
VALIDATORS: tuple[str, ...] = ("text", "dossier_code", "report_code")
