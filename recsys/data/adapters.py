"""Adapters that turn the public data sets in ../shared/data into (events, catalog) tables.

Each loader returns two pyarrow tables matching EVENTS_SCHEMA and CATALOG_SCHEMA, so the rest of
the pipeline runs on real behaviour and product text exactly as it runs on synthetic data.
Unknown prices are null (never NaN) and unknown stock is True: nothing in these sets is sold out.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

from recsys.schema import CATALOG_SCHEMA, EVENTS_SCHEMA

_US_PER_DAY = 86_400 * 1_000_000
_AMAZON_CATEGORY_ROOT = "Industrial & Scientific"


def _epoch_us(day: datetime) -> int:
    return int(day.replace(tzinfo=timezone.utc).timestamp()) * 1_000_000


def _events_table(user_id: object, item_id: object, event_type: str, ts_us: np.ndarray,
                  query: object, session_id: object) -> pa.Table:
    n = len(ts_us)

    def col(v: object) -> object:  # broadcast scalars (incl. None) to a full column
        return v if isinstance(v, (np.ndarray, list, pd.Series)) else np.full(n, v, dtype=object)

    return pa.table({
        "user_id": col(user_id), "item_id": col(item_id), "event_type": col(event_type),
        "timestamp": pa.array(np.asarray(ts_us, dtype=np.int64)).cast(EVENTS_SCHEMA.field("timestamp").type),
        "query": col(query), "session_id": col(session_id),
    }, schema=EVENTS_SCHEMA)


def _catalog_table(item_id: object, title: object, brand: object, category: object) -> pa.Table:
    n = len(item_id)  # type: ignore[arg-type]
    return pa.table({
        "item_id": item_id, "title": title, "brand": brand, "category": category,
        "description": np.full(n, "", dtype=object), "price": pa.nulls(n, pa.float64()),
        "in_stock": np.ones(n, dtype=bool),
    }, schema=CATALOG_SCHEMA)


# ---------------------------------------------------------------- Amazon Scientific (UniSRec format)
def split_amazon_text(text: str) -> tuple[str, str, str]:
    """'title. categories. brand. ' -> (title, category, brand).

    Titles may contain '. ' themselves, so the split anchors on the categories, which start with
    'Industrial & Scientific' or are empty ('title. . brand. '); anything else stays whole as title.
    Some scraped titles end in an HTML artefact ' />', 24 are nothing but 'Industrial & Scientific />':
    the artefact is cut and an empty title falls back to the brand, so titles stay non-empty.
    """
    body = text.strip()
    body = body.removesuffix(".")
    cut = body.rfind(". " + _AMAZON_CATEGORY_ROOT)
    if cut >= 0:
        category, _, brand = body[cut + 2:].partition(". ")
        title = body[:cut].strip().removesuffix("/>").strip()
        if title in ("", _AMAZON_CATEGORY_ROOT):
            title = brand.strip() or category.strip()
        return title, category.strip(), brand.strip()
    if ". . " in body + " ":
        title, _, brand = (body + " ").partition(". . ")
        return title.strip(), "", brand.strip()
    return body.strip(), "", ""


def _read_index(path: Path) -> dict[int, str]:
    frame = pd.read_csv(path, sep="\t", header=None, names=["key", "index"], dtype={"key": str, "index": int},
                        keep_default_na=False)
    return dict(zip(frame["index"], frame["key"]))


def read_amazon_inter(path: Path) -> pd.DataFrame:
    """A `.inter` file as user_index, history (list[int]), target (int)."""
    frame = pd.read_csv(path, sep="\t", header=0, names=["user_index", "history", "target"],
                        dtype={"user_index": int, "history": str, "target": int})
    frame["history"] = [list(map(int, h.split())) for h in frame["history"]]
    return frame


def _rebuild_capped(sequences: list[list[int]], test: pd.DataFrame, train_path: Path) -> list[list[int]]:
    """Restore the early items of users whose test history hit the files' 50-item cap, from train.inter."""
    capped = {u: k for k, (u, h) in enumerate(zip(test["user_index"], test["history"])) if len(h) >= 50}
    if not capped:
        return sequences
    train = read_amazon_inter(train_path)
    train = train[train["user_index"].isin(capped)]
    for u, rows in train.groupby("user_index", sort=False):
        rows = rows.iloc[::-1]  # the file lists a user's prefixes longest first
        full = [rows["history"].iloc[0][0], *rows["target"], *sequences[capped[u]][-2:]]
        if full[-len(sequences[capped[u]]):] != sequences[capped[u]]:
            raise ValueError(f"user_index {u}: train.inter prefixes do not continue into test.inter")
        sequences[capped[u]] = full
    return sequences


def load_amazon_scientific(directory: str | Path, full_history: bool = False) -> tuple[pa.Table, pa.Table]:
    """Amazon 2018 Industrial_and_Scientific 5-core in UniSRec format -> (events, catalog).

    A user's chronological sequence is their `test.inter` history followed by its target, so
    the last event is the published test target and the second-to-last the valid target.
    The files cap histories at 50 items, which hides the earliest items of 3 users (43
    interactions); full_history=True restores them from train.inter (default off, so counts
    match the published benchmark: 59,384 interactions).
    user_id is the reviewer id, item_id the ASIN, event_type "purchase" (reviews imply purchases).
    The data has order only, no timestamps: event k of every user is synthesised at
    2018-01-01 + k days, which also makes every event its own session ("<user>-s<k>").
    """
    directory = Path(directory)
    items = _read_index(directory / "Scientific.item2index")
    users = _read_index(directory / "Scientific.user2index")
    test = read_amazon_inter(directory / "Scientific.test.inter")
    sequences = [h + [t] for h, t in zip(test["history"], test["target"])]
    if full_history:
        sequences = _rebuild_capped(sequences, test, directory / "Scientific.train.inter")
    lengths = np.array([len(s) for s in sequences])
    position = np.concatenate([np.arange(n) for n in lengths])
    user_ids = np.repeat(np.array([users[u] for u in test["user_index"]], dtype=object), lengths)
    item_ids = np.array([items[i] for s in sequences for i in s], dtype=object)
    sessions = np.char.add(np.char.add(user_ids.astype(str), "-s"), position.astype(str)).astype(object)
    ts = _epoch_us(datetime(2018, 1, 1)) + position * _US_PER_DAY
    events = _events_table(user_ids, item_ids, "purchase", ts, None, sessions)

    text = pd.read_csv(directory / "Scientific.text", sep="\t", header=0, names=["item_id", "text"],
                       dtype=str, keep_default_na=False, quoting=3)  # quoting=3: quotes are title text
    parts = [split_amazon_text(t) for t in text["text"]]
    catalog = _catalog_table(text["item_id"].to_numpy(object), [p[0] for p in parts],
                             [p[2] for p in parts], [p[1] for p in parts])
    return events, catalog


# ---------------------------------------------------------------- Home Depot search relevance
def load_homedepot(directory: str | Path, min_relevance: float = 2.5) -> tuple[pa.Table, pa.Table]:
    """Kaggle Home Depot Product Search Relevance `train.csv` (latin-1) -> (events, catalog).

    Every distinct search_term is a pseudo-user "hd-q<n>" (n = order of first appearance) with one
    session "hd-q<n>-s0". Each judged pair with relevance >= min_relevance becomes one `search`
    event (query = search_term, item_id = product_uid): a relevant result counts as a click.
    Pairs judged less relevant are not clicks and produce no event, so queries with no relevant
    product have no events. Timestamps are synthesised: query n at 2016-01-01 + n minutes, its
    events one second apart in file order. Catalog = distinct product_uid with the first title
    seen (a few products carry two spellings); brand, category and description are empty.
    """
    frame = pd.read_csv(Path(directory) / "train.csv", encoding="latin-1",
                        dtype={"product_uid": str, "product_title": str, "search_term": str},
                        keep_default_na=False)
    query_no, queries = pd.factorize(frame["search_term"], sort=False)
    keep = (frame["relevance"] >= min_relevance).to_numpy()
    qn = query_no[keep]
    within = pd.Series(qn).groupby(qn).cumcount().to_numpy()
    ts = _epoch_us(datetime(2016, 1, 1)) + qn * 60_000_000 + within * 1_000_000
    users = np.array([f"hd-q{n}" for n in range(len(queries))], dtype=object)
    order = np.lexsort((within, qn))  # grouped by pseudo-user, chronological
    events = _events_table(users[qn][order], frame["product_uid"].to_numpy(object)[keep][order], "search",
                           ts[order], queries.to_numpy(object)[qn][order],
                           np.char.add(users[qn][order].astype(str), "-s0").astype(object))

    products = frame.drop_duplicates("product_uid", keep="first")
    n = len(products)
    catalog = _catalog_table(products["product_uid"].to_numpy(object), products["product_title"].to_numpy(object),
                             np.full(n, "", dtype=object), np.full(n, "", dtype=object))
    return events, catalog


# ---------------------------------------------------------------- Instacart baskets
def load_instacart(directory: str | Path) -> tuple[pa.Table, pa.Table]:
    """Instacart 2017 sample -> (events, catalog).

    Catalog: every product in products.csv, category "department > aisle". Events: one
    `add_to_cart` per order line, user_id / item_id / session_id = the Instacart user / product /
    order id. Timestamps are synthesised, monotone within a user: order day = running sum of
    days_since_prior_order (first order on 2017-01-01 shifted by its order_dow), hour =
    order_hour_of_day, lines add_to_cart_order x 30 s apart; an order that would start before the
    previous order's last line (same day, earlier hour) is moved to one minute after it.
    """
    directory = Path(directory)
    products = pd.read_csv(directory / "products.csv")
    aisles = pd.read_csv(directory / "aisles.csv")
    departments = pd.read_csv(directory / "departments.csv")
    products = products.merge(aisles, on="aisle_id", how="left").merge(departments, on="department_id", how="left")
    catalog = _catalog_table(products["product_id"].astype(str).to_numpy(object),
                             products["product_name"].to_numpy(object), np.full(len(products), "", dtype=object),
                             (products["department"] + " > " + products["aisle"]).to_numpy(object))

    lines = pd.read_csv(directory / "order_lines_sample.csv", index_col=0)
    lines = lines.sort_values(["user_id", "order_number", "add_to_cart_order"], kind="stable")
    orders = lines.groupby(["user_id", "order_number"], sort=True).agg(
        order_dow=("order_dow", "first"), hour=("order_hour_of_day", "first"),
        gap=("days_since_prior_order", "first"), n_lines=("add_to_cart_order", "max")).reset_index()
    first_dow = orders.groupby("user_id")["order_dow"].transform("first")
    day = orders["gap"].fillna(0).groupby(orders["user_id"]).cumsum() + first_dow
    start_s = (day * 86_400 + orders["hour"] * 3_600).to_numpy(np.int64)
    end_s = start_s + orders["n_lines"].to_numpy(np.int64) * 30
    user = orders["user_id"].to_numpy()
    for k in range(1, len(orders)):  # ~15k orders: a plain loop is cheaper than being clever
        if user[k] == user[k - 1] and start_s[k] <= end_s[k - 1]:
            shift = end_s[k - 1] + 60 - start_s[k]
            start_s[k] += shift
            end_s[k] += shift
    orders["start_s"] = start_s
    lines = lines.merge(orders[["user_id", "order_number", "start_s"]], on=["user_id", "order_number"])
    ts = (_epoch_us(datetime(2017, 1, 1))
          + (lines["start_s"].to_numpy(np.int64) + lines["add_to_cart_order"].to_numpy(np.int64) * 30) * 1_000_000)
    events = _events_table(lines["user_id"].astype(str).to_numpy(object),
                           lines["product_id"].astype(str).to_numpy(object), "add_to_cart", ts, None,
                           lines["order_id"].astype(str).to_numpy(object))
    return events, catalog


ADAPTERS: dict[str, Callable[[str | Path], tuple[pa.Table, pa.Table]]] = {
    "amazon_scientific": load_amazon_scientific,
    "homedepot": load_homedepot,
    "instacart": load_instacart,
}


def detect_dataset(path: str | Path) -> str | None:
    """Name of the ADAPTERS entry whose files `path` (a directory) holds, else None."""
    path = Path(path)
    if not path.is_dir():
        return None
    if (path / "Scientific.text").is_file() and (path / "Scientific.test.inter").is_file():
        return "amazon_scientific"
    if (path / "products.csv").is_file() and (path / "order_lines_sample.csv").is_file():
        return "instacart"
    train = path / "train.csv"
    if train.is_file():
        with train.open(encoding="latin-1") as f:
            header = f.readline()
        if "product_uid" in header and "search_term" in header:
            return "homedepot"
    return None
