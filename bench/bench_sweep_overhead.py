"""Sweep runner overhead on the toy preset: the runner's wall time against the runs' own time.

Runs a slice of the `toy` preset (base 0, seed 0, the four optimisers x both regularisers at fixed
learning rates: 8 runs of the full 80-step recipe with every checkpoint evaluated) through
`evilbench.sweep.Runner` with the local executor and ONE worker process, so that

    overhead = runner wall time - sum of the runs' own time (execute_job inside the worker:
               training + evaluation + reading the run directory into a bundle)

is everything the runner adds: planning, run keys, spawning the worker, shipping jobs and bundles
between processes, store writes, the progress bar. A second pass over the finished sweep measures
the cost of skipping stored runs. Bases are built (or found) in the cache first and not counted.

    python bench/bench_sweep_overhead.py [--out DIR]

Prints one JSON line: runs, the runs' time, the runner's wall time, overhead (s and % of the runs'
time), the store-write time, and the rerun (skip) time, plus the machine's load average."""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=None, help="work directory (default: a temporary one)")
    args = ap.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    from evilbench.toyworld.portable_math import reexec_pinned

    reexec_pinned([os.path.abspath(__file__), *sys.argv[1:]])  # the toy world's AVX2 math, as its commands

    import yaml

    from evilbench.sweep.resources import prepare_model, resolve_model
    from evilbench.sweep.runner import Runner
    from evilbench.sweep.spec import load_spec, parse_spec

    out = args.out or tempfile.mkdtemp(prefix="bench-sweep-")
    raw = yaml.safe_load(open(load_spec("toy").source))
    raw.update(name="bench-overhead", store=f"{out}/results.db", workdir=f"{out}/runs", models=["toyworld:base-0"],
               seeds=[0], lrs={"sgd": [0.01], "adam": [1e-3], "lion": [3e-4], "muon": [1e-3]}, extra=[],
               executor={"kind": "local", "workers": 1, "threads": 1})
    spec = parse_spec(raw)
    m = resolve_model("toyworld:base-0", spec.toyworld)
    if m["prepare"]:
        prepare_model(m["prepare"])
    r = Runner(spec, progress=False, log=lambda msg: None)
    load = os.getloadavg()
    t = time.perf_counter()
    s = r.run()
    wall = time.perf_counter() - t
    t = time.perf_counter()
    again = r.run()
    rerun = time.perf_counter() - t
    own = s["this_call"]["job_seconds"]
    res = {"runs": s["this_call"]["done"], "runs_own_s": round(own, 2), "runner_wall_s": round(wall, 2),
           "overhead_s": round(wall - own, 2), "overhead_pct": round(100 * (wall - own) / own, 2),
           "store_write_s": round(s["this_call"]["store_write_s"], 3), "rerun_skip_s": round(rerun, 3),
           "rerun_skipped": again["this_call"]["skipped"], "loadavg_before": [round(x, 2) for x in load],
           "loadavg_after": [round(x, 2) for x in os.getloadavg()], "cpus": os.cpu_count()}
    print(json.dumps(res))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
