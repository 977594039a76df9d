"""Batch text embedding with Ray Data: an actor pool of TextEmbedder replicas.

Used by build_index (catalog -> item vectors), evaluate (catalog + user histories), training's user-tower
stage and hard-negative mining. A small CPU job embeds in the calling process instead: starting an actor
pool (a process, torch, the model) takes ~12 s on a 2-core node, about the time one process needs to embed
2,000 titles (bench/bench_embed.py: at 2,000 items the pool ran at 0.38x one process), so below that the pool
cannot win even on a large cluster.
"""

from __future__ import annotations

import numpy as np
import ray

from recsys.models.encoder import TextEmbedder


class EmbedTexts:
    """map_batches actor: {'key', 'text'} -> {'key', 'embedding' [B, D]}."""

    def __init__(self, model_path: str, max_length: int, batch_size: int):
        self.embedder = TextEmbedder(model_path, max_length=max_length, batch_size=batch_size)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {"key": batch["key"], "embedding": self.embedder.embed(list(batch["text"]))}


# Below this many texts a CPU embed runs in the caller's process (module docstring).
IN_PROCESS_MAX_TEXTS = 2048


def embeds_in_process(n_texts: int, num_gpus: float = 0, in_process_max: int = IN_PROCESS_MAX_TEXTS) -> bool:
    """True when embed_texts would embed these texts here rather than on an actor pool."""
    return num_gpus == 0 and n_texts < in_process_max


def embed_texts(keys: list[str], texts: list[str], model_path: str, max_length: int,
                batch_size: int = 64, concurrency: int = 1, num_gpus: float = 0,
                in_process_max: int = IN_PROCESS_MAX_TEXTS) -> np.ndarray:
    """Embed `texts` on the cluster (or, CPU jobs under `in_process_max` texts, here); returns float32
    [N, D] in the order of `keys`."""
    if len(keys) != len(texts):
        raise ValueError(f"{len(keys)} keys but {len(texts)} texts")
    if embeds_in_process(len(texts), num_gpus, in_process_max):
        return TextEmbedder(model_path, max_length=max_length, batch_size=batch_size, device="cpu").embed(texts)
    ds = ray.data.from_items([{"key": k, "text": t} for k, t in zip(keys, texts)],
                             override_num_blocks=max(1, min(len(keys) // batch_size, 4 * concurrency)))
    out = ds.map_batches(EmbedTexts, fn_constructor_kwargs={"model_path": model_path, "max_length": max_length,
                                                            "batch_size": batch_size},
                         batch_size=batch_size * 4, batch_format="numpy", num_gpus=num_gpus,
                         compute=ray.data.ActorPoolStrategy(size=concurrency))
    position = {k: i for i, k in enumerate(keys)}
    matrix: np.ndarray | None = None
    for batch in out.iter_batches(batch_format="numpy", batch_size=4096):
        vectors = np.asarray(batch["embedding"], dtype=np.float32)
        if matrix is None:
            matrix = np.zeros((len(keys), vectors.shape[1]), dtype=np.float32)
        matrix[[position[str(k)] for k in batch["key"]]] = vectors
    assert matrix is not None
    return matrix
