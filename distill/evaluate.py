"""Evaluation on real domain-shift data: per-domain top-1 of the teacher (zero-shot) and the student, side by side.

Images are decoded, resized (shorter side) and centre-cropped to ``max(student size, teacher size)``;
the teacher reads that view, the student the same view resized to its input size. Each process
scores a slice of every domain and the counts are summed across processes, so evaluation is exact
under any launch. Results go to ``OUT/eval.json`` and ``OUT/eval.md``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from dfkd.runtime import atomic_write

from .augment import normalize
from .config import EvalConfig
from .data import RealImages, center_square, decode_image
from .students import Preprocessing


class SquareViews(torch.utils.data.Dataset):
    """Item ``i`` of a domain -> (``(3, R, R)`` uint8 centre view, label)."""

    def __init__(self, real: RealImages, indices: Sequence[int], size: int):
        self.real, self.indices, self.size = real, list(indices), size

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        j = self.indices[i]
        return center_square(decode_image(self.real.read(j)), self.size), self.real.labels[j]


def _logits(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    out = model(x)
    return out[0] if isinstance(out, tuple) else out


def domain_indices(real: RealImages, limit: int | None, rank: int, world: int) -> list[int]:
    """This process's slice of a domain (an evenly spread, seeded subset when ``limit`` is set)."""
    idx = list(range(len(real.labels)))
    if limit is not None and limit < len(idx):
        idx = sorted(torch.randperm(len(idx), generator=torch.Generator().manual_seed(0))[:limit].tolist())
    return idx[rank::world]


@dataclass
class Evaluator:
    """The teacher and the student scored side by side on real domains, under one Accelerate launch."""

    teacher: Any  #: :class:`~distill.teacher.DistillTeacher`
    student: torch.nn.Module
    pre: Preprocessing  #: the student's input size and normalisation
    settings: EvalConfig  #: the ``eval`` section (batch size, images per domain)
    accelerator: Any
    num_workers: int = 0

    def __post_init__(self):
        self.student = self.accelerator.unwrap_model(self.student)

    @torch.no_grad()
    def score(self, real: RealImages, with_teacher: bool) -> torch.Tensor:
        """``(3,)`` float64 counts summed over processes: [teacher correct, student correct, images]."""
        acc, pre, teacher = self.accelerator, self.pre, self.teacher
        device = acc.device
        view = max(pre.input_size, teacher.clip.image_size) if with_teacher else pre.input_size
        idx = domain_indices(real, self.settings.max_images_per_domain, acc.process_index, acc.num_processes)
        loader = torch.utils.data.DataLoader(SquareViews(real, idx, view), batch_size=self.settings.batch_size,
                                             num_workers=self.num_workers)
        mean, std = (torch.tensor(v, device=device).view(1, 3, 1, 1) for v in (pre.mean, pre.std))
        counts = torch.zeros(3, dtype=torch.float64, device=device)
        bar = tqdm(loader, desc=f"eval {real.domain}", unit="batch", leave=False, dynamic_ncols=True,
                   disable=not acc.is_local_main_process)
        for images, labels in bar:
            x = images.to(device).float() / 255
            labels = labels.to(device)
            if with_teacher:
                counts[0] += (teacher.from_pixels(x).logits.argmax(-1) == labels).sum()
            xs = F.interpolate(x, size=(pre.input_size,) * 2, mode="bilinear", antialias=True) if view != pre.input_size else x
            with acc.autocast():
                counts[1] += (_logits(self.student, normalize(xs, mean, std)).argmax(-1) == labels).sum()
            counts[2] += len(labels)
        return acc.reduce(counts, reduction="sum") if acc.num_processes > 1 else counts

    def run(self, domains: list[RealImages], with_teacher: bool = True) -> dict[str, Any]:
        """Per-domain top-1 (%) and the mean over domains for the teacher and the student."""
        student = self.student
        was_training = student.training
        student.eval()
        rows = []
        for real in domains:
            t, s, n = self.score(real, with_teacher).tolist()
            rows.append({"domain": real.domain, "images": int(n),
                         "teacher": 100 * t / max(n, 1) if with_teacher else None, "student": 100 * s / max(n, 1)})
        student.train(was_training)
        mean = {who: (sum(r[who] for r in rows) / len(rows) if rows and rows[0][who] is not None else None)
                for who in ("teacher", "student")}
        flat = {who: {**{r["domain"]: r[who] for r in rows}, "mean": mean[who]} for who in ("teacher", "student")}
        classes = len(self.teacher.clip.head.classes)
        return {"domains": rows, "mean": mean, "chance": 100 / classes, "classes": classes,
                "teacher_flat": flat["teacher"], "student_flat": flat["student"]}


def markdown_table(result: dict[str, Any]) -> str:
    """The per-domain table: | domain | images | teacher (zero-shot) | student |."""
    def pct(v: float | None) -> str:
        return "-" if v is None else f"{v:.1f}"

    lines = ["| domain | images | teacher (zero-shot) top-1 % | student top-1 % |", "|---|---:|---:|---:|"]
    for r in result["domains"]:
        lines.append(f"| {r['domain']} | {r['images']} | {pct(r['teacher'])} | {pct(r['student'])} |")
    m = result["mean"]
    lines.append(f"| **mean** | {sum(r['images'] for r in result['domains'])} | **{pct(m['teacher'])}** | **{pct(m['student'])}** |")
    if result.get("chance") is not None:
        lines += ["", (f"Chance is {result['chance']:.1f} % ({result['classes']} classes): guessing scores that on "
                       "balanced domains; the teacher is the ceiling the student was distilled towards.")]
    return "\n".join(lines) + "\n"


def eval_fingerprint(cfg, student_dir: Path) -> str:
    """What decides ``eval.json``: the eval section (but its batch size and student path), the teacher section, the
    classes, the mixed precision, the student's weights (their sha256) and the evaluation data (a Hub id, or a
    local folder's file names and sizes). ``dfkd run`` evaluates again when it changes."""
    from dfkd.schema import file_sha256, json_digest

    e = {k: v for k, v in asdict(cfg.eval).items() if k not in ("batch_size", "student")}
    weights = [[p.name, file_sha256(p)] for p in sorted(Path(student_dir).glob("*.safetensors"))]
    root = Path(cfg.eval.data) if cfg.eval.data else None
    data = sorted([str(p.relative_to(root)), p.stat().st_size] for p in root.rglob("*") if p.is_file()) \
        if root is not None and root.is_dir() else cfg.eval.data
    return json_digest([e, asdict(cfg.teacher), list(cfg.classes), cfg.distill.mixed_precision, weights, data])


def write_eval(result: dict[str, Any], out: Path, extra: dict[str, Any] | None = None) -> None:
    """``OUT/eval.json`` and ``OUT/eval.md`` (main process)."""
    out.mkdir(parents=True, exist_ok=True)
    payload = {k: v for k, v in result.items() if not k.endswith("_flat")}
    payload.update(extra or {})
    atomic_write(out / "eval.md", markdown_table(result))
    atomic_write(out / "eval.json", json.dumps(payload, indent=2))  # last: its presence marks a finished evaluation
