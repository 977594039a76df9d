"""evaluate stage: full-ranking Recall/NDCG/MRR of the fine-tuned model against baselines.

Every method ranks the whole catalog for every held-out user in the same run, so the
numbers are comparable: the fine-tuned encoder, the same base encoder zero-shot,
popularity and item co-occurrence (both fit on the training part of the sequences).
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pyarrow.dataset as pads
import torch

from recsys.artifacts import mark_latest, new_version_dir, read_manifest, resolve_artifact, write_json
from recsys.data.sequences import training_items
from recsys.data.text import history_text_for_items
from recsys.eval.baselines import CooccurrenceRecommender, popularity_scores
from recsys.eval.config import EvalConfig
from recsys.eval.metrics import format_markdown_table, summarize_ranks, target_ranks
from recsys.index.build import load_item_texts, resolve_model
from recsys.index.embed import embed_texts
from recsys.models.encoder import query_tower_path, resolve_model_path
from recsys.models.sequence_tower import USER_TOWER_DIR, WEIGHTS_FILE, item_matrix_for_catalog, load_user_tower
from recsys.runtime import log
from recsys.train.user_tower_data import held_out_rows, read_sequences

JOB = "evaluate"
USER_CHUNK = 2048


def load_eval_users(data_dir: Path, split: str, position: dict[str, int], max_users: int | None,
                    seed: int) -> tuple[list[str], list[list[int]], np.ndarray, list[list[int]]]:
    """-> (user ids, histories as item positions, target positions, training sequences of ALL users)."""
    target_column = "test_index" if split == "test" else "valid_index"
    seqs = pads.dataset(data_dir / "sequences", format="parquet").to_table(
        columns=["user_id", "items", "n_train", target_column]).to_pylist()
    train_sequences = [[position[i] for i in training_items(s["items"], s["n_train"]) if i in position]
                       for s in seqs]
    # A target counts only when it is in the catalog: the ranking is over catalog items.
    held = [s for s in seqs if s[target_column] >= 1 and s["items"][s[target_column]] in position]
    if max_users is not None and len(held) > max_users:
        rng = np.random.default_rng(seed)
        held = [held[i] for i in sorted(rng.choice(len(held), max_users, replace=False))]
    users = [s["user_id"] for s in held]
    histories = [[position[i] for i in s["items"][:s[target_column]] if i in position] for s in held]
    targets = np.array([position[s["items"][s[target_column]]] for s in held], dtype=np.int64)
    return users, histories, targets, train_sequences


def rank_by_scores(score_fn, targets: np.ndarray, histories: list[list[int]], exclude: bool) -> np.ndarray:
    """Chunked over users so [U, N] score matrices stay small."""
    ranks = []
    for start in range(0, len(targets), USER_CHUNK):
        stop = start + USER_CHUNK
        masks = [np.asarray(h, dtype=np.int64) for h in histories[start:stop]] if exclude else None
        ranks.append(target_ranks(score_fn(start, stop), targets[start:stop], masks))
    return np.concatenate(ranks) if ranks else np.zeros(0, dtype=np.int64)


def encoder_ranks(model_path: str, query_len: int, item_len: int, item_ids: list[str], item_texts: list[str],
                  history_texts: list[str], targets, histories, cfg: EvalConfig) -> tuple[np.ndarray, np.ndarray]:
    """Text user tower: -> (ranks, the item tower's [N, D] catalog vectors)."""
    items = embed_texts(item_ids, item_texts, model_path, item_len, cfg.embed_batch_size, cfg.embed_concurrency)
    keys = [str(i) for i in range(len(history_texts))]
    queries = embed_texts(keys, history_texts, query_tower_path(model_path), query_len, cfg.embed_batch_size,
                          cfg.embed_concurrency)
    return rank_by_scores(lambda a, b: queries[a:b] @ items.T, targets, histories, cfg.exclude_history), items


def sequence_tower_ranks(tower_dir: Path, data_dir: Path, cfg: EvalConfig, users: list[str], item_ids: list[str],
                         item_vectors: np.ndarray, targets: np.ndarray, histories: list[list[int]]) -> np.ndarray:
    """Sequence user tower over the same users, scored against its item vectors for this catalog."""
    tower, vocabulary, _ = load_user_tower(tower_dir)
    rows = held_out_rows(read_sequences(data_dir), {item: k for k, item in enumerate(vocabulary)},
                         tower.spec.max_length, cfg.split, set(users))
    if len(rows) != len(users):
        raise ValueError(f"the user tower in {tower_dir} knows the items of {len(rows)} of {len(users)} held-out "
                         f"users: it was trained on another catalog; evaluate it on its own data version")
    matrix = item_matrix_for_catalog(tower, vocabulary, item_ids, item_vectors)
    with torch.no_grad():
        user_vectors = tower.user_vectors(*(torch.from_numpy(a) for a in (rows.items, rows.events, rows.gaps)))
    return rank_by_scores(lambda a, b: user_vectors[a:b].numpy() @ matrix.T, targets, histories,
                          cfg.exclude_history)


def baseline_ranks(method: str, train_seqs: list[list[int]], n_items: int, targets: np.ndarray,
                   histories: list[list[int]], exclude: bool) -> np.ndarray:
    """Popularity or item co-occurrence, fit on the training part of every sequence."""
    if method == "popularity":
        pop = popularity_scores(train_seqs, n_items)
        return rank_by_scores(lambda a, b: np.broadcast_to(pop, (len(targets[a:b]), n_items)),
                              targets, histories, exclude)
    model = CooccurrenceRecommender().fit(train_seqs, n_items)
    return rank_by_scores(lambda a, b: model.score(histories[a:b]), targets, histories, exclude)


def run_evaluation(cfg: EvalConfig) -> dict:
    started = time.perf_counter()
    data_dir = resolve_artifact("data", cfg.data)
    data_manifest = read_manifest(data_dir)
    item_ids, item_titles, item_texts = load_item_texts(data_dir)
    position = {item: i for i, item in enumerate(item_ids)}
    titles = dict(zip(item_ids, item_titles))
    users, histories, targets, train_seqs = load_eval_users(data_dir, cfg.split, position, cfg.max_users, cfg.seed)
    if not users:
        raise ValueError(f"data version {data_manifest['version']} has no users with a held-out item")
    max_items = int(data_manifest.get("config", {}).get("retrieval_pairs", {}).get("max_history_items", 8))
    history_texts = [history_text_for_items([item_ids[p] for p in h], titles, max_items) for h in histories]
    log(JOB, f"{len(users)} users x {len(item_ids)} items, split={cfg.split}, "
             f"exclude_history={cfg.exclude_history}")

    results: dict[str, dict] = {}
    model_info: dict = {}
    for method in cfg.methods:
        t0 = time.perf_counter()
        if method in ("fine_tuned", "zero_shot"):
            model_path, model_version, manifest = resolve_model(cfg.model)
            if method == "zero_shot":
                model_path = manifest.get("base_model", resolve_model_path("default"))
                # The packaged MiniLM lives in a folder named 'model'; name its package instead.
                base = Path(model_path)
                model_version = f"zero-shot:{base.parent.name if base.name == 'model' else base.name}"
            q_len, i_len = int(manifest.get("query_max_length", 96)), int(manifest.get("item_max_length", 48))
            ranks, item_vectors = encoder_ranks(model_path, q_len, i_len, item_ids, item_texts, history_texts,
                                                targets, histories, cfg)
            model_info[method] = model_version
            tower_dir = Path(model_path) / USER_TOWER_DIR
            if method == "fine_tuned" and (tower_dir / WEIGHTS_FILE).is_file():
                # Both user towers of the model side by side; `fine_tuned` is the one the model serves.
                towers = {"text": ranks, "sequence": sequence_tower_ranks(
                    tower_dir, data_dir, cfg, users, item_ids, item_vectors, targets, histories)}
                for kind, kind_ranks in towers.items():
                    results[f"fine_tuned ({kind} tower)"] = summarize_ranks(kind_ranks, tuple(cfg.ks))
                ranks = towers[manifest.get("user_tower", {}).get("kind", "text")]
        else:
            ranks = baseline_ranks(method, train_seqs, len(item_ids), targets, histories, cfg.exclude_history)
        results[method] = summarize_ranks(ranks, tuple(cfg.ks))
        log(JOB, f"{method}: " + ", ".join(f"{k}={v:.4f}" for k, v in results[method].items() if k != "users")
                 + f" ({time.perf_counter() - t0:.1f}s)")

    columns = [f"{m}@{k}" for k in cfg.ks for m in ("recall", "ndcg")] + ["mrr", "users"]
    table = format_markdown_table(results, columns)
    version, out = new_version_dir("eval")
    report = {"version": version, "data_version": data_manifest["version"], "source": data_manifest.get("source"),
              "split": cfg.split, "exclude_history": cfg.exclude_history, "models": model_info,
              "items": len(item_ids), "metrics": results, "config": cfg.model_dump()}
    write_json(out / "metrics.json", report)
    (out / "report.md").write_text(
        f"# Offline evaluation {version}\n\ndata {data_manifest['version']} ({data_manifest.get('source')}), "
        f"split={cfg.split}, full ranking over {len(item_ids)} items, exclude_history={cfg.exclude_history}, "
        f"models {model_info}\n\n{table}\n")
    mark_latest("eval", version)
    log(JOB, f"report -> {out / 'report.md'} ({time.perf_counter() - started:.1f}s)\n{table}")
    return {"version": version, "path": str(out), "metrics": results}
