"""FoldedCountVectorsFeaturizer: a CountVectorsFeaturizer over a folded view of the text.

Vietnamese users often type without diacritics ("so do" for "sổ đỏ") and with chat
abbreviations ("ko", "dc", "lltp"). In NFC every toned vowel is its own code point, so the
stock featurizers see "sổ" and "so" as unrelated. This featurizer runs the ordinary Rasa
CountVectorsFeaturizer (word or char_wb analyzer) on tokens that are lower-cased,
stripped of diacritics (đ -> d) and, optionally, rewritten from common abbreviations.
It is meant to be used *in addition to* a featurizer on the original text, so accented
input keeps its extra information while unaccented input shares features with it.

Config (on top of CountVectorsFeaturizer's):
    expand_abbreviations: true   # map ko/k -> khong, dc -> duoc, lltp -> ... (1 token -> 1)
"""

from __future__ import annotations

from typing import Any

from components.vi_text import fold_tokens
from rasa.engine.recipes.default_recipe import DefaultV1Recipe
from rasa.nlu.featurizers.sparse_featurizer.count_vectors_featurizer import (
    CountVectorsFeaturizer,
)
from rasa.shared.nlu.constants import ACTION_NAME, INTENT, INTENT_RESPONSE_KEY, TEXT


@DefaultV1Recipe.register(DefaultV1Recipe.ComponentType.MESSAGE_FEATURIZER, is_trainable=True)
class FoldedCountVectorsFeaturizer(CountVectorsFeaturizer):
    """Count vectors over diacritic-free, lower-cased, abbreviation-expanded tokens."""

    @staticmethod
    def get_default_config() -> dict[str, Any]:
        config = CountVectorsFeaturizer.get_default_config()
        config["expand_abbreviations"] = True
        config["use_lemma"] = False
        return config

    def _process_tokens(self, tokens: list[str], attribute: str = TEXT) -> list[str]:
        if attribute in [INTENT, ACTION_NAME, INTENT_RESPONSE_KEY]:
            return tokens
        tokens = fold_tokens(
            tokens, abbreviations=bool(self._config.get("expand_abbreviations", True))
        )
        return super()._process_tokens(tokens, attribute)
