"""Recent popularity from the order of the behaviour log alone: what people engage with now. No Ray.

A next-item target is the newest interaction, so items in fashion at the end of the log are likelier
targets than all-time popularity says (time shift). Without timestamps (many logs have none, and the
ranker must work on any log) the end of each user's sequence is the best "now" there is: the items
in users' last steps. Three views per item, each in [0, 1]:
- recent_last:  how many users' latest item it is, over the most such users any item has;
- recent_last3: the same over users' last 3 items;
- recent_share: the share of the item's interactions that are among its users' last 3 (rising vs fading),
  shrunk towards 0 for rare items by a prior of `prior` interactions.
Measured on Amazon Scientific in docs/results.md ("Recent popularity").
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence

import numpy as np

RECENT_FEATURES = ("recent_last", "recent_last3", "recent_share")


class RecentPopularity:
    """Fit on histories (item ids, oldest first); columns(item_ids) -> float32 [C, len(RECENT_FEATURES)]."""

    def __init__(self, histories: Iterable[Sequence[str]], tail: int = 3, prior: float = 5.0) -> None:
        last, tail_counts, total = Counter(), Counter(), Counter()
        for h in histories:
            if not h:
                continue
            last[h[-1]] += 1
            tail_counts.update(h[-tail:])
            total.update(h)
        self.last, self.tail, self.total, self.prior = last, tail_counts, total, prior
        self.max_last = float(max(last.values(), default=0)) or 1.0
        self.max_tail = float(max(tail_counts.values(), default=0)) or 1.0

    def columns(self, item_ids: Sequence[str]) -> np.ndarray:
        rows = [(self.last.get(i, 0) / self.max_last, self.tail.get(i, 0) / self.max_tail,
                 self.tail.get(i, 0) / (self.total.get(i, 0) + self.prior)) for i in item_ids]
        return np.array(rows, dtype=np.float32).reshape(len(item_ids), len(RECENT_FEATURES))
