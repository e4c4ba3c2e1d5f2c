"""Check a flow before it can be published; every problem names the step it is in.

Catches: unreachable steps, transitions to nowhere, unknown actions or validators,
outcomes an action can return that the flow does not handle, missing texts in any
language, more than 5 buttons on a step (Zalo's limit) and button payloads over 64 bytes
(Telegram's limit for callback data).
"""

from __future__ import annotations

import re
from collections.abc import Collection, Iterable, Mapping
from typing import Any

from pydantic import ValidationError

from flows.actions import ACTIONS, VALIDATORS
from flows.engine import SYSTEM_TEXTS
from flows.model import LANGUAGES, FlowDef, Step

MAX_BUTTONS = 5  # Zalo OA template buttons
MAX_PAYLOAD_BYTES = 64  # Telegram callback_data


class FlowInvalid(ValueError):
    """The flow has problems; `problems` lists them, each naming its step."""

    def __init__(self, flow_id: str, problems: list[str]) -> None:
        self.flow_id = flow_id
        self.problems = problems
        super().__init__(
            f"flow {flow_id!r} is invalid:\n" + "\n".join(f"  - {p}" for p in problems)
        )


def parse_flow(data: Mapping[str, Any]) -> FlowDef:
    """Parse raw data into a flow; structural errors name the step they are in."""
    try:
        return FlowDef.parse(dict(data))
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            loc = [str(p) for p in err["loc"]]
            if loc[:1] == ["steps"] and len(loc) > 1:
                where = f"step {loc[1]}" + (": " + ".".join(loc[2:]) if loc[2:] else "")
            else:
                where = ".".join(loc) or "flow"
            msg = "unknown key" if err["type"] == "extra_forbidden" else err["msg"]
            problems.append(f"{where}: {msg}")
        raise FlowInvalid(str(data.get("id", "?")), problems) from None


def _missing_langs(text: Mapping[str, str] | None) -> list[str]:
    if text is None:
        return list(LANGUAGES)
    return [lang for lang in LANGUAGES if not str(text.get(lang, "")).strip()]


def _targets(step: Step) -> Iterable[tuple[str, str]]:
    """(what, target) for every transition out of a step."""
    for b in step.buttons:
        yield f"button {b.payload!r}", b.goto
    if step.input and step.input.goto:
        yield "input", step.input.goto
    for outcome, target in step.outcomes.items():
        yield f"outcome {outcome!r}", target
    if step.goto:
        yield "goto", step.goto
    if step.on_text:
        yield "on_text", step.on_text


def validate_flow(
    flow: FlowDef,
    known_flows: Mapping[str, FlowDef] | None = None,
    lists: Mapping[str, Collection[Any]] | None = None,
) -> None:
    """Raise FlowInvalid listing every problem; `known_flows` resolves flow:<id> targets."""
    known_flows = dict(known_flows or {})
    known_flows[flow.id] = flow
    lists = lists or {}
    problems: list[str] = []

    def check_text(where: str, text: Mapping[str, str] | None) -> None:
        missing = _missing_langs(text)
        if missing:
            problems.append(f"{where}: missing text in {', '.join(missing)}")

    def resolve(where: str, target: str) -> str | None:
        """The local step a target reaches, or None when it leaves this flow."""
        if target.startswith("flow:"):
            flow_id, _, step_id = target.removeprefix("flow:").partition("#")
            other = known_flows.get(flow_id)
            if other is None:
                problems.append(f"{where}: goes to unknown flow {flow_id!r}")
            elif step_id and step_id not in other.steps:
                problems.append(f"{where}: goes to unknown step {step_id!r} of flow {flow_id!r}")
            return step_id if flow_id == flow.id else None
        if target not in flow.steps:
            problems.append(f"{where}: goes to unknown step {target!r}")
            return None
        return target

    if flow.start not in flow.steps:
        problems.append(f"start: unknown step {flow.start!r}")
    check_text("flow name", flow.name)
    check_text("flow unmatched", flow.unmatched) if flow.unmatched else None
    for key, text in flow.messages.items():
        if key not in SYSTEM_TEXTS:
            problems.append(
                f"messages: unknown message {key!r} (allowed: {', '.join(SYSTEM_TEXTS)})"
            )
        check_text(f"messages.{key}", text)

    edges: dict[str, set[str]] = {name: set() for name in flow.steps}
    for name, step in flow.steps.items():
        where = f"step {name}"
        if step.waits and not step.say:
            problems.append(f"{where}: waits for an answer but says nothing")
        if step.say is not None:
            check_text(where, step.say)
        if step.unmatched is not None:
            check_text(f"{where} unmatched", step.unmatched)
        n_buttons = len(step.buttons)
        if step.choices:
            if step.choices not in lists:
                problems.append(f"{where}: choices from unknown list {step.choices!r}")
            else:
                n_buttons += len(lists[step.choices])
        if n_buttons > MAX_BUTTONS:
            problems.append(f"{where}: {n_buttons} buttons, more than {MAX_BUTTONS} (Zalo's limit)")
        payloads = [b.payload for b in step.buttons]
        for p in {p for p in payloads if payloads.count(p) > 1}:
            problems.append(f"{where}: payload {p!r} used by two buttons")
        for b in step.buttons:
            check_text(f"{where} button {b.payload!r}", b.title)
            size = len(b.payload.encode("utf-8"))
            if size > MAX_PAYLOAD_BYTES:
                problems.append(
                    f"{where}: button {b.payload[:20]!r}… payload is {size} bytes, more than "
                    f"{MAX_PAYLOAD_BYTES} (Telegram's limit)"
                )
        if step.for_each and step.for_each not in lists:
            problems.append(f"{where}: for_each over unknown list {step.for_each!r}")
        if step.for_each and not step.choices:
            problems.append(f"{where}: for_each needs choices to answer each item")
        if step.input:
            if step.input.validate_as not in VALIDATORS:
                problems.append(
                    f"{where}: unknown validator {step.input.validate_as!r} "
                    f"(allowed: {', '.join(VALIDATORS)})"
                )
            if step.input.invalid is not None:
                check_text(f"{where} input.invalid", step.input.invalid)
            if not (step.input.goto or step.goto):
                problems.append(f"{where}: input has nowhere to go (set input.goto or goto)")
        if step.action:
            spec = ACTIONS.get(step.action)
            if spec is None:
                problems.append(
                    f"{where}: unknown action {step.action!r} (allowed: {', '.join(ACTIONS)})"
                )
            else:
                for outcome in spec.outcomes:
                    if outcome not in step.outcomes:
                        problems.append(
                            f"{where}: outcome {outcome!r} of {step.action} not handled"
                        )
                for outcome in step.outcomes:
                    if outcome not in spec.outcomes:
                        problems.append(f"{where}: {step.action} never returns {outcome!r}")
                for arg in step.args:
                    if arg not in spec.args:
                        problems.append(f"{where}: {step.action} takes no argument {arg!r}")
            if step.waits:
                problems.append(f"{where}: an action step cannot also wait for an answer")
        elif step.outcomes:
            problems.append(f"{where}: 'outcomes' without an action")
        if step.choices and not (step.goto or step.for_each):
            problems.append(f"{where}: choices have nowhere to go (set goto)")
        if not (step.waits or step.action or step.end or step.goto):
            problems.append(f"{where}: leads nowhere (no buttons, input, action, goto or end)")
        for what, target in _targets(step):
            local = resolve(f"{where} {what}", target)
            if local is not None:
                edges[name].add(local)

    roots = {flow.start, *flow.entries.values()}
    for entry, target in flow.entries.items():
        if target not in flow.steps:
            problems.append(f"entry {entry!r}: unknown step {target!r}")
    for i, cmd in enumerate(flow.commands):
        if not (cmd.match or cmd.pattern):
            problems.append(f"command {i + 1}: no words or pattern to match")
        if cmd.pattern:
            try:
                re.compile(cmd.pattern)
            except re.error as exc:
                problems.append(f"command {i + 1}: pattern is not a regular expression ({exc})")
        local = resolve(f"command {i + 1}", cmd.goto)
        if local is not None:
            roots.add(local)
    for other in known_flows.values():
        if other.id == flow.id:
            continue
        targets = [t for step in other.steps.values() for _, t in _targets(step)]
        targets += [cmd.goto for cmd in other.commands]
        for target in targets:
            if target.startswith(f"flow:{flow.id}#"):
                roots.add(target.partition("#")[2])

    seen: set[str] = set()
    todo = [r for r in roots if r in flow.steps]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        todo.extend(edges[name] - seen)
    for name in flow.steps:
        if name not in seen:
            problems.append(f"step {name}: unreachable (no transition leads to it)")

    if problems:
        raise FlowInvalid(flow.id, problems)
