"""The learned search ranker: LambdaMART learns a planted signal, saves and loads as text, is served by
the Ranker's rank_candidates, and a wrong artifact fails the deploy naming the field (no Ray)."""

from __future__ import annotations

import numpy as np
import pytest

from recsys.artifacts import mark_latest, new_version_dir, write_manifest
from recsys.models.ltr import LTRModel, gain_labels, label_gain
from recsys.models.ranker import RankerConfig
from recsys.models.search_features import (
    RETRIEVER_FEATURES,
    SEARCH_FEATURES,
    SEARCH_RANKER_TYPE,
    ranks_in,
    term_rows_stats,
)
from recsys.serve.app import resolve_ranker
from recsys.serve.rank import rank_candidates


def planted(n_queries: int, per_query: int, seed: int) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """Rows whose gain is set by the `coverage` column alone; the rrf column is noise."""
    rng = np.random.default_rng(seed)
    x = rng.random((n_queries * per_query, len(SEARCH_FEATURES))).astype(np.float32)
    gain = np.where(x[:, SEARCH_FEATURES.index("coverage")] > 0.8, 2.0,
                    np.where(x[:, SEARCH_FEATURES.index("coverage")] > 0.5, 1.0, 0.0))
    return x, gain, [per_query] * n_queries


def test_lambdamart_learns_the_planted_signal_and_round_trips(tmp_path) -> None:
    x, gain, sizes = planted(60, 20, seed=0)
    vx, vgain, vsizes = planted(20, 20, seed=1)
    model = LTRModel.fit(x, gain, sizes, SEARCH_FEATURES, valid=(vx, vgain, vsizes), num_trees=50,
                         min_data_in_leaf=5)
    scores = model.score(vx)
    assert np.corrcoef(scores, vgain)[0, 1] > 0.8, "the score should follow the planted gain"
    model.save(tmp_path)
    again = LTRModel.load(tmp_path, SEARCH_FEATURES)
    np.testing.assert_allclose(again.score(vx), scores, rtol=1e-6)
    with pytest.raises(ValueError, match="retrain the ranker"):
        LTRModel.load(tmp_path, RETRIEVER_FEATURES)
    with pytest.raises(ValueError, match=r"want \[C, 9\]"):
        model.score(vx[:, :3])
    assert list(gain_labels(np.array([0.0, 0.33, 1.0, 2.0, 9.0]))) == [0, 3, 10, 20, 30]
    assert label_gain()[20] == pytest.approx(2.0), "label 20 is worth gain 2, as the evaluation counts it"


def test_bagged_ensemble_scores_the_mean_of_distinct_members_and_round_trips(tmp_path) -> None:
    x, gain, sizes = planted(60, 20, seed=0)
    vx, vgain, _ = planted(20, 20, seed=1)
    model = LTRModel.fit(x, gain, sizes, SEARCH_FEATURES, num_trees=30, min_data_in_leaf=5, ensemble=3)
    members = [m.predict(vx) for m in model.boosters]
    assert len(members) == 3 and not np.allclose(members[0], members[1]), "bagged seeds must differ"
    np.testing.assert_allclose(model.score(vx), np.mean(members, axis=0), rtol=1e-9)
    assert np.corrcoef(model.score(vx), vgain)[0, 1] > 0.8
    model.save(tmp_path)
    assert sorted(p.name for p in tmp_path.glob("model*.txt")) == ["model.1.txt", "model.2.txt", "model.txt"]
    np.testing.assert_allclose(LTRModel.load(tmp_path, SEARCH_FEATURES).score(vx), model.score(vx), rtol=1e-6)
    with pytest.raises(ValueError, match="ensemble must be >= 1"):
        LTRModel.fit(x, gain, sizes, SEARCH_FEATURES, ensemble=0)


def test_ranker_serves_the_learned_score_for_search_only(tmp_path) -> None:
    x, gain, sizes = planted(40, 20, seed=2)
    model = LTRModel.fit(x, gain, sizes, SEARCH_FEATURES, num_trees=30, min_data_in_leaf=5)
    cands = [{"item_id": f"i{n}", "retrieval_score": 0.5, "source": "ann+bm25", "features": x[n, :-1].tolist()}
             for n in range(6)]
    counts = {f"i{n}": n for n in range(6)}
    ranked = rank_candidates(cands, counts, RankerConfig(), 5.0, "search", model)
    pop = np.log1p(np.arange(6)) / np.log1p(5.0)
    want = 1 / (1 + np.exp(-model.score(np.concatenate([x[:6, :-1], pop[:, None]], axis=1).astype(np.float32))))
    assert [c["rank_score"] for c in ranked] == pytest.approx(want.tolist(), rel=1e-5)
    assert all("features" not in c for c in ranked), "features stay inside the ranking stage"
    # other lists, or candidates without features (an index built without BM25), keep the blend
    blend = rank_candidates(cands, counts, RankerConfig(), 5.0, "items", None)
    assert [c["rank_score"] for c in blend] == pytest.approx((0.5 + 0.1 * pop).tolist())
    bare = [{k: v for k, v in c.items() if k != "features"} for c in cands]
    assert [c["rank_score"] for c in rank_candidates(bare, counts, RankerConfig(), 5.0, "search", model)] \
        == pytest.approx([0.5] * 6), "search blend: popularity off"


def test_feature_helpers() -> None:
    rows = np.array([[0.0, 1.0, 2.0, 0.0], [0.0, 0.0, 3.0, 1.0]], dtype=np.float32)   # 2 words x 4 items
    score, coverage, best = term_rows_stats(rows, [2, 1, 0, -1])
    assert list(score) == [5.0, 1.0, 0.0, 0.0] and list(coverage) == [1.0, 0.5, 0.0, 0.0] and best == 5.0
    assert term_rows_stats(np.zeros((0, 4), np.float32), [0, 1])[2] == 0.0
    assert list(ranks_in(["b", "z", "a"], ["a", "b", "a"], depth=100)) == [2, 101, 1]


def resolve_search_ranker(ref, index):
    return resolve_ranker("search_ranker", ref, index, SEARCH_RANKER_TYPE, SEARCH_FEATURES, "the job")


def test_a_wrong_search_ranker_fails_the_deploy_naming_the_field(recsys_home) -> None:
    index = {"version": "idx1", "model_version": "m1"}
    with pytest.raises(ValueError, match=r"serve args search_ranker='latest': no rankers artifact yet"):
        resolve_search_ranker("latest", index)
    version, out = new_version_dir("rankers")
    write_manifest(out, {"kind": "ranker", "version": version})   # a cross-encoder's manifest has no type
    mark_latest("rankers", version)
    with pytest.raises(ValueError, match=r"search_ranker='latest': .* not a 'search_ltr' one"):
        resolve_search_ranker("latest", index)
    write_manifest(out, {"kind": "ranker", "version": version, "type": SEARCH_RANKER_TYPE, "model_version": "m0",
                         "features": list(SEARCH_FEATURES)})
    with pytest.raises(ValueError, match=r"search_ranker=.*trained on model 'm0' but index 'idx1' serves model 'm1'"):
        resolve_search_ranker(version, index)
    write_manifest(out, {"kind": "ranker", "version": version, "type": SEARCH_RANKER_TYPE, "model_version": "m1",
                         "features": list(SEARCH_FEATURES)})
    assert resolve_search_ranker(version, index) == str(out)
    assert resolve_search_ranker(None, index) is None


def test_recommend_feature_rows_give_every_source_its_view() -> None:
    from recsys.models.recommend_features import RECOMMEND_RETRIEVER_FEATURES, recommend_feature_rows, source_columns

    cands = [{"item_id": "a", "retrieval_score": 0.9, "source": "ann"},
             {"item_id": "b", "retrieval_score": 0.8, "source": "cooccurrence"},
             {"item_id": "n", "retrieval_score": 0.5, "source": "fresh"}]
    by_source = {"ann": [("a", 0.9), ("b", 0.4)], "cooccurrence": [("b", 4.0), ("a", 2.0)], "fresh": [("n", 0.5)],
                 "ease": [("a", 0.2)]}
    rows = recommend_feature_rows(cands, by_source, {"ann": 100, "cooccurrence": 50, "ease": 30}, [0.9, 0.4, 0.1],
                                  [0.3, 0.2, 0.1], [0.6, 0.5, 0.4], history_length=4)
    col = {name: rows[:, j].tolist() for j, name in enumerate(RECOMMEND_RETRIEVER_FEATURES)}
    assert col["merged"] == pytest.approx([0.9, 0.8, 0.5]) and col["ann_rank"] == [1, 2, 101]
    assert col["cooc_score"] == pytest.approx([0.5, 1.0, 0.0]) and col["cooc_rank"] == [2, 1, 51]
    assert col["ease_score"] == pytest.approx([1.0, 0.0, 0.0]) and col["ease_rank"] == [1, 31, 31]
    assert col["history_cosine"] == pytest.approx([0.6, 0.5, 0.4])
    assert col["fresh"] == [0, 0, 1] and col["history_length"] == [4, 4, 4]
    assert source_columns(["x"], [], 7, scale_by_best=True)[1].tolist() == [8], "absent: quota + 1"
    assert col["recent_last"] == col["recent_last3"] == col["recent_share"] == [0, 0, 0], "no recent columns: zeros"


def test_recent_popularity_reads_the_end_of_each_sequence() -> None:
    from recsys.models.recent_popularity import RECENT_FEATURES, RecentPopularity

    # "old" was everyone's favourite early on; "new" is what two users did last; "mid" sits in a tail once.
    recent = RecentPopularity([["old", "old", "x", "mid", "new"], ["old", "y", "z", "w", "new"], ["old", "a"]],
                              tail=3, prior=1.0)
    col = dict(zip(RECENT_FEATURES, recent.columns(["new", "old", "mid", "unseen"]).T.tolist()))
    assert col["recent_last"] == pytest.approx([1.0, 0.0, 0.0, 0.0])       # 2 users end on new, the most
    assert col["recent_last3"] == pytest.approx([1.0, 0.5, 0.5, 0.0])      # tails: new 2, old 1, mid 1
    assert col["recent_share"] == pytest.approx([2 / 3, 1 / 5, 1 / 2, 0.0])  # tail count / (all + prior)
    rows = recommend_rows_with(recent)
    np.testing.assert_allclose(rows[:, -3:], recent.columns(["new", "old"]))


def recommend_rows_with(recent):
    from recsys.models.recommend_features import recommend_feature_rows

    cands = [{"item_id": "new", "retrieval_score": 0.9, "source": "ann"},
             {"item_id": "old", "retrieval_score": 0.8, "source": "ann"}]
    return recommend_feature_rows(cands, {"ann": [("new", 0.9), ("old", 0.8)]}, {"ann": 10}, [0.9, 0.8], [0, 0],
                                  [0, 0], 3, recent.columns(["new", "old"]))
