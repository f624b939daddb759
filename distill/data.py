"""Training and evaluation images.

* The synthetic set (``dfkd/schema.py`` contract) is decoded once at its stored resolution into a
  ``(N, 3, H, W)`` uint8 tensor that lives on the training device when it fits (``distill.device_resident``);
  batches are then gathered and augmented on the device and the input pipeline costs nothing. A set
  that does not fit is read by a ``DataLoader`` (workers, pinned memory, persistent workers) that
  decodes JPEG/PNG bytes per item.
* The order is a function of (seed, epoch) only, split into per-process slices of each global batch,
  so a run resumed at step ``k`` reads exactly the batches an uninterrupted run reads after step ``k``.
* Real images come from a DomainBed folder ``ROOT/<domain>/<class>/*`` (class folders matched to the
  config's classes after normalisation: ``"alarm clock" == "Alarm_Clock"``) or from a Hugging Face
  dataset with a domain column; they serve evaluation and the few-shot setting.
"""

from __future__ import annotations

import io
import os
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from dfkd.errors import UserError

from .augment import center_square_box
from .config import EvalConfig

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}


def decode_image(data: bytes, size: tuple[int, int] | None = None) -> torch.Tensor:
    """JPEG/PNG/... bytes -> ``(3, H, W)`` uint8 RGB; resized (bilinear, antialiased) to ``size`` if given.

    Pillow decodes (libjpeg-turbo, the same pixels torchvision's deprecated decoder gave, at the same speed here)."""
    from PIL import Image

    with Image.open(io.BytesIO(data)) as im:
        img = torch.from_numpy(np.array(im.convert("RGB"))).permute(2, 0, 1).contiguous()
    if size is not None and tuple(img.shape[-2:]) != tuple(size):
        img = resize_uint8(img, size)
    return img


def resize_uint8(img: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """``(3, H, W)`` uint8 -> ``(3, *size)`` uint8."""
    out = F.interpolate(img[None].float(), size=tuple(size), mode="bilinear", align_corners=False, antialias=True)
    return out[0].round().clamp(0, 255).to(torch.uint8)


def center_square(img: torch.Tensor, size: int) -> torch.Tensor:
    """``(3, H, W)`` uint8 -> ``(3, size, size)`` uint8: shorter side to ``size``, centre crop."""
    h, w = img.shape[-2:]
    nh, nw, top, left = center_square_box(h, w, size)
    img = resize_uint8(img, (nh, nw)) if (nh, nw) != (h, w) else img
    return img[:, top:top + size, left:left + size].contiguous()


def load_synthetic(path: str | Path, classes: Sequence[str]):
    """The synthetic ``datasets.Dataset`` at ``path`` (its image column left undecoded); contract-checked.

    Every shard is first checked against the content hash recorded when it was written
    (:func:`dfkd.schema.verify_dataset`); the rows come from those verified bytes, through an Arrow copy named by
    the shard's hash (:func:`arrow_copy`), never from a cache keyed by the folder's name.
    """
    import datasets

    from dfkd.schema import DATA_DIR, check_classes, check_columns, verify_dataset

    path = Path(path)
    if not (path / DATA_DIR).is_dir():
        raise UserError(f"no synthetic dataset at '{path}' (no {DATA_DIR}/ folder); run `dfkd synth` with this config "
                        "first or point distill.dataset at one")
    hashes = verify_dataset(path)
    if not hashes:
        raise UserError(f"dataset '{path}' is empty; run `dfkd synth` again")
    parts = [datasets.Dataset.from_file(str(arrow_copy(path / DATA_DIR / name, sha))) for name, sha in hashes.items()]
    ds = parts[0] if len(parts) == 1 else datasets.concatenate_datasets(parts)
    check_columns(ds.column_names, str(path))
    names = getattr(ds.features["label"], "names", None)
    if names is None:
        raise UserError(f"dataset '{path}' has no ClassLabel 'label' column; it was not written by `dfkd synth`")
    check_classes(names, classes, str(path))
    if len(ds) == 0:
        raise UserError(f"dataset '{path}' is empty; run `dfkd synth` again")
    return ds.cast_column("image", datasets.Image(decode=False))


def arrow_copy(shard: Path, sha256: str) -> Path:
    """A memory-mappable Arrow copy of the parquet ``shard`` whose bytes hash to ``sha256``, in the ``datasets``
    cache under that hash: content-addressed, so it can never be stale (written once, atomically)."""
    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq

    from dfkd.runtime import atomic_path

    target = Path(datasets.config.HF_DATASETS_CACHE) / "dfkd-shards" / f"{sha256}.arrow"
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        reader = pq.ParquetFile(shard)
        with atomic_path(target) as tmp, pa.OSFile(str(tmp), "wb") as sink, \
                pa.ipc.new_stream(sink, reader.schema_arrow) as writer:
            for batch in reader.iter_batches(batch_size=256):
                writer.write_batch(batch)
    except (pa.ArrowException, OSError) as exc:
        raise UserError(f"shard '{shard}' cannot be read ({type(exc).__name__}: {str(exc)[:120]}); run `dfkd synth` "
                        "with the config that made the dataset to remake it") from exc
    return target


class ArrowImages(torch.utils.data.Dataset):
    """Item ``i`` -> (``(3, H, W)`` uint8, label, False): the synthetic image's bytes read from the Arrow table on
    demand and decoded at ``size`` (nothing held in RAM; works in DataLoader workers)."""

    def __init__(self, ds, size: tuple[int, int]):
        self.ds, self.labels, self.size = ds, list(ds["label"]), size

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int, bool]:
        return decode_image(_stored_bytes(self.ds[int(i)]["image"]), self.size), self.labels[i], False


def _stored_bytes(image: dict) -> bytes:
    """The encoded bytes of an undecoded ``datasets.Image`` value (inline, or in the file it points to)."""
    return image["bytes"] if image.get("bytes") is not None else Path(image["path"]).read_bytes()


def stored_size(ds) -> tuple[int, int]:
    """(H, W) of the first image: every image is decoded at this size."""
    return tuple(decode_image(_stored_bytes(ds[0]["image"])).shape[-2:])


def decode_all(dataset: torch.utils.data.Dataset, num_workers: int = 0, batch_size: int = 256,
               show: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Decode every item: ``(N, 3, H, W)`` uint8 and ``(N,)`` int64 labels (CPU); a progress bar when ``show``."""
    from tqdm.auto import tqdm

    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, num_workers=num_workers, shuffle=False)
    batches = list(tqdm(loader, desc="decode", unit="batch", leave=False, dynamic_ncols=True, disable=not show))
    return torch.cat([x for x, _, _ in batches]), torch.cat([y for _, y, _ in batches]).long()


@dataclass
class BatchPlan:
    """Which indices each process reads at each micro-step: a function of (seed, epoch) only."""

    num_items: int
    batch_size: int  #: per process
    world_size: int = 1
    rank: int = 0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.batches_per_epoch < 1:
            raise UserError(f"the training set has {self.num_items} images, fewer than one global batch "
                            f"({self.batch_size} x {self.world_size} processes); lower distill.batch_size or "
                            "synthesise more images")

    @property
    def batches_per_epoch(self) -> int:
        return self.num_items // (self.batch_size * self.world_size)

    def epoch_order(self, epoch: int) -> torch.Tensor:
        """``(num_items,)`` permutation of epoch ``epoch`` (the last one is cached: one randperm per epoch)."""
        cached = getattr(self, "_cached", None)
        if cached is None or cached[0] != epoch:
            gen = torch.Generator().manual_seed(self.seed * 7919 + epoch)
            self._cached = cached = (epoch, torch.randperm(self.num_items, generator=gen))
        return cached[1]

    def indices(self, micro_step: int) -> torch.Tensor:
        """``(batch_size,)`` int64 indices of this process's micro-batch number ``micro_step`` (global count)."""
        epoch, j = divmod(micro_step, self.batches_per_epoch)
        start = (j * self.world_size + self.rank) * self.batch_size
        return self.epoch_order(epoch)[start:start + self.batch_size]


class PlannedBatches(torch.utils.data.Sampler):
    """Batch sampler over micro-steps ``[start, stop)`` of a :class:`BatchPlan` (set them before each iter)."""

    def __init__(self, plan: BatchPlan, start: int = 0, stop: int = 0):
        self.plan, self.start, self.stop = plan, start, stop

    def __len__(self) -> int:
        return max(0, self.stop - self.start)

    def __iter__(self) -> Iterator[list[int]]:
        for step in range(self.start, self.stop):
            yield self.plan.indices(step).tolist()


@dataclass
class Batch:
    images: torch.Tensor  #: (B, 3, H, W) uint8 on the device
    labels: torch.Tensor  #: (B,) int64
    is_real: torch.Tensor  #: (B,) bool


class TrainData:
    """The training set behind :meth:`batches`: device-resident tensors or a DataLoader."""

    def __init__(self, plan: BatchPlan, device: torch.device, data: Batch | torch.utils.data.Dataset,
                 num_workers: int = 0):
        """``data``: every item as one :class:`Batch` of tensors (kept on ``device``), or a Dataset read by a
        DataLoader with ``num_workers`` workers."""
        self.plan, self.device = plan, device
        self.resident = isinstance(data, Batch)
        if self.resident:
            self.images, self.labels, self.is_real = (t.to(device) for t in (data.images, data.labels, data.is_real))
        else:
            self.sampler = PlannedBatches(plan)
            self.loader = torch.utils.data.DataLoader(
                data, batch_sampler=self.sampler, num_workers=num_workers, pin_memory=device.type == "cuda",
                persistent_workers=num_workers > 0, generator=torch.Generator().manual_seed(0),
            )

    def __len__(self) -> int:
        return self.plan.num_items

    def batches(self, start: int, stop: int) -> Iterator[Batch]:
        """Micro-batches ``start .. stop - 1`` of this process."""
        if self.resident:
            for step in range(start, stop):
                idx = self.plan.indices(step).to(self.device)
                yield Batch(self.images[idx], self.labels[idx], self.is_real[idx])
            return
        self.sampler.start, self.sampler.stop = start, stop
        for x, y, real in self.loader:
            nb = self.device.type == "cuda"
            yield Batch(x.to(self.device, non_blocking=nb), y.to(self.device, non_blocking=nb).long(),
                        real.to(self.device, non_blocking=nb).bool())


def fits_on_device(nbytes: int, device: torch.device, mode: str) -> bool:
    """``distill.device_resident``: always / never / auto (<= 25 % of free device memory, or of RAM on CPU)."""
    if mode != "auto":
        return mode == "always"
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return nbytes <= 0.25 * free
    try:
        ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # pragma: no cover - non-POSIX
        ram = 8 * 2**30
    return nbytes <= 0.25 * ram


def normalize_name(name: str) -> str:
    """``"Alarm_Clock" -> "alarmclock"``: how class folder names are matched to config classes."""
    return re.sub("[^a-z0-9]", "", name.lower())


@dataclass
class RealImages:
    """Real labelled images of one domain: ``items[i]`` is a file path (str) or encoded bytes; ``labels[i]`` an index."""

    domain: str
    items: list[Any]
    labels: list[int]

    def read(self, i: int) -> bytes:
        item = self.items[i]
        return Path(item).read_bytes() if isinstance(item, (str, Path)) else item


def match_classes(found: Sequence[str], classes: Sequence[str], where: str) -> dict[str, int]:
    """Map found class names to config class indices by normalised name; a missing class is a UserError."""
    by_norm = {normalize_name(f): f for f in found}
    missing = [c for c in classes if normalize_name(c) not in by_norm]
    if missing:
        raise UserError(f"{where} has no class {missing[0]!r} (missing: {', '.join(missing[:4])}; found: "
                        f"{', '.join(sorted(found)[:6])}); give data with every configured class or fix `classes`")
    return {by_norm[normalize_name(c)]: i for i, c in enumerate(classes)}


def read_domainbed(root: str | Path, classes: Sequence[str], domains: Sequence[str] | None = None) -> list[RealImages]:
    """``ROOT/<domain>/<class>/*`` -> one :class:`RealImages` per domain (sorted; ``domains`` filters)."""
    root = Path(root)
    found = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if domains:
        absent = [d for d in domains if d not in found]
        if absent:
            raise UserError(f"eval folder '{root}' has no domain '{absent[0]}' (found: {', '.join(found)}); fix eval.domains")
        found = [d for d in found if d in domains]
    if not found:
        raise UserError(f"folder '{root}' has no domain folders; expected the DomainBed layout ROOT/<domain>/<class>/*.jpg")
    out = []
    for domain in found:
        class_dirs = [p.name for p in (root / domain).iterdir() if p.is_dir()]
        mapping = match_classes(class_dirs, classes, f"folder '{root / domain}'")
        items, labels = [], []
        for folder in sorted(mapping):
            files = sorted(f for f in (root / domain / folder).iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
            items += [str(f) for f in files]
            labels += [mapping[folder]] * len(files)
        out.append(RealImages(domain, items, labels))
    return out


def read_hf_domains(path: str, classes: Sequence[str], layout: EvalConfig,
                    domains: Sequence[str] | None = None) -> list[RealImages]:
    """A Hugging Face dataset (local folder or Hub id) with a domain column -> one :class:`RealImages` per domain;
    ``layout`` (the ``eval`` section) names the split and the domain, label and image columns."""
    import datasets

    split = layout.split
    domain_column, label_column, image_column = layout.domain_column, layout.label_column, layout.image_column
    try:
        ds = datasets.load_dataset(path, split=split)
    except (FileNotFoundError, ValueError, OSError) as exc:
        raise UserError(f"cannot load evaluation data '{path}' (split {split!r}): {str(exc).splitlines()[0][:160]}; "
                        "give a DomainBed folder or a Hugging Face dataset with a domain column") from exc
    for col in (domain_column, label_column, image_column):
        if col not in ds.column_names:
            raise UserError(f"dataset '{path}' has no column '{col}' (columns: {', '.join(ds.column_names)}); set eval.*_column")
    names = getattr(ds.features[label_column], "names", None)
    if names is None:
        raise UserError(f"dataset '{path}': column '{label_column}' must be a ClassLabel so classes can be matched by name")
    mapping = match_classes(names, classes, f"dataset '{path}'")
    remap = {names.index(n): i for n, i in mapping.items()}
    ds = ds.cast_column(image_column, datasets.Image(decode=False))
    doms = ds[domain_column]
    out = []
    for domain in sorted(set(doms)) if not domains else list(domains):
        rows = [i for i, d in enumerate(doms) if d == domain]
        keep = [(r[image_column]["bytes"] or Path(r[image_column]["path"]).read_bytes(), remap[r[label_column]])
                for r in ds.select(rows) if r[label_column] in remap]
        out.append(RealImages(str(domain), [k[0] for k in keep], [k[1] for k in keep]))
    return out


def read_real(path: str, classes: Sequence[str], layout: EvalConfig | None = None,
              domains: Sequence[str] | None = None) -> list[RealImages]:
    """A DomainBed folder when ``path`` is a folder of domain folders, else a Hugging Face dataset (split and
    columns from ``layout``, the ``eval`` section; its defaults when not given). ``domains`` filters."""
    p = Path(path)
    if p.is_dir() and not (p / "data").is_dir() and not any(p.glob("*.parquet")):
        return read_domainbed(p, classes, domains)
    if not p.exists() and ("/" not in path or path.startswith((".", "/"))):
        raise UserError(f"evaluation data '{path}' does not exist; give a DomainBed folder ROOT/<domain>/<class>/*.jpg "
                        "or a Hugging Face dataset id")
    return read_hf_domains(path, classes, layout or EvalConfig(), domains)


def few_shot_images(real: RealImages, shots: int, num_classes: int, size: tuple[int, int], seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``shots`` random images per class of ``real`` -> ``(k*C, 3, H, W)`` uint8 (centre-cropped to ``size``) and labels."""
    gen = torch.Generator().manual_seed(seed)
    chosen: list[int] = []
    for c in range(num_classes):
        idx = [i for i, y in enumerate(real.labels) if y == c]
        if len(idx) < shots:
            raise UserError(f"few-shot domain '{real.domain}' has {len(idx)} images of class {c}, fewer than "
                            f"distill.few_shot.shots={shots}; lower shots or pick another domain")
        perm = torch.randperm(len(idx), generator=gen)[:shots]
        chosen += [idx[int(j)] for j in perm]
    imgs = [resize_uint8(center_square(decode_image(real.read(i)), min(size)), size) for i in chosen]
    return torch.stack(imgs), torch.tensor([real.labels[i] for i in chosen], dtype=torch.long)
