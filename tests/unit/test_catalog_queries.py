"""Catalog queries: pairs whose query is a few of an item's own title words, in title order, seeded, spread
over the whole catalog before any item repeats; the train config refuses combinations it cannot feed."""

from __future__ import annotations

import numpy as np
import pytest

from recsys.schema import TRAIN_PAIR_COLUMNS
from recsys.train.catalog_queries import CATALOG_QUERY_KIND, catalog_query_pairs, query_words
from recsys.train.config import TrainConfig

TITLES = ["AmerTac Line Voltage Xenon Pucks (3-Pack)", "MS International 12 in. x 12 in. Glass Tile",
          "KidKraft Lil&#39; Doll Bunk Bed", "   "]
IDS = ["a1", "m2", "k3", "e4"]
TEXTS = [f"{t}. Lighting." for t in TITLES]


def is_in_order(query: str, words: list[str]) -> bool:
    position = 0
    for word in query.split():
        if word not in words[position:]:
            return False
        position = words.index(word, position) + 1
    return True


def test_query_words_drop_fillers_and_edge_punctuation() -> None:
    assert query_words("MS International 12 in. x 12 in. Glass Tile") == ["ms", "international", "12", "12",
                                                                          "glass", "tile"]
    assert query_words("KidKraft Lil&#39; Doll (Bunk) Bed") == ["kidkraft", "lil", "doll", "bunk", "bed"]
    assert query_words(" x in. - ") == []


def test_pairs_hold_title_words_of_their_own_item_in_order() -> None:
    pairs = catalog_query_pairs(IDS, TITLES, TEXTS, 30, 2, 3, seed=5)
    assert list(pairs.columns) == list(TRAIN_PAIR_COLUMNS) and len(pairs) == 30
    assert set(pairs["kind"]) == {CATALOG_QUERY_KIND}
    by_id = dict(zip(IDS, zip(TITLES, TEXTS)))
    for row in pairs.itertuples():
        title, text = by_id[row.positive_item_id]
        words = query_words(title)
        assert row.positive_text == text
        assert 2 <= len(row.anchor_text.split()) <= 3
        assert is_in_order(row.anchor_text, words), (row.anchor_text, words)
    assert "e4" not in set(pairs["positive_item_id"])          # a title without words is never drawn
    assert len(set(pairs["anchor_text"])) > 10                 # repeated items get fresh word draws


def test_every_item_is_used_before_one_repeats_and_draws_are_seeded() -> None:
    ids = [f"i{k}" for k in range(50)]
    titles = [f"brand{k} drill bit set {k}" for k in range(50)]
    pairs = catalog_query_pairs(ids, titles, titles, 70, 1, 4, seed=1)
    first = pairs["positive_item_id"].iloc[:50]
    assert sorted(first) == sorted(ids)
    counts = np.bincount([ids.index(i) for i in pairs["positive_item_id"]], minlength=50)
    assert counts.min() == 1 and counts.max() == 2
    assert pairs.equals(catalog_query_pairs(ids, titles, titles, 70, 1, 4, seed=1))
    assert not pairs.equals(catalog_query_pairs(ids, titles, titles, 70, 1, 4, seed=2))
    assert catalog_query_pairs(ids, titles, titles, 0, 1, 4, seed=1).empty


def test_bad_inputs_name_the_problem() -> None:
    with pytest.raises(ValueError, match="4 item ids, 3 titles"):
        catalog_query_pairs(IDS, TITLES[:3], TEXTS, 5, 2, 4, 0)
    with pytest.raises(ValueError, match="min_words=3, max_words=2"):
        catalog_query_pairs(IDS, TITLES, TEXTS, 5, 3, 2, 0)
    with pytest.raises(ValueError, match="none of the 2 catalog items has a title with words"):
        catalog_query_pairs(["a", "b"], ["", " x "], ["", ""], 5, 2, 4, 0)


def test_train_config_rules_for_catalog_queries() -> None:
    assert TrainConfig().catalog_queries.pairs == 0
    assert TrainConfig.model_validate({"catalog_queries": {"pairs": 100}}).catalog_queries.max_words == 4
    with pytest.raises(ValueError, match="catalog_queries.max_words=1 is below catalog_queries.min_words=2"):
        TrainConfig.model_validate({"catalog_queries": {"pairs": 100, "max_words": 1}})
    with pytest.raises(ValueError, match="catalog_queries.pairs=100 cannot be combined with hard_negatives"):
        TrainConfig.model_validate({"catalog_queries": {"pairs": 100}, "hard_negatives": {"judgments": "x.csv"}})
    with pytest.raises(ValueError, match="catalog_queries.pairs=100 cannot be combined with logq_correction"):
        TrainConfig.model_validate({"catalog_queries": {"pairs": 100}, "logq_correction": True})
