"""The conversation engine: a pure function (state, event, now) → (state, effects).

It reads flow definitions and configured lists from a `Library` prepared by the caller,
never touches the network or the database, and returns what should happen: messages to
send and, at most, one named action to carry out. The caller carries the action out and
hands its outcome back as an `ActionDone` event (see bot/conversation.py).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any

from flows.model import Button, FlowDef, Step
from nlu.text import find_dossier_code, find_report_code, fold, has_letters_or_digits, nfc

MAIN_FLOW = "main"
MAX_STEPS_PER_EVENT = 50
# A button's alias inside a longer text picks the button only in a text this short, when
# the step reads free text itself (on_text); a longer text goes to on_text.
ALIAS_IN_TEXT_MAX_WORDS = 5

# Texts the engine itself says; the main flow's `messages` may override each one.
SYSTEM_TEXTS: dict[str, dict[str, str]] = {
    "unmatched": {
        "vi": "Xin lỗi, tôi chưa hiểu ý anh/chị. Anh/chị vui lòng bấm một nút bên dưới "
        "hoặc gõ số thứ tự của lựa chọn.",
        "en": "Sorry, I did not understand. Please tap a button below or type the number "
        "of your choice.",
    },
    "unsupported": {
        "vi": "Xin lỗi, tôi chỉ đọc được tin nhắn chữ. Anh/chị vui lòng gõ nội dung "
        "hoặc bấm một nút bên dưới.",
        "en": "Sorry, I can only read text. Please type or tap a button below.",
    },
    "too_long": {
        "vi": "Tin nhắn dài {length} ký tự, vượt quá giới hạn {limit} ký tự. Anh/chị vui "
        "lòng rút gọn và gửi lại.",
        "en": "Your message is {length} characters long; the limit is {limit}. Please "
        "shorten it and send it again.",
    },
    "empty": {
        "vi": "Anh/chị chưa nhập nội dung. Vui lòng gõ chữ hoặc bấm một nút bên dưới.",
        "en": "The message is empty. Please type something or tap a button below.",
    },
    "stale_button": {
        "vi": "Nút anh/chị vừa bấm thuộc câu hỏi trước. Xin mời trả lời câu hỏi hiện tại:",
        "en": "That button belongs to an earlier question. Please answer this one:",
    },
}


class FlowError(Exception):
    """A flow cannot continue (a definition the validator should have caught)."""


# ---------------------------------------------------------------- events


@dataclass(frozen=True)
class Text:
    """The citizen typed text (on Zalo, also a button tap: its payload as text)."""

    text: str


@dataclass(frozen=True)
class Tap:
    """The citizen tapped a button; `turn` says which prompt the button belonged to."""

    payload: str
    turn: int | None = None


@dataclass(frozen=True)
class Start:
    """The conversation was opened, maybe through a deep link carrying a payload."""

    payload: str | None = None


@dataclass(frozen=True)
class Unsupported:
    """A sticker, image, file… where text or a tap was expected."""

    kind: str


@dataclass(frozen=True)
class ActionDone:
    """The outcome of the action the engine asked for, with variables it sets."""

    outcome: str
    vars: Mapping[str, Any] = field(default_factory=dict)


Event = Text | Tap | Start | Unsupported | ActionDone

# ---------------------------------------------------------------- effects


@dataclass(frozen=True)
class OutButton:
    payload: str
    title: str


@dataclass(frozen=True)
class Send:
    """A message to the citizen; buttons belong to prompt number `turn`."""

    text: str
    buttons: tuple[OutButton, ...] = ()
    turn: int | None = None


@dataclass(frozen=True)
class Call:
    """Carry out the named action, then hand back its outcome as `ActionDone`."""

    action: str
    args: Mapping[str, str]


Effect = Send | Call


# ---------------------------------------------------------------- state


@dataclass(frozen=True)
class State:
    """Where a conversation stands. `version` pins the flow version it runs on."""

    lang: str = "vi"
    version: int | None = None
    step: str | None = None
    vars: Mapping[str, Any] = field(default_factory=dict)
    updated_at: datetime | None = None

    @property
    def idle(self) -> bool:
        return self.step is None


@dataclass(frozen=True)
class Result:
    state: State
    effects: tuple[Effect, ...]

    @property
    def call(self) -> Call | None:
        last = self.effects[-1] if self.effects else None
        return last if isinstance(last, Call) else None


@dataclass(frozen=True)
class Library:
    """What the engine may read: flows (current and pinned versions) and configured lists."""

    current: Mapping[str, int]  # flow id → version id new conversations start on
    versions: Mapping[int, FlowDef]  # version id → definition
    lists: Mapping[str, list[dict[str, Any]]]  # "scale", "criteria", …
    limits: Mapping[str, int]  # "max_text_chars", "comment_max_chars", …
    idle_reset: timedelta = timedelta(hours=2)
    # may_call's answers, by (which actions, version, step; None, None: the main menu).
    _reach: dict[tuple[Any, ...], bool] = field(default_factory=dict, compare=False, repr=False)

    def flow(self, version: int) -> FlowDef:
        try:
            return self.versions[version]
        except KeyError:
            raise FlowError(f"flow version {version} is not loaded") from None

    def current_version(self, flow_id: str) -> int:
        try:
            return self.current[flow_id]
        except KeyError:
            raise FlowError(f"no published flow {flow_id!r}") from None


def may_call(
    lib: Library,
    version: int | None,
    step: str | None,
    wanted: Callable[[str], bool],
    fresh: bool = False,
) -> bool:
    """Whether a message typed at this step may reach an action that `wanted` picks
    before the conversation waits again: through the step's buttons, its input, its
    free-text branch or a command; `fresh`: the main menu reads the message (a new or
    ended conversation, or one idle too long — see `is_fresh`). True when the flows
    cannot tell (a step that is not loaded)."""
    key = (
        (wanted, None, None)
        if fresh or version is None or step is None
        else (wanted, version, step)
    )
    known = lib._reach.get(key)
    if known is None:
        try:
            known = _may_call(lib, key[1], key[2], wanted)
        except (FlowError, KeyError):
            known = True
        lib._reach[key] = known
    return known


def _may_call(
    lib: Library, version: int | None, step: str | None, wanted: Callable[[str], bool]
) -> bool:
    """`may_call` at this step, or at the main menu (None)."""
    main_version = lib.current_version(MAIN_FLOW)
    main = lib.flow(main_version)
    if version is None or step is None:
        version, step = main_version, main.start
    flow = lib.flow(version)
    s = flow.steps[step]
    targets = [(main_version, c.goto) for c in main.commands]  # commands work anywhere
    targets += [(version, c.goto) for c in flow.commands]
    targets += [(version, b.goto) for b in s.buttons]
    targets += [(version, t) for t in (s.goto, s.on_text, s.input and s.input.goto) if t]
    seen: set[tuple[int, str]] = set()
    return any(_leads_to(lib, v, t, wanted, seen) for v, t in targets)


def is_fresh(lib: Library, state: State, now: datetime) -> bool:
    """Whether the main menu reads the next message (see `_Run.handle`)."""
    return state.idle or (state.updated_at is not None and now - state.updated_at > lib.idle_reset)


def _leads_to(
    lib: Library, version: int, target: str, wanted: Callable[[str], bool], seen: set[Any]
) -> bool:
    """Whether entering `target` (from a step of `version`) reaches a wanted action
    before a step that waits."""
    if target.startswith("flow:"):
        flow_id, _, step_id = target.removeprefix("flow:").partition("#")
        version = lib.current_version(flow_id)
        target = step_id or lib.flow(version).start
    if (version, target) in seen:
        return False
    seen.add((version, target))
    step = lib.flow(version).steps[target]
    if step.waits or step.end:
        return False
    if step.action:
        return wanted(step.action) or any(
            _leads_to(lib, version, t, wanted, seen) for t in step.outcomes.values()
        )
    return step.goto is not None and _leads_to(lib, version, step.goto, wanted, seen)


# ---------------------------------------------------------------- rendering

_PLACEHOLDER = re.compile(r"\{([a-z_][a-z0-9_]*(?:\.[a-z_][a-z0-9_]*)*)\}")


def localise(value: Any, lang: str) -> Any:
    """Pick the citizen's language out of a {"vi": …, "en": …} value."""
    if isinstance(value, Mapping) and "vi" in value:
        return value.get(lang) or value["vi"]
    return value


def render(text: Mapping[str, str] | str, values: Mapping[str, Any], lang: str) -> str:
    """Fill `{name}` / `{name.attr}` placeholders; unknown names become empty."""
    template = localise(text, lang)

    def fill(m: re.Match[str]) -> str:
        value: Any = values
        for part in m[1].split("."):
            value = value.get(part) if isinstance(value, Mapping) else None
            if value is None:
                return ""
        value = localise(value, lang)
        return "" if isinstance(value, Mapping | list) else str(value)

    return _PLACEHOLDER.sub(fill, template)


# ---------------------------------------------------------------- the engine


def _validate_input(kind: str, text: str) -> str | None:
    """The value to save, or None when the text does not pass."""
    if kind == "dossier_code":
        return find_dossier_code(text)
    if kind == "report_code":
        return find_report_code(text)
    return text.strip() if has_letters_or_digits(text) else None


class _Run:
    """One event's worth of engine work; collects effects while moving the state."""

    def __init__(self, lib: Library, state: State, now: datetime) -> None:
        self.lib = lib
        self.state = state
        self.vars: dict[str, Any] = dict(state.vars)
        self.now = now
        self.effects: list[Effect] = []

    # ---- helpers

    @property
    def lang(self) -> str:
        return self.state.lang

    def flow(self) -> FlowDef:
        if self.state.version is None:
            raise FlowError("conversation has no flow")
        return self.lib.flow(self.state.version)

    def step(self) -> Step:
        flow = self.flow()
        if self.state.step not in flow.steps:
            raise FlowError(f"flow {flow.id}: no step {self.state.step!r}")
        return flow.steps[self.state.step]

    def system_text(self, key: str, **values: Any) -> str:
        main = self.lib.versions.get(self.lib.current.get(MAIN_FLOW, -1))
        text = (main.messages.get(key) if main else None) or SYSTEM_TEXTS[key]
        return render(text, values, self.lang)

    def values(self) -> dict[str, Any]:
        """Variables visible to templates, including the loop item of a for_each step."""
        values = dict(self.vars)
        step = self.step()
        if step.for_each:
            items = self.lib.lists.get(step.for_each, [])
            i = int(self.vars.get("_i", 0))
            values.update(item=items[i], index=i + 1, count=len(items))
        return values

    def buttons(self, step: Step) -> list[tuple[Button | None, str, str, list[str]]]:
        """(button, payload, title, aliases) for every button the step offers."""
        out: list[tuple[Button | None, str, str, list[str]]] = []
        if step.choices:
            for level in self.lib.lists.get(step.choices, []):
                label = localise(level["label"], self.lang)
                out.append((None, str(level["value"]), label, [str(level["value"])]))
        for b in step.buttons:
            out.append((b, b.payload, render(b.title, self.vars, self.lang), b.match))
        return out

    def out_buttons(self, step: Step) -> tuple[OutButton, ...]:
        return tuple(OutButton(payload, title) for _, payload, title, _ in self.buttons(step))

    def send(self, text: str, step: Step | None = None) -> None:
        buttons = self.out_buttons(step) if step is not None else ()
        turn = int(self.vars.get("_turn", 0)) if buttons else None
        self.effects.append(Send(text, buttons, turn))

    def reprompt(self, notice: str, repeat_question: bool = False) -> Result:
        """Say `notice` and show the waiting step's buttons again (and maybe its question)."""
        step = self.step()
        if repeat_question and step.say:
            self.send(notice)
            self.send(render(step.say, self.values(), self.lang), step)
        else:
            self.send(notice, step)
        return self.result()

    def result(self) -> Result:
        state = replace(self.state, vars=self.vars, updated_at=self.now)
        return Result(state, tuple(self.effects))

    # ---- moving

    def goto(self, target: str) -> Result:
        """Enter `target` and run until a step waits, calls an action or ends."""
        for _ in range(MAX_STEPS_PER_EVENT):
            flow_id, _, step_id = (
                target.partition("#") if target.startswith("flow:") else ("", "", target)
            )
            if flow_id:
                flow_id = flow_id.removeprefix("flow:")
                version = self.lib.current_version(flow_id)
                flow = self.lib.flow(version)
                step_id = step_id or flow.start
                self.state = replace(self.state, version=version)
            flow = self.flow()
            if step_id not in flow.steps:
                raise FlowError(f"flow {flow.id}: transition to unknown step {step_id!r}")
            self.state = replace(self.state, step=step_id)
            self.vars.pop("_i", None)
            target_next = self.enter(flow.steps[step_id])
            if target_next is None:
                return self.result()
            target = target_next
        raise FlowError(f"more than {MAX_STEPS_PER_EVENT} steps without waiting (a loop?)")

    def enter(self, step: Step) -> str | None:
        """Say the step's text; return the next target, or None when it stops here."""
        if step.waits:
            self.vars["_turn"] = int(self.vars.get("_turn", 0)) + 1
        if step.say:
            self.send(render(step.say, self.values(), self.lang), step if step.waits else None)
        if step.waits:
            return None
        if step.action:
            args = {k: render(v, self.values(), self.lang) for k, v in step.args.items()}
            self.effects.append(Call(step.action, args))
            return None
        if step.end:
            self.state = replace(self.state, step=None)
            self.vars = {k: v for k, v in self.vars.items() if k == "_turn"}
            return None
        if step.goto:
            return step.goto
        raise FlowError(f"step {self.state.step!r} leads nowhere")

    def next_loop_item(self, step: Step) -> Result:
        """After a for_each answer: ask about the next item, or move on after the last."""
        items = self.lib.lists.get(step.for_each or "", [])
        i = int(self.vars.get("_i", 0)) + 1
        if i < len(items):
            self.vars["_i"] = i
            self.vars["_turn"] = int(self.vars.get("_turn", 0)) + 1
            if step.say:
                self.send(render(step.say, self.values(), self.lang), step)
            return self.result()
        if not step.goto:
            raise FlowError(f"step {self.state.step!r}: for_each without goto")
        return self.goto(step.goto)

    def choose(self, step: Step, button: Button | None, payload: str) -> Result:
        """A button or choice was picked."""
        if button is not None:
            return self.goto(button.goto)
        value: Any = int(payload) if payload.lstrip("-").isdigit() else payload
        if step.for_each:
            items = self.lib.lists.get(step.for_each, [])
            key = items[int(self.vars.get("_i", 0))]["key"]
            answers = dict(self.vars.get(step.save_as or "answers", {}))
            answers[key] = value
            self.vars[step.save_as or "answers"] = answers
            return self.next_loop_item(step)
        if step.save_as:
            self.vars[step.save_as] = value
        if not step.goto:
            raise FlowError(f"step {self.state.step!r}: choices without goto")
        return self.goto(step.goto)

    # ---- handling one event

    def handle(self, event: Event) -> Result:
        if isinstance(event, ActionDone):
            return self.action_done(event)
        if isinstance(event, Start):
            return self.start(event)
        fresh_menu = is_fresh(self.lib, self.state, self.now)
        if fresh_menu:
            # A new or finished conversation: the main menu reads this message.
            self.vars = {k: v for k, v in self.vars.items() if k == "_turn"}
            self.vars["_turn"] = int(self.vars.get("_turn", 0)) + 1
            version = self.lib.current_version(MAIN_FLOW)
            start = self.lib.flow(version).start
            self.state = replace(self.state, version=version, step=start)
            if isinstance(event, Tap):
                event = Text(event.payload)
            if isinstance(event, Text) and not self.command(event.text):
                return self.answer(event, fresh=True)
        if isinstance(event, Unsupported):
            return self.reprompt(self.system_text("unsupported"), repeat_question=fresh_menu)
        if isinstance(event, Text):
            command = self.command(event.text)
            if command is not None:
                return self.goto(command)
        return self.answer(event)

    def start(self, event: Start) -> Result:
        self.vars = {"_turn": self.vars.get("_turn", 0)}
        code = find_dossier_code(event.payload or "")
        if code:
            self.vars["dossier_code"] = code
            return self.goto("flow:rating#" + self.entry("rating", "dossier_code"))
        return self.goto(f"flow:{MAIN_FLOW}")

    def entry(self, flow_id: str, name: str) -> str:
        flow = self.lib.flow(self.lib.current_version(flow_id))
        return flow.entries.get(name, flow.start)

    def command(self, text: str) -> str | None:
        """The target of a command ("menu", "hủy", a link code…) typed anywhere, if any."""
        folded = fold(text)
        if not folded:
            return None
        main = self.lib.flow(self.lib.current_version(MAIN_FLOW))
        flows = [main] if self.state.version is None else [self.flow(), main]
        upper = nfc(text).strip().upper()
        for flow in flows:
            for cmd in flow.commands:
                if folded in cmd.folded or (cmd.regex and cmd.regex.fullmatch(upper)):
                    self.vars["input"] = text.strip()
                    return cmd.goto
        return None

    def action_done(self, event: ActionDone) -> Result:
        step = self.step()
        if not step.action:
            raise FlowError(f"step {self.state.step!r} did not call an action")
        self.vars.update(event.vars)
        target = step.outcomes.get(event.outcome)
        if target is None:
            raise FlowError(f"step {self.state.step!r}: outcome {event.outcome!r} not handled")
        return self.goto(target)

    def answer(self, event: Tap | Text, fresh: bool = False) -> Result:
        """The citizen answered the step that waits for them."""
        step = self.step()
        if not step.waits:
            raise FlowError(f"step {self.state.step!r} is not waiting for an answer")
        if isinstance(event, Tap):
            current = int(self.vars.get("_turn", 0))
            if event.turn is not None and event.turn != current:
                return self.reprompt(self.system_text("stale_button"), repeat_question=True)
            for button, payload, _, _ in self.buttons(step):
                if payload == event.payload:
                    return self.choose(step, button, payload)
            return self.reprompt(self.system_text("stale_button"), repeat_question=True)

        text = event.text
        limit = self.lib.limits.get("max_text_chars", 4000)
        if len(text) > limit:
            return self.reprompt(self.system_text("too_long", length=len(text), limit=limit))
        picked = self.match_text(step, text)
        if picked is not None:
            return self.choose(step, *picked)
        if step.input is not None:
            return self.free_text(step, text)
        if step.on_text and has_letters_or_digits(text):
            self.vars["input"] = text.strip()
            return self.goto(step.on_text)
        if fresh and step.say:
            # A first message that is not a menu choice: greet with the menu itself.
            self.send(render(step.say, self.values(), self.lang), step)
            return self.result()
        if not text.strip():
            return self.reprompt(self.system_text("empty"))
        unmatched = step.unmatched or self.flow().unmatched
        notice = render(unmatched, self.values(), self.lang) if unmatched else None
        return self.reprompt(notice or self.system_text("unmatched"))

    def match_text(self, step: Step, text: str) -> tuple[Button | None, str] | None:
        """Which button typed text stands for: its payload, title, an alias or its number."""
        options = self.buttons(step)
        if not options:
            return None
        for button, payload, _, _ in options:
            if text == payload:
                return button, payload
        folded = fold(text)
        if not folded:
            return None
        for button, payload, title, aliases in options:
            if folded == fold(title) or folded in (fold(a) for a in aliases):
                return button, payload
        if folded.isdigit() and 1 <= int(folded) <= len(options) and not step.choices:
            button, payload, _, _ = options[int(folded) - 1]
            return button, payload
        if step.input is not None:
            return None  # free text: only an exact payload, title, alias or number picks
        if step.on_text and len(folded.split()) > ALIAS_IN_TEXT_MAX_WORDS:
            return None  # a sentence ("tôi muốn phản ánh việc …") is for on_text to read
        words = f" {folded} "
        hits = {
            payload
            for button, payload, _, aliases in options
            for a in aliases
            if len(fold(a)) > 3 and f" {fold(a)} " in words
        }
        if len(hits) == 1:
            payload = hits.pop()
            button = next(b for b, p, _, _ in options if p == payload)
            return button, payload
        return None

    def free_text(self, step: Step, text: str) -> Result:
        assert step.input is not None
        spec = step.input
        limit = spec.max_chars
        if isinstance(limit, str):
            limit = self.lib.limits.get(limit)
        if limit is not None and len(text) > limit:
            return self.reprompt(self.system_text("too_long", length=len(text), limit=limit))
        if not text.strip():
            return self.reprompt(self.system_text("empty"))
        value = _validate_input(spec.validate_as, text)
        if value is None:
            invalid = spec.invalid or SYSTEM_TEXTS["unmatched"]
            shown = text.strip()
            shown = shown if len(shown) <= 60 else shown[:57] + "…"
            return self.reprompt(render(invalid, {**self.values(), "input": shown}, self.lang))
        self.vars[spec.save_as] = value
        target = spec.goto or step.goto
        if target is None:
            raise FlowError(f"step {self.state.step!r}: input without goto")
        return self.goto(target)


def handle(lib: Library, state: State, event: Event, now: datetime) -> Result:
    """Apply one event to a conversation: the new state and what to do."""
    return _Run(lib, state, now).handle(event)
