"""The flow validator names the step of every problem before a flow can be published."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from bot.flowstore import configured_lists, read_flow_files, validate_set
from flows.validate import FlowInvalid
from tests.flowlib import default_settings

FILES = read_flow_files()
LISTS = configured_lists(default_settings())


def problems_of(flow_id: str, change) -> list[str]:  # type: ignore[no-untyped-def]
    flows: dict[str, dict[str, Any]] = copy.deepcopy(FILES)
    change(flows[flow_id])
    with pytest.raises(FlowInvalid) as err:
        validate_set(flows, LISTS)
    return err.value.problems


def test_the_shipped_flows_are_valid() -> None:
    assert set(validate_set(FILES, LISTS)) == {"feedback", "main", "rating", "status"}


def test_unreachable_step() -> None:
    def change(f: dict[str, Any]) -> None:
        f["steps"]["orphan"] = {"say": {"vi": "x", "en": "x"}, "end": True}

    assert "step orphan: unreachable (no transition leads to it)" in problems_of("rating", change)


def test_dangling_transition() -> None:
    def change(f: dict[str, Any]) -> None:
        f["steps"]["thanks"]["end"] = False
        f["steps"]["thanks"]["goto"] = "nowhere"

    assert "step thanks goto: goes to unknown step 'nowhere'" in problems_of("rating", change)


def test_transition_to_an_unknown_flow() -> None:
    def change(f: dict[str, Any]) -> None:
        f["steps"]["menu"]["buttons"][1]["goto"] = "flow:complaints"

    found = problems_of("main", change)
    assert "step menu button 'feedback': goes to unknown flow 'complaints'" in found


def test_unknown_action_and_unhandled_outcome() -> None:
    def change(f: dict[str, Any]) -> None:
        f["steps"]["save"]["action"] = "send_fax"

    found = problems_of("rating", change)
    assert any(p.startswith("step save: unknown action 'send_fax'") for p in found)

    def drop_outcome(f: dict[str, Any]) -> None:
        del f["steps"]["lookup"]["outcomes"]["already_rated"]

    assert "step lookup: outcome 'already_rated' of find_dossier not handled" in problems_of(
        "rating", drop_outcome
    )


def test_missing_text_in_a_language() -> None:
    def change(f: dict[str, Any]) -> None:
        f["steps"]["thanks"]["say"] = {"vi": "Cảm ơn"}
        f["steps"]["offer_feedback"]["buttons"][0]["title"] = {"vi": "", "en": "Yes"}

    found = problems_of("rating", change)
    assert "step thanks: missing text in en" in found
    assert "step offer_feedback button 'feedback_yes': missing text in vi" in found


def test_more_than_five_buttons_is_zalos_limit() -> None:
    def change(f: dict[str, Any]) -> None:
        extra = {"payload": "x", "title": {"vi": "X", "en": "X"}, "goto": "help"}
        f["steps"]["menu"]["buttons"] = [
            *f["steps"]["menu"]["buttons"],
            extra,
            {**extra, "payload": "y"},
        ]

    found = problems_of("main", change)
    assert "step menu: 6 buttons, more than 5 (Zalo's limit)" in found


def test_button_payload_over_64_bytes_is_telegrams_limit() -> None:
    def change(f: dict[str, Any]) -> None:
        f["steps"]["comment"]["buttons"][0]["payload"] = "bỏ-qua-" * 10

    found = problems_of("rating", change)
    assert any(
        p.startswith("step comment: button") and "more than 64 (Telegram's limit)" in p
        for p in found
    )


def test_unknown_key_is_named_with_its_step() -> None:
    def change(f: dict[str, Any]) -> None:
        f["steps"]["thanks"]["sya"] = {"vi": "x", "en": "x"}

    assert "step thanks: sya: unknown key" in problems_of("rating", change)


def test_a_step_that_leads_nowhere() -> None:
    def change(f: dict[str, Any]) -> None:
        f["steps"]["thanks"]["end"] = False

    assert any("step thanks: leads nowhere" in p for p in problems_of("rating", change))
