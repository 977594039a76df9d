"""Encoder input text for items and behaviour histories (shared by training, indexing and serving)."""

from __future__ import annotations

from recsys.data.text import format_history_text, format_item_text, history_text_for_items


def test_format_item_text_joins_parts_in_order() -> None:
    assert format_item_text("Claw Hammer", "Acme", "Tools", "Steel head") == \
        "Claw Hammer. Acme. Tools. Steel head"


def test_format_item_text_skips_empty_and_strips() -> None:
    assert format_item_text("  Saw ", None, "   ", "Sharp\n") == "Saw. Sharp"
    assert format_item_text("Saw", "", None, None) == "Saw"
    assert format_item_text(None) == ""
    assert format_item_text("", None, "Tools") == "Tools"


def test_format_item_text_non_string_parts() -> None:
    assert format_item_text("Widget", 3, "Cat") == "Widget. 3. Cat"


def test_format_item_text_max_chars() -> None:
    text = format_item_text("T" * 10, "B" * 10, max_chars=15)
    assert text == "T" * 10 + ". " + "BBB"
    assert len(format_item_text("x", description="d" * 1000)) == 400


def test_format_history_text_most_recent_first() -> None:
    assert format_history_text(["oldest", "middle", "newest"]) == "newest | middle | oldest"


def test_format_history_text_keeps_newest_max_items_and_skips_blanks() -> None:
    titles = [f"t{n}" for n in range(10)]
    assert format_history_text(titles, max_items=3) == "t9 | t8 | t7"
    assert format_history_text(["a", "", "b", ""], max_items=2) == "b | a"
    assert format_history_text([]) == ""
    assert format_history_text(("a", "b")) == "b | a"


def test_history_text_for_items_skips_unknown_ids() -> None:
    titles = {"i1": "Hammer", "i2": "Saw", "i3": "Drill"}
    assert history_text_for_items(["i1", "zzz", "i2", "i3"], titles, max_items=2) == "Drill | Saw"
    assert history_text_for_items(["zzz"], titles) == ""
    assert history_text_for_items(["i1", "i1"], titles) == "Hammer | Hammer"
