"""Shared helpers of the synth tests: small, fast tiny-model configs and dataset readers."""

from __future__ import annotations

from pathlib import Path

from fixtures import tiny_config

#: three classes, two images each, two diffusion steps: seconds on a CPU
FAST = ("classes=[dog,guitar,house]", "synth.images_per_class=2", "synth.steps=2", "synth.shard_size=4",
        "synth.batch_size=4", "synth.progress=false", "prompts.method=mix", "synth.diagnostics_max_per_class=4",
        "synth.preview_per_class=2")
CLIP_GUIDED = ("synth.backend=clip_guided", "synth.model=tiny:vqgan", "synth.clip_guided.iterations=3",
               "synth.clip_guided.cutouts=4")


def fast_args(out: Path, *extra: str) -> list[str]:
    """``dfkd synth`` argv for the fast tiny run into ``out``."""
    from fixtures import TINY_YAML

    return ["synth", "--config", str(TINY_YAML), f"output_dir={out}", *FAST, *extra]


def fast_config(out: Path, *extra: str):
    return tiny_config(out, *FAST, *extra)


def read_rows(dataset_dir: Path) -> dict[tuple[int, int], dict]:
    """(label, index) -> row (image bytes kept raw) of every committed shard."""
    import pyarrow.parquet as pq

    rows = {}
    for path in sorted((Path(dataset_dir) / "data").glob("*.parquet")):
        for r in pq.read_table(path).to_pylist():
            key = (r["label"], r["index"])
            assert key not in rows, f"duplicate key {key}"
            rows[key] = r
    return rows


def load_backend(cfg, teacher):
    """The configured synth backend, loaded on the CPU with ``teacher``."""
    import torch

    from synth.backends import get_backend

    return get_backend(cfg.synth.backend).load(cfg, teacher=teacher, device=torch.device("cpu"))


def records_and_encoding(cfg, backend, keys):
    """The configured prompt method's records for ``keys`` ((label, index) pairs) and their encoding."""
    from prompts.methods import create_prompt_method

    method = create_prompt_method(cfg.prompts, classes=cfg.classes, encoder=backend.text_encoder, seed=cfg.seed,
                                  run_dir=cfg.out)
    records = [method.record(label, index) for label, index in keys]
    return records, method.encode(records)
