"""evaluate_search stage: held-out search queries ranked over the whole catalog, per method.

Every method ranks all catalog items for the same held-out queries in the same run: the
fine-tuned model (shared query/item encoder), its base encoder zero-shot, and BM25 over the
same item texts. Encoders embed through Ray Data actors (recsys.index.embed); everything
else is the pure logic in recsys.eval.search.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from recsys.artifacts import mark_latest, new_version_dir, read_manifest, resolve_artifact, write_json
from recsys.eval.metrics import format_markdown_table
from recsys.eval.search import (
    EvalQueries,
    held_out_judgments,
    holdout_fraction,
    rank_judged_items,
    read_judgments,
    summarize_search,
)
from recsys.eval.search_config import SearchEvalConfig
from recsys.index.bm25 import BM25Index
from recsys.index.build import load_item_texts, resolve_model
from recsys.index.embed import embed_texts
from recsys.index.hybrid import fuse_score_rows
from recsys.models.encoder import query_tower_path, resolve_model_path
from recsys.runtime import log

JOB = "evaluate_search"


def encoder_for(method: str, model_ref: str) -> tuple[str, str, dict]:
    """(model path, label, model manifest) for fine_tuned or zero_shot (the model's base encoder)."""
    model_path, version, manifest = resolve_model(model_ref)
    if method == "zero_shot":
        model_path = manifest.get("base_model", resolve_model_path("default"))
        # The packaged MiniLM lives in a folder named 'model'; name its package instead.
        base = Path(model_path)
        version = f"zero-shot:{base.parent.name if base.name == 'model' else base.name}"
    return model_path, version, manifest


def embed_queries_and_items(model_path: str, manifest: dict, queries: list[str], item_ids: list[str],
                            item_texts: list[str], cfg: SearchEvalConfig) -> tuple[np.ndarray, np.ndarray]:
    """-> (query vectors [Q, D], item vectors [N, D]) at the model's own query/item max lengths."""
    q_len, i_len = int(manifest.get("query_max_length", 96)), int(manifest.get("item_max_length", 48))
    items = embed_texts(item_ids, item_texts, model_path, i_len, cfg.embed_batch_size, cfg.embed_concurrency)
    query_vectors = embed_texts([str(i) for i in range(len(queries))], queries, query_tower_path(model_path), q_len,
                                cfg.embed_batch_size, cfg.embed_concurrency)
    return query_vectors, items


class MethodScores:
    """Score rows [b - a, N] per method over the held-out queries. Each encoder embeds the queries and
    the catalog once: `hybrid` fuses the fine-tuned vectors' rows with BM25's (recsys.index.hybrid,
    the function /v1/search calls) without embedding again."""

    def __init__(self, ev: EvalQueries, item_ids: list[str], item_texts: list[str], cfg: SearchEvalConfig,
                 encoders: dict[str, tuple[str, str, dict]]):
        self.ev, self.item_ids, self.item_texts, self.cfg, self.encoders = ev, item_ids, item_texts, cfg, encoders
        self._vectors: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        self._bm25: BM25Index | None = None

    def bm25(self) -> BM25Index:
        if self._bm25 is None:
            self._bm25 = BM25Index(self.item_texts, **self.cfg.bm25.model_dump())
        return self._bm25

    def vectors(self, method: str) -> tuple[np.ndarray, np.ndarray]:
        """(query vectors [Q, D], item vectors [N, D]) of fine_tuned or zero_shot, embedded once."""
        if method not in self._vectors:
            model_path, _, manifest = self.encoders[method]
            self._vectors[method] = embed_queries_and_items(model_path, manifest, self.ev.queries, self.item_ids,
                                                            self.item_texts, self.cfg)
        return self._vectors[method]

    def label(self, method: str) -> str:
        bm25 = "bm25s(" + ", ".join(f"{k}={v}" for k, v in self.cfg.bm25.model_dump().items()) + ")"
        if method == "bm25":
            return bm25
        if method == "hybrid":
            return f"rrf({self.encoders['fine_tuned'][1]}, {bm25}, {self.cfg.hybrid.model_dump()})"
        return self.encoders[method][1]

    def block(self, method: str, a: int, b: int) -> np.ndarray:
        if method == "bm25":
            return self.bm25().scores(self.ev.queries[a:b])
        queries, items = self.vectors("fine_tuned" if method == "hybrid" else method)
        dense = queries[a:b] @ items.T
        if method != "hybrid":
            return dense
        return fuse_score_rows(dense, self.bm25().scores(self.ev.queries[a:b]), self.cfg.hybrid)

    def ranks(self, method: str) -> tuple[np.ndarray, str]:
        """Rank of every judged pair under one method, and what ranked them."""
        return (rank_judged_items(lambda a, b: self.block(method, a, b), self.ev, len(self.item_ids)),
                self.label(method))


def run_search_evaluation(cfg: SearchEvalConfig) -> dict:
    started = time.perf_counter()
    data_dir = resolve_artifact("data", cfg.data)
    data_manifest = read_manifest(data_dir)
    fraction = holdout_fraction(data_manifest)
    # Resolve every model before any work, so a wrong model version fails in seconds.
    needed = {"fine_tuned" if m == "hybrid" else m for m in cfg.methods} - {"bm25"}   # hybrid = fine_tuned + bm25
    encoders: dict[str, tuple[str, str, dict]] = {m: encoder_for(m, cfg.model) for m in sorted(needed)}
    item_ids, _, item_texts = load_item_texts(data_dir)
    judgments, judgment_stats = read_judgments(cfg.judgments)
    ev = held_out_judgments(judgments, {item: i for i, item in enumerate(item_ids)}, fraction, cfg.relevance_floor,
                            cfg.relevant_threshold, cfg.max_queries, cfg.seed)
    n_queries, n_items = len(ev.queries), len(item_ids)
    log(JOB, f"{n_queries} held-out queries ({ev.counts}) x {n_items} items, holdout fraction {fraction}, "
             f"methods {cfg.methods}")

    results: dict[str, dict] = {}
    models: dict[str, str] = {}
    scores = MethodScores(ev, item_ids, item_texts, cfg, encoders)
    for method in cfg.methods:
        t0 = time.perf_counter()
        ranks, models[method] = scores.ranks(method)
        results[method] = {**summarize_search(ev, ranks, cfg.ks), "seconds": round(time.perf_counter() - t0, 1)}
        log(JOB, f"{method}: " + ", ".join(f"{k}={v:.4f}" for k, v in results[method].items()
                                           if k.startswith(("ndcg", "recall"))) + f" ({results[method]['seconds']}s)")

    columns = [f"ndcg@{k}" for k in cfg.ks] + [f"recall@{k}" for k in cfg.ks] + ["queries"]
    table = format_markdown_table(results, columns)
    version, out = new_version_dir("eval")
    report = {"version": version, "kind": "search", "data_version": data_manifest["version"],
              "source": data_manifest.get("source"), "judgments": str(Path(cfg.judgments).expanduser().resolve()),
              "search_holdout_fraction": fraction, "items": n_items, "models": models,
              "queries": ev.counts, "judgments_read": judgment_stats, "metrics": results,
              "protocol": {"gain": f"max(relevance - {cfg.relevance_floor}, 0) on judged pairs, 0 unjudged",
                           "ties": "broken by catalog position", "recall": f"pairs with relevance >= "
                                                                           f"{cfg.relevant_threshold}"},
              "config": cfg.model_dump()}
    write_json(out / "metrics.json", report)
    seconds = ", ".join(f"{m} {r['seconds']}s" for m, r in results.items())
    (out / "report.md").write_text(
        f"# Search evaluation {version}\n\ndata {data_manifest['version']} ({data_manifest.get('source')}), "
        f"{n_queries} held-out queries (holdout fraction {fraction}; {ev.counts}), full retrieval over "
        f"{n_items} items; gain = relevance - {cfg.relevance_floor} on judged pairs, 0 unjudged; ties broken by "
        f"catalog position; recall over pairs with relevance >= {cfg.relevant_threshold}; models {models}\n\n"
        f"{table}\n\nseconds per method: {seconds}\n")
    mark_latest("eval", version)
    log(JOB, f"report -> {out / 'report.md'} ({time.perf_counter() - started:.1f}s)\n{table}")
    return {"version": version, "path": str(out), "queries": ev.counts, "metrics": results}
