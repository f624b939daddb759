"""The digits benchmark: teacher -> evaluation domains -> (prompts -> synth -> distill -> eval) per prompt method.

    python -m bench.digits.run                 # the full experiment (`make bench-digits`), ~21 min on 2 cores
    python -m bench.digits.run --smoke --out /tmp/d --results-dir /tmp/d   # minutes-scale plumbing check

Every stage runs through the real ``dfkd`` commands (``dfkd prompts learn``, ``dfkd synth``,
``dfkd distill``, ``dfkd eval``) on ``configs/digits.yaml``, in this process, with the same image
budget and seeds for every method. Finished stages are skipped, so an interrupted run resumes.
Writes ``RESULTS.md``, ``results.json`` and ``previews/<method>.png`` into ``--results-dir``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
CONFIG = "configs/digits.yaml"
METHODS = ("plain", "handcrafted", "mix", "random", "contrastive")

#: the reduced version that runs in the test suite: every stage, tiny budgets
SMOKE_OVERRIDES = [
    "synth.images_per_class=2", "synth.batch_size=20", "synth.clip_guided.iterations=2", "synth.clip_guided.cutouts=2",
    "synth.shard_size=20", "synth.progress=false", "prompts.contrastive.steps=3", "prompts.contrastive.num_styles=4",
    "prompts.contrastive.checkpoint_every=3", "distill.epochs=1", "distill.batch_size=10", "distill.checkpointing_steps=100",
]


def _dfkd(*argv: str) -> float:
    """Run one ``dfkd`` command in this process; its wall time in seconds (non-zero exit -> SystemExit)."""
    from dfkd.cli import main

    t0 = time.perf_counter()
    rc = main(list(argv))
    if rc:
        raise SystemExit(f"bench-digits: `dfkd {' '.join(argv)}` failed with exit code {rc}")
    return time.perf_counter() - t0


def run_method(method: str, out: Path, teacher: Path, domains: Path, extra: list[str]) -> dict:
    """prompts -> synth -> distill -> eval for one method (finished stages skipped); the method's numbers."""
    from dfkd.config import load_config
    from dfkd.pipeline import eval_done, student_done, synth_done

    run_dir = out / method
    overrides = [f"output_dir={run_dir}", f"prompts.method={method}", f"teacher.model={teacher}",
                 f"eval.data={domains}", *extra]
    cfg = load_config(REPO / CONFIG, overrides)
    args = ["--config", str(REPO / CONFIG), *overrides]
    no_eval = [*args, "eval.data=null"]  # distill without its closing evaluation: eval is timed on its own
    times: dict[str, float | str | None] = {"prompts": "not needed", "synth": None, "distill": None, "eval": None}
    print(f"\n=== {method} ===", flush=True)
    if method == "contrastive":  # learn skips a finished style bank itself; time it only when it learns
        bank_there = (run_dir / "prompts" / "contrastive" / "styles.safetensors").is_file()
        seconds = _dfkd("prompts", "learn", *args)
        times["prompts"] = None if bank_there else seconds
    if not synth_done(cfg):
        times["synth"] = _dfkd("synth", *args)
    if not student_done(cfg):
        times["distill"] = _dfkd("distill", *no_eval)
    if not eval_done(cfg):
        times["eval"] = _dfkd("eval", *args)
    ev = json.loads((run_dir / "eval.json").read_text())
    diag = json.loads((run_dir / "dataset" / "diagnostics.json").read_text())
    return {
        "teacher": {d["domain"]: d["teacher"] for d in ev["domains"]} | {"mean": ev["mean"]["teacher"]},
        "student": {d["domain"]: d["student"] for d in ev["domains"]} | {"mean": ev["mean"]["student"]},
        "images": diag["rows"],
        "teacher_agreement": 100 * diag["teacher_agreement"],
        "mean_confidence": diag["mean_confidence"],
        "diversity": diag["mean_pairwise_cosine_distance"],
        "vendi": diag["vendi_score"],
        "seconds": times,
        "preview": run_dir / "dataset" / "preview.png",
    }


def write_results(results_dir: Path, teacher_acc: dict, methods: dict, meta: dict) -> None:
    results_dir.mkdir(parents=True, exist_ok=True)
    (results_dir / "previews").mkdir(exist_ok=True)
    for m, r in methods.items():
        shutil.copyfile(r["preview"], results_dir / "previews" / f"{m}.png")
    payload = {"teacher": teacher_acc, "students": {m: r["student"] for m, r in methods.items()},
               "synthetic": {m: {k: r[k] for k in ("images", "teacher_agreement", "mean_confidence", "diversity", "vendi")}
                             for m, r in methods.items()},
               "seconds": {m: r["seconds"] for m, r in methods.items()} | {"teacher": meta["teacher_seconds"],
                                                                           "domains": meta["domains_seconds"]},
               "meta": {k: v for k, v in meta.items() if not k.endswith("_seconds")}}
    (results_dir / "results.json").write_text(json.dumps(payload, indent=2) + "\n")
    (results_dir / "RESULTS.md").write_text(render_markdown(teacher_acc, methods, meta))


def _fmt_s(x: float | str | None) -> str:
    if isinstance(x, str):
        return x
    return "skipped" if x is None else f"{x:.0f} s"


def render_markdown(teacher_acc: dict, methods: dict, meta: dict) -> str:
    domains = [d for d in teacher_acc if d != "mean"]
    head = "| model | " + " | ".join(domains) + " | **mean** |\n|---|" + "---:|" * (len(domains) + 1) + "\n"
    rows = ["| teacher (zero-shot CLIP) | " + " | ".join(f"{teacher_acc[d]:.1f}" for d in domains)
            + f" | **{teacher_acc['mean']:.1f}** |"]
    for m, r in methods.items():
        rows.append(f"| student, `{m}` | " + " | ".join(f"{r['student'][d]:.1f}" for d in domains)
                    + f" | **{r['student']['mean']:.1f}** |")
    synth_rows = "\n".join(
        f"| `{m}` | {r['images']} | {r['teacher_agreement']:.1f} | {r['mean_confidence']:.3f} | {r['diversity']:.3f} "
        f"| {r['vendi']:.2f} |" for m, r in methods.items())
    time_rows = "\n".join(
        f"| `{m}` | {_fmt_s(r['seconds']['prompts'])} | {_fmt_s(r['seconds']['synth'])} | "
        f"{_fmt_s(r['seconds']['distill'])} | {_fmt_s(r['seconds']['eval'])} |" for m, r in methods.items())
    grids = "\n".join(f"**`{m}`**\n\n![{m}](previews/{m}.png)\n" for m in methods)
    return f"""# Digits benchmark: data-free distillation of a CLIP teacher, on real digits

Produced by `{meta['command']}` on {meta['date']} ({meta['machine']}), total wall time
{meta['total_seconds'] / 60:.1f} min{' (SMOKE settings: numbers mean nothing)' if meta['smoke'] else ''}.
The student never saw a real image: it was distilled from the teacher on each method's synthetic set only.

Accuracy (%) on real evaluation domains (chance: 10 %). The teacher is a `CLIPModel` trained on real
MNIST *training* digits in many renderings (`bench/digits/teacher.py`); every domain below is built
from digits it never saw: MNIST *test* digits (`mnist` plain, `mnist_m` over photos the teacher never
saw, `colored`, `sketch`, `inverted_noisy_blur`) and UCI `optdigits` (other writers and scanner, 8x8).

{head}{chr(10).join(rows)}

## The synthetic sets

Same budget and seeds for every method: {meta['images_per_class']} images per class, `clip_guided`
backend ({meta['synth']}). Teacher agreement: % of images the teacher assigns to their intended class;
diversity: mean pairwise cosine distance of the teacher's image features within a class; Vendi: the
effective number of distinct images in a class.

| method | images | teacher agreement (%) | mean confidence | diversity | Vendi |
|---|---:|---:|---:|---:|---:|
{synth_rows}

## Wall time per stage

Teacher: {_fmt_s(meta['teacher_seconds'])}{' (cached: trained by an earlier run)' if not meta['teacher_trained_now'] else ''};
evaluation domains: {_fmt_s(meta['domains_seconds'])}. "skipped" = finished by an earlier run (the run resumed).
Only `contrastive` learns its prompts; the other methods need no prompt stage.

| method | prompts | synth | distill | eval |
|---|---:|---:|---:|---:|
{time_rows}

## Preview grids (one row per class, `zero` at the top)

{grids}"""


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/digits", help="run folder (teacher, domains, one folder per method)")
    p.add_argument("--results-dir", default=str(REPO / "bench" / "digits"),
                   help="where RESULTS.md, results.json and previews/ go")
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    p.add_argument("--smoke", action="store_true", help="tiny budgets everywhere (the test suite's version)")
    p.add_argument("--cache", default=None, help="teacher cache folder (default: $DFKD_CACHE/digits)")
    p.add_argument("overrides", nargs="*", help="extra config overrides for every method, e.g. synth.images_per_class=30")
    a = p.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.chdir(REPO)
    from . import domains as dom
    from .teacher import TeacherRecipe, ensure_teacher

    t_start = time.perf_counter()
    out = Path(a.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    recipe = TeacherRecipe(steps=20, batch_size=32, train_images=2000) if a.smoke else TeacherRecipe()
    t0 = time.perf_counter()
    cached, summary, trained_now = ensure_teacher(recipe, Path(a.cache) if a.cache else None)
    teacher = out / "teacher"
    if not (teacher / "dfkd_recipe.json").is_file() or (teacher / "dfkd_recipe.json").read_text() != (
            cached / "dfkd_recipe.json").read_text():
        shutil.rmtree(teacher, ignore_errors=True)
        shutil.copytree(cached, teacher)
    teacher_s = summary["seconds"]  # when cached: the time it took when it was trained
    print(f"bench-digits: teacher {teacher} (contrastive loss {summary['first_loss']:.2f} -> {summary['last_loss']:.2f})")
    t0 = time.perf_counter()
    domains = dom.build_domains(out / "domains", per_class=5 if a.smoke else 100)
    domains_s = time.perf_counter() - t0
    extra = [*(SMOKE_OVERRIDES if a.smoke else []), *a.overrides]
    methods = {m: run_method(m, out, teacher, domains, extra) for m in a.methods}
    teacher_acc = next(iter(methods.values()))["teacher"]
    from dfkd.config import load_config

    cfg = load_config(REPO / CONFIG, extra)
    cg = cfg.synth.clip_guided
    meta = {
        "command": "make bench-digits" if not a.smoke and not a.overrides and argv is None else
        "python -m bench.digits.run " + " ".join(sys.argv[1:] if argv is None else argv),
        "date": time.strftime("%Y-%m-%d"), "machine": f"{os.cpu_count()} CPU cores, no GPU",
        "smoke": a.smoke, "images_per_class": cfg.synth.images_per_class,
        "synth": f"{cg.parameterization} parameterisation, {cg.iterations} iterations, {cg.cutouts} cutouts",
        "teacher_recipe": summary | {"recipe_key": recipe.key()}, "teacher_trained_now": trained_now,
        "teacher_seconds": teacher_s, "domains_seconds": domains_s,
        "total_seconds": time.perf_counter() - t_start,
    }
    write_results(Path(a.results_dir), teacher_acc, methods, meta)
    print(f"\nbench-digits: wrote {Path(a.results_dir) / 'RESULTS.md'} and results.json")
    print(render_markdown(teacher_acc, methods, meta).split("## The synthetic sets")[0])
    return 0


if __name__ == "__main__":
    sys.exit(main())
