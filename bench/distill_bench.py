"""Training throughput of `dfkd distill` vs a bare loop, side by side in one run.

The bare loop is the floor of the work: teacher forward (no grad) + student forward/backward + AdamW
step on a batch already in memory, same models, same batch size. `dfkd distill` adds everything a real
run needs: reading the decoded synthetic set, on-device augmentation, the Accelerate loop, loss
bookkeeping, progress bar. Both are timed after 2 warm-up steps, in alternating rounds (the machines
are shared and noisy); efficiency is the median per-round ratio. Writes bench/results/distill_bench.json.

    python bench/distill_bench.py            # about 2 minutes on 2 CPU cores
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

CLASSES = ["dog", "elephant", "giraffe", "guitar", "horse", "house", "person"]
WARMUP = 2


def bare_loop(teacher, student, batch: int, size: int, steps: int, device) -> float:
    """Images/s of teacher forward + student forward/backward + AdamW step on in-memory tensors."""
    import torch

    from distill.losses import kd_divergence

    opt = torch.optim.AdamW(student.parameters(), lr=1e-3, weight_decay=0.05)
    x = torch.randn(batch, 3, size, size, device=device)
    student.train()
    t0 = None
    for step in range(steps + WARMUP):
        if step == WARMUP:
            t0 = time.perf_counter()
        with torch.no_grad():
            t = teacher(x).logits
        loss = kd_divergence(student(x), t, 4.0)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    float(loss)  # wait for the device
    return batch * steps / (time.perf_counter() - t0)


def dfkd_distill(cfg) -> float:
    """Steady-state images/s that the trainer itself measures (after its first 2 steps)."""
    from distill.trainer import train

    return train(cfg).images_per_second


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--student", default="resnet18")
    p.add_argument("--size", type=int, default=64, help="student input size (px)")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--steps", type=int, default=10, help="timed steps per round")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--out", default=str(REPO / "bench" / "results" / "distill_bench.json"))
    args = p.parse_args()

    import torch
    from accelerate.state import AcceleratorState, GradientState

    from dfkd.config import load_config
    from distill.students import create_student
    from distill.teacher import load_teacher
    from distill.toydata import write_synthetic_dataset

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    tmp = Path(tempfile.mkdtemp(prefix="distill-bench-"))
    os.environ.setdefault("HF_HOME", str(tmp / "hf"))
    dataset = write_synthetic_dataset(tmp / "dataset", CLASSES, per_class=5 * args.batch // 7 + 1, size=args.size)
    overrides = [f"output_dir={tmp / 'run'}", f"distill.dataset={dataset}", f"distill.student={args.student}",
                 f"distill.input_size={args.size}", f"distill.batch_size={args.batch}",
                 f"distill.max_steps={args.steps + WARMUP}", "distill.checkpointing_steps=100000",
                 "distill.log_with=none", "distill.num_workers=0", "eval.data=null"]
    teacher = load_teacher("tiny:clip", CLASSES, "short_7", (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), device)
    ours, bare = [], []
    for r in range(args.rounds):
        torch.manual_seed(r)
        student = create_student(args.student, len(CLASSES))[0].to(device)
        bare.append(bare_loop(teacher, student, args.batch, args.size, args.steps, device))
        cfg = load_config(REPO / "configs" / "tiny.yaml", [*overrides, f"output_dir={tmp / f'run{r}'}"])
        ours.append(dfkd_distill(cfg))
        AcceleratorState._reset_state(True)
        GradientState._reset_state()
        print(f"round {r + 1}/{args.rounds}: bare loop {bare[-1]:.1f} images/s, dfkd distill {ours[-1]:.1f} images/s",
              flush=True)
    ratios = [o / b for o, b in zip(ours, bare)]
    result = {
        "efficiency": round(statistics.median(ratios), 3),
        "dfkd_distill_images_per_s": round(statistics.median(ours), 2),
        "bare_loop_images_per_s": round(statistics.median(bare), 2),
        "rounds": [{"bare": round(b, 2), "dfkd": round(o, 2), "ratio": round(o / b, 3)} for o, b in zip(ours, bare)],
        "setup": {"teacher": "tiny:clip", "student": args.student, "input_size": args.size, "batch_size": args.batch,
                  "timed_steps": args.steps, "device": str(device), "torch_threads": torch.get_num_threads(),
                  "cpu_count": os.cpu_count(), "python": platform.python_version(), "torch": torch.__version__},
    }
    print(f"\n| loop | images/s |\n|---|---:|\n| bare (teacher fwd + student fwd/bwd, in-memory) | "
          f"{result['bare_loop_images_per_s']} |\n| dfkd distill | {result['dfkd_distill_images_per_s']} |\n"
          f"efficiency = {result['efficiency']} (target >= 0.9)")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    import shutil

    shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
