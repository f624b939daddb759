"""The dataset contract between ``synth`` (writes it) and ``distill`` (reads it).

Layout (the Hub's own, so the folder loads locally and uploads unchanged)::

    OUTPUT_DIR/dataset/README.md            dataset card with YAML front matter
    OUTPUT_DIR/dataset/data/*.parquet       shards

``datasets.load_dataset(str(OUTPUT_DIR / "dataset"), split="train")`` returns rows with
:func:`features`. Each row is keyed by ``(label, index)``: ``index`` counts the images of one class
from 0 to ``images_per_class - 1``.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path

from dfkd.errors import UserError

DATASET_DIR = "dataset"  #: the dataset's folder inside OUTPUT_DIR
DATA_DIR = "data"
CARD_NAME = "README.md"
SYNTH_STATE = ".dfkd_synth.json"  #: the config fingerprint the shards were made with (hidden: not uploaded)
HASH_SUFFIX = ".sha256"  #: ``data/.NAME.sha256``: the shard's content hash, recorded at its commit (hidden)

#: column -> meaning (also rendered into the dataset card)
COLUMNS = {
    "image": "the synthetic image (JPEG or PNG bytes at synth.store_resolution)",
    "label": "class index (ClassLabel with the class names)",
    "index": "index of the image within its class; (label, index) is unique",
    "class_name": "the class name the prompt used",
    "prompt": "human-readable prompt; a style vector is written as a marker such as <style:mix>",
    "method": "prompt method (plain, handcrafted, mix, random, contrastive, ...)",
    "style": "JSON: style words and weights, learned style id, or vector seed",
    "seed": "the generator seed of this image (regenerates it alone)",
    "generator": "backend and model id, e.g. diffusion:stabilityai/sd-turbo",
    "teacher_confidence": "the teacher's zero-shot probability of the intended class",
}


def features(classes: Sequence[str]):
    """The ``datasets.Features`` of a synthetic dataset for ``classes``."""
    import datasets

    return datasets.Features(
        {
            "image": datasets.Image(),
            "label": datasets.ClassLabel(names=list(classes)),
            "index": datasets.Value("int32"),
            "class_name": datasets.Value("string"),
            "prompt": datasets.Value("string"),
            "method": datasets.Value("string"),
            "style": datasets.Value("string"),
            "seed": datasets.Value("int64"),
            "generator": datasets.Value("string"),
            "teacher_confidence": datasets.Value("float32"),
        }
    )


def check_classes(dataset_classes: Sequence[str], config_classes: Sequence[str], where: str) -> None:
    """Refuse a dataset whose class names (or their order) differ from the config's."""
    if list(dataset_classes) != list(config_classes):
        missing = [c for c in config_classes if c not in dataset_classes]
        extra = [c for c in dataset_classes if c not in config_classes]
        detail = (f"missing {missing[:3]}" if missing else "") + (f" extra {extra[:3]}" if extra else "")
        detail = detail.strip() or "same names in a different order"
        raise UserError(
            f"dataset '{where}' has classes that differ from the config ({detail}); "
            "synthesise it again with this config or fix `classes`"
        )


def check_columns(column_names: Sequence[str], where: str) -> None:
    missing = [c for c in COLUMNS if c not in column_names]
    if missing:
        raise UserError(f"dataset '{where}' lacks column(s) {', '.join(missing)}; it was not written by `dfkd synth`")


# -- integrity: a shard counts only when its bytes hash to what was recorded when it was committed --------------

_HASHED: dict[tuple, str] = {}


def file_sha256(path: str | Path) -> str:
    """The file's sha256, remembered in this process for as long as its inode, size, mtime and ctime stay the same
    (a write changes ctime, which no one can set back: a file changed since it was hashed is hashed again)."""
    st = os.stat(path)
    key = (str(path), st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
    if key not in _HASHED:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        _HASHED[key] = h.hexdigest()
    return _HASHED[key]


def hash_record(shard: Path) -> Path:
    """The hidden file beside ``shard`` that holds its content hash (``datasets`` and Hub uploads skip it)."""
    return shard.with_name(f".{shard.name}{HASH_SUFFIX}")


def record_hash(shard: Path, sha256: str) -> None:
    """Record ``shard``'s hash: written after the shard is in place, so this file is the last step of the commit."""
    from dfkd.runtime import atomic_write

    atomic_write(hash_record(shard), sha256 + "\n")


def verified_hash(shard: Path) -> str | None:
    """``shard``'s sha256 when it exists and matches its record; None when it is missing, unrecorded or damaged."""
    record = hash_record(shard)
    try:
        expected = record.read_text(encoding="utf-8").strip()
        return expected if shard.is_file() and file_sha256(shard) == expected else None
    except (OSError, UnicodeDecodeError):
        return None


def verify_dataset(dataset_dir: Path) -> dict[str, str]:
    """``{shard name: sha256}`` of every shard in ``dataset_dir/data``, each checked against the hash recorded when it
    was committed. A folder with no records at all (a dataset downloaded from the Hub, where they are not uploaded)
    is hashed as it is. A damaged or unrecorded shard is a UserError: re-running ``dfkd synth`` remakes it."""
    shards = sorted((Path(dataset_dir) / DATA_DIR).glob("*.parquet"))
    if not any(hash_record(p).is_file() for p in shards):
        return {p.name: file_sha256(p) for p in shards}
    out = {}
    for p in shards:
        sha = verified_hash(p)
        if sha is None:
            state = "damaged (its bytes differ from the hash recorded when it was written)" if hash_record(p).is_file() \
                else "not finished (no content hash was recorded for it)"
            raise UserError(f"shard '{p}' is {state}; run `dfkd synth` with the config that made the dataset "
                            "to remake it")
        out[p.name] = sha
    return out


def json_digest(value) -> str:
    """A 16-hex-digit id of a JSON-able ``value`` (keys sorted; anything else by its ``str``): the fingerprints of
    distill and eval, and a dataset's content id, are built with it."""
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:16]


def content_id(hashes: dict[str, str]) -> str:
    """A short id of a dataset's exact content, from :func:`verify_dataset`."""
    return json_digest(sorted(hashes.items()))
