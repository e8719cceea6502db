"""The export's ANN index alone on a catalog's stand-in features (users' LM features against the
items' text features, as ``catalog_scale.py``'s ``export_lm`` stage ranks them): index build,
nprobe tuning to recall 0.95 on 1,000 users, ann_recall@20 and the per-user times of both
engines on 2,000 others. It skips ranking and writing every user (hours at 3M on 2 cores), so
it measures what the speed-up does as the catalog grows.

    PYTHONPATH=$PWD nice -n 12 .venv/bin/python benchmarks/export_ann_tune.py <dataset URL>

Prints one ``RESULT {json}`` line: ``tune_ann``'s info, total seconds and peak RSS.
"""
import json
import logging
import resource
import sys
import time

import torch

from recgoat_dist.data.dataset import Dataset
from recgoat_dist.eval.metrics import UserItems
from recgoat_dist.export.ranking import tune_ann

logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
url = sys.argv[1]
t0 = time.perf_counter()
ds = Dataset(url)
user = torch.from_numpy(ds.user_features("text"))
item = torch.from_numpy(ds.item_features("text"))
train = ds.interactions("train")
pairs = UserItems.from_pairs(train["user_id"], train["item_id"], ds.num_users, ds.num_items)
r = tune_ann(user, item, pairs, target_recall=0.95, recall_users=2000)
info = dict(r.info, seconds_total=round(time.perf_counter() - t0, 1),
            peak_rss_gb=round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2), items=ds.num_items)
print("RESULT " + json.dumps(info), flush=True)
