"""The digits benchmark: kit -> evaluation domains -> (prompts -> synth -> distill -> eval) for every
synthesis setting x prompt method x seed, plus the ``real`` and ``noise`` bounds.

    python -m bench.digits.run                 # the full experiment (`make bench-digits`)
    python -m bench.digits.run --settings diffusion --methods plain mix --seeds 0 1 2
    python -m bench.digits.run --smoke --out /tmp/d --results-dir /tmp/d   # minutes-scale plumbing check

Settings (same teacher, student, distillation recipe and seeds; image budgets differ, see ``SETTINGS``):

* ``fourier``: ``clip_guided`` over a decorrelated Fourier image: no image prior (``configs/digits.yaml``);
* ``vqgan``: ``clip_guided`` over the latent of the kit's ``VQModel`` decoder (``digits:vqgan``): the paper's
  VQGAN-CLIP pipeline;
* ``diffusion``: the kit's text-to-image pipeline (``digits:sd``) with style tokens in its text encoder.

Every stage runs through the real ``dfkd`` commands, in ``--jobs`` worker processes (one per core by default,
see ``jobs.py``; logs in ``<out>/logs``). Finished stages are skipped, so an interrupted run resumes. Writes ``RESULTS.md``, ``results.json`` and ``previews/<setting>-<method>.png``.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import shutil
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
CONFIG = "configs/digits.yaml"
METHODS = ("plain", "handcrafted", "mix", "random", "contrastive")
SEEDS = (0, 1, 2)
#: the distillation recipe of every student, bounds included: the same number of steps whatever the set's size.
#: 600 steps, chosen without looking at any evaluation domain: on another seed's held-out diffusion images, the
#: student agrees with the teacher 71.4 % of the time after 600 steps against 59.9 % after 200
DISTILL = ["distill.max_steps=600"]
#: synthesis setting -> (config overrides, what the budget is and why)
SETTINGS = {
    "fourier": ([], "40 images per class (Fourier images cost 40 teacher iterations each)"),
    "vqgan": (["synth.clip_guided.parameterization=decoder", "synth.model=digits:vqgan", "synth.images_per_class=100",
               "synth.clip_guided.iterations=10", "synth.clip_guided.lr=0.2"],
              "100 images per class, 10 iterations at lr 0.2 (a decoder iteration costs ~3x a Fourier one)"),
    "diffusion": (["synth.backend=diffusion", "synth.model=digits:sd", "synth.images_per_class=100", "synth.steps=10",
                   "synth.guidance_scale=3.0"],
                  "100 images per class, 10 DPM-Solver++ steps with classifier-free guidance 3"),
}
BOUNDS = ("real", "noise")
TIMES_FILE = "bench_seconds.json"  #: per run folder: the seconds each stage took when it ran
BOUND_PER_CLASS = 100

#: the reduced version that runs in the test suite: every stage, tiny budgets, tiny kit (DFKD_DIGITS_PROFILE=smoke)
SMOKE_OVERRIDES = [
    "synth.images_per_class=2", "synth.batch_size=20", "synth.clip_guided.iterations=2", "synth.clip_guided.cutouts=2",
    "synth.shard_size=20", "synth.progress=false", "synth.steps=2", "prompts.contrastive.steps=3",
    "prompts.contrastive.num_styles=4", "prompts.contrastive.checkpoint_every=3", "distill.max_steps=2",
    "distill.batch_size=10", "distill.checkpointing_steps=100",
]


def _dfkd(*argv: str) -> float:
    """Run one ``dfkd`` command in this process; its wall time in seconds (non-zero exit -> SystemExit)."""
    from dfkd.cli import main

    t0 = time.perf_counter()
    rc = main(list(argv))
    if rc:
        raise SystemExit(f"bench-digits: `dfkd {' '.join(argv)}` failed with exit code {rc}")
    return time.perf_counter() - t0


def _accuracies(run_dir: Path) -> tuple[dict, dict]:
    ev = json.loads((run_dir / "eval.json").read_text())
    return ({d["domain"]: d["teacher"] for d in ev["domains"]} | {"mean": ev["mean"]["teacher"]},
            {d["domain"]: d["student"] for d in ev["domains"]} | {"mean": ev["mean"]["student"]})


def run_one(run_dir: Path, overrides: list[str], learn: bool, synth: bool = True) -> dict:
    """prompts -> synth -> distill -> eval in ``run_dir`` (finished stages skipped); numbers and stage times."""
    from dfkd.config import load_config
    from distill.stage import DistillStage, EvalStage
    from synth.stage import SynthStage

    overrides = [f"output_dir={run_dir}", *overrides]
    cfg = load_config(REPO / CONFIG, overrides)
    args = ["--config", str(REPO / CONFIG), *overrides]
    times: dict[str, float | str | None] = {"prompts": "not needed", "synth": "not needed", "distill": None,
                                            "eval": None}
    times_file = run_dir / TIMES_FILE  # a resumed run reports the times its stages took when they ran
    earlier = json.loads(times_file.read_text()) if times_file.is_file() else {}
    if learn:  # learn skips a finished style bank itself; time it only when it learns
        bank_there = (run_dir / "prompts" / "contrastive" / "styles.safetensors").is_file()
        seconds = _dfkd("prompts", "learn", *args)
        times["prompts"] = None if bank_there else seconds
    if synth:
        times["synth"] = None if SynthStage().is_done(cfg) else _dfkd("synth", *args)
    if not DistillStage().is_done(cfg):
        times["distill"] = _dfkd("distill", *args, "eval.data=null")  # eval is timed on its own
    if not EvalStage().is_done(cfg):
        times["eval"] = _dfkd("eval", *args)
    ran = [stage for stage, seconds in times.items() if isinstance(seconds, float)]
    for stage, seconds in times.items():
        if seconds is None and isinstance(earlier.get(stage), float):
            times[stage] = earlier[stage]
    times_file.write_text(json.dumps(times))
    teacher, student = _accuracies(run_dir)
    out = {"teacher": teacher, "student": student, "seconds": times, "ran_now": ran}
    if synth:
        diag = json.loads((run_dir / "dataset" / "diagnostics.json").read_text())
        out |= {"images": diag["rows"], "teacher_agreement": 100 * diag["teacher_agreement"],
                "mean_confidence": diag["mean_confidence"], "diversity": diag["mean_pairwise_cosine_distance"],
                "vendi": diag["vendi_score"], "preview": str(run_dir / "dataset" / "preview.png"),
                "per_class_agreement": {c: 100 * v["agreement"] for c, v in diag["per_class"].items()}}
    return out


# ------------------------------------------------------------------------------------------ aggregation
def mean_std(values: list[float]) -> dict:
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "n": len(values), "values": values}


def aggregate(runs: list[dict]) -> dict:
    """Per-domain accuracy and synthetic-set diagnostics over seeds: mean, std, n and the values."""
    domains = list(runs[0]["student"])
    agg = {"student": {d: mean_std([r["student"][d] for r in runs]) for d in domains}}
    for k in ("teacher_agreement", "mean_confidence", "diversity", "vendi"):
        if k in runs[0]:
            agg[k] = mean_std([r[k] for r in runs])
    if "images" in runs[0]:
        agg["images"] = runs[0]["images"]
        synth_s = [r["seconds"]["synth"] for r in runs if isinstance(r["seconds"]["synth"], float)]
        if synth_s:
            agg["images_per_second"] = statistics.fmean(r["images"] / r["seconds"]["synth"]
                                                        for r in runs if isinstance(r["seconds"]["synth"], float))
    agg["seconds"] = {stage: statistics.fmean(s) if (s := [r["seconds"][stage] for r in runs
                                                          if isinstance(r["seconds"][stage], float)])
                      else runs[0]["seconds"][stage] for stage in ("prompts", "synth", "distill", "eval")}
    return agg


def compare_to_plain(students: dict) -> dict:
    """Per setting: each method's mean minus ``plain``'s, and whether the gap exceeds the seed spread
    (``|gap| > std_method + std_plain``: the conservative reading; only those gaps rank methods)."""
    out = {}
    for setting, methods in students.items():
        if "plain" not in methods:
            continue
        p = methods["plain"]["student"]["mean"]
        out[setting] = {m: {"gap": r["student"]["mean"]["mean"] - p["mean"],
                            "spread": r["student"]["mean"]["std"] + p["std"],
                            "exceeds_spread": abs(r["student"]["mean"]["mean"] - p["mean"]) >
                            r["student"]["mean"]["std"] + p["std"]}
                        for m, r in methods.items() if m != "plain"}
    return out


# ------------------------------------------------------------------------------------------ report
def _pm(x: dict, digits: int = 1) -> str:
    return f"{x['mean']:.{digits}f} ± {x['std']:.{digits}f}"


def _fmt_s(x) -> str:
    if isinstance(x, str):
        return x
    return "skipped" if x is None else f"{x:.0f} s"


def render_markdown(res: dict) -> str:
    meta, teacher = res["meta"], res["teacher"]
    domains = [d for d in teacher if d != "mean"]
    head = "| model | " + " | ".join(domains) + " | **mean** |\n|---|" + "---:|" * (len(domains) + 1) + "\n"
    rows = ["| teacher (zero-shot CLIP) | " + " | ".join(f"{teacher[d]:.1f}" for d in domains)
            + f" | **{teacher['mean']:.1f}** |"]
    for b, r in res["bounds"].items():
        rows.append(f"| bound `{b}` ({r.get('images', BOUND_PER_CLASS * 10)} images) | "
                    + " | ".join(_pm(r["student"][d]) for d in domains) + f" | **{_pm(r['student']['mean'])}** |")
    for s, methods in res["students"].items():
        for m, r in methods.items():
            rows.append(f"| `{s}` `{m}` | " + " | ".join(_pm(r["student"][d]) for d in domains)
                        + f" | **{_pm(r['student']['mean'])}** |")
    synth_rows = "\n".join(
        f"| `{s}` | `{m}` | {r['images']} | {_pm(r['teacher_agreement'])} | {_pm(r['mean_confidence'], 3)} | "
        f"{_pm(r['diversity'], 3)} | {_pm(r['vendi'], 2)} | {r.get('images_per_second', float('nan')):.1f} |"
        for s, methods in res["students"].items() for m, r in methods.items())
    time_rows = "\n".join(
        f"| `{s}` | `{m}` | " + " | ".join(_fmt_s(r["seconds"][k]) for k in ("prompts", "synth", "distill", "eval"))
        + " |" for s, methods in res["students"].items() for m, r in methods.items())
    cmp_rows = "\n".join(
        f"| `{s}` | `{m}` | {c['gap']:+.1f} | {c['spread']:.1f} | {'yes' if c['exceeds_spread'] else 'no'} |"
        for s, ms in res["compare_to_plain"].items() for m, c in ms.items())
    agree = res.get("sd_agreement")
    agree_txt = ""
    if agree:
        agree_txt = ("\n## Is `digits:sd` a real generator?\n\nSamples of \"" + agree["prompt"] + "\" ("
                     f"{agree['per_class_images']} per class, {agree['settings']}), recognised by the teacher as the "
                     f"intended class: **{agree['overall']:.1f} %** overall (target: at least 70 %).\n\n| class | "
                     + " | ".join(agree["per_class"]) + " |\n|---|" + "---:|" * len(agree["per_class"]) + "\n| % | "
                     + " | ".join(f"{v:.0f}" for v in agree["per_class"].values()) + " |\n")
    kit_rows = "\n".join(f"| `digits:{n}` | {k.get('seconds', 0) / 60:.1f} min | "
                         + ", ".join(f"{a} {b:.3g}" if isinstance(b, float) else f"{a} {b}"
                                     for a, b in k.items() if a not in ("seconds",)) + " |"
                         for n, k in res["kit"].items())
    settings = "\n".join(f"- `{s}`: {SETTINGS[s][1]}; overrides `{' '.join(SETTINGS[s][0]) or '(none)'}`"
                         for s in res["students"])
    grids = "\n".join(f"**`{s}` `{m}`**\n\n![{s}-{m}](previews/{s}-{m}.png)\n"
                      for s, methods in res["students"].items() for m in methods)
    return f"""# Digits benchmark: data-free distillation of a CLIP teacher, on real digits

Produced by `{meta['command']}` on {meta['date']} ({meta['machine']}).
Wall time: {meta['total_seconds'] / 60:.1f} min for this run{meta['wall_note']}.{' **SMOKE settings: numbers mean nothing.**' if meta['smoke'] else ''}
{meta['remark']}
Seeds {meta['seeds']} for synthesis and distillation; every cell is mean ± std over them.

Accuracy (%) on real evaluation domains (chance: 10 %). The teacher `digits:clip` is a `CLIPModel` trained on
real MNIST *training* digits in many renderings; every domain below is built from digits it never saw:
MNIST *test* digits (`mnist` plain, `mnist_m` over photos the teacher never saw, `colored`, `sketch`,
`inverted_noisy_blur`) and UCI `optdigits` (other writers and scanner, 8x8). The students never saw a
real image, except the `real` bound, which is distilled on real renderings of MNIST *training* digits.

{head}{chr(10).join(rows)}

Student `{meta['student']}`, {meta['distill']} for every student (bounds included).

## Which methods beat `plain`

Gap of the mean accuracy to `plain` in the same setting; it ranks methods only where it exceeds the
spread (sum of the two standard deviations over seeds).

| setting | method | gap (points) | spread | exceeds spread |
|---|---|---:|---:|---|
{cmp_rows}

## Settings

{settings}
{agree_txt}
## The synthetic sets

Teacher agreement: % of images the teacher assigns to their intended class; diversity: mean pairwise
cosine distance of the teacher's image features within a class; Vendi: the effective number of distinct
images in a class; images/s: synthesis throughput (whole `dfkd synth` command, start-up included).

| setting | method | images | teacher agreement (%) | mean confidence | diversity | Vendi | images/s |
|---|---|---:|---:|---:|---:|---:|---:|
{synth_rows}

## Reproducibility

On one machine with the same thread count, synthesis, distillation and evaluation are bit-reproducible
(every image has its own seed; an earlier full run reproduced every number exactly), and the kit's
training draws all its randomness from seeded generators. Across
machines (or thread counts) the float reductions of the CPU kernels differ, so the kit's weights
differ slightly; what follows from them (images, students, accuracies) moves by about the spread of
the seeds above (the teacher has measured 56.8, 60.7 and 59.3 % on three machines). Compare methods by
mean ± std over seeds, never by one run.

## The digits kit (trained once, cached by recipe)

| model | training time | summary |
|---|---:|---|
{kit_rows}

## Wall time per stage (mean over seeds, measured when each stage ran)

| setting | method | prompts | synth | distill | eval |
|---|---|---:|---:|---:|---:|
{time_rows}

## Preview grids (one row per class, `zero` at the top; seed 0)

{grids}"""


# ------------------------------------------------------------------------------------------ main
def sd_agreement(out: Path, extra: list[str], smoke: bool) -> dict:
    """Teacher agreement of `digits:sd` samples of "a photo of the digit {class}" (plain method, seed 0)."""
    per_class = 5 if smoke else 50
    overrides = [*SETTINGS["diffusion"][0], "prompts.method=plain", "prompts.plain_template=a photo of the digit {class_name}",
                 f"synth.images_per_class={per_class}", *extra, "seed=0"]
    run_dir = out / "sd-check"
    from dfkd.config import load_config
    from synth.stage import SynthStage

    cfg = load_config(REPO / CONFIG, [f"output_dir={run_dir}", *overrides])
    times_file = run_dir / TIMES_FILE
    if not SynthStage().is_done(cfg):
        times_file.write_text(json.dumps(_dfkd("synth", "--config", str(REPO / CONFIG), f"output_dir={run_dir}", *overrides)))
    seconds = json.loads(times_file.read_text()) if times_file.is_file() else 0.0
    diag = json.loads((run_dir / "dataset" / "diagnostics.json").read_text())
    return {"prompt": "a photo of the digit {class}", "per_class_images": per_class,
            "settings": f"{cfg.synth.steps} steps, guidance {cfg.synth.guidance_scale}",
            "overall": 100 * diag["teacher_agreement"], "seconds": seconds,
            "per_class": {c: 100 * v["agreement"] for c, v in diag["per_class"].items()}}


def kit_task(name: str) -> dict:
    """Build (or find) kit model ``name``; its training summary."""
    from dfkd import digits

    digits.ensure(name)
    return digits.summary(name)


def bound_task(out: Path, kind: str, seed: int, per_class: int, common: list[str], extra: list[str]) -> dict:
    """The ``kind`` bound for one seed: its dataset written, then distil and evaluate."""
    from . import bounds

    ds = bounds.write_dataset(out / "bounds" / "data", kind, per_class, seed)
    return run_one(out / "bounds" / kind / f"seed{seed}",
                   [*common, "prompts.method=plain", f"distill.dataset={ds}", *extra, f"seed={seed}"],
                   learn=False, synth=False)


def plan(a: argparse.Namespace, out: Path, domains: Path, extra: list[str]) -> tuple[list, list[str]]:
    """Every task of the run (kit, bounds, settings x methods x seeds, the sd check), in priority order."""
    from .jobs import Task

    me = importlib.import_module("bench.digits.run")  # tasks must pickle by their module's real name
    needed = ["clip"] + (["vqgan"] if "vqgan" in a.settings else []) + (["vae", "sd"] if "diffusion" in a.settings else [])
    parents = {"sd": ("kit-clip", "kit-vae")}
    # the longest chain (clip -> sd) first; vqgan fills the core that the vae frees
    kit_order = [n for n in ("clip", "vae", "sd", "vqgan") if n in needed]
    tasks = [Task(f"kit-{n}", me.kit_task, (n,), parents.get(n, ()), f"build digits:{n}") for n in kit_order]
    common = ["teacher.model=digits:clip", f"eval.data={domains}"]
    setting_kit = {"fourier": ("kit-clip",), "vqgan": ("kit-clip", "kit-vqgan"), "diffusion": ("kit-clip", "kit-sd")}
    if not a.no_bounds:
        tasks += [Task(f"bound-{b}-seed{seed}", me.bound_task,
                       (out, b, seed, 2 if a.smoke else a.bound_per_class, common, extra), ("kit-clip",),
                       f"bound {b}, seed {seed}") for b in BOUNDS for seed in a.seeds]
    for s in a.settings:
        tasks += [Task(f"{s}-{m}-seed{seed}", me.run_one,
                       (out / s / m / f"seed{seed}", [*common, f"prompts.method={m}", *SETTINGS[s][0], *extra,
                                                      f"seed={seed}"], m == "contrastive"),
                       setting_kit[s], f"{s} / {m} / seed {seed}") for m in a.methods for seed in a.seeds]
    if "diffusion" in a.settings:
        tasks.append(Task("sd-check", me.sd_agreement, (out, extra, a.smoke), ("kit-sd",), "sd agreement check"))
    return tasks, needed


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/digits", help="run folder (domains, one folder per setting/method/seed)")
    p.add_argument("--results-dir", default=str(REPO / "bench" / "digits"),
                   help="where RESULTS.md, results.json and previews/ go")
    p.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    p.add_argument("--seeds", nargs="+", type=int, default=list(SEEDS))
    p.add_argument("--no-bounds", action="store_true", help="skip the real and noise bounds")
    p.add_argument("--bound-per-class", type=int, default=BOUND_PER_CLASS,
                   help=f"images per class of the real and noise bounds (default {BOUND_PER_CLASS}: the budget of the "
                   "vqgan and diffusion settings)")
    p.add_argument("--jobs", type=int, default=min(os.cpu_count() or 1, 8),
                   help="worker processes, each with cores/jobs torch threads (default: one per core, at most 8; "
                   "1 runs everything in this process)")
    p.add_argument("--smoke", action="store_true", help="tiny budgets and a tiny kit (the test suite's version)")
    p.add_argument("--remark", default="", help="a sentence for RESULTS.md about how this run was made")
    p.add_argument("overrides", nargs="*", help="extra config overrides for every run, e.g. distill.max_steps=100")
    a = p.parse_args(argv)
    if a.jobs < 1:
        p.error("--jobs must be at least 1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if a.smoke:
        os.environ["DFKD_DIGITS_PROFILE"] = "smoke"
    os.chdir(REPO)
    from dfkd import digits

    from . import domains as dom
    from .jobs import execute

    t_start = time.perf_counter()
    out = Path(a.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    domains = dom.build_domains(out / "domains", per_class=5 if a.smoke else 100)
    extra = [*DISTILL, *(SMOKE_OVERRIDES if a.smoke else []), *a.overrides]
    tasks, needed = plan(a, out, domains, extra)
    built_before = {n: digits.summary(n) is not None for n in needed}
    threads = max(1, (os.cpu_count() or 1) // a.jobs)
    done = execute(tasks, a.jobs, threads, out / "logs")
    kit = {n: done[f"kit-{n}"] for n in needed}
    kit_s = sum(kit[n]["seconds"] for n in needed)
    results: dict = {"students": {}, "bounds": {}, "runs": {}}
    teacher = None
    if not a.no_bounds:
        for b in BOUNDS:
            runs = [done[f"bound-{b}-seed{seed}"] for seed in a.seeds]
            teacher = runs[0]["teacher"]
            results["bounds"][b] = aggregate(runs) | {"images": 10 * (2 if a.smoke else a.bound_per_class)}
            results["runs"][f"bound-{b}"] = runs
    for s in a.settings:
        results["students"][s] = {}
        for m in a.methods:
            runs = [done[f"{s}-{m}-seed{seed}"] for seed in a.seeds]
            teacher = runs[0]["teacher"]
            results["students"][s][m] = aggregate(runs) | {"preview": runs[0]["preview"]}
            results["runs"][f"{s}-{m}"] = runs
    if "diffusion" in a.settings:
        results["sd_agreement"] = done["sd-check"]
    results["teacher"] = teacher
    results["compare_to_plain"] = compare_to_plain(results["students"])
    results["kit"] = kit
    from dfkd.config import load_config

    cfg = load_config(REPO / CONFIG, extra)
    total = time.perf_counter() - t_start
    stage_s = sum(v for runs in results["runs"].values() for r in runs for v in r["seconds"].values()
                  if isinstance(v, float)) + results.get("sd_agreement", {}).get("seconds", 0.0)
    fresh = all(not built_before[n] for n in needed) and all(
        r["ran_now"] for runs in results["runs"].values() for r in runs)
    shown = _shown_args(argv)
    results["meta"] = {
        "command": "make bench-digits" if not a.smoke and not shown else "python -m bench.digits.run " + " ".join(shown),
        "date": time.strftime("%Y-%m-%d"), "machine": f"{os.cpu_count()} CPU cores, no GPU", "smoke": a.smoke,
        "seeds": a.seeds, "student": cfg.distill.student, "distill": f"{cfg.distill.max_steps} steps of batch "
        f"{cfg.distill.batch_size}, KD at T={cfg.distill.loss.temperature}", "total_seconds": total,
        "jobs": a.jobs, "threads_per_job": threads, "from_empty_caches": fresh,
        "remark": a.remark, "kit_seconds": kit_s, "stage_seconds": stage_s, "kit_built_now": [n for n in needed if not built_before[n]],
        "wall_note": (f", from empty caches (the kit trained and every stage run now), on {a.jobs} processes of "
                      f"{threads} thread(s)" if fresh else
                      f", on {a.jobs} processes of {threads} thread(s). Not from empty caches: the kit's training "
                      f"({kit_s / 60:.1f} min) plus every stage's measured time ({stage_s / 60:.1f} min, summed over all "
                      f"runs, bounds and the sd check included) is {(kit_s + stage_s) / 60:.1f} min of one process"),
    }
    write_results(Path(a.results_dir), results)
    print(f"\nbench-digits: wrote {Path(a.results_dir) / 'RESULTS.md'} and results.json")
    print(render_markdown(results).split("## Which methods")[0])
    return 0


def _shown_args(argv: list[str] | None) -> list[str]:
    """The command-line arguments that change what runs (``--remark`` and its text left out)."""
    args = list(sys.argv[1:] if argv is None else argv)
    if "--remark" in args:
        i = args.index("--remark")
        del args[i:i + 2]
    return [x for x in args if not x.startswith("--remark=")]


def write_results(results_dir: Path, res: dict) -> None:
    results_dir.mkdir(parents=True, exist_ok=True)
    previews = results_dir / "previews"
    shutil.rmtree(previews, ignore_errors=True)
    previews.mkdir()
    for s, methods in res["students"].items():
        for m, r in methods.items():
            shutil.copyfile(r.pop("preview"), previews / f"{s}-{m}.png")
    for runs in res["runs"].values():
        for r in runs:
            r.pop("preview", None)
    (results_dir / "results.json").write_text(json.dumps(res, indent=1) + "\n")
    (results_dir / "RESULTS.md").write_text(render_markdown(res))


if __name__ == "__main__":
    sys.exit(main())
