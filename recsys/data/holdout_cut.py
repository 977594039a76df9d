"""Hold out every user's last item interaction from a data version: the protocol for measuring served
recommendations on interactions the service never saw.

  data version (events/, catalog.parquet)  ->  artifacts/cuts/<version>/
      events/part-0.parquet    every other event, unchanged (EVENTS_SCHEMA)
      catalog.parquet          a copy of the data version's catalog
      targets.parquet          user_id, item_id, history (list<string>: item ids before it, oldest first)
      target_events.parquet    the held-out rows themselves (nothing is dropped silently)
      manifest.json            source data version, counts, the tie-break

Then the ordinary preprocess reads the cut (see `next_command`) and everything built from that second data
version (training sets, index, co-occurrence, popularity, the service's user-state seed) never sees a target.

What "the last item interaction" is, so that no trace of it survives in the second data version:
- events are put in preprocess's own canonical order (recsys.data.clean.canonical_order: user, timestamp,
  then event strength, event type, item id, query, session id). So among events with the same latest
  timestamp the strongest event type (purchase > cart > click > view) is last, then the larger event-type
  name and item id: exactly the item preprocess's leave-last-out would call the user's test item.
- a "step" is what a sequence step is in recsys.data.sequences: consecutive item events (view, click,
  add_to_cart, purchase) on one item in one session. The target is the user's whole last step: moving only
  its final event (the purchase) would leave the view and click of that item, which preprocess would turn
  back into the very same last step.
- a search click (event_type search with an item_id) on the target item after the user's last history
  step is part of the same interaction and is held out too; preprocess would otherwise train the query on it.
- min_history counts steps including the target (on data with one event per interaction, as Amazon,
  steps are events); users with fewer keep all their events and are counted as skipped.
Pure logic: pandas/pyarrow only, no Ray.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq
from pydantic import Field

from recsys.artifacts import mark_latest, new_version_dir, resolve_artifact, write_manifest
from recsys.config import JobConfig
from recsys.data.clean import canonical_order
from recsys.schema import EVENT_COLUMNS, EVENTS_SCHEMA, ITEM_EVENT_TYPES

TARGETS_SCHEMA = pa.schema([("user_id", pa.string()), ("item_id", pa.string()),
                            ("history", pa.list_(pa.string()))])
TIE_BREAK = ("latest timestamp; ties in preprocess's canonical order (event strength purchase > add_to_cart > "
             "click > view, then event_type, item_id, query, session_id): the last one wins")


class HoldoutCutConfig(JobConfig):
    data: str = Field("latest", description="data version to cut (preprocess output): 'latest', a version "
                                            "name under artifacts/data or a directory")
    min_history: int = Field(3, ge=2, description="users with at least this many item steps (the target "
                                                  "included) lose their last one; fewer: kept whole, skipped")


@dataclass
class UserCut:
    kept: pd.DataFrame      # [E_kept, EVENT_COLUMNS] every other event, input order
    held: pd.DataFrame      # [E_held, EVENT_COLUMNS] the target interactions' events
    targets: pa.Table       # [T] TARGETS_SCHEMA, by user_id
    stats: dict[str, int]


def cut_user_events(events: pd.DataFrame, min_history: int = 3) -> UserCut:
    """Events of whole users [E, EVENT_COLUMNS] (any order) -> each eligible user's last step held out."""
    ordered = canonical_order(events[list(EVENT_COLUMNS)].assign(_row=np.arange(len(events))))
    user = ordered["user_id"].to_numpy(dtype=object)
    is_item = ordered["event_type"].isin(ITEM_EVENT_TYPES).to_numpy() & ordered["item_id"].notna().to_numpy()
    pos = np.flatnonzero(is_item)                                   # [I] positions of item events
    i_user, i_item = user[pos], ordered["item_id"].to_numpy(dtype=object)[pos]
    i_sess = ordered["session_id"].fillna("").to_numpy(dtype=object)[pos]
    new_step = np.ones(len(pos), dtype=bool)
    new_step[1:] = (i_user[1:] != i_user[:-1]) | (i_item[1:] != i_item[:-1]) | (i_sess[1:] != i_sess[:-1])
    step = np.cumsum(new_step) - 1                                  # [I] global step number
    starts = np.flatnonzero(new_step)                               # [S] first item event of each step
    s_user, s_item = i_user[starts], i_item[starts]
    users, first_step, n_steps = np.unique(s_user, return_index=True, return_counts=True)  # sorted, as ordered
    eligible = n_steps >= min_history
    last_step = first_step + n_steps - 1                            # [U] global step number of the target

    held = np.zeros(len(ordered), dtype=bool)
    owner = np.searchsorted(users, i_user)                          # [I] user index of each item event
    held[pos[eligible[owner] & (step == last_step[owner])]] = True
    # Search clicks on the target after the user's last history step belong to the target interaction.
    item = ordered["item_id"].to_numpy(dtype=object)
    search = np.flatnonzero((ordered["event_type"] == "search").to_numpy() & ordered["item_id"].notna().to_numpy())
    if len(search) and len(users):
        who = np.minimum(np.searchsorted(users, user[search]), len(users) - 1)   # [Q] user index (if any)
        history_end = pos[np.maximum(starts[last_step[who]] - 1, 0)]   # last event of the step before the target
        mine = (users[who] == user[search]) & eligible[who] & (item[search] == s_item[last_step[who]])
        held[search[mine & (search > history_end)]] = True

    hist_lengths = n_steps[eligible] - 1
    offsets = np.concatenate([[0], np.cumsum(hist_lengths)]).astype(np.int64)
    # Step numbers of every history item, users one after another: first step + position within the user.
    hist_index = np.repeat(first_step[eligible] - offsets[:-1], hist_lengths) + np.arange(offsets[-1])
    targets = pa.table({
        "user_id": pa.array(users[eligible], pa.string()),
        "item_id": pa.array(s_item[last_step[eligible]], pa.string()),
        "history": pa.ListArray.from_arrays(pa.array(offsets, pa.int32()), pa.array(s_item[hist_index], pa.string())),
    }, schema=TARGETS_SCHEMA)
    restore = np.argsort(ordered["_row"].to_numpy(), kind="stable")  # back to input order
    kept = ordered.iloc[restore[~held[restore]]][list(EVENT_COLUMNS)].reset_index(drop=True)
    held_rows = ordered[held][list(EVENT_COLUMNS)].reset_index(drop=True)
    stats = {"users": int(len(np.unique(user))), "users_with_items": int(len(users)),
             "targets": int(eligible.sum()), "users_skipped": int((~eligible).sum()),
             "events_in": int(len(ordered)), "events_kept": int(len(kept)), "events_held": int(len(held_rows)),
             "search_clicks_held": int(held[search].sum())}
    return UserCut(kept, held_rows, targets, stats)


def resolve_cut(ref: str | Path = "latest") -> Path:
    """'latest', a version name under artifacts/cuts, or a directory -> the cut's directory."""
    return resolve_artifact("cuts", str(ref))


def next_command(cut_dir: Path) -> str:
    return (f"python jobs/preprocess.py --config jobs/configs/preprocess.default.yaml "
            f"--set source.path={cut_dir}/events --set source.catalog={cut_dir}/catalog.parquet")


def run_holdout_cut(cfg: HoldoutCutConfig) -> dict:
    """Cut a data version one events/ part at a time (preprocess writes a user's events into one part, so
    memory holds one part); returns the manifest plus "path"."""
    src = resolve_artifact("data", cfg.data)
    if not (src / "events").is_dir() or not (src / "catalog.parquet").is_file():
        raise ValueError(f"data={cfg.data!r} ({src}) has no events/ or catalog.parquet: not a preprocess output")
    version, out = new_version_dir("cuts")
    (out / "events").mkdir()
    seen: set[str] = set()
    totals: dict[str, int] = {}
    targets: list[pa.Table] = []
    with pq.ParquetWriter(out / "events" / "part-0.parquet", EVENTS_SCHEMA) as kept_out, \
            pq.ParquetWriter(out / "target_events.parquet", EVENTS_SCHEMA) as held_out:
        for fragment in pads.dataset(str(src / "events"), format="parquet").get_fragments():
            frame = fragment.to_table(schema=EVENTS_SCHEMA).to_pandas()
            part_users = set(frame["user_id"].unique())
            if seen & part_users:
                raise ValueError(f"{src}/events is not partitioned by user: user {sorted(seen & part_users)[0]!r} "
                                 f"is in more than one part (cut needs each user's events together)")
            seen |= part_users
            cut = cut_user_events(frame, cfg.min_history)
            kept_out.write_table(pa.Table.from_pandas(cut.kept, schema=EVENTS_SCHEMA, preserve_index=False))
            held_out.write_table(pa.Table.from_pandas(cut.held, schema=EVENTS_SCHEMA, preserve_index=False))
            targets.append(cut.targets)
            totals = {k: totals.get(k, 0) + v for k, v in cut.stats.items()}
    all_targets = pa.concat_tables(targets) if targets else TARGETS_SCHEMA.empty_table()
    pq.write_table(all_targets.sort_by("user_id"), out / "targets.parquet")
    shutil.copyfile(src / "catalog.parquet", out / "catalog.parquet")
    manifest = {"kind": "cut", "version": version, "source_data_version": src.name, "source_data_path": str(src),
                "config": cfg.model_dump(), "counts": totals, "tie_break": TIE_BREAK,
                "outputs": ["events/part-0.parquet", "catalog.parquet", "targets.parquet", "target_events.parquet"],
                "next": next_command(out)}
    write_manifest(out, manifest)
    mark_latest("cuts", version)
    return {**manifest, "path": str(out)}
