"""Search evaluation end to end on a slice of the real Home Depot data: preprocess (Ray job) holds
queries out of training, then jobs' run_search_evaluation ranks the slice's whole catalog for exactly
those queries with the real MiniLM zero-shot, BM25 and both fused; then the index job's artifacts are
deployed from serve_configs/local.yaml and /v1/search answers the same queries over HTTP
(bench/served_quality.py), scoring what evaluate_search's hybrid scores."""

from __future__ import annotations

import json

import pandas as pd
import pyarrow.dataset as pads
import pytest
import yaml
from bench_modules import load_bench_module

from recsys.artifacts import ArtifactNotFound, resolve_artifact
from recsys.data.config import PreprocessConfig, SourceConfig
from recsys.data.holdout import is_held_out_query
from recsys.data.pipeline import run_preprocess
from recsys.eval.search_config import SearchEvalConfig
from recsys.eval.search_job import run_search_evaluation
from recsys.index.build import run_build_index
from recsys.index.config import IndexConfig
from recsys.index.faiss_index import load_item_index
from recsys.train.search_ranker import run_search_ranker_training
from recsys.train.search_ranker_config import SearchRankerConfig
from tests.conftest import REPO_ROOT

pytestmark = pytest.mark.timeout(480)

ROWS = 1500   # first rows of train.csv: ~600 products, ~1,000 queries (~200 held out)


@pytest.fixture()
def homedepot_slice(shared_data, tmp_path):
    source = shared_data / "homedepot" / "train.csv"
    if not source.is_file():
        pytest.skip(f"Home Depot data not found at {source}")
    frame = pd.read_csv(source, encoding="latin-1", nrows=ROWS, dtype=str, keep_default_na=False)
    folder = tmp_path / "homedepot"
    folder.mkdir()
    frame.to_csv(folder / "train.csv", index=False, encoding="latin-1")
    frame["relevance"] = frame["relevance"].astype(float)
    return folder, frame


def test_held_out_queries_are_evaluated_and_never_trained_on(ray_cluster, recsys_home, homedepot_slice,
                                                             serve_config_deploy):
    folder, frame = homedepot_slice
    summary = run_preprocess(PreprocessConfig(source=SourceConfig(path=str(folder)), num_partitions=2))
    data_dir = recsys_home / "artifacts" / "data" / summary["version"]

    # Preprocessing: no training pair comes from a held-out query, and the summary counts them.
    clicks = frame[frame["relevance"] >= 2.5]
    held_clicks = clicks[[is_held_out_query(q, 0.2) for q in clicks["search_term"]]]
    pairs = pads.dataset(data_dir / "train_pairs").to_table().to_pandas()
    anchors = set(pairs.loc[pairs["kind"] == "search", "anchor_text"])
    assert anchors and not {q for q in anchors if is_held_out_query(q, 0.2)}
    assert summary["train_pairs"]["held_out_search_clicks"] == len(held_clicks) > 40
    assert summary["train_pairs"]["held_out_user_queries"] == held_clicks["search_term"].nunique()
    assert summary["train_pairs"]["search"] == len(clicks) - len(held_clicks)

    cfg = SearchEvalConfig(data=summary["version"], model="default", judgments=str(folder),
                           methods=["zero_shot", "bm25", "hybrid"], ks=[10, 50], embed_concurrency=1)
    result = run_search_evaluation(cfg)

    # The evaluated queries are exactly the held-out ones with a judged gain, computed here from the CSV.
    best = frame.groupby("search_term")["relevance"].max()
    expected = [q for q, r in best.items() if is_held_out_query(q, 0.2) and r > 1.0]
    report = json.loads((recsys_home / "artifacts" / "eval" / result["version"] / "metrics.json").read_text())
    assert report["queries"]["evaluated_queries"] == len(expected) > 80
    assert report["items"] == frame["product_uid"].nunique()
    for method in ("zero_shot", "bm25", "hybrid"):
        m = report["metrics"][method]
        assert m["queries"] == len(expected)
        # A random order over ~600 items scores ~0.02 NDCG@10; both real methods are far above it.
        assert 0.15 < m["ndcg@10"] <= m["ndcg@50"] <= 1.0, (method, m)
        assert 0 < m["recall@10"] <= m["recall@50"] <= 1.0
    assert report["models"]["zero_shot"].startswith("zero-shot:") and report["models"]["bm25"].startswith("bm25s(")
    table = (recsys_home / "artifacts" / "eval" / result["version"] / "report.md").read_text()
    assert "| zero_shot |" in table and "| bm25 |" in table and "| hybrid |" in table
    hybrid, dense, bm25 = (report["metrics"][m]["ndcg@10"] for m in ("hybrid", "zero_shot", "bm25"))
    assert hybrid > max(dense, bm25), f"fusing the two lists should beat each: {hybrid} vs {dense}, {bm25}"

    # Served: the index job's Faiss + BM25, deployed as the README deploys, answers the same queries over
    # HTTP; what it answers scores what evaluate_search's hybrid scored (the Reranker's dedupe may merge
    # listings of one product, so not to the digit).
    run_build_index(IndexConfig(model="default", data=summary["version"]))
    bench = load_bench_module("served_quality")
    args = bench.parse_args(["search", "--data", summary["version"], "--judgments", str(folder), "--ks", "10", "50"])
    index = load_item_index(resolve_artifact("indexes", "latest"))
    item_ids = [str(i) for i in index.item_ids]
    ev = bench.held_out_queries(args, item_ids)
    assert len(ev.queries) == len(expected)
    config = bench.served_config(args)
    assert yaml.safe_load((REPO_ROOT / "serve_configs" / "local.yaml").read_text())["applications"][0]["import_path"] \
        == config["applications"][0]["import_path"]
    url = serve_config_deploy({"applications": config["applications"]})
    answers, latencies = bench.asyncio.run(bench.replay_search(url, ev.queries, 50, 4))
    served = bench.summarize_ranks(ev, {"served": bench.ranks_from_answers(ev, answers, item_ids)}, [10, 50])["served"]
    offline = bench.summarize_ranks(ev, bench.offline_search(ev, index, bench.search_settings(config)), [10, 50])
    assert offline["hybrid (offline)"]["ndcg@10"] == pytest.approx(hybrid, abs=1e-6), "bench and job agree"
    assert served["ndcg@10"] == pytest.approx(hybrid, abs=0.02), (served, hybrid)
    assert len(latencies) == len(ev.queries) and all(len(a) == 50 for a in answers)

    # The learned search ranker: trained on the slice's other queries over the same candidates, served by
    # a redeploy of the same app (search_ranker set); the held-out queries get their answers from it.
    ranker = run_search_ranker_training(SearchRankerConfig(data=summary["version"], judgments=str(folder),
                                                           num_trees=50, min_data_in_leaf=5))
    assert ranker["validation"]["queries"]["train"] > 300 and ranker["validation"]["trees"] >= 1, ranker
    assert not set(ev.queries) & set(_trained_queries(ranker["path"], folder, summary["version"])), "held out"
    ranked_args = bench.parse_args(["search", "--data", summary["version"], "--judgments", str(folder),
                                    "--search-ranker", "latest"])
    serve_config_deploy({"applications": bench.served_config(ranked_args)["applications"]})
    answers, _ = bench.asyncio.run(bench.replay_search(url, ev.queries, 50, 4))
    learned = bench.summarize_ranks(ev, {"learned": bench.ranks_from_answers(ev, answers, item_ids)}, [10])["learned"]
    assert 0.15 < learned["ndcg@10"] <= 1.0, learned


def _trained_queries(ranker_dir, folder, data_version) -> set[str]:
    """The queries the search ranker's job read: its judgments minus the data version's held-out ones."""
    from recsys.artifacts import read_manifest
    from recsys.eval.search import holdout_fraction
    from recsys.train.search_ranker import training_gains

    cfg = SearchRankerConfig(data=data_version, judgments=str(folder))
    fraction = holdout_fraction(read_manifest(resolve_artifact("data", data_version)))
    return set(training_gains(cfg, resolve_artifact("data", data_version), fraction)["query"])

    # Wrong references fail before any work, naming what was asked for.
    with pytest.raises(ArtifactNotFound, match="'no-such-version'"):
        run_search_evaluation(cfg.model_copy(update={"data": "no-such-version"}))
    with pytest.raises(ArtifactNotFound, match="'no-such-model'"):
        run_search_evaluation(cfg.model_copy(update={"model": "no-such-model"}))
