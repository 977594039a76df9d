"""Large, realistic, dirty e-commerce logs for benchmarking the preprocess job at scale.

Writes `out_dir/events/part-NNNNN.parquet` (generic event schema; `timestamp` is int64 epoch
MILLISECONDS, as many real logs store it; `session_id` is always null so sessions must be derived
from the 30-minute gaps) and `out_dir/catalog.parquet`. Fully vectorised: per-row work is numpy
index arithmetic and every string column is an Arrow `take` from a small vocabulary.

    .venv/bin/python bench/preprocess_data.py --out DIR [--events 5000000] [--users 200000] [--items 50000]
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from recsys.data.synthetic import CATEGORIES

START_MS = 1_704_067_200_000          # 2024-01-01T00:00:00Z
DAY_MS, MIN_MS = 86_400_000, 60_000
SPAN_DAYS = 90
YEAR_3000_MS = 32_503_680_000_000     # 3000-01-01T00:00:00Z
ROW_GROUP = 131_072
TYPES = ("view", "click", "add_to_cart", "purchase", "search", "hover", "cart", "transaction")
VIEW, CLICK, CART, BUY, SEARCH, HOVER, ALIAS_CART, ALIAS_BUY = range(len(TYPES))
# Share of all rows per kind of dirt (0.95% together). Bots, duplicates, repeats and hovers are extra
# rows; the rest damage existing rows, each row at most once, so every count below is exact.
DIRT = {"bot_rows": 0.004, "exact_duplicates": 0.002, "rapid_repeats": 0.001, "hover_events": 0.0005,
        "alias_cart": 0.0003, "alias_transaction": 0.0002, "empty_user_id": 0.0004, "null_user_id": 0.0001,
        "item_not_in_catalog": 0.0005, "null_timestamp": 0.0002, "timestamp_zero": 0.0001,
        "timestamp_negative": 0.0001, "timestamp_year_3000": 0.0001}
# Funnel: a browsed item is viewed, then maybe clicked, carted, bought (lengths 1-4 of one "step").
STEP_LENGTH_P = np.array([0.75, 0.25 * 0.7, 0.25 * 0.3 * 0.55, 0.25 * 0.3 * 0.45])
QUERY_P = [0.35, 0.2, 0.2, 0.1, 0.15]   # attr+noun, brand+noun, noun, attr+size+noun, brand+attr+noun


def _catalog(n_items: int, rng: np.random.Generator) -> tuple[dict, np.ndarray, np.ndarray, list[str]]:
    """Catalog columns (internal order = by category), item category, popularity weight, 5 queries per item."""
    n_cat = len(CATEGORIES)
    counts = 1 + rng.multinomial(n_items - n_cat, rng.dirichlet(np.full(n_cat, 5.0)))
    cat = np.repeat(np.arange(n_cat), counts)
    cols: dict[str, list] = {k: [] for k in ("title", "brand", "category", "description", "price")}
    queries: list[str] = []
    seen: dict[str, int] = {}
    for c, (name, brands, noun_sizes, attrs, (lo, hi), benefit) in enumerate(CATEGORIES):
        k = int(counts[c])
        picks = zip(rng.integers(0, len(noun_sizes), k), rng.integers(0, len(attrs), k),
                    rng.integers(0, len(brands), k), rng.integers(0, 3, k),
                    np.exp(rng.uniform(np.log(lo), np.log(hi), k)))
        for n, a, b, s, price in picks:
            noun, sizes = noun_sizes[n].split(": ")
            size, attr, brand = sizes.split(", ")[s], attrs[a], brands[b]
            title = f"{brand} {attr} {size} {noun}"
            dup = seen[title] = seen.get(title, 0) + 1   # titles identify items: number the repeats
            cols["title"].append(title if dup == 1 else f"{title} (Style {dup})")
            cols["brand"].append(brand)
            cols["category"].append(name)
            cols["description"].append(f"{attr} {noun.lower()} from {brand}, {size}, designed for {benefit}.")
            cols["price"].append(float(np.floor(price)) + 0.99)
            noun_l, attr_l, brand_l = noun.lower(), attr.lower(), brand.lower()
            queries += [f"{attr_l} {noun_l}", f"{brand_l} {noun_l}", noun_l, f"{attr_l} {size.lower()} {noun_l}",
                        f"{brand_l} {attr_l} {noun_l}"]
    # Zipf popularity over a random ranking, so the head is spread over categories.
    weight = 1.0 / (rng.permutation(n_items) + 1.0) ** 1.05
    return cols, cat, weight, queries


def _sample_items(cats: np.ndarray, use_global: np.ndarray, cum0: np.ndarray, offsets: np.ndarray,
                  rng: np.random.Generator) -> np.ndarray:
    """Popularity-weighted item per draw: inside category `cats` (items are category-contiguous), or global."""
    lo = np.where(use_global, 0.0, cum0[offsets[cats]])
    hi = np.where(use_global, cum0[-1], cum0[offsets[cats + 1]])
    idx = np.searchsorted(cum0, lo + rng.random(len(cats)) * (hi - lo), side="right") - 1
    return np.clip(idx, np.where(use_global, 0, offsets[cats]), np.where(use_global, len(cum0) - 2,
                                                                          offsets[cats + 1] - 1))


def _within_user_cumsum(values: np.ndarray, first: np.ndarray) -> np.ndarray:
    """Running sum restarting at each user; `first[i]` is the index of row i's user's first row."""
    total = np.cumsum(values)
    return total - total[first] + values[first]


def generate_logs(out_dir: str | Path, n_events: int = 5_000_000, n_users: int = 200_000, n_items: int = 50_000,
                  seed: int = 0, files: int = 10, log: Callable[[str], None] | None = None) -> dict:
    """Write the events files and catalog (skipped when `_generated.json` matches); returns the stats."""
    out, say, t0 = Path(out_dir), log or (lambda msg: None), time.perf_counter()
    params = {"n_events": n_events, "n_users": n_users, "n_items": n_items, "seed": seed, "files": files, "version": 1}
    marker = out / "_generated.json"
    if marker.is_file() and (cached := json.loads(marker.read_text())).get("params") == params:
        say(f"reusing {out} ({cached['stats']['rows']:,} rows)")
        return cached["stats"]
    rng = np.random.default_rng(seed)
    k = {name: int(round(share * n_events)) for name, share in DIRT.items()}
    n_bots = max(1, k["bot_rows"] // 100) if k["bot_rows"] >= 20 else 0   # 200 bots at 5M rows
    k["bot_rows"] *= n_bots > 0
    n_base = n_events - k["bot_rows"] - k["exact_duplicates"] - k["rapid_repeats"] - k["hover_events"]
    n_search = int(round(0.05 * n_base))
    n_item = n_base - n_search

    # ---- catalog and vocabularies
    cols, item_cat, weight, queries = _catalog(n_items, rng)
    offsets = np.concatenate([[0], np.cumsum(np.bincount(item_cat, minlength=len(CATEGORIES)))])
    cum0 = np.concatenate([[0.0], np.cumsum(weight)])
    cat_pop = np.diff(cum0[offsets]) / cum0[-1]
    item_ids = [f"SKU-{i:07d}" for i in rng.permutation(n_items) + 1]   # ids do not leak the category layout
    n_unknown = max(1, n_items // 500)   # delisted items: a small pool, so each shows up repeatedly
    item_vocab = pa.array(item_ids + [f"SKU-{i:07d}" for i in 9_000_000 + rng.permutation(n_unknown)])
    ids = rng.permutation(n_users + n_bots) + 1   # bots hide among the users' ids
    user_vocab = pa.array([f"u{i:07d}" for i in ids] + [""])
    say(f"catalog and vocabularies ready ({time.perf_counter() - t0:.1f}s)")

    # ---- users (heavy-tailed activity), steps (funnel), sessions, items
    # Pareto(2) activity: a power-law rank/frequency curve; at 5M rows the busiest user has ~6k events, median ~19.
    activity = rng.pareto(2.0, n_users) + 1.0
    base = 1 if n_item >= n_users else 0
    counts = base + rng.multinomial(n_item - base * n_users, activity / activity.sum())
    ev_user = np.repeat(np.arange(n_users), counts)
    user_first = (np.cumsum(counts) - counts)[ev_user]            # per event: index of its user's first event
    lengths = rng.choice(4, size=int(n_item / 1.2) + 64, p=STEP_LENGTH_P) + 1
    step_starts = np.cumsum(lengths) - lengths
    seg_start = np.zeros(n_item, bool)
    seg_start[step_starts[step_starts < n_item]] = True
    seg_start[user_first] = True                                  # a step never crosses users
    sess_start = (seg_start & (rng.random(n_item) < 1 / 6)) | (np.arange(n_item) == user_first)
    seg_pos, sess_pos = np.flatnonzero(seg_start), np.flatnonzero(sess_start)
    seg_id = np.cumsum(seg_start) - 1
    stage = np.arange(n_item) - seg_pos[seg_id]                   # 0 view, 1 click, 2 add_to_cart, 3 purchase
    fav = rng.choice(len(CATEGORIES), n_users, p=cat_pop)
    sess_user = ev_user[sess_pos]
    sess_cat = np.where(rng.random(len(sess_pos)) < 0.7, fav[sess_user],
                        rng.choice(len(CATEGORIES), len(sess_pos), p=cat_pop))
    seg_cat = sess_cat[(np.cumsum(sess_start) - 1)[seg_pos]]
    seg_item = _sample_items(seg_cat, rng.random(len(seg_pos)) < 0.15, cum0, offsets, rng)
    say(f"{n_item:,} item events, {len(seg_pos):,} steps, {len(sess_pos):,} sessions "
        f"({time.perf_counter() - t0:.1f}s)")

    # ---- time: in-session gaps 3 s - 25 min, > 32 min between sessions, each user inside ~90 days
    within = np.where(stage > 0, 3_000 + rng.exponential(10_000, n_item).clip(max=120_000),
                      20_000 + rng.exponential(70_000, n_item).clip(max=25 * MIN_MS)).astype(np.int64)
    is_gap = sess_start & (np.arange(n_item) != user_first)
    within[is_gap] = 32 * MIN_MS
    within[user_first == np.arange(n_item)] = 0
    sess_per_user = np.bincount(sess_user, minlength=n_users)
    gaps = np.zeros(n_item, np.int64)
    gaps[is_gap] = rng.exponential(85 * DAY_MS / np.maximum(sess_per_user, 1)[ev_user[is_gap]]).astype(np.int64)
    rel_w, rel_g = _within_user_cumsum(within, user_first), _within_user_cumsum(gaps, user_first)
    last = np.cumsum(counts) - 1
    span_w, span_g = np.zeros(n_users), np.zeros(n_users)
    span_w[counts > 0], span_g[counts > 0] = rel_w[last[counts > 0]], rel_g[last[counts > 0]]
    scale = np.minimum(1.0, np.maximum(88 * DAY_MS - span_w, 0) / np.maximum(span_g, 1))
    span = span_w + span_g * scale
    start = START_MS + rng.random(n_users) * np.maximum(SPAN_DAYS * DAY_MS - span, 0)
    ts = (start[ev_user] + rel_w + rel_g * scale[ev_user]).astype(np.int64)
    ev_item, ev_type = seg_item[seg_id], stage.astype(np.int8)

    # ---- searches: a query from the next browsed item's title words, 2-15 s before it; 20% without a click
    chosen = rng.choice(len(seg_pos), n_search, replace=False)
    s_pos = seg_pos[chosen]
    s_item = np.where(rng.random(n_search) < 0.2, -1, seg_item[chosen])
    s_query = seg_item[chosen] * 5 + rng.choice(5, n_search, p=QUERY_P)
    user = np.concatenate([ev_user, ev_user[s_pos]])
    item = np.concatenate([ev_item, s_item])
    etype = np.concatenate([ev_type, np.full(n_search, SEARCH, np.int8)])
    ts = np.concatenate([ts, ts[s_pos] - rng.integers(2_000, 15_000, n_search)])
    query = np.concatenate([np.full(n_item, -1), s_query])
    del ev_user, user_first, seg_start, sess_start, seg_id, stage, within, gaps, rel_w, rel_g

    # ---- damage existing rows: each kind on its own rows, never on a row that is also copied below
    used = np.zeros(n_base, bool)

    def pick(kind: str, eligible: np.ndarray | None = None) -> np.ndarray:
        cand = np.flatnonzero(~used if eligible is None else eligible & ~used)
        sel = rng.choice(cand, min(k[kind], len(cand)), replace=False)
        used[sel] = True
        k[kind] = len(sel)   # tiny data sets may have fewer eligible rows than asked for
        return sel

    is_item_event = etype < SEARCH
    etype[pick("alias_cart", etype == CART)] = ALIAS_CART
    etype[pick("alias_transaction", etype == BUY)] = ALIAS_BUY
    sel = pick("item_not_in_catalog", is_item_event)
    item[sel] = n_items + rng.integers(0, n_unknown, len(sel))
    user[pick("empty_user_id")] = len(user_vocab) - 1
    user_null = np.zeros(n_events, bool)
    user_null[pick("null_user_id")] = True
    ts_null = np.zeros(n_events, bool)
    ts_null[pick("null_timestamp")] = True
    order_ts = ts.copy()                                      # where a damaged row sits in the time-ordered log
    ts[pick("timestamp_zero")] = 0
    sel = pick("timestamp_negative")
    ts[sel] = -rng.integers(1, 10 * 365 * DAY_MS, len(sel))
    ts[pick("timestamp_year_3000")] = YEAR_3000_MS

    # ---- extra rows: exact duplicates, rapid repeats (< 2 s), hovers before views, bots
    dup, rep = pick("exact_duplicates"), pick("rapid_repeats", is_item_event)
    hov = pick("hover_events", etype == VIEW)
    # Zipf over bots: at 5M rows the biggest few fire thousands of events within minutes, most only tens.
    bot_w = 1.0 / (rng.permutation(n_bots) + 1.0)
    bot_counts = 20 + rng.multinomial(k["bot_rows"] - 20 * n_bots, bot_w / bot_w.sum()) if n_bots else np.zeros(0, int)
    bot_user = np.repeat(np.arange(n_bots), bot_counts)
    bot_first = (np.cumsum(bot_counts) - bot_counts)[bot_user]
    bot_ts = (START_MS + rng.integers(0, SPAN_DAYS * DAY_MS, n_bots)[bot_user]
              + _within_user_cumsum(20 + rng.exponential(150, len(bot_user)), bot_first)).astype(np.int64)
    rep_ts = ts[rep] + rng.integers(100, 2_000, len(rep))
    hov_ts = ts[hov] - rng.integers(200, 3_000, len(hov))
    user = np.concatenate([user, user[dup], user[rep], user[hov], n_users + bot_user])
    item = np.concatenate([item, item[dup], item[rep], item[hov], rng.integers(0, n_items, len(bot_user))])
    etype = np.concatenate([etype, etype[dup], etype[rep], np.full(len(hov), HOVER, np.int8),
                            np.where(rng.random(len(bot_user)) < 0.85, VIEW, CLICK).astype(np.int8)])
    query = np.concatenate([query, query[dup], query[rep], np.full(len(hov) + len(bot_user), -1)])
    order_ts = np.concatenate([order_ts, order_ts[dup], rep_ts, hov_ts, bot_ts])
    ts = np.concatenate([ts, ts[dup], rep_ts, hov_ts, bot_ts])
    n_rows = len(ts)   # == n_events except on tiny inputs
    user_null, ts_null = user_null[:n_rows], ts_null[:n_rows]

    # ---- the log is in arrival order across users (time + up to ~seconds of delivery jitter), not by user
    order = np.argsort(order_ts + rng.exponential(500, n_rows).astype(np.int64), kind="stable")
    say(f"{n_rows:,} rows laid out ({time.perf_counter() - t0:.1f}s); writing {files} file(s)")
    type_vocab, query_vocab = pa.array(TYPES), pa.array(queries)
    events_dir = out / "events"
    events_dir.mkdir(parents=True, exist_ok=True)
    for old in events_dir.glob("part-*.parquet"):
        old.unlink()
    bounds = np.linspace(0, n_rows, files + 1).astype(np.int64)
    for f in range(files):
        rows = order[bounds[f]:bounds[f + 1]]
        table = pa.table({
            "user_id": user_vocab.take(pa.array(user[rows], mask=user_null[rows])),
            "item_id": item_vocab.take(pa.array(item[rows], mask=item[rows] < 0)),
            "event_type": type_vocab.take(pa.array(etype[rows])),
            "timestamp": pa.array(ts[rows], pa.int64(), mask=ts_null[rows]),
            "query": query_vocab.take(pa.array(query[rows], mask=query[rows] < 0)),
            "session_id": pa.nulls(len(rows), pa.string()),
        })
        pq.write_table(table, events_dir / f"part-{f:05d}.parquet", row_group_size=ROW_GROUP)

    # ---- catalog dirt: empty titles (brand/category kept, so a cleaner can fill them), duplicate rows
    n_empty, n_dup = max(2, n_items // 500), max(2, n_items // 1000)
    empty = rng.choice(n_items, n_empty, replace=False)
    for j, i in enumerate(empty):
        cols["title"][i] = "" if j % 2 == 0 else None
    in_stock = rng.random(n_items) >= 0.05
    dup_src = rng.choice(np.setdiff1d(np.arange(n_items), empty), n_dup, replace=False)
    changed = np.arange(n_dup) % 2 == 1                         # half are re-listings with a new price/stock
    cat_rows = np.concatenate([np.arange(n_items), dup_src])
    price = np.array(cols["price"] + [cols["price"][i] * (1.1 if c else 1.0) for i, c in zip(dup_src, changed)])
    stock = np.concatenate([in_stock, in_stock[dup_src] ^ changed])
    perm = rng.permutation(len(cat_rows))
    pick_rows = cat_rows[perm]
    catalog = pa.table({
        "item_id": pa.array(item_ids).take(pick_rows),
        **{c: pa.array(cols[c], pa.string()).take(pick_rows) for c in ("title", "brand", "category", "description")},
        "price": pa.array(np.round(price[perm], 2)), "in_stock": pa.array(stock[perm]),
    })
    pq.write_table(catalog, out / "catalog.parquet")

    final_types = np.bincount(etype, minlength=len(TYPES))
    stats = {
        "rows": n_rows, "files": files, "timestamp_unit": "ms", "session_id": "always null",
        "nominal_time_range_ms": [START_MS, START_MS + SPAN_DAYS * DAY_MS],
        "event_types": {t: int(c) for t, c in zip(TYPES, final_types)},
        "human_users": int((counts > 0).sum()), "max_events_per_user": int(counts.max()),
        "searches": n_search, "searches_without_item": int((s_item < 0).sum()),
        "bots": n_bots, "bot_max_events": int(bot_counts.max()) if n_bots else 0,
        "bot_user_ids": [user_vocab[n_users + b].as_py() for b in range(n_bots)],
        "dirt": k, "dirt_rows": sum(k.values()), "dirt_share": round(sum(k.values()) / n_rows, 4),
        "unknown_item_pool": n_unknown,
        "catalog": {"rows": len(cat_rows), "items": n_items, "empty_title": (n_empty + 1) // 2,
                    "null_title": n_empty // 2, "exact_duplicates": int((~changed).sum()),
                    "conflicting_duplicates": int(changed.sum())},
        "seconds": round(time.perf_counter() - t0, 1),
    }
    marker.write_text(json.dumps({"params": params, "stats": stats}, indent=2) + "\n")  # last: a crash is no cache
    say(f"done in {stats['seconds']}s: {out}")
    return stats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True)
    parser.add_argument("--events", type=int, default=5_000_000)
    parser.add_argument("--users", type=int, default=200_000)
    parser.add_argument("--items", type=int, default=50_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--files", type=int, default=10)
    args = parser.parse_args()
    stats = generate_logs(args.out, args.events, args.users, args.items, args.seed, args.files,
                          log=lambda msg: print(f"[{time.strftime('%H:%M:%S')}] [generate] {msg}", flush=True))
    print(json.dumps({k: v for k, v in stats.items() if k != "bot_user_ids"}, indent=2))


if __name__ == "__main__":
    main()
