"""Training throughput of `dfkd distill` vs a bare loop, side by side in one run.

The bare loop is the floor of the work: teacher forward (no grad) + student forward/backward + AdamW
step on a batch already in memory, same models, same batch size. `dfkd distill` adds everything a real
run needs: reading the decoded synthetic set, on-device augmentation, the Accelerate loop, loss
bookkeeping, progress bar. Both are timed step by step after 2 warm-up steps, in rounds that alternate
which runs first; on shared, noisy machines the median step time is the robust statistic, so
efficiency = median bare step time / median `dfkd distill` step time (the mean-based ratio is reported
too). Writes bench/results/distill_bench.json.

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


def bare_loop(teacher, student, batch: int, size: int, steps: int, device) -> list[float]:
    """Seconds of each step of teacher forward + student forward/backward + AdamW on in-memory tensors."""
    import torch

    from distill.losses import kd_divergence

    opt = torch.optim.AdamW(student.parameters(), lr=1e-3, weight_decay=0.05)
    x = torch.randn(batch, 3, size, size, device=device)
    student.train()
    times, last = [], time.perf_counter()
    for step in range(steps + WARMUP):
        with torch.no_grad():
            t = teacher(x).logits
        loss = kd_divergence(student(x), t, 4.0)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize()
        now = time.perf_counter()
        if step >= WARMUP:
            times.append(now - last)
        last = now
    return times


def dfkd_distill(cfg) -> list[float]:
    """Seconds of each step of `dfkd distill` after its first 2 steps, as the trainer measures them."""
    from distill.trainer import train

    return train(cfg).step_seconds


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--student", default="resnet18")
    p.add_argument("--size", type=int, default=64, help="student input size (px)")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--steps", type=int, default=6, help="timed steps per round")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--out", default=str(REPO / "bench" / "results" / "distill_bench.json"))
    args = p.parse_args()

    import torch
    from accelerate.state import AcceleratorState, GradientState

    from dfkd.config import load_config
    from dfkd.toydata import write_synthetic_dataset
    from distill.students import create_student
    from distill.teacher import DistillTeacher
    from prompts.config import TeacherConfig
    from prompts.teacher import load_teacher

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    tmp = Path(tempfile.mkdtemp(prefix="distill-bench-"))
    os.environ.setdefault("HF_HOME", str(tmp / "hf"))
    dataset = write_synthetic_dataset(tmp / "dataset", CLASSES, per_class=5 * args.batch // 7 + 1, size=args.size)
    overrides = [f"output_dir={tmp / 'run'}", f"distill.dataset={dataset}", f"distill.student={args.student}",
                 f"distill.input_size={args.size}", f"distill.batch_size={args.batch}",
                 f"distill.max_steps={args.steps + WARMUP}", "distill.checkpointing_steps=100000",
                 "distill.log_with=none", "distill.num_workers=0", "eval.data=null"]
    clip = load_teacher(TeacherConfig(model="tiny:clip", templates="short_7"), CLASSES, device)
    teacher = DistillTeacher(clip, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    ours: list[float] = []  # step durations, all rounds
    bare: list[float] = []
    for r in range(args.rounds):
        cfg = load_config(REPO / "configs" / "tiny.yaml", [*overrides, f"output_dir={tmp / f'run{r}'}"])
        for which in (("bare", "dfkd") if r % 2 == 0 else ("dfkd", "bare")):  # alternate the order: drift cancels
            if which == "bare":
                torch.manual_seed(r)
                student = create_student(args.student, len(CLASSES))[0].to(device)
                bare += bare_loop(teacher, student, args.batch, args.size, args.steps, device)
            else:
                ours += dfkd_distill(cfg)
                AcceleratorState._reset_state(True)
                GradientState._reset_state()
        print(f"round {r + 1}/{args.rounds}: median step so far: bare {statistics.median(bare):.3f} s, "
              f"dfkd distill {statistics.median(ours):.3f} s", flush=True)
    ips_bare, ips_ours = args.batch / statistics.median(bare), args.batch / statistics.median(ours)
    result = {
        "efficiency": round(ips_ours / ips_bare, 3),
        "dfkd_distill_images_per_s": round(ips_ours, 2),
        "bare_loop_images_per_s": round(ips_bare, 2),
        "mean_based_efficiency": round(statistics.mean(bare) / statistics.mean(ours), 3),
        "steps_timed": {"dfkd": len(ours), "bare": len(bare)},
        "setup": {"teacher": "tiny:clip", "student": args.student, "input_size": args.size, "batch_size": args.batch,
                  "rounds": args.rounds, "timed_steps_per_round": args.steps, "device": str(device),
                  "torch_threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
                  "python": platform.python_version(), "torch": torch.__version__,
                  "statistic": "images/s = batch / median step time over all timed steps"},
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
