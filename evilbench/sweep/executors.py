"""Executors: where a sweep's jobs run. Each takes (function path, payloads) and yields
(index, result) as jobs finish; a job that raised or whose worker died yields
{"error": ..., "worker_died": bool} instead. The runner writes results to the store in the parent.

  inline    in this process, one after the other (debugging, tiny sweeps)
  local     N spawned worker processes, one job each at a time. Workers die with the runner, even when
            it is killed with SIGKILL: each worker asks the kernel for SIGKILL when its parent dies
            (prctl PR_SET_PDEATHSIG, Linux) and a watchdog thread also exits it when its parent is
            gone (other systems). A worker that dies mid-job is replaced; its job is reported failed.
  ray       one Ray task per job with the spec's num_cpus / num_gpus; ray.init(address=...) joins a
            cluster (address None: a local instance); Ray retries a task whose worker died
            (max_retries, default 2)
  submitit  one Slurm job per job (cluster "slurm"), or submitit's local / debug executors
"""
from __future__ import annotations

import importlib
import os
import sys
import threading
import time
import traceback
from collections.abc import Iterator


def call(fn_path: str, payload: dict, threads: int = 1):
    """Import `module:function` and call it on payload (after the per-process setup)."""
    from evilbench.sweep.worker import init_worker

    init_worker(threads)
    module, _, name = fn_path.partition(":")
    return getattr(importlib.import_module(module), name)(payload)


def _error(e: BaseException) -> dict:
    return {"error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc(limit=8), "worker_died": False}


# --------------------------------------------------------------------------- death with the parent
PR_SET_PDEATHSIG = 1


def die_with_parent(parent_pid: int) -> None:
    """Make this process die when `parent_pid` does (SIGKILL via prctl on Linux, plus a watchdog)."""
    import signal

    if sys.platform.startswith("linux"):
        try:
            import ctypes

            libc = ctypes.CDLL("libc.so.6", use_errno=True)
            libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        except OSError:
            pass
    if os.getppid() != parent_pid:  # the parent died before prctl took effect
        os._exit(1)

    def watch():
        while True:
            time.sleep(0.5)
            if os.getppid() != parent_pid:
                os._exit(1)

    threading.Thread(target=watch, daemon=True, name="evilbench-parent-watchdog").start()


def _local_worker(parent_pid: int, threads: int, conn) -> None:
    die_with_parent(parent_pid)
    from evilbench.sweep.worker import init_worker

    init_worker(threads)
    while True:
        try:
            item = conn.recv()
        except EOFError:
            return
        if item is None:
            return
        fn_path, payload = item
        try:
            module, _, name = fn_path.partition(":")
            out = getattr(importlib.import_module(module), name)(payload)
        except BaseException as e:  # noqa: BLE001 - reported to the parent
            out = _error(e)
        conn.send(out)


class InlineExecutor:
    kind = "inline"

    def __init__(self, threads: int = 1, **_):
        self.threads = threads

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def map(self, fn_path: str, payloads: list[dict]) -> Iterator[tuple[int, dict]]:
        for i, p in enumerate(payloads):
            try:
                yield i, call(fn_path, p, self.threads)
            except Exception as e:  # noqa: BLE001
                yield i, _error(e)


class LocalExecutor:
    kind = "local"

    def __init__(self, workers: int | None = None, threads: int = 1, **_):
        self.workers = max(1, workers or os.cpu_count() or 1)
        self.threads = threads
        self.procs: dict[int, tuple] = {}  # worker id -> (process, connection)

    def __enter__(self):
        import multiprocessing as mp

        self.ctx = mp.get_context("spawn")
        self._next = 0
        return self

    def _spawn(self) -> int:
        wid = self._next
        self._next += 1
        parent_end, child_end = self.ctx.Pipe(duplex=True)
        p = self.ctx.Process(target=_local_worker, args=(os.getpid(), self.threads, child_end), daemon=True,
                             name=f"evilbench-sweep-worker-{wid}")
        p.start()
        child_end.close()
        self.procs[wid] = (p, parent_end)
        return wid

    def pids(self) -> list[int]:
        return [p.pid for p, _ in self.procs.values() if p.is_alive()]

    def __exit__(self, *exc):
        for _p, conn in self.procs.values():
            try:
                conn.send(None)
            except (OSError, ValueError, BrokenPipeError):
                pass
        deadline = time.monotonic() + 5
        for p, conn in self.procs.values():
            p.join(max(0.0, deadline - time.monotonic()))
            if p.is_alive():
                p.kill()
                p.join(1)
            conn.close()
        self.procs.clear()
        return False

    def map(self, fn_path: str, payloads: list[dict]) -> Iterator[tuple[int, dict]]:
        """Each worker holds at most one job; the parent knows which, so a worker that dies (killed,
        out of memory) is reported with its job and replaced."""
        from multiprocessing.connection import wait

        todo = list(range(len(payloads)))
        busy: dict[int, int] = {}  # worker id -> job index

        def hand_out():  # the next jobs to the idle workers
            for wid in list(self.procs):
                if wid not in busy and todo:
                    i = todo.pop(0)
                    try:
                        self.procs[wid][1].send((fn_path, payloads[i]))
                        busy[wid] = i
                    except (OSError, BrokenPipeError):
                        todo.insert(0, i)

        while todo or busy:
            while len(self.procs) < min(self.workers, len(todo) + len(busy)):
                self._spawn()
            hand_out()
            if not busy:
                continue
            by_obj = {}
            for wid in busy:
                p, conn = self.procs[wid]
                by_obj[conn] = wid
                by_obj[p.sentinel] = wid
            finished = []
            for obj in wait(list(by_obj)):
                wid = by_obj[obj]
                if wid not in busy or any(w == wid for w, _ in finished):
                    continue
                p, conn = self.procs[wid]
                out = None
                if conn.poll():
                    try:
                        out = conn.recv()
                    except (EOFError, OSError):
                        out = None
                if out is None and not p.is_alive():
                    p.join(0.1)
                    out = {"error": f"worker process died (exit code {p.exitcode})", "worker_died": True}
                    conn.close()
                    self.procs.pop(wid)
                elif out is None:
                    continue
                finished.append((wid, out))
            done = [(busy.pop(wid), out) for wid, out in finished]
            # hand the freed workers their next jobs before the caller writes these results, so that
            # the store writes overlap with the workers' compute instead of idling them
            hand_out()
            yield from done


def _ray_entry(fn_path: str, payload: dict, threads: int):
    return call(fn_path, payload, threads)


class RayExecutor:
    kind = "ray"

    def __init__(self, address: str | None = None, num_cpus: float = 1, num_gpus: float = 0, max_retries: int = 2,
                 threads: int = 1, init_kwargs: dict | None = None, env: dict | None = None, **_):
        self.address, self.num_cpus, self.num_gpus = address, num_cpus, num_gpus
        self.max_retries, self.threads = max_retries, threads
        self.init_kwargs = init_kwargs or {}
        self.env = env or {}
        self._started = False

    def __enter__(self):
        import ray

        if not ray.is_initialized():
            kw = {"ignore_reinit_error": True, "include_dashboard": False, "log_to_driver": False,
                  **self.init_kwargs}
            env = {**self.env, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
            kw.setdefault("runtime_env", {"env_vars": env})
            ray.init(address=self.address, **kw)
            self._started = True
        return self

    def __exit__(self, *exc):
        if self._started:
            import ray

            ray.shutdown()
        return False

    def map(self, fn_path: str, payloads: list[dict]) -> Iterator[tuple[int, dict]]:
        import ray

        remote = ray.remote(num_cpus=self.num_cpus, num_gpus=self.num_gpus, max_retries=self.max_retries,
                            retry_exceptions=False)(_ray_entry)
        refs = {remote.remote(fn_path, p, self.threads): i for i, p in enumerate(payloads)}
        pending = list(refs)
        while pending:
            ready, pending = ray.wait(pending, num_returns=1)
            for r in ready:
                try:
                    yield refs[r], ray.get(r)
                except Exception as e:  # noqa: BLE001 - a task error, or retries exhausted
                    died = "WorkerCrashedError" in type(e).__name__ or "died" in str(e).lower()
                    yield refs[r], {"error": f"{type(e).__name__}: {e}", "worker_died": died}


class SubmititExecutor:
    kind = "submitit"

    def __init__(self, folder: str = "submitit-logs", cluster: str | None = None, partition: str | None = None,
                 slurm: dict | None = None, max_parallel: int | None = None, num_cpus: float = 1,
                 num_gpus: float = 0, timeout_min: float = 240, mem_gb: float | None = None, threads: int = 1, **_):
        self.folder, self.cluster, self.partition = folder, cluster, partition
        self.slurm = slurm or {}
        self.max_parallel, self.threads = max_parallel, threads
        self.num_cpus, self.num_gpus, self.timeout_min, self.mem_gb = num_cpus, num_gpus, timeout_min, mem_gb

    def __enter__(self):
        import submitit

        self.ex = submitit.AutoExecutor(folder=self.folder, cluster=self.cluster)
        params = {"timeout_min": int(self.timeout_min), "cpus_per_task": max(1, int(self.num_cpus))}
        if self.num_gpus:
            params["gpus_per_node"] = int(self.num_gpus)
        if self.mem_gb:
            params["mem_gb"] = self.mem_gb
        if self.partition:
            params["slurm_partition"] = self.partition
        if self.max_parallel:
            params["slurm_array_parallelism"] = self.max_parallel
        params.update({k if k.startswith("slurm_") else f"slurm_{k}": v for k, v in self.slurm.items()})
        if self.ex.cluster != "slurm":
            params = {k: v for k, v in params.items() if not k.startswith("slurm_")}
        self.ex.update_parameters(**params)
        return self

    def __exit__(self, *exc):
        return False

    def map(self, fn_path: str, payloads: list[dict]) -> Iterator[tuple[int, dict]]:
        jobs = {}
        for i, p in enumerate(payloads):
            jobs[i] = self.ex.submit(call, fn_path, p, self.threads)
        pending = dict(jobs)
        while pending:
            for i, j in list(pending.items()):
                if j.done():
                    pending.pop(i)
                    try:
                        yield i, j.result()
                    except Exception as e:  # noqa: BLE001
                        yield i, {"error": f"{type(e).__name__}: {e}", "worker_died": False}
            if pending:
                time.sleep(0.2)


def make_executor(spec_executor: dict, resources: dict, env: dict | None = None, workers: int | None = None):
    kind = spec_executor.get("kind", "local")
    threads = spec_executor.get("threads", 1)
    if kind == "inline":
        return InlineExecutor(threads=threads)
    if kind == "local":
        return LocalExecutor(workers=workers or spec_executor.get("workers"), threads=threads)
    if kind == "ray":
        return RayExecutor(address=spec_executor.get("address"), num_cpus=resources.get("num_cpus", 1),
                           num_gpus=resources.get("num_gpus", 0), max_retries=spec_executor.get("max_retries", 2),
                           threads=threads, env=env)
    if kind == "submitit":
        return SubmititExecutor(folder=spec_executor.get("folder", "submitit-logs"),
                                cluster=spec_executor.get("cluster"),
                                partition=spec_executor.get("partition"), slurm=spec_executor.get("slurm"),
                                max_parallel=spec_executor.get("max_parallel"), threads=threads,
                                **{k: v for k, v in resources.items() if k in ("num_cpus", "num_gpus", "timeout_min",
                                                                                "mem_gb")})
    raise ValueError(f"unknown executor {kind!r}")
