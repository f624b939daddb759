"""Planted bugs: each behaviour the method depends on has a test that fails when that behaviour breaks.

For every entry below, the tree is copied into a temporary folder (without .venv, mutants, runs, .git), one
plausible one-line bug is planted in a production file by an exact text replacement (the script stops if the
original text is not there exactly once, so it cannot go stale quietly), and the entry's test is run on the
copy (``PYTHONPATH=<copy>``, so the copy's packages shadow the editable install). An entry is CAUGHT when its
test fails, MISSED when it passes. The tests are first run once on an unmodified copy, so a test that fails
anyway never counts as a catch. Each run gets a fresh ``DFKD_CACHE``: a planted bug can neither read a
zero-shot head cached by correct code nor leave a wrong one in the shared cache.

    python tests/mutation/planted.py [--list] [--only NAME ...]

Exit code 0 only if every selected planted bug is caught.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PYTHON = ROOT / ".venv" / "bin" / "python"
IGNORE = shutil.ignore_patterns(".venv", "mutants", "runs", ".git", "__pycache__", ".pytest_cache", ".ruff_cache",
                                "*.egg-info")
TIMEOUT_S = 1200


@dataclass(frozen=True)
class Bug:
    name: str
    what: str
    file: str
    edits: tuple[tuple[str, str], ...]  #: (old, new): ``old`` must occur exactly once in ``file``
    test: str


BACKENDS, TRAINER = "tests/synth/test_synth_backends.py", "tests/distill/test_distill_trainer.py"
BUGS = [
    Bug("diffusion-zero-embeds", "the diffusion backend feeds zeros instead of the prompt embeddings",
        "synth/backends/diffusion.py",
        (("embeds = encoding.hidden_states.to(", "embeds = torch.zeros_like(encoding.hidden_states).to("),),
        f"{BACKENDS}::test_diffusion_images_follow_the_prompt_embeddings"),
    Bug("diffusion-no-negative", "the negative prompt embeddings are dropped under guidance (inverted test)",
        "synth/backends/diffusion.py", (("if self.guidance_scale > 1:", "if self.guidance_scale < 1:"),),
        f"{BACKENDS}::test_diffusion_guidance_uses_negative_embeddings"),
    Bug("teacher-student-norm", "the distill teacher takes student-normalised pixels as [0, 1] pixels",
        "distill/teacher.py",
        (("images = (student_input.float() * self.std + self.mean).clamp(0, 1)",
          "images = student_input.float().clamp(0, 1)"),),
        f"{TRAINER}::test_teacher_undoes_student_normalisation_and_uses_clip_preprocessing"),
    Bug("clip-no-mean-std", "CLIP's input is resized but not normalised with CLIP's mean/std", "prompts/teacher.py",
        (("return ((images.float() - self.mean) / self.std).to(self.dtype)",
          "return images.float().to(self.dtype)"),),
        "tests/prompts/test_teacher_head.py::test_preprocess_matches_clip_image_processor"),
    Bug("zeroshot-first-template", "the zero-shot head uses the first template of the ensemble only",
        "prompts/zeroshot.py", (("normalize(feats.mean(0), dim=-1)", "normalize(feats[0], dim=-1)"),),
        "tests/prompts/test_teacher_head.py::test_zero_shot_head_matches_definition_and_is_cached"),
    Bug("confidence-top-class", "teacher_confidence is the probability of the teacher's top class, not the label's",
        "synth/run.py",
        (("return probs[torch.arange(len(labels)), torch.as_tensor(list(labels), device=probs.device)]",
          "return probs.max(-1).values"),),
        "tests/synth/test_synth_run.py::test_teacher_confidence_is_the_teachers_probability_of_the_rows_own_label"),
    Bug("kd-fixed-temperature", "distill.loss.temperature never reaches the KD loss (default 4 hard-coded)",
        "distill/losses.py", (("batch.teacher_logits, cfg.temperature)", "batch.teacher_logits, 4.0)"),),
        f"{TRAINER}::test_kd_term_uses_the_configured_temperature"),
    Bug("emb-detached", "the embedding loss is detached from the student backbone (hooked features detached)",
        "distill/students.py", (("self._features = inputs[0]", "self._features = inputs[0].detach()"),),
        f"{TRAINER}::test_embedding_loss_alone_reaches_the_student_backbone"),
    Bug("few-shot-not-real", "the few-shot real images are not flagged real", "distill/trainer.py",
        (("torch.ones(len(real_y), dtype=torch.bool)", "torch.zeros(len(real_y), dtype=torch.bool)"),),
        "tests/distill/test_distill_eval_export.py::test_few_shot_images_are_flagged_real_and_get_their_cross_entropy"),
    Bug("student-kwargs-dropped", "student_kwargs never reach a registered (or module:attr) factory",
        "distill/students.py", (("model = factory(num_classes, **kwargs)", "model = factory(num_classes)"),),
        "tests/distill/test_distill_students.py::test_student_kwargs_reach_a_registered_factory"),
    Bug("contrastive-neighbour", "the contrastive step pairs each style with its neighbour's positive",
        "prompts/contrastive.py",
        (("info_nce(anchors, positives, memory", "info_nce(anchors, positives.roll(1, 0), memory"),),
        "tests/prompts/test_contrastive.py::test_step_loss_pairs_each_style_with_its_own_positive"),
    Bug("resume-not-passed", "`dfkd run` says it resumes but the checkpoint never reaches distill (retrains)",
        "distill/stage.py",
        (("train_and_report(cfg, resume_latest=True)", "train_and_report(cfg, resume_latest=False)"),),
        "tests/dfkd/test_pipeline.py"
        "::test_dfkd_run_resumes_a_lost_student_at_its_checkpoint_and_ends_as_a_straight_run"),
    Bug("kd-sign", "the KD loss is KL written by hand with the log terms swapped (non-positive)",
        "distill/losses.py",
        (('kl = F.kl_div(log_p_s, log_p_t, reduction="batchmean", log_target=True)',
          "kl = (log_p_t.exp() * (log_p_s - log_p_t)).sum(-1).mean()"),),
        "tests/distill/test_distill_losses.py::test_kd_positive_and_gradient_reaches_student_only"),
    Bug("teacher-grad", "the distill teacher runs with autograd on, so the KD gradient flows back through it",
        "distill/teacher.py",
        (("    @torch.no_grad()\n    def forward(", "    def forward("),
         ("    @torch.no_grad()\n    def from_pixels(", "    def from_pixels(")),
        "tests/distill/test_distill_losses.py::test_kd_positive_and_gradient_reaches_student_only"),
]


def copy_tree(dest: Path) -> Path:
    shutil.copytree(ROOT, dest, ignore=IGNORE)
    return dest


def planted(root: Path, bug: Bug) -> str:
    """The text of ``root / bug.file`` with ``bug.edits`` applied; each ``old`` must occur exactly once."""
    text = (root / bug.file).read_text(encoding="utf-8")
    for old, new in bug.edits:
        if text.count(old) != 1:
            raise SystemExit(f"{bug.name}: {old!r} occurs {text.count(old)} times in {bug.file}, not once; "
                             "the code changed: update the entry")
        text = text.replace(old, new)
    return text


def pytest(copy: Path, tests: list[str], *extra: str) -> tuple[int | None, str]:
    """(exit code or None on timeout, output) of pytest on ``tests`` run from ``copy``."""
    env = dict(os.environ, PYTHONPATH=str(copy), HF_HUB_OFFLINE="1", DFKD_CACHE=str(copy / ".dfkd-cache"))
    cmd = [str(PYTHON), "-m", "pytest", "-q", "-p", "no:cacheprovider", *extra, *tests]
    try:
        done = subprocess.run(cmd, check=False, cwd=copy, env=env, capture_output=True, text=True,
                              timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        return None, ""
    return done.returncode, done.stdout + done.stderr


def first_error(output: str) -> str:
    """The failing source line and the first ``E`` line pytest printed under it, else the last output line."""
    lines = [ln for ln in output.splitlines() if ln.strip()]
    e = next((i for i, ln in enumerate(lines) if ln.startswith("E ")), None)
    if e is None:
        return lines[-1] if lines else "(no output)"
    source = next((ln[1:].strip() for ln in reversed(lines[:e]) if ln.startswith(">")), "")
    return f"{source}  ->  {' '.join(lines[e][1:].split())}"[:240]


def check_copy_is_imported(copy: Path) -> None:
    """The copy's packages, not the editable install's, must be the ones imported."""
    code = "import dfkd, distill, prompts, synth; print(*(m.__file__ for m in (dfkd, distill, prompts, synth)))"
    env = dict(os.environ, PYTHONPATH=str(copy))
    files = subprocess.run([str(PYTHON), "-c", code], cwd=copy, env=env, capture_output=True, text=True,
                           check=True).stdout.split()
    if not all(Path(f).resolve().is_relative_to(copy.resolve()) for f in files):
        raise SystemExit(f"the copy's packages are not the ones imported: {files}")


def baseline(tmp: Path, bugs: list[Bug]) -> set[str]:
    """The tests of ``bugs`` that fail on an unmodified copy: one pytest run per test folder (the folders'
    ``conftest`` modules share one name, so a run over two folders fails to import one of them)."""
    copy = copy_tree(tmp / "unmodified")
    check_copy_is_imported(copy)
    broken = set()
    for folder in sorted({str(Path(b.test).parent) for b in bugs}):
        tests = sorted({b.test for b in bugs if str(Path(b.test).parent) == folder})
        code, output = pytest(copy, tests)
        if code != 0:
            failed = set(re.findall(r"^(?:FAILED|ERROR) (\S+)", output, re.MULTILINE))
            broken |= {t for t in tests if t in failed} or set(tests)  # no summary (timeout, crash): trust none
            print(f"unmodified tree, {folder}: pytest exit code {code}: {first_error(output)}", flush=True)
    shutil.rmtree(copy, ignore_errors=True)
    return broken


def run(bugs: list[Bug]) -> int:
    for bug in bugs:  # every entry still applies before anything runs
        planted(ROOT, bug)
    with tempfile.TemporaryDirectory(prefix="dfkd-planted-") as tmp:
        broken = baseline(Path(tmp), bugs)
        caught = 0
        for i, bug in enumerate(bugs):
            if bug.test in broken:
                print(f"BROKEN  {bug.name}: {bug.test} fails on the unmodified tree", flush=True)
                continue
            copy = copy_tree(Path(tmp) / f"bug{i}")
            (copy / bug.file).write_text(planted(copy, bug), encoding="utf-8")
            code, output = pytest(copy, [bug.test], "-x")
            if code is None:
                status, detail = "CAUGHT", f"timed out after {TIMEOUT_S} s"
            elif code in (1, 2):
                status, detail = "CAUGHT", first_error(output)
            elif code == 0:
                status, detail = "MISSED", "the test passed with the bug planted"
            else:
                status, detail = "ERROR ", f"pytest exit code {code}: {first_error(output)}"
            caught += status == "CAUGHT"
            print(f"{status}  {bug.name} ({bug.what})\n        {bug.test}\n        {detail}", flush=True)
            shutil.rmtree(copy, ignore_errors=True)
    print(f"{caught}/{len(bugs)} planted bugs caught")
    return 0 if caught == len(bugs) else 1


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--list", action="store_true", help="list the planted bugs and exit")
    ap.add_argument("--only", action="append", metavar="NAME", help="run only this entry (repeatable)")
    args = ap.parse_args(argv)
    names = [b.name for b in BUGS]
    unknown = sorted(set(args.only or []) - set(names))
    if unknown:
        ap.error(f"unknown entry {', '.join(unknown)}; one of: {', '.join(names)}")
    if args.list:
        for b in BUGS:
            print(f"{b.name:24} {b.file:28} {b.what}\n{'':24} {b.test}")
        return 0
    return run([b for b in BUGS if not args.only or b.name in args.only])


if __name__ == "__main__":
    sys.exit(main())
