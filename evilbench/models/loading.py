"""Load a model + tokenizer by registry name, Hugging Face id (from the local HF cache; HF_HUB_OFFLINE
is honoured by huggingface_hub) or local HF-format directory. trust_remote_code is off unless asked."""
from __future__ import annotations

import copy
import hashlib
import json
import os
from dataclasses import dataclass, replace
from pathlib import Path

from evilbench.models.registry import ModelError, ModelSpec, by_hf_id, get, registry, spec_for_model_type

SMALL_MODEL_PARAMS = 20_000_000  # models below this are kept in memory and copied for repeated loads
_FULL_HASH_BYTES = 256 << 20  # local weights up to this size are hashed in full for the revision


@dataclass(frozen=True)
class ModelSource:
    """Where a `--model` value points: a local directory or a hub id, and the spec that goes with it."""
    spec: ModelSpec
    location: str  # local directory or HF id
    is_local: bool
    revision: str | None = None


def resolve_source(model: str | os.PathLike, revision: str | None = None, *,
                   trust_remote_code: bool = False) -> ModelSource:
    name = str(model)
    if name in registry():
        spec = get(name)
        if spec.is_tiny:
            from evilbench.models.tiny import build_tiny

            return ModelSource(spec, str(build_tiny(name)), True, None)
        if spec.is_imported:  # built by `evilbench models import`; ModelError naming the command if not yet
            from evilbench.models.importer import imported_path

            return ModelSource(spec, str(imported_path(name)), True, None)
        if not spec.hf_id:
            raise ModelError(f"registry entry {name!r} has neither hf_id nor a tiny or import recipe")
        return ModelSource(spec, spec.hf_id, False, revision or spec.revision)
    path = Path(name).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelError(f"{path} is a directory but has no config.json (not a Hugging Face model directory)")
        cfg = read_model_config(path / "config.json", trust_remote_code)
        arch = (cfg.get("architectures") or [""])[0]
        return ModelSource(spec_for_model_type(cfg.get("model_type", ""), str(path.resolve()), arch),
                           str(path.resolve()), True, None)
    if os.sep in name and name.count("/") != 1 or name.startswith((".", "/", "~")):
        raise ModelError(f"model directory not found: {name}")
    if name.count("/") != 1:
        raise ModelError(f"unknown model {name!r}: not a registry name (see `evilbench models list`), "
                         "not a local directory, not a Hugging Face id (org/name)")
    spec = by_hf_id(name)
    if spec is not None:
        return ModelSource(spec, name, False, revision or spec.revision)
    # outside the registry: LoRA targets etc. from the defaults of the cached config's model_type
    from transformers import AutoConfig

    bare = ModelSource(ModelSpec(name=name, hf_id=name), name, False, revision)
    config = _hub_call(AutoConfig.from_pretrained, bare, "the config")
    arch = (getattr(config, "architectures", None) or [""])[0]
    spec = replace(spec_for_model_type(config.model_type, name, arch), hf_id=name, revision=revision)
    return ModelSource(spec, name, False, revision)


def read_model_config(path: str | os.PathLike, trust_remote_code: bool = False) -> dict:
    """A model directory's config.json, checked before anything loads it: valid JSON, an object, and a
    model_type this transformers knows (or custom code allowed). Errors name the file."""
    path = Path(path)
    try:
        cfg = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ModelError(f"{path}:{e.lineno}:{e.colno}: not valid JSON ({e.msg})") from None
    except UnicodeDecodeError:
        raise ModelError(f"{path}: not a text file") from None
    if not isinstance(cfg, dict):
        raise ModelError(f"{path}: expected a JSON object (a Hugging Face model config), got a {type(cfg).__name__}")
    model_type = cfg.get("model_type")
    if not model_type:
        raise ModelError(f"{path}: no model_type (not a Hugging Face model config)")
    if not (trust_remote_code and cfg.get("auto_map")):
        import transformers
        from transformers import CONFIG_MAPPING

        if model_type not in CONFIG_MAPPING:
            raise ModelError(f"{path}: unknown model_type {model_type!r} (transformers {transformers.__version__} "
                             "does not know it; a newer transformers, or --trust-remote-code for a model with "
                             "custom code, may)")
    return cfg


_PROBE: dict[str, bool] = {}


def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the Hugging Face hub (HF_ENDPOINT, default huggingface.co) answers an HTTP request within
    `timeout` seconds, DNS included (a proxy that accepts connections but cannot forward them, or
    answers 404 for everything, does not count); False at once with HF_HUB_OFFLINE set. Cached per process."""
    if os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0"):
        return False
    key = (os.environ.get("HF_ENDPOINT") or "https://huggingface.co").rstrip("/")
    if key not in _PROBE:
        import threading
        import urllib.error
        import urllib.request

        ok = []

        def probe():
            try:
                urllib.request.urlopen(urllib.request.Request(key + "/api/models?limit=1", method="HEAD"),
                                       timeout=timeout).close()
                ok.append(True)
            except urllib.error.HTTPError as e:  # 401/403: the hub asks for a token; else not the hub
                if e.code in (401, 403):
                    ok.append(True)
            except (OSError, ValueError):
                pass

        t = threading.Thread(target=probe, daemon=True)  # getaddrinfo itself has no timeout
        t.start()
        t.join(timeout)
        _PROBE[key] = bool(ok)
    return _PROBE[key]


def download_hint(hf_id: str) -> str:
    """The download command that exists here (`hf` replaced `huggingface-cli` in huggingface_hub 1.0)."""
    import shutil

    if shutil.which("hf") or not shutil.which("huggingface-cli"):
        return f"hf download {hf_id}"
    return f"huggingface-cli download {hf_id}"


def _hub_call(fn, source: ModelSource, what: str, **kw):
    """`fn(hf_id)` from the local cache first; the network only when the hub answers (no minute of
    retries offline)."""
    try:
        return fn(source.location, revision=source.revision, local_files_only=True, **kw)
    except OSError as e:
        cached_error = e
    if hub_reachable():
        try:
            return fn(source.location, revision=source.revision, **kw)
        except OSError as e:
            raise ModelError(f"cannot load {what} of {source.location!r}: {e}") from e
    offline = os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0")
    twin = f", or try the pipeline offline on its tiny twin (--model {source.spec.twin})" if source.spec.twin else ""
    raise ModelError(
        f"{what} of {source.location!r} is not in the local Hugging Face cache and the hub is "
        f"{'switched off (HF_HUB_OFFLINE is set)' if offline else 'unreachable (offline)'}. Download it on a "
        f"connected machine (`{download_hint(source.location)}`) into this cache, pass a local directory"
        f"{twin}") from cached_error


def local_fingerprint(path: str | Path) -> str:
    """Revision of a local model directory: sha256 over its files (contents when small, else sizes)."""
    path = Path(path)
    files = sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith("."))
    total = sum(p.stat().st_size for p in files)
    h = hashlib.sha256()
    for p in files:
        h.update(str(p.relative_to(path)).encode() + b"\0")
        if total <= _FULL_HASH_BYTES:
            h.update(hashlib.sha256(p.read_bytes()).digest())
        else:
            h.update(str(p.stat().st_size).encode())
    return ("sha256:" if total <= _FULL_HASH_BYTES else "size-sha256:") + h.hexdigest()


def hub_revision(source: ModelSource) -> str | None:
    """The commit of the cached snapshot a hub model was loaded from."""
    try:
        from huggingface_hub import try_to_load_from_cache

        p = try_to_load_from_cache(source.location, "config.json", revision=source.revision)
        if isinstance(p, str):
            return Path(p).parent.name
    except Exception:
        pass
    return source.revision


def load_tokenizer(source: ModelSource, trust_remote_code: bool = False):
    from transformers import AutoTokenizer

    tok = _hub_call(AutoTokenizer.from_pretrained, source, "the tokenizer", trust_remote_code=trust_remote_code) \
        if not source.is_local else AutoTokenizer.from_pretrained(source.location, trust_remote_code=trust_remote_code)
    if tok.pad_token is None:
        pad = source.spec.pad_token
        if pad and tok.convert_tokens_to_ids(pad) not in (None, tok.unk_token_id):
            tok.pad_token = pad
        elif tok.eos_token is not None:
            tok.pad_token = tok.eos_token
    tok.padding_side = "right"
    return tok


def resolve_dtype(dtype: str, device: str):
    import torch

    from evilbench._env import DTYPES, torch_dtype

    if dtype in (None, "auto"):
        return torch.bfloat16 if str(device).startswith("cuda") else torch.float32
    if dtype not in DTYPES:
        raise ModelError(f"unknown dtype {dtype!r}; use auto, fp32, bf16 or fp16")
    return torch_dtype(dtype)


_MEMO: dict[tuple, object] = {}


def _weights_bytes(path: str) -> int:
    return sum(p.stat().st_size for p in Path(path).glob("*.safetensors"))


def load_model(source: ModelSource, *, dtype="auto", device: str = "cpu", trust_remote_code: bool = False,
               attn_implementation: str | None = None):
    """The base model in eval mode on `device`. Small local models are memoised (a fresh deep copy is
    returned each time) so that many short runs in one process do not pay for from_pretrained."""
    import transformers

    torch_dtype = resolve_dtype(dtype, device)
    attn = attn_implementation or source.spec.attn_implementation
    key = None
    if source.is_local:
        key = (source.location, local_fingerprint(source.location), str(torch_dtype), attn, trust_remote_code)
        if key in _MEMO:
            return copy.deepcopy(_MEMO[key]).to(device)
    arch = source.spec.architecture
    cls = getattr(transformers, arch, None) if arch and not trust_remote_code else None
    if cls is None:
        cls = transformers.AutoModelForCausalLM
    kw = {"dtype": torch_dtype, "trust_remote_code": trust_remote_code}
    if attn:
        kw["attn_implementation"] = attn
    from transformers.utils import logging as hf_logging

    quiet = source.is_local and _weights_bytes(source.location) < (100 << 20)
    bars = hf_logging.is_progress_bar_enabled()
    if quiet:  # no "Loading weights" bar for tiny models loaded many times in one process
        hf_logging.disable_progress_bar()
    try:
        if source.is_local:
            model = cls.from_pretrained(source.location, **kw)
        else:
            model = _hub_call(cls.from_pretrained, source, "the weights", **kw)
    finally:
        if quiet and bars:
            hf_logging.enable_progress_bar()
    model.eval()
    if key is not None and sum(p.numel() for p in model.parameters()) < SMALL_MODEL_PARAMS:
        _MEMO[key] = copy.deepcopy(model)
    return model.to(device)


def model_revision(source: ModelSource) -> str | None:
    return local_fingerprint(source.location) if source.is_local else hub_revision(source)
