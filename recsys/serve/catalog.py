"""Lookups the serving stages share, loaded once per replica from a data version dir. No Ray.

Reads (see schema.py): catalog.parquet (CATALOG_COLUMNS), sequences/ (SEQUENCE_COLUMNS:
user_id, items) and popularity.parquet (POPULARITY_COLUMNS). Everything is held in plain
dicts: a replica answers lookups for a few hundred candidates per request, and dict access
is cheaper than any columnar search at that size.
"""

from __future__ import annotations

import logging
import re
import unicodedata
from collections.abc import Iterable, Mapping
from pathlib import Path

import pyarrow.dataset as ds
import pyarrow.parquet as pq

logger = logging.getLogger(__name__)

CATALOG_FILE = "catalog.parquet"
SEQUENCES_DIR = "sequences"
POPULARITY_FILE = "popularity.parquet"

_CATALOG_READ_COLUMNS = ("item_id", "title", "category", "in_stock")
# What the Reranker's rules read on top (brand/price filters and boosts, dedupe). product_group
# is outside CATALOG_COLUMNS: catalogs that have one (a parent ASIN, a style id) may add it.
_RULE_COLUMNS = ("brand", "price", "product_group")

_NOT_ALNUM = re.compile(r"[^0-9a-z]+")


def normalise_title(title: str) -> str:
    """Lower-case alphanumeric words of a title: 'Cast-Iron  Pan!' -> 'cast iron pan'.

    The dedupe key of an item without a product group. It only catches listings whose titles
    differ in case, spacing or punctuation; 'Pan 10 inch' and 'Pan 12 inch' stay two products.
    """
    return " ".join(_NOT_ALNUM.split(unicodedata.normalize("NFKC", title).casefold())).strip()


def _require_columns(path: Path | str, present: Iterable[str], needed: Iterable[str]) -> None:
    missing = [c for c in needed if c not in set(present)]
    if missing:
        raise ValueError(f"{path} lacks column(s) {missing}; has {sorted(present)}")


class CatalogLookup:
    """item_id -> title / category / in_stock (and, for the Reranker, brand / price / product group),
    from a catalog.parquet.

    A null in_stock counts as out of stock: showing an item we cannot sell is worse than
    hiding one we could. Null titles, categories and brands become ""; a null price stays None.
    `prices` is None when the catalog has no price column at all (a price rule cannot work).
    """

    def __init__(self, titles: Mapping[str, str], categories: Mapping[str, str],
                 in_stock: Mapping[str, bool], brands: Mapping[str, str] | None = None,
                 prices: Mapping[str, float | None] | None = None,
                 product_groups: Mapping[str, str] | None = None):
        self.titles: dict[str, str] = dict(titles)
        self.categories: dict[str, str] = dict(categories)
        self.stock: dict[str, bool] = dict(in_stock)
        self.brands: dict[str, str] = dict(brands or {})
        self.prices: dict[str, float | None] | None = dict(prices) if prices is not None else None
        self.product_groups: dict[str, str] = dict(product_groups or {})

    @classmethod
    def from_parquet(cls, path: str | Path, rule_facts: bool = False) -> CatalogLookup:
        """Load the lookup; `rule_facts` also loads brand, price and product_group where the file has
        them (only the Reranker needs them; other stages skip them to save replica memory)."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"catalog file {path} does not exist")
        names = pq.read_schema(path).names
        _require_columns(path, names, _CATALOG_READ_COLUMNS)
        extra = [c for c in _RULE_COLUMNS if rule_facts and c in names]
        table = pq.read_table(path, columns=[*_CATALOG_READ_COLUMNS, *extra])
        ids = table.column("item_id").to_pylist()
        titles = table.column("title").to_pylist()
        cats = table.column("category").to_pylist()
        stock = table.column("in_stock").to_pylist()
        null_ids = sum(1 for i in ids if i is None)
        if null_ids:
            logger.warning("%s: %d rows with a null item_id are not served", path, null_ids)
        rows = [(i, t, c, s) for i, t, c, s in zip(ids, titles, cats, stock) if i is not None]
        dupes = len(rows) - len({r[0] for r in rows})
        if dupes:
            logger.warning("%s: %d duplicate item_id rows; the last row of each wins", path, dupes)
        facts = {c: dict(zip(ids, table.column(c).to_pylist())) for c in extra}
        if rule_facts and "product_group" not in facts:
            logger.info("%s has no product_group column: dedupe groups items by normalised title", path)
        return cls(
            titles={i: t or "" for i, t, _, _ in rows},
            categories={i: c or "" for i, _, c, _ in rows},
            in_stock={i: bool(s) for i, _, _, s in rows},
            brands={i: b or "" for i, b in facts.get("brand", {}).items() if i is not None},
            prices=({i: None if p is None else float(p) for i, p in facts["price"].items() if i is not None}
                    if "price" in facts else None),
            product_groups={i: str(g) for i, g in facts.get("product_group", {}).items()
                            if i is not None and g is not None and str(g).strip()},
        )

    def __len__(self) -> int:
        return len(self.titles)

    def known(self, item_id: str) -> bool:
        return item_id in self.titles

    def title(self, item_id: str) -> str:
        """The item's title, "" for an item the catalog does not know."""
        return self.titles.get(item_id, "")

    def category(self, item_id: str) -> str:
        return self.categories.get(item_id, "")

    def in_stock(self, item_id: str) -> bool:
        """False for unknown items as well as for out-of-stock ones."""
        return self.stock.get(item_id, False)

    def brand(self, item_id: str) -> str:
        return self.brands.get(item_id, "")

    def price(self, item_id: str) -> float | None:
        return self.prices.get(item_id) if self.prices is not None else None

    def product_group(self, item_id: str) -> str:
        """The dedupe key: the catalog's product_group; without one (no column, or null for this
        row) the normalised title, so re-listings of one product under new ids still collapse;
        "" (a group of its own) for an untitled item, which must not be merged with all others."""
        group = self.product_groups.get(item_id)
        if group:
            return f"group:{group}"   # prefixed so a group id never collides with a title
        title = normalise_title(self.title(item_id))
        return f"title:{title}" if title else ""


def load_user_histories(sequences_dir: str | Path) -> dict[str, list[str]]:
    """sequences/ Parquet shards -> {user_id: item ids, oldest first}.

    One row per user is the contract; if shards repeat a user the later row wins and the
    count is logged, so a bad preprocess run is visible rather than silently merged.
    """
    sequences_dir = Path(sequences_dir)
    if not sequences_dir.is_dir():
        raise FileNotFoundError(f"sequences directory {sequences_dir} does not exist")
    dataset = ds.dataset(str(sequences_dir), format="parquet")
    _require_columns(sequences_dir, dataset.schema.names, ("user_id", "items"))
    table = dataset.to_table(columns=["user_id", "items"])
    histories: dict[str, list[str]] = {}
    repeats = 0
    for user, items in zip(table.column("user_id").to_pylist(), table.column("items").to_pylist()):
        if user is None:
            continue
        if user in histories:
            repeats += 1
        histories[user] = [i for i in (items or []) if i is not None]
    if repeats:
        logger.warning("%s: %d users appear in more than one row; the last row wins", sequences_dir, repeats)
    return histories


def load_popularity(path: str | Path) -> tuple[list[str], dict[str, int]]:
    """popularity.parquet -> (item ids by count desc, then id asc; {item_id: count}).

    Repeated rows for one item add up (shards of a count job may overlap per item).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"popularity file {path} does not exist")
    _require_columns(path, pq.read_schema(path).names, ("item_id", "count"))
    table = pq.read_table(path, columns=["item_id", "count"])
    counts: dict[str, int] = {}
    for item, count in zip(table.column("item_id").to_pylist(), table.column("count").to_pylist()):
        if item is None:
            continue
        if count is None or count < 0:
            raise ValueError(f"{path}: item_id={item!r} has count={count!r}; counts must be >= 0")
        counts[item] = counts.get(item, 0) + int(count)
    # Ties broken by id so cold-start answers are deterministic across replicas.
    ordered = sorted(counts, key=lambda i: (-counts[i], i))
    return ordered, counts
