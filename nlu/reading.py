"""What one Rasa answer means for the bot: field, category and what the citizen wants.

Complaint intents are ``<field>+<category>`` (``land+procedure``, ``other+conduct``…);
menu intents are plain (``greet``, ``rate``, ``ask_status``…). Rasa ranks every intent
(``ranking_length: 0``), so one parse gives both answers:

- field confidence = the sum of the confidences of ``<field>+*``;
- category confidence = the sum over ``*+<category>``, as a share of the complaint labels;
- the top intent says what the citizen wants at the main menu.

Pure and dependency-free: the bot (Python 3.11) and the evaluation (Rasa's 3.10) share it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

CATEGORIES = ("procedure", "conduct")


@dataclass(frozen=True)
class Reading:
    intent: str
    intent_confidence: float
    field: str | None
    field_confidence: float
    category: str | None
    category_confidence: float
    fields: Mapping[str, float] = field(default_factory=dict)

    @property
    def is_complaint(self) -> bool:
        """The top intent is a complaint with content (``<field>+<category>``)."""
        return "+" in self.intent


def read_ranking(ranking: Iterable[Mapping[str, object]]) -> Reading:
    """A `Reading` from Rasa's ``intent_ranking`` ([{"name", "confidence"}, …])."""
    scores: dict[str, float] = {}
    for item in ranking:
        name = str(item.get("name") or "")
        conf = item.get("confidence")
        if name and isinstance(conf, int | float):
            scores[name] = scores.get(name, 0.0) + float(conf)
    if not scores:
        return Reading("", 0.0, None, 0.0, None, 0.0)
    top = max(scores, key=lambda k: scores[k])
    fields: dict[str, float] = {}
    cats: dict[str, float] = {}
    for name, conf in scores.items():
        f, plus, c = name.partition("+")
        if plus:
            fields[f] = fields.get(f, 0.0) + conf
            cats[c] = cats.get(c, 0.0) + conf
    best_field = max(fields, key=lambda k: fields[k]) if fields else None
    best_cat = max(cats, key=lambda k: cats[k]) if cats else None
    total = sum(cats.values())
    return Reading(
        intent=top,
        intent_confidence=scores[top],
        field=best_field,
        field_confidence=fields.get(best_field, 0.0) if best_field else 0.0,
        category=best_cat,
        category_confidence=cats[best_cat] / total if best_cat and total > 0 else 0.0,
        fields=fields,
    )
