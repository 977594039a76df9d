"""Row validation for events and catalog: typed clean rows out, every bad row quarantined.

Each function takes raw string records (see sources.parse_raw_records) and returns
(clean, quarantine). Quarantine rows say where the row came from, a reason code (for
counting) and a detail naming the field and the value.
"""

from __future__ import annotations

import json
from collections.abc import Mapping

import numpy as np
import pandas as pd

from recsys.schema import (
    CATALOG_COLUMNS,
    EVENT_COLUMNS,
    EVENT_TYPES,
    ITEM_EVENT_TYPES,
    QUARANTINE_COLUMNS,
    REQUIRED_EVENT_COLUMNS,
)

_TRUE = {"true", "1", "yes", "y", "t"}
_FALSE = {"false", "0", "no", "n", "f"}


def _blank(series: pd.Series) -> pd.Series:
    return series.isna() | (series.astype(str).str.strip() == "")


def _strip_or_none(series: pd.Series) -> pd.Series:
    """Stripped text, None where missing or blank (object dtype: pandas 3 would turn None into NaN)."""
    stripped = series.astype(str).str.strip()
    out = stripped.astype(object)
    out[series.isna().to_numpy() | (stripped == "").to_numpy()] = None
    return out


_US_PER_UNIT = {"s": 1e6, "ms": 1e3, "us": 1.0}


def parse_timestamps(values: pd.Series, unit: str = "auto") -> pd.Series:
    """Epoch seconds / ms / us or ISO-8601 strings -> UTC datetimes (NaT where unparsable).

    unit: "auto" tells epoch units apart by magnitude; "s"/"ms"/"us" fix the epoch unit (for logs
    with old or tiny values); "iso" accepts only ISO-8601 text.
    """
    text = values.astype(object).where(~_blank(values), None)
    numeric = pd.to_numeric(text, errors="coerce")
    if unit == "iso":
        numeric = numeric.where(False)
    # Magnitude tells the unit: seconds ~1e9, milliseconds ~1e12, microseconds ~1e15 today.
    unit_scale = (np.full(len(numeric), _US_PER_UNIT[unit]) if unit in _US_PER_UNIT else
                  np.where(numeric.abs() > 1e14, 1, np.where(numeric.abs() > 1e11, 1e3, 1e6)))
    from_epoch = pd.to_datetime((numeric * unit_scale).round(), unit="us", utc=True, errors="coerce")
    iso_text = text.where(numeric.isna(), None)
    from_iso = pd.to_datetime(iso_text, utc=True, errors="coerce", format="ISO8601")
    out = from_iso.where(numeric.isna(), from_epoch)
    return out.astype("datetime64[us, UTC]")


def _quarantine(raw: pd.DataFrame, reasons: pd.Series, details: pd.Series) -> pd.DataFrame:
    bad = reasons.notna()
    fields = [c for c in raw.columns if not c.startswith("_")]
    raw_text = raw.loc[bad, "_raw"].copy()
    missing = raw_text.isna()
    if missing.any():
        raw_text[missing] = raw.loc[raw_text.index[missing], fields].apply(
            lambda r: json.dumps(r.dropna().to_dict(), default=str), axis=1)
    return pd.DataFrame({
        "source": raw.loc[bad, "_source"].astype(str),
        "line": raw.loc[bad, "_line"].astype("int64"),
        "reason": reasons[bad].astype(str),
        "detail": details[bad].astype(str),
        "raw": raw_text.astype(str),
    }, columns=[*QUARANTINE_COLUMNS[:3], "detail", "raw"])


def _flag(reasons: pd.Series, details: pd.Series, mask: pd.Series, code: str, detail: str,
          values: pd.Series | None = None) -> None:
    """Record the first failing check per row (earlier checks win).

    `detail` is a format string over the row's value ("{value!r}" quotes it), built only for the
    flagged rows so clean rows cost no string building.
    """
    new = mask & reasons.isna()
    if not new.any():
        return
    reasons[new] = code
    if values is None:
        details[new] = detail
    else:
        details[new] = [detail.format(value=v) for v in values[new].astype(str)]


# Events outside these years are clock errors (epoch 0, year 3000), not behaviour.
EARLIEST_EVENT = pd.Timestamp("1990-01-01", tz="UTC")
LATEST_EVENT = pd.Timestamp("2100-01-01", tz="UTC")


def validate_events(raw: pd.DataFrame, known_items: set[str] | None = None,
                    aliases: Mapping[str, str] | None = None,
                    timestamp_unit: str = "auto") -> tuple[pd.DataFrame, pd.DataFrame]:
    """Raw event records -> (typed events in EVENTS_SCHEMA column order, quarantine rows).

    `aliases` maps other spellings of event types (lower-case, e.g. "cart") to known types.
    """
    reasons = pd.Series([None] * len(raw), index=raw.index, dtype=object)
    details = pd.Series([None] * len(raw), index=raw.index, dtype=object)
    parse_error = raw["_error"].notna()
    _flag(reasons, details, parse_error, "unparsable_row", "{value}", raw["_error"])
    for field in REQUIRED_EVENT_COLUMNS:
        _flag(reasons, details, _blank(raw[field]), f"missing_{field}", f"{field} is empty")
    event_type = raw["event_type"].astype(str).str.strip().str.lower()
    if aliases:
        event_type = event_type.replace(dict(aliases))
    _flag(reasons, details, ~event_type.isin(EVENT_TYPES), "unknown_event_type",
          f"event_type={{value!r}} is not one of {list(EVENT_TYPES)}", raw["event_type"])
    timestamps = parse_timestamps(raw["timestamp"], timestamp_unit)
    _flag(reasons, details, timestamps.isna(), "bad_timestamp",
          "timestamp={value!r} is not epoch seconds/ms or ISO-8601", raw["timestamp"])
    _flag(reasons, details, (timestamps < EARLIEST_EVENT) | (timestamps >= LATEST_EVENT), "timestamp_out_of_range",
          f"timestamp={{value!r}} is before {EARLIEST_EVENT.date()} or after {LATEST_EVENT.date()}",
          raw["timestamp"])
    item_missing = _blank(raw["item_id"])
    _flag(reasons, details, event_type.isin(ITEM_EVENT_TYPES) & item_missing, "missing_item_id",
          "item_id is empty for event_type={value!r}", event_type)
    _flag(reasons, details, (event_type == "search") & _blank(raw["query"]), "missing_query",
          "query is empty for a search event")
    if known_items is not None:
        unknown = ~item_missing & ~raw["item_id"].astype(str).str.strip().isin(known_items)
        _flag(reasons, details, unknown, "item_not_in_catalog",
              "item_id={value!r} is not in the catalog", raw["item_id"])

    ok = reasons.isna()
    clean = pd.DataFrame({
        "user_id": raw.loc[ok, "user_id"].astype(str).str.strip(),
        "item_id": _strip_or_none(raw.loc[ok, "item_id"]),
        "event_type": event_type[ok],
        "timestamp": timestamps[ok],
        "query": _strip_or_none(raw.loc[ok, "query"]),
        "session_id": _strip_or_none(raw.loc[ok, "session_id"]),
    }, columns=list(EVENT_COLUMNS))
    return clean.reset_index(drop=True), _quarantine(raw, reasons, details).reset_index(drop=True)


def _parse_bool(values: pd.Series) -> tuple[pd.Series, pd.Series]:
    text = values.astype(str).str.strip().str.lower()
    blank = _blank(values)
    parsed = pd.Series(np.where(text.isin(_FALSE), False, True), index=values.index)
    invalid = ~blank & ~text.isin(_TRUE | _FALSE)
    return parsed, invalid  # a blank in_stock means "in stock": catalogs often omit it


def validate_catalog(raw: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Raw catalog records -> (typed catalog, quarantine). The first row of an item_id wins."""
    reasons = pd.Series([None] * len(raw), index=raw.index, dtype=object)
    details = pd.Series([None] * len(raw), index=raw.index, dtype=object)
    _flag(reasons, details, raw["_error"].notna(), "unparsable_row", "{value}", raw["_error"])
    _flag(reasons, details, _blank(raw["item_id"]), "missing_item_id", "item_id is empty")
    # A row without a title still describes a product when brand/category/description say
    # something: the title is filled from them (fill_missing_titles) instead of losing the item.
    no_text = _blank(raw["title"]) & _blank(raw["brand"]) & _blank(raw["category"]) & _blank(raw["description"])
    _flag(reasons, details, no_text, "missing_text", "title, brand, category and description are all empty")
    price = pd.to_numeric(raw["price"], errors="coerce")
    bad_price = (~_blank(raw["price"]) & price.isna()) | (price < 0)
    _flag(reasons, details, bad_price, "bad_price",
          "price={value!r} is not a non-negative number", raw["price"])
    in_stock, bad_stock = _parse_bool(raw["in_stock"])
    _flag(reasons, details, bad_stock, "bad_in_stock",
          "in_stock={value!r} is not true/false", raw["in_stock"])
    item_id = raw["item_id"].astype(str).str.strip()
    dup = item_id.duplicated(keep="first") & reasons.isna()
    _flag(reasons, details, dup, "duplicate_item_id",
          "item_id={value!r} already appeared earlier", item_id)

    ok = reasons.isna()
    text = {c: raw.loc[ok, c].fillna("").astype(str).str.strip() for c in ("title", "brand", "category",
                                                                              "description")}
    text["title"] = fill_missing_titles(text["title"], text["brand"], text["category"], text["description"])
    clean = pd.DataFrame({"item_id": item_id[ok], **text, "price": price[ok].astype("float64"),
                          "in_stock": in_stock[ok].astype(bool)}, columns=list(CATALOG_COLUMNS))
    return clean.reset_index(drop=True), _quarantine(raw, reasons, details).reset_index(drop=True)


def fill_missing_titles(title: pd.Series, brand: pd.Series, category: pd.Series, description: pd.Series) -> pd.Series:
    """Empty titles become "<brand> <last category level>", else the first 80 characters of the description."""
    empty = title == ""
    if not empty.any():
        return title
    leaf = category[empty].str.split(">").str[-1].str.strip()
    made = (brand[empty] + " " + leaf).str.strip()
    made = made.where(made != "", description[empty].str.slice(0, 80).str.strip())
    return title.where(~empty, made)
