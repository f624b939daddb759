"""The dataset writer: parquet shards in ``OUT/dataset/data/``, committed atomically, written off the
generator's critical path.

Images are resized to ``synth.store_resolution`` on the generator's device (one batched call), then
JPEG/PNG-encoded by a thread pool (Pillow releases the GIL while encoding) while the generator
works on the next batch; a single I/O thread assembles each shard and commits it with
write-to-temp + ``os.replace``, then records its sha256 beside it (``data/.NAME.sha256``): a killed run leaves
a whole, recorded shard or one that is made again, and resume and distill trust only shards whose bytes still
match their record.
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from dfkd import schema

from .plan import ShardSpec

SHARD_TAG_KEY = b"dfkd_shard"
SHARD_INFO_KEY = b"dfkd_info"
TMP_PREFIX = ".tmp-"
MAX_PENDING_SHARDS = 2  #: back-pressure: at most this many shards wait to be written


def to_uint8(images: torch.Tensor, size: int) -> np.ndarray:
    """``(B, 3, H, W)`` float in ``[0, 1]`` -> ``(B, size, size, 3)`` uint8 (antialiased bicubic resize)."""
    x = images.detach().float()
    if x.shape[-2:] != (size, size):
        x = torch.nn.functional.interpolate(x, size=(size, size), mode="bicubic", align_corners=False, antialias=True)
    x = (x.clamp(0, 1) * 255).round().to(torch.uint8)
    return x.permute(0, 2, 3, 1).cpu().numpy()


def encode_image(array: np.ndarray, image_format: str, quality: int) -> bytes:
    """``(H, W, 3)`` uint8 -> JPEG or PNG bytes (deterministic for the same array); PNG ignores ``quality``."""
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="JPEG" if image_format == "jpeg" else "PNG", quality=quality)
    return buf.getvalue()


def shard_tag(path: Path) -> str | None:
    """The plan tag stored in a committed shard's metadata (None when absent or unreadable)."""
    import pyarrow.parquet as pq

    try:
        meta = pq.read_schema(path).metadata or {}
    except Exception:  # noqa: BLE001 - a damaged file is simply not done
        return None
    tag = meta.get(SHARD_TAG_KEY)
    return tag.decode() if tag is not None else None


def shard_info(path: Path) -> dict:
    """The ``info`` mapping a shard was written with (``{}`` when absent)."""
    import pyarrow.parquet as pq

    raw = (pq.read_schema(path).metadata or {}).get(SHARD_INFO_KEY)
    return json.loads(raw) if raw else {}


def done_shards(data_dir: Path, specs: Sequence[ShardSpec], damaged: list[str] | None = None) -> set[int]:
    """Ids of the planned shards already committed with exactly their planned tag (keys and config fingerprint)
    and whose bytes match the hash recorded at their commit. Names of shards present but damaged (bytes, or
    the record, not what was committed) are appended to ``damaged``: they are made again."""
    done = set()
    for s in specs:
        path = data_dir / s.name
        if not path.is_file():
            continue
        if schema.verified_hash(path) is None:
            if damaged is not None and schema.hash_record(path).is_file():
                damaged.append(s.name)
        elif shard_tag(path) == s.tag():
            done.add(s.shard_id)
    return done


def remove_stale(data_dir: Path, specs: Sequence[ShardSpec]) -> list[str]:
    """Delete temp files of killed runs, and shards outside the plan (``images_per_class`` shrank) with their
    hash records."""
    planned = {s.name for s in specs} | {schema.hash_record(data_dir / s.name).name for s in specs}
    removed = []
    for path in sorted(data_dir.glob("*")) if data_dir.is_dir() else []:
        if path.name.startswith(TMP_PREFIX) or path.suffix == ".tmp" or (path.suffix in (".parquet", schema.HASH_SUFFIX)
                                                and path.name not in planned):
            path.unlink(missing_ok=True)
            removed.append(path.name)
    return removed


class DatasetWriter:
    """Encode images in ``threads`` threads and commit shards atomically from one I/O thread, into
    ``dataset_dir/data``; ``classes`` are the names of the ``label`` ClassLabel."""

    def __init__(self, dataset_dir: Path, classes: Sequence[str], *, image_format: str = "jpeg",
                 jpeg_quality: int = 95, store_resolution: int = 256, threads: int = 2):
        self.data_dir = Path(dataset_dir) / schema.DATA_DIR
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.arrow_schema = schema.features(classes).arrow_schema
        self.image_format, self.quality, self.size = image_format, jpeg_quality, store_resolution
        self._encoders = ThreadPoolExecutor(threads, thread_name_prefix="synth-encode")
        self._io = ThreadPoolExecutor(1, thread_name_prefix="synth-write")
        self._pending: list[Future] = []

    def encode(self, arrays: np.ndarray) -> list[Future]:
        """Start encoding ``(B, S, S, 3)`` uint8 images (see :func:`to_uint8`); one future of bytes per image."""
        return [self._encoders.submit(encode_image, a, self.image_format, self.quality) for a in arrays]

    def write_shard(self, spec: ShardSpec, rows: list[dict], info: dict | None = None) -> None:
        """Queue shard ``spec``; ``rows`` follow :data:`schema.COLUMNS`, their ``image`` a future of bytes.
        ``info`` (JSON-able) is stored in the shard's metadata (e.g. filter counts)."""
        self._pending.append(self._io.submit(self._write, spec, rows, info or {}))
        while len(self._pending) > MAX_PENDING_SHARDS:
            self._pending.pop(0).result()

    def _write(self, spec: ShardSpec, rows: list[dict], info: dict) -> Path:
        import pyarrow as pa
        import pyarrow.parquet as pq

        rows = [{**r, "image": {"bytes": r["image"].result(), "path": None}} for r in rows]
        meta = {**(self.arrow_schema.metadata or {}), SHARD_TAG_KEY: spec.tag().encode(),
                SHARD_INFO_KEY: json.dumps(info).encode()}
        table = pa.Table.from_pylist(rows, schema=self.arrow_schema.with_metadata(meta))
        final = self.data_dir / spec.name
        tmp = self.data_dir / f"{TMP_PREFIX}{os.getpid()}-{spec.name}"
        pq.write_table(table, tmp)
        sha = schema.file_sha256(tmp)
        os.replace(tmp, final)  # a whole shard or nothing ...
        schema.record_hash(final, sha)  # ... and it counts once its hash is recorded: the commit
        return final

    def close(self) -> None:
        """Wait for every queued shard (re-raising a write error) and stop the threads."""
        try:
            for fut in self._pending:
                fut.result()
        finally:
            self._pending.clear()
            self._encoders.shutdown(wait=True)
            self._io.shutdown(wait=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()
