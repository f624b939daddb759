"""The work plan: which (label, index) keys go into which shard, and the resume state.

Keys are ordered index-major (``index 0`` of every class, then ``index 1``, ...) so that every
batch mixes many different prompts, and growing ``images_per_class`` only appends work. The
ordered keys are cut into shards of ``synth.shard_size``; a shard is generated in fixed batches of
``synth.batch_size``, so its images do not depend on which process makes it or on how often the run
was interrupted (batched float kernels are not bit-identical across batch compositions on CPU).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from dfkd import schema
from dfkd.errors import UserError
from dfkd.runtime import atomic_write

STATE_NAME = schema.SYNTH_STATE


@dataclass(frozen=True)
class ShardSpec:
    """Shard ``shard_id`` holds ``keys`` = ``[(label, index), ...]`` in generation order, made under the config
    :func:`fingerprint` ``fingerprint``."""

    shard_id: int
    keys: tuple[tuple[int, int], ...]
    fingerprint: str = ""

    @property
    def name(self) -> str:
        return f"train-{self.shard_id:05d}.parquet"

    def tag(self) -> str:
        """Identity of the planned content (keys and config fingerprint), stored in the shard's metadata and checked
        on resume: a shard of another config is never counted as done."""
        return hashlib.sha256(json.dumps([self.fingerprint, self.keys]).encode()).hexdigest()[:16]

    def batches(self, batch_size: int) -> list[tuple[tuple[int, int], ...]]:
        return [self.keys[i:i + batch_size] for i in range(0, len(self.keys), batch_size)]


def check_plan_size(cfg) -> None:
    """Refuse, before the plan is built, a dataset larger than ``synth.max_images`` (a typo such as
    ``images_per_class=1000000000`` would fill memory with the plan alone)."""
    total = len(cfg.classes) * cfg.synth.images_per_class
    if total > cfg.synth.max_images:
        raise UserError(f"{len(cfg.classes)} classes x synth.images_per_class={cfg.synth.images_per_class} is {total:,} "
                        f"images, over synth.max_images={cfg.synth.max_images:,}; lower images_per_class or raise "
                        "synth.max_images if you mean it")


def plan_shards(num_classes: int, images_per_class: int, shard_size: int, fingerprint: str = "") -> list[ShardSpec]:
    """All shards of a dataset of ``num_classes * images_per_class`` images (made under ``fingerprint``)."""
    keys = [(label, index) for index in range(images_per_class) for label in range(num_classes)]
    return [ShardSpec(k, tuple(keys[s:s + shard_size]), fingerprint)
            for k, s in enumerate(range(0, len(keys), shard_size))]


# Config fields whose change alters finished rows. Absent on purpose: images_per_class (growing a
# dataset keeps its finished shards) and batch_size (a resume on another machine may use another
# batch size; images then match an uninterrupted run up to float rounding instead of bit for bit).
_SYNTH_FIELDS = ("backend", "model", "resolution", "store_resolution", "image_format", "jpeg_quality", "steps",
                 "guidance_scale", "negative_prompt", "scheduler", "dtype", "shard_size", "clip_guided", "filter")


def fingerprint_fields(cfg) -> dict:
    """The config values that decide what every finished row holds."""
    d = cfg.to_dict()
    return {
        "classes": d["classes"],
        "seed": d["seed"],
        "teacher": {k: d["teacher"][k] for k in ("model", "templates", "dtype")},
        "prompts": d["prompts"],
        "synth": {k: d["synth"][k] for k in _SYNTH_FIELDS},
    }


def fingerprint(cfg) -> str:
    return hashlib.sha256(json.dumps(fingerprint_fields(cfg), sort_keys=True).encode()).hexdigest()[:16]


def _diff(old: dict, new: dict, prefix: str = "") -> list[str]:
    out = []
    for k in sorted(set(old) | set(new)):
        a, b = old.get(k), new.get(k)
        if isinstance(a, dict) and isinstance(b, dict):
            out += _diff(a, b, f"{prefix}{k}.")
        elif a != b:
            out.append(f"{prefix}{k}")
    return out


def check_or_write_state(dataset_dir: Path, cfg, overwrite: bool, *, write: bool = True) -> bool:
    """Refuse a folder holding a dataset from a different config (unless ``overwrite``).

    Returns True when the folder must be cleared first (``overwrite`` and a different config).
    Otherwise writes the state file for this config (when ``write``: the main process).
    """
    path = dataset_dir / STATE_NAME
    old = read_state(path)
    shards = sorted((dataset_dir / "data").glob("*.parquet"))  # none: a run that failed before any image, no conflict
    if old is None and path.exists() and _tags_match(shards, cfg):
        old = {"fingerprint": fingerprint(cfg)}  # a damaged state file over this config's shards: written anew
    if shards and (old is None or old.get("fingerprint") != fingerprint(cfg)):
        if overwrite:
            return True
        if old is None:
            raise UserError(f"'{dataset_dir}' holds parquet shards not written by this tool with this config; "
                            "use another output_dir or pass synth.overwrite=true to start over")
        changed = ", ".join(_diff(old.get("fields", {}), fingerprint_fields(cfg))[:4]) or "unknown fields"
        raise UserError(
            f"'{dataset_dir}' holds a dataset made with a different config (changed: {changed}); "
            "use another output_dir, restore those values, or pass synth.overwrite=true to start over"
        )
    if write:
        write_state(dataset_dir, cfg)
    return False


def _tags_match(shards: list[Path], cfg) -> bool:
    """Every shard carries the tag this config plans for its name."""
    from .writer import shard_tag

    tags = {s.name: s.tag() for s in plan_shards(len(cfg.classes), cfg.synth.images_per_class, cfg.synth.shard_size,
                                                  fingerprint(cfg))}
    return all(tags.get(p.name) == shard_tag(p) for p in shards)


def read_state(path: Path) -> dict | None:
    """The state file's content; None when it is missing or damaged (a damaged one is written anew when every shard's
    tag, which holds the config fingerprint, shows that they are this config's)."""
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return state if isinstance(state, dict) else None


def write_state(dataset_dir: Path, cfg) -> None:
    dataset_dir.mkdir(parents=True, exist_ok=True)
    atomic_write(dataset_dir / STATE_NAME,
                 json.dumps({"fingerprint": fingerprint(cfg), "fields": fingerprint_fields(cfg)}, indent=1))
