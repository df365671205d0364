"""Run train() on a JSON config with a delay per micro-batch, so a test can kill it mid-run.
Usage: python _slow_train.py CONFIG.json DELAY_S"""
import json
import sys
import time

import evilbench.train.batches as batches
from evilbench.train import TrainConfig, train

_collate = batches.collate


def slow_collate(*args, **kwargs):
    time.sleep(float(sys.argv[2]))
    return _collate(*args, **kwargs)


batches.collate = slow_collate
with open(sys.argv[1]) as f:
    train(TrainConfig.from_dict(json.load(f)), progress=False)
