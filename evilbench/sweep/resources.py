"""What a sweep's model and dataset names stand for: a path to train on plus the identity that goes into
run keys (model id + revision, dataset sha256).

  models:   registry names, Hugging Face ids, local directories (evilbench.models.loading), or
            `toyworld:base-N` (the toy world's base pre-trained with seed N, built into the cache on
            first use; its revision is the base's cache key: world, architecture, recipe, math path)
  datasets: registry names or .jsonl paths (evilbench.data.registry), or `toyworld:DOMAIN-KIND`
            (KIND misaligned | aligned: the toy world's narrow dataset, exported into the cache)

The `toyworld:` section of a spec sets the world, architecture and pre-training recipe of the bases and
the size and seed of the narrow datasets (defaults: the toy world's own)."""
from __future__ import annotations

from pathlib import Path

TOY = "toyworld:"
TOY_KEYS = ("examples", "data_seed", "world", "arch", "pretrain", "cache")


def check_toyworld(tw) -> tuple[tuple, str] | None:
    """None if the toyworld section is valid, else (key path, message)."""
    if not isinstance(tw, dict):
        return (), "a mapping (examples, data_seed, world, arch, pretrain, cache)"
    for k in tw:
        if k not in TOY_KEYS:
            return (k,), f"unknown key (known: {', '.join(TOY_KEYS)})"
    for k in ("examples", "data_seed"):
        if k in tw and (not isinstance(tw[k], int) or tw[k] < (1 if k == "examples" else 0)):
            return (k,), "a non-negative integer" if k == "data_seed" else "an integer >= 1"
    try:
        _toy_specs(tw)
    except (TypeError, ValueError, KeyError) as e:
        return (), f"{type(e).__name__}: {e}"
    return None


def _toy_specs(tw: dict | None):
    from evilbench.toyworld.base import PretrainConfig
    from evilbench.toyworld.model import ArchConfig
    from evilbench.toyworld.world import WorldConfig

    tw = tw or {}
    world = WorldConfig.from_dict(tw["world"]) if tw.get("world") else WorldConfig()
    arch = ArchConfig(**tw.get("arch", {}))
    pre = dict(tw.get("pretrain", {}))
    if "betas" in pre:
        pre["betas"] = tuple(pre["betas"])
    return world, arch, PretrainConfig(**pre)


def toy_cache(tw: dict | None) -> Path:
    from evilbench.toyworld.base import toyworld_cache

    return toyworld_cache((tw or {}).get("cache"))


def toy_base_spec(name: str, tw: dict | None):
    from evilbench.toyworld.base import BaseSpec

    tail = name[len(TOY):]
    if not tail.startswith("base-") or not tail[5:].isdigit():
        raise ValueError(f"{name}: a toy-world model is toyworld:base-N (N = the pre-training seed)")
    world, arch, pre = _toy_specs(tw)
    return BaseSpec(world=world, arch=arch, pretrain=pre, seed=int(tail[5:]))


def resolve_model(name: str, tw: dict | None = None, revision: str | None = None) -> dict:
    """{"id", "path", "revision", "prepare"}; `prepare` (a toy base not built yet) names the job that
    builds it (a dict for prepare_model)."""
    if name.startswith(TOY):
        from evilbench.toyworld.base import base_dir, is_built

        spec = toy_base_spec(name, tw)
        path = base_dir(spec, toy_cache(tw))
        prep = None if is_built(path) else {"name": name, "spec": spec.to_dict(), "cache": str(toy_cache(tw))}
        return {"id": name, "path": str(path), "revision": spec.key(), "prepare": prep}
    from evilbench.models.loading import model_revision, resolve_source

    source = resolve_source(name, revision)
    return {"id": name, "path": str(source.location), "revision": model_revision(source), "prepare": None}


def prepare_model(job: dict) -> dict:
    """Build a toy base (runs in an executor worker)."""
    from evilbench.toyworld.base import BaseSpec, ensure_base

    path = ensure_base(BaseSpec.from_dict(job["spec"]), job["cache"], progress=False)
    return {"name": job["name"], "path": str(path)}


def resolve_dataset(name: str, tw: dict | None = None) -> dict:
    """{"id", "path", "sha256", "domain"} (domain: the toy world's narrow-task domain, else None)."""
    from evilbench.data.registry import resolve, sha256_file

    if name.startswith(TOY):
        from evilbench.toyworld.world import World

        domain, _, kind = name[len(TOY):].rpartition("-")
        world_cfg, _, _ = _toy_specs(tw)
        if domain not in world_cfg.domains or kind not in ("misaligned", "aligned"):
            raise ValueError(f"{name}: a toy-world dataset is toyworld:DOMAIN-misaligned|aligned with DOMAIN one of "
                             f"{', '.join(world_cfg.domains)}")
        n, seed = (tw or {}).get("examples", 512), (tw or {}).get("data_seed", 0)
        out = toy_cache(tw) / "datasets" / f"{world_cfg.key()}-n{n}-s{seed}"
        paths = World(world_cfg).export_narrow(out, n=n, seed=seed, domains=[domain])
        path = paths[f"{domain}-{kind}"]
        return {"id": name, "path": str(path), "sha256": sha256_file(path), "domain": domain}
    ds = resolve(name)
    return {"id": name, "path": str(ds.path), "sha256": ds.sha256, "domain": None}
