"""Hand-written behaviour events for unit tests of cleaning, sequences and training examples."""

from __future__ import annotations

import pandas as pd
import pyarrow as pa

from recsys.data.clean import assign_sessions, canonical_order
from recsys.data.sequences import build_user_sequences
from recsys.schema import EVENT_COLUMNS

T0 = pd.Timestamp("2024-03-01 12:00:00", tz="UTC")


def events(rows: list[tuple], unit: str = "minutes") -> pd.DataFrame:
    """(user, item, type, time after T0 in `unit`[, query[, session]]) -> typed events as validate_events gives."""
    records = []
    for row in rows:
        user, item, etype, offset, *rest = row
        query = rest[0] if rest else None
        session = rest[1] if len(rest) > 1 else None
        records.append({"user_id": user, "item_id": item, "event_type": etype,
                        "timestamp": T0 + pd.Timedelta(**{unit: offset}), "query": query, "session_id": session})
    frame = pd.DataFrame(records, columns=list(EVENT_COLUMNS))
    frame["timestamp"] = frame["timestamp"].astype("datetime64[us, UTC]")
    return frame


def build(rows: list[tuple], **kwargs) -> pa.Table:
    """Event rows -> sequences the way the job builds them (canonical order, sessions, sequences)."""
    return build_user_sequences(assign_sessions(canonical_order(events(rows))), **kwargs)
