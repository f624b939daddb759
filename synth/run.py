"""``synthesize(cfg)``: prompts -> images -> a resumable Hugging Face dataset in ``OUT/dataset``.

One code path for one process and for many (``accelerate launch -m synth``): pending shards are
split between processes, each process writes its own shards, the main process writes the card.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, astuple, dataclass, field, replace
from pathlib import Path

import torch

from dfkd import schema
from dfkd.configtools import write_resolved_config
from dfkd.runtime import check_device, derive_seed, multi_process_cpu
from prompts.methods import create_prompt_method, preflight_prompt_method
from prompts.teacher import load_teacher

from .backends import Backend, get_backend
from .plan import ShardSpec, check_or_write_state, check_plan_size, fingerprint, plan_shards, write_state
from .writer import DatasetWriter, done_shards, remove_stale, to_uint8


@dataclass
class SynthResult:
    dataset_dir: Path
    planned_shards: int
    written_shards: int  #: by this process in this run
    generated: int  #: images made by this process in this run (filter retries included)
    seconds: float
    diagnostics: dict = field(default_factory=dict)
    process_index: int = 0
    num_processes: int = 1
    generation_seconds: float = 0.0  #: steps 4-5 only: prompts, generator, teacher, encoding, writing


def synthesize(cfg, *, state=None) -> SynthResult:
    """Generate every missing (label, index) image of ``cfg`` into ``cfg.out / "dataset"``.

    Safe to re-run: finished shards are kept, missing ones are regenerated with the same images as an
    uninterrupted run. Raises :class:`~dfkd.errors.UserError` before any image for bad input.
    """
    s = cfg.synth
    state = state or process_state(s.device)
    dataset_dir = cfg.out / schema.DATASET_DIR
    start = time.perf_counter()

    # 1. check inputs that need no model: backend and prompt method, output folder, the shard plan
    backend_cls = check_settings(cfg)
    preflight_prompt_method(cfg.prompts, cfg.out)
    specs = plan_shards(len(cfg.classes), s.images_per_class, s.shard_size, fingerprint(cfg))
    prepare_output(dataset_dir, cfg, specs, main=state.is_main_process)
    write_resolved_config(cfg)  # only once the inputs are accepted: a refused run leaves the folder as it was
    state.wait_for_everyone()

    # 2. load the teacher (confidence, diagnostics, CLIP guidance) and the generator
    device = resolve_device(s.device, state)
    teacher = load_teacher(cfg.teacher, cfg.classes, device, state.main_process_first)
    backend = backend_cls.load(cfg, teacher=teacher, device=device)

    # 3. the prompt method, in the generator's text-encoder space
    method = create_prompt_method(cfg.prompts, classes=cfg.classes, encoder=backend.text_encoder, seed=cfg.seed,
                                  run_dir=cfg.out)

    # 4. this process's share of the pending shards (listed by everyone before anyone writes)
    damaged: list[str] = []
    done = done_shards(dataset_dir / schema.DATA_DIR, specs, damaged)
    if damaged and state.is_main_process:
        print(f"dfkd synth: {len(damaged)} shard(s) damaged since they were written ({', '.join(damaged[:3])}"
              f"{', ...' if len(damaged) > 3 else ''}); making them again", file=sys.stderr)
    pending = [sp for sp in specs if sp.shard_id not in done]
    state.wait_for_everyone()
    with state.split_between_processes(pending) as mine:
        mine = list(mine)

    # 5. generate, score and write shard by shard; encoding and I/O overlap generation
    with DatasetWriter(dataset_dir, cfg.classes, image_format=s.image_format, jpeg_quality=s.jpeg_quality,
                       store_resolution=s.store_resolution, threads=s.writer_threads) as writer:
        gen_start = time.perf_counter()
        generated = RowMaker(s, backend, method, teacher).shards(mine, writer, show=state.is_main_process)
    gen_seconds = time.perf_counter() - gen_start  # the last shards' writes included
    state.wait_for_everyone()

    # 6. diagnostics and the dataset card, once every process is done
    diagnostics = finish_dataset(dataset_dir, cfg, teacher, backend.generator_id) if state.is_main_process else {}
    state.wait_for_everyone()
    result = SynthResult(dataset_dir, len(specs), len(mine), generated, time.perf_counter() - start, diagnostics,
                         state.process_index, state.num_processes, gen_seconds)

    # 7. publish (main process only)
    if s.push_to_hub and state.is_main_process:
        from .hub import push_dataset_folder

        push_dataset_folder(dataset_dir, s.hub_repo, private=s.hub_private)
    return result


# ---------------------------------------------------------------- steps
def check_settings(cfg) -> type[Backend]:
    """The synth settings that can be checked without a model or the output folder (the backend's own, the
    device, the size of the plan); returns the backend class. ``dfkd synth`` and ``dfkd run``'s preflight share it."""
    backend_cls = get_backend(cfg.synth.backend)
    backend_cls.preflight(cfg)
    check_device(cfg.synth.device, "synth.device")
    check_plan_size(cfg)
    return backend_cls


def prepare_output(dataset_dir: Path, cfg, specs: Sequence[ShardSpec], *, main: bool) -> None:
    """Refuse a folder from another config (every process checks); the main process clears or tidies it."""
    clear = check_or_write_state(dataset_dir, cfg, cfg.synth.overwrite, write=main)
    if not main:
        return
    if clear:
        shutil.rmtree(dataset_dir, ignore_errors=True)
        write_state(dataset_dir, cfg)
    remove_stale(dataset_dir / schema.DATA_DIR, specs)


def finish_dataset(dataset_dir: Path, cfg, teacher, generator_id: str) -> dict:
    """Diagnostics + card; skipped (the stored diagnostics returned) when the card already describes
    exactly these shards, so re-running a finished command costs no pass over the images."""
    from .card import card_is_current, write_card
    from .diagnostics import compute_diagnostics

    stored = dataset_dir / "diagnostics.json"
    if card_is_current(dataset_dir, cfg) and stored.is_file():
        try:
            return json.loads(stored.read_text(encoding="utf-8"))
        except ValueError:
            pass  # damaged: computed and written again below
    diagnostics = compute_diagnostics(dataset_dir, cfg, teacher)
    write_card(dataset_dir, cfg, generator_id, diagnostics)
    return diagnostics


def process_state(device: str):
    """Accelerate's ``PartialState`` (one process when not launched). Without CUDA, a multi-process
    launch must ask for CPU explicitly, or every process would believe it is alone (and do all the work)."""
    from accelerate import PartialState

    return PartialState(cpu=device == "cpu" or multi_process_cpu())


def resolve_device(name: str, state) -> torch.device:
    """``auto``: this process's accelerator under Accelerate (cuda:LOCAL_RANK, mps) else cpu."""
    if name == "auto" or (name == "cuda" and state.num_processes > 1):
        return state.device
    return torch.device(name)


@torch.no_grad()
def teacher_confidence(teacher, images: torch.Tensor, labels: Sequence[int]) -> torch.Tensor:
    """``(B,)`` the teacher's zero-shot probability of each intended class; ``images`` ``(B, 3, H, W)`` in [0, 1]."""
    probs = teacher(images.to(teacher.device)).softmax(-1)
    return probs[torch.arange(len(labels)), torch.as_tensor(list(labels), device=probs.device)].float().cpu()


def retry_seed(seed: int, attempt: int) -> int:
    """A fresh, reproducible seed for filter retry ``attempt`` of an image."""
    return derive_seed("retry", seed, attempt)


@dataclass
class FilterCounts:
    """What the teacher-confidence filter did to a shard (stored in the shard's metadata)."""

    generated: int = 0  #: images generated, retries included
    regenerated: int = 0
    dropped: int = 0
    below_threshold: int = 0  #: kept or dropped rows still below the threshold

    def __add__(self, other: FilterCounts) -> FilterCounts:
        return FilterCounts(*(a + b for a, b in zip(astuple(self), astuple(other))))


@dataclass
class RowMaker:
    """Turns (label, index) keys into dataset rows: the prompt method encodes, the backend draws, the
    teacher scores (and, when the filter is on, sends low-confidence images back for another seed)."""

    synth: object  #: the ``synth`` config section
    backend: Backend
    method: object
    teacher: object

    def shards(self, shards: Sequence[ShardSpec], writer: DatasetWriter, *, show: bool = True) -> int:
        """Generate ``shards`` and queue them to ``writer``; returns the number of images generated."""
        from tqdm.auto import tqdm

        total = sum(len(sp.keys) for sp in shards)
        bar = tqdm(total=total, unit="img", desc="synth", disable=not (show and self.synth.progress),
                   dynamic_ncols=True)
        generated = 0
        for spec in shards:
            rows, counts = [], FilterCounts()
            for keys in spec.batches(self.synth.batch_size):
                batch_rows, batch_counts = self.batch(keys, writer)
                rows += batch_rows
                counts += batch_counts
                bar.update(len(keys))
            generated += counts.generated
            writer.write_shard(spec, rows, asdict(counts))
        bar.close()
        return generated

    def batch(self, keys, writer: DatasetWriter) -> tuple[list[dict], FilterCounts]:
        """Rows for one batch of keys (images queued for encoding) and what the optional
        teacher-confidence filter did."""
        f = self.synth.filter
        records = [self.method.record(label, index) for label, index in keys]
        arrays, conf = self.render(records)
        extra = self.regenerate_low(records, arrays, conf) if f.enabled and f.mode == "regenerate" else 0
        low = [f.enabled and c < f.threshold for c in conf.tolist()]
        keep = [i for i in range(len(records)) if not (f.mode == "drop" and low[i])]
        counts = FilterCounts(len(records) + extra, extra, len(records) - len(keep), sum(low))
        futures = writer.encode(arrays[keep])
        generator_id = self.backend.generator_id
        return [row(records[i], fut, float(conf[i]), generator_id) for i, fut in zip(keep, futures)], counts

    def regenerate_low(self, records: list, arrays, conf: torch.Tensor) -> int:
        """Regenerate, in place and with fresh seeds, the images below the filter's threshold (at most
        ``max_tries`` times); returns how many extra images were generated."""
        f, extra = self.synth.filter, 0
        for attempt in range(1, f.max_tries + 1):
            low = [i for i, c in enumerate(conf.tolist()) if c < f.threshold]
            if not low:
                break
            retry = [replace(records[i], seed=retry_seed(records[i].seed, attempt)) for i in low]
            new_arrays, new_conf = self.render(retry)
            for j, i in enumerate(low):
                records[i], arrays[i], conf[i] = retry[j], new_arrays[j], new_conf[j]
            extra += len(low)
        return extra

    def render(self, records):
        """Generate ``records``: (``(B, S, S, 3)`` uint8 stored pixels, ``(B,)`` teacher confidence on those pixels)."""
        encoding = self.method.encode(records)  # no_grad inside
        images = self.backend.generate(records, encoding)
        arrays = to_uint8(images, self.synth.store_resolution)
        stored = torch.from_numpy(arrays).permute(0, 3, 1, 2).float().div(255)
        return arrays, teacher_confidence(self.teacher, stored, [r.label for r in records])


def row(record, image_future, confidence: float, generator_id: str) -> dict:
    """One dataset row (see :data:`dfkd.schema.COLUMNS`)."""
    return {
        "image": image_future,
        "label": int(record.label),
        "index": int(record.index),
        "class_name": record.class_name,
        "prompt": record.text,
        "method": record.method,
        "style": record.style_json(),
        "seed": int(record.seed),
        "generator": generator_id,
        "teacher_confidence": confidence,
    }
