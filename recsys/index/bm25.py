"""BM25 over catalog texts: the lexical half of hybrid search, and the baseline search evaluation
must beat. build_index saves one beside the Faiss index (same item order), so a swap changes both.

bm25s (sparse-matrix BM25) was picked over rank_bm25 by speed on the 54,667 Home Depot
titles: 0.08 ms vs 60 ms per query for a full score vector (indexing 4.4 s vs 1.4 s).
Titles and queries go through the same tokenizer (lower-case, words of 2+ characters,
optional English stopwords and Snowball stemming), so a query word that never occurs in
the catalog simply scores nothing.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

# The settings a saved index was built with: queries must be tokenised the same way.
SETTINGS_FILE = "settings.json"


class BM25Index:
    """Every catalog text indexed once; `scores(queries)` -> float32 [Q, N] over all N items."""

    def __init__(self, texts: Sequence[str], k1: float = 1.5, b: float = 0.75, stopwords: str | None = "en",
                 stemmer: str | None = "english"):
        import bm25s

        if not len(texts):
            raise ValueError("BM25Index needs at least one catalog text")
        self.settings: dict[str, Any] = {"k1": k1, "b": b, "stopwords": stopwords, "stemmer": stemmer}
        self.n_items = len(texts)
        self.tokenizer = _tokenizer(stopwords, stemmer)
        corpus = self.tokenizer.tokenize(list(texts), return_as="tuple", show_progress=False)
        self.model = bm25s.BM25(k1=k1, b=b)
        self.model.index(corpus, show_progress=False)
        self._find_empty_token()

    def _find_empty_token(self) -> None:
        # bm25s gives texts with no token an empty token "" and maps unknown query words to it;
        # left in, a query word the catalog lacks would score exactly the empty titles.
        self.empty_token = self.tokenizer.get_vocab_dict().get("")

    def save(self, directory: str | Path) -> None:
        """bm25s' own files (numpy arrays and JSON, no pickle) + the tokenizer's vocabulary + settings."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.model.save(str(directory), show_progress=False)
        self.tokenizer.save_vocab(str(directory))
        (directory / SETTINGS_FILE).write_text(json.dumps({**self.settings, "n_items": self.n_items}))

    @classmethod
    def load(cls, directory: str | Path) -> BM25Index:
        """An index saved by `save`; arrays are read without pickle (allow_pickle=False)."""
        import bm25s

        directory = Path(directory)
        settings = json.loads((directory / SETTINGS_FILE).read_text())
        self = cls.__new__(cls)
        self.n_items = int(settings.pop("n_items"))
        self.settings = settings
        self.tokenizer = _tokenizer(settings["stopwords"], settings["stemmer"])
        self.tokenizer.load_vocab(str(directory))
        self.model = bm25s.BM25.load(str(directory), allow_pickle=False, show_progress=False)
        self._find_empty_token()
        return self

    def query_token_ids(self, queries: Sequence[str]) -> list[list[int]]:
        ids = self.tokenizer.tokenize(list(queries), update_vocab=False, return_as="ids", show_progress=False)
        return [[int(t) for t in q if t != self.empty_token] for q in ids]

    def scores(self, queries: Sequence[str]) -> np.ndarray:
        """float32 [len(queries), n_items]; a query with no catalog word scores 0 everywhere."""
        out = np.zeros((len(queries), self.n_items), dtype=np.float32)
        for row, ids in enumerate(self.query_token_ids(queries)):
            if ids:
                out[row] = self.model.get_scores_from_ids(ids)
        return out

    def term_rows(self, query: str) -> np.ndarray:
        """float32 [T, n_items]: one BM25 row per distinct query word the catalog knows (T = 0 for none);
        their sum is the query's score row (a repeated word counts once, as in `search`'s ranking
        features) and a row's non-zero columns are the items holding that word."""
        ids = list(dict.fromkeys(self.query_token_ids([query])[0]))
        if not ids:
            return np.zeros((0, self.n_items), dtype=np.float32)
        return np.stack([self.model.get_scores_from_ids([t]) for t in ids]).astype(np.float32)

    def search(self, query: str, k: int) -> list[tuple[int, float]]:
        """One query -> up to k (item position, BM25 score), best first; only items sharing a word with it
        (none for a query of stopwords or punctuation alone)."""
        ids = self.query_token_ids([query])[0]
        if not ids or k < 1:
            return []
        scores = self.model.get_scores_from_ids(ids)   # [N]
        n = min(k, int((scores > 0).sum()))
        if n == 0:
            return []
        top = np.argpartition(-scores, n - 1)[:n]
        top = top[np.argsort(-scores[top], kind="stable")]
        return [(int(p), float(scores[p])) for p in top]

    def top_items(self, queries: Sequence[str], k: int, block: int = 256) -> list[list[int]]:
        """Per query, the positions of its k best-scoring items, best first; only items sharing a word with
        the query (a query with no catalog word gets none). Scored `block` queries at a time, so mining
        thousands of training queries never holds a [Q, N] matrix."""
        out: list[list[int]] = []
        for start in range(0, len(queries), block):
            scores = self.scores(queries[start:start + block])
            n = min(k, self.n_items)
            top = np.argpartition(-scores, n - 1, axis=1)[:, :n]
            for row, cols in zip(scores, top):
                cols = cols[np.argsort(-row[cols], kind="stable")]
                out.append([int(c) for c in cols if row[c] > 0])
        return out


def _tokenizer(stopwords: str | None, stemmer: str | None):  # -> bm25s.tokenization.Tokenizer
    """Lower-case words of 2+ characters, optional English stopwords, optional Snowball stemming."""
    from bm25s.tokenization import Tokenizer

    stem = None
    if stemmer is not None:
        import Stemmer  # PyStemmer: Snowball stemmers in C

        stem = Stemmer.Stemmer(stemmer)
    return Tokenizer(stopwords=stopwords or [], stemmer=stem)
