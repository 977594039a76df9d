"""How items and behaviour histories become encoder input text.

Training pairs, the catalog index and online queries all call these functions, so the
item tower sees the same text at fit, index and serve time.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence


def format_item_text(title: str | None, brand: str | None = None, category: str | None = None,
                     description: str | None = None, max_chars: int = 400) -> str:
    """'title. brand. category. description' with empty parts skipped, cut to max_chars."""
    parts = [str(p).strip() for p in (title, brand, category, description) if p and str(p).strip()]
    return ". ".join(parts)[:max_chars]


def catalog_texts(catalog) -> tuple[list[str], list[str], list[str]]:
    """A catalog frame -> (item ids, titles, item-tower texts), row-aligned."""
    ids = [str(i) for i in catalog["item_id"]]
    titles = [str(t) for t in catalog["title"]]
    texts = [format_item_text(r.title, r.brand, r.category) for r in catalog.itertuples()]
    return ids, titles, texts


def format_history_text(titles: Sequence[str], max_items: int = 8) -> str:
    """A behaviour history as query-tower input: most recent item first, newest `max_items`.

    Most-recent-first keeps the strongest signal inside the tokenizer's truncation window.
    """
    recent = [t for t in reversed(list(titles)) if t][:max_items]
    return " | ".join(recent)


def history_text_for_items(item_ids: Sequence[str], item_titles: Mapping[str, str],
                           max_items: int = 8) -> str:
    """Format a history of item ids, skipping ids missing from the catalog."""
    return format_history_text([item_titles[i] for i in item_ids if i in item_titles], max_items)
