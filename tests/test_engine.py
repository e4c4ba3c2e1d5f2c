"""The flow engine as a pure function: no database, no network, a clock we hold."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

from bot.actions import is_external
from flows.engine import (
    ActionDone,
    Call,
    Send,
    Start,
    State,
    Tap,
    Text,
    Unsupported,
    handle,
    may_call,
)
from tests.flowlib import library

NOW = datetime(2026, 11, 23, 2, 0, tzinfo=UTC)
LIB = library()


def step(state: State, event, now: datetime = NOW):  # type: ignore[no-untyped-def]
    result = handle(LIB, state, event, now)
    return result.state, result


def sends(result) -> list[Send]:  # type: ignore[no-untyped-def]
    return [e for e in result.effects if isinstance(e, Send)]


def at_first_criterion() -> State:
    state, r = step(State(), Start("H42.15.01-261110-0001"))
    assert r.call == Call("find_dossier", {"code": "H42.15.01-261110-0001"})
    dossier = {"code": "H42.15.01-261110-0001", "procedure": "Cấp phép", "agency": "UBND"}
    state, r = step(state, ActionDone("ready", {"dossier": dossier, "criteria_count": 5}))
    assert sends(r)[-1].text.startswith("(1/5)")
    return state


def test_a_first_message_that_is_not_a_choice_is_answered_with_the_menu() -> None:
    state, r = step(State(), Text("alo"))
    # Free text at the menu goes to the menu's reader action first.
    assert r.call is not None and r.call.action == "read_menu_text"
    state, r = step(state, ActionDone("other"))
    # Then to Rasa, which finds nothing it knows.
    assert r.call is not None and r.call.action == "understand"
    state, r = step(state, ActionDone("unknown"))
    assert "chưa hiểu" in sends(r)[0].text
    assert sends(r)[0].buttons[0].title == "Đánh giá hồ sơ"


def test_typed_titles_without_diacritics_pick_the_button() -> None:
    state, r = step(State(), Text("danh gia ho so"))
    assert "nhập mã hồ sơ" in sends(r)[0].text
    state = at_first_criterion()
    state, r = step(state, Text("rat hai long"))
    assert sends(r)[-1].text.startswith("(2/5)")
    state, r = step(state, Text("4"))  # the level's value typed
    assert sends(r)[-1].text.startswith("(3/5)")
    assert state.vars["answers"] == {"time": 5, "visits": 4}


def test_a_button_from_an_earlier_question_is_not_taken_as_this_answer() -> None:
    state = at_first_criterion()
    old_turn = state.vars["_turn"]
    state, _ = step(state, Tap("5", old_turn))
    state, r = step(state, Tap("1", old_turn))  # tapped again on question 1's buttons
    assert "câu hỏi trước" in sends(r)[0].text
    assert sends(r)[-1].text.startswith("(2/5)")
    assert state.vars["answers"] == {"time": 5}


def test_a_sticker_gets_a_polite_answer_and_the_question_again() -> None:
    state = at_first_criterion()
    after, r = step(state, Unsupported("sticker"))
    assert "chỉ đọc được tin nhắn chữ" in sends(r)[0].text
    assert len(sends(r)[0].buttons) == 5
    assert after.step == state.step and after.vars == state.vars


def test_a_very_long_message_is_refused_with_its_length() -> None:
    state = at_first_criterion()
    _, r = step(state, Text("a" * 10_000))
    assert "10000 ký tự" in sends(r)[0].text and "4000" in sends(r)[0].text


def test_empty_and_emoji_only_text_where_a_code_is_expected() -> None:
    state, _ = step(State(), Tap("rate"))
    _, r = step(state, Text("   "))
    assert "chưa nhập nội dung" in sends(r)[0].text
    _, r = step(state, Text("🙏🙏"))
    assert "chưa đúng dạng mã hồ sơ" in sends(r)[0].text


def test_menu_command_works_anywhere_and_drops_the_half_done_rating() -> None:
    state = at_first_criterion()
    state, r = step(state, Text("Menu"))
    assert "Xin chào" in sends(r)[0].text
    assert "answers" not in state.vars or state.vars["answers"] == {}
    state, r = step(state, Text("huy"))
    assert "Xin chào" in sends(r)[0].text


def test_a_comment_that_starts_like_skip_is_kept_as_a_comment() -> None:
    state = at_first_criterion()
    for _ in range(5):
        state, r = step(state, Tap("4", state.vars["_turn"]))
    assert "góp ý" in sends(r)[-1].text
    state, r = step(state, Text("không có chỗ để xe, phải gửi xe ngoài"))
    assert r.call is not None and r.call.action == "save_rating"
    assert state.vars["comment"] == "không có chỗ để xe, phải gửi xe ngoài"


def test_a_conversation_idle_for_hours_starts_again_at_the_menu() -> None:
    state = at_first_criterion()
    state = replace(state, updated_at=NOW)
    later = NOW + timedelta(hours=5)
    state, r = step(state, Text("xin chao"), later)
    assert r.call is not None and r.call.action == "read_menu_text"


def test_english_conversation() -> None:
    _, r = step(State(lang="en"), Start())
    assert sends(r)[0].text.startswith("Hello!")
    assert [b.title for b in sends(r)[0].buttons] == [
        "Rate a dossier",
        "Send feedback",
        "Check a report",
        "Help",
    ]


def test_which_steps_may_lead_a_typed_message_to_rasa() -> None:
    """What the bot asks Rasa ahead of a batch for: never for a scale tap, always where
    free text is read, and never wrong where the engine itself goes to Rasa."""
    criterion = at_first_criterion()
    rating, feedback = LIB.current["rating"], LIB.current["feedback"]
    assert not may_call(LIB, rating, criterion.step, is_external)
    assert may_call(LIB, rating, criterion.step, is_external, fresh=True)  # idle too long
    assert may_call(LIB, None, None, is_external)  # the main menu reads free text
    assert may_call(LIB, LIB.current["main"], "menu", is_external)  # (after read_menu_text)
    assert may_call(LIB, feedback, "ask_text", is_external)
    assert may_call(LIB, 999, "ask_text", is_external)  # a version not loaded: unsure
    texts = [
        "menu",
        "1",
        "xin chao, toi muon phan anh viec cap so do cham",
        "H42.15.01-261110-0001",
    ]
    reached: set[tuple[str, str]] = set()
    for version, flow in LIB.versions.items():
        for name, s in flow.steps.items():
            if not s.waits:
                continue
            state = State(version=version, step=name, vars={"_turn": 1}, updated_at=NOW)
            for text in texts + [b.payload for b in s.buttons]:
                call = handle(LIB, state, Text(text), NOW).call
                if call is not None and is_external(call.action):
                    reached.add((flow.id, name))
                    assert may_call(LIB, version, name, is_external), (flow.id, name, text)
    assert ("feedback", "ask_text") in reached
