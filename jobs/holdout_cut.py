"""Hold out every user's last item interaction from a data version, for served-recommendation evaluation.

    python jobs/holdout_cut.py --config jobs/configs/holdout_cut.default.yaml [--set data=<data version>]
    python jobs/preprocess.py --config jobs/configs/preprocess.default.yaml \\
        --set source.path=<cut>/events --set source.catalog=<cut>/catalog.parquet

The cut (artifacts/cuts/<version>/) holds every other event as an ordinary event log, a copy of the catalog
and targets.parquet (user_id, item_id, history). Preprocess the cut, then train / index / serve from that
second data version: none of it sees a target. bench/served_recommend.py replays the targets over HTTP.
Reads files only; no Ray.
"""

from recsys.data.holdout_cut import HoldoutCutConfig
from recsys.runtime import run_job

if __name__ == "__main__":
    from recsys.data.holdout_cut import run_holdout_cut

    run_job("holdout_cut", HoldoutCutConfig, run_holdout_cut, __doc__, uses_ray=False)
