"""Shared test setup: offline Hub, a session-wide tiny-model cache, and the tiny configs."""

from __future__ import annotations

import os
import sys
from pathlib import Path

# Before anything imports huggingface_hub: never touch the network (a Hub lookup hangs ~30 s offline).
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from fixtures import REPO_ROOT, tiny_config  # noqa: F401


@pytest.fixture(scope="session", autouse=True)
def _tiny_cache(tmp_path_factory):
    """One tiny-model cache for the whole session (tiny:* ids resolve into it)."""
    cache = os.environ.get("DFKD_TINY_DIR") or str(tmp_path_factory.mktemp("tiny-cache"))
    os.environ["DFKD_TINY_DIR"] = cache
    if not os.environ.get("HF_HOME"):
        os.environ["HF_HOME"] = str(tmp_path_factory.mktemp("hf-home"))
    yield Path(cache)


@pytest.fixture(scope="session")
def tiny_dir(_tiny_cache) -> Path:
    """Folder holding clip/, sd/, vqgan/, vae/ (built once per session)."""
    from dfkd.models import resolve_model_id

    for name in ("clip", "sd", "vqgan", "vae"):
        resolve_model_id(f"tiny:{name}")
    return _tiny_cache / "v1"
