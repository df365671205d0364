"""The sweep on a local Ray instance (2 CPUs, 2 fake GPUs; every run a task asking for a GPU) stores
the same results as the local executor: same run keys, same content hashes (timestamps and wall times
aside)."""
from __future__ import annotations

import pytest
from sweep_helpers import tiny_spec

from evilbench.store.db import Store
from evilbench.sweep.runner import Runner
from evilbench.sweep.spec import parse_spec


@pytest.mark.ray
@pytest.mark.slow
def test_ray_gives_the_local_store_content(tmp_path, small_base):
    pytest.importorskip("ray")
    import ray

    d = tiny_spec(tmp_path / "local", optimizers=["adam", "sgd"], regularizers=["none", "fro_nuclear:1"],
                  executor={"kind": "local", "workers": 2})
    Runner(parse_spec(d), progress=False, log=lambda m: None).run()
    dr = tiny_spec(tmp_path / "ray", optimizers=["adam", "sgd"], regularizers=["none", "fro_nuclear:1"],
                   executor={"kind": "ray", "max_retries": 1}, resources={"num_cpus": 1, "num_gpus": 1})
    ray.init(num_cpus=2, num_gpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"EVILBENCH_CACHE": str(small_base).split("/toyworld/")[0]}})
    try:
        s = Runner(parse_spec(dr), progress=False, log=lambda m: None).run()
        gpus = ray.get(ray.remote(num_gpus=1)(lambda: ray.get_gpu_ids()).remote())
    finally:
        ray.shutdown()
    assert s["finished"] == 4 and not s["failed"] and len(gpus) == 1
    a, b = Store(d["store"], readonly=True), Store(dr["store"], readonly=True)
    ka = dict(a._con.execute("SELECT run_key, content_sha256 FROM runs"))
    kb = dict(b._con.execute("SELECT run_key, content_sha256 FROM runs"))
    assert ka == kb and len(ka) == 4
    assert a.counts() == b.counts()
    ta, tb = a.trajectory_frame(), b.trajectory_frame()
    assert ta.drop(columns=["judge"]).equals(tb.drop(columns=["judge"]))
