"""The digits benchmark (bench/digits): its real data, its renderings, and a reduced end-to-end run."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from fixtures import REPO_ROOT

sys.path.insert(0, str(REPO_ROOT))  # bench/ is not an installed package

from bench.digits import domains
from dfkd.digits import data


def test_real_mnist_and_optdigits_load():
    x, y = data.load_mnist("test")
    assert x.shape == (10000, 28, 28) and x.dtype.name == "uint8" and y.shape == (10000,)
    assert sorted(set(y.tolist())) == list(range(10)) and x.max() == 255
    o, oy = data.load_optdigits("test")
    assert o.shape == (1797, 8, 8) and o.max() == 16 and sorted(set(oy.tolist())) == list(range(10))
    g = data.glyphs_from_optdigits(o[:3])
    assert g.shape == (3, 1, 32, 32) and 0 <= g.min() and g.max() <= 1


@pytest.mark.parametrize("style", data.BASE_STYLES)
def test_render_is_an_image_and_deterministic(style):
    x, _ = data.load_mnist("test")
    glyphs = data.glyphs_from_mnist(x[:6])
    photos = data.photo_bank(data.EVAL_PHOTOS)

    def go(seed):
        return data.render(glyphs, [style] * 6, torch.Generator().manual_seed(seed), photos,
                           stroke=["thick", "thin", "normal"] * 2, noisy=[True, False] * 3, blurred=[False, True] * 3)

    a, b, c = go(0), go(0), go(1)
    assert a.images.shape == (6, 3, 32, 32) and a.images.min() >= 0 and a.images.max() <= 1
    assert torch.equal(a.images, b.images)
    assert a.images.std() > 0.05  # not blank
    assert not torch.equal(a.images, c.images)  # the noise (and colours, crops, paper) follow the seed


def test_captions_name_the_digit():
    x, y = data.load_mnist("train")
    gen = torch.Generator().manual_seed(0)
    r = data.random_style_batch(data.glyphs_from_mnist(x[:200]), gen, data.photo_bank(data.TRAIN_PHOTOS))
    caps = [data.caption(int(y[i]), r, i, gen) for i in range(200)]
    for i, (c, _) in enumerate(caps):
        words = c.replace(",", " ").split()
        assert data.CLASSES[int(y[i])] in words or str(int(y[i])) in words, c
    assert len(set(caps)) > 120  # varied words, as web captions are
    assert 0.25 < sum(d for _, d in caps) / len(caps) < 0.55  # 40 % describe the look
    assert set(r.styles) == set(data.BASE_STYLES)
    colored = [i for i, (_, d) in enumerate(caps) if d and r.styles[i] == "colored"]
    assert colored and all(r.fg[i] in caps[i][0] for i in colored)  # a described look is the true look


def test_positives_are_the_captions_true_of_an_image():
    from dfkd.digits.teacher import contrastive_loss, positives

    x, y = data.load_mnist("train")
    gen = torch.Generator().manual_seed(1)
    r = data.random_style_batch(data.glyphs_from_mnist(x[:64]), gen, data.photo_bank(data.TRAIN_PHOTOS))
    labels = torch.from_numpy(y[:64])
    describes = [bool(i % 2) for i in range(64)]
    pos = positives(labels, r, describes)
    assert pos.diagonal().all()
    for i in range(64):
        for j in range(64):
            expect = labels[i] == labels[j] and (not describes[j] or data.style_key(r, i) == data.style_key(r, j))
            assert bool(pos[i, j]) == bool(expect)
    # with one positive per row it is CLIP's symmetric cross-entropy
    logits = torch.randn(8, 8)
    clip = (torch.nn.functional.cross_entropy(logits, torch.arange(8))
            + torch.nn.functional.cross_entropy(logits.t(), torch.arange(8))) / 2
    assert torch.allclose(contrastive_loss(logits, torch.eye(8, dtype=torch.bool)), clip)


def test_eval_photos_are_held_out():
    assert not set(data.EVAL_PHOTOS) & set(data.TRAIN_PHOTOS)


def test_domains_layout_and_stamp(tmp_path):
    root = domains.build_domains(tmp_path / "dom", per_class=2)
    assert sorted(p.name for p in root.iterdir() if p.is_dir()) == sorted(domains.DOMAINS)
    for d in domains.DOMAINS:
        assert sorted(p.name for p in (root / d).iterdir()) == sorted(data.CLASSES)
        assert all(len(list((root / d / c).glob("*.png"))) == 2 for c in data.CLASSES)
    from PIL import Image

    from distill.data import read_domainbed  # the reader `dfkd eval` uses

    mnist_m = {r.domain: r for r in read_domainbed(root, data.CLASSES)}["mnist_m"]
    assert len(mnist_m.items) == 20 and torch.tensor(mnist_m.labels).bincount().tolist() == [2] * 10
    assert Image.open(mnist_m.items[0]).convert("RGB").size == (32, 32)
    mtime = (root / "mnist" / "zero").stat().st_mtime_ns
    domains.build_domains(root, per_class=2)  # same recipe: kept as is
    assert (root / "mnist" / "zero").stat().st_mtime_ns == mtime


@pytest.mark.slow
def test_smoke_run_end_to_end(tmp_path):
    """The reduced benchmark: smoke kit -> domains -> bounds -> settings x methods x seeds -> results."""
    env = dict(os.environ, DFKD_CACHE=str(tmp_path / "cache"), PYTHONPATH=str(REPO_ROOT))
    methods, seeds = ["plain", "contrastive"], ["0", "1"]
    cmd = [sys.executable, "-m", "bench.digits.run", "--smoke", "--out", str(tmp_path / "run"),
           "--results-dir", str(tmp_path / "results"), "--methods", *methods, "--seeds", *seeds]
    # two worker processes (the scheduler as `make bench-digits` runs it), then the resume in this process
    proc = subprocess.run([*cmd, "--jobs", "2"], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=1200,
                          check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "tasks on 2 processes of 1 thread(s)" in proc.stdout
    res = json.loads((tmp_path / "results" / "results.json").read_text())
    domain_names = set(domains.DOMAINS) | {"mean"}
    assert set(res["teacher"]) == domain_names
    assert list(res["students"]) == ["fourier", "vqgan", "diffusion"] and list(res["bounds"]) == ["real", "noise"]
    cells = [*res["bounds"].values(), *(r for ms in res["students"].values() for r in ms.values())]
    for cell in cells:
        accs = cell["student"]
        assert set(accs) == domain_names
        for v in accs.values():  # mean and std over the seeds, from the per-seed values
            assert v["n"] == 2 and all(0 <= x <= 100 for x in v["values"])
            assert v["mean"] == pytest.approx(sum(v["values"]) / 2)
            assert v["std"] == pytest.approx(abs(v["values"][0] - v["values"][1]) / 2 ** 0.5)
    for runs in res["runs"].values():  # per run: the mean over domains is the average of the domains
        for r in runs:
            per_domain = [v for k, v in r["student"].items() if k != "mean"]
            assert r["student"]["mean"] == pytest.approx(sum(per_domain) / len(per_domain))
    for s, ms in res["students"].items():
        assert list(ms) == methods
        for m in methods:
            assert ms[m]["images"] == 2 * 10  # the smoke budget, the same for every method of a setting
            assert (tmp_path / "results" / "previews" / f"{s}-{m}.png").read_bytes()[:4] == b"\x89PNG"
    assert set(res["compare_to_plain"]["diffusion"]) == {"contrastive"}
    assert set(res["sd_agreement"]["per_class"]) == set(data.CLASSES)
    md = (tmp_path / "results" / "RESULTS.md").read_text()
    assert "teacher (zero-shot CLIP)" in md and "`diffusion` `contrastive`" in md and "bound `real`" in md
    # each kit model is cached once under its recipe key, and loads through the normal from_pretrained path
    from prompts.teacher import ClipTeacher

    for name in ("clip", "vqgan", "vae", "sd"):
        assert len(list((tmp_path / "cache" / "digits").glob(f"{name}-*-smoke"))) == 1, name
    teacher = ClipTeacher.load(str(next((tmp_path / "cache" / "digits").glob("clip-*"))))
    assert teacher.image_size == 32 and teacher.text.max_length == 32
    # a second run finds every stage done and rewrites the same numbers
    again = subprocess.run([*cmd, "--jobs", "1"], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=900, check=False)
    assert again.returncode == 0, again.stderr[-3000:]
    res2 = json.loads((tmp_path / "results" / "results.json").read_text())
    def numbers(r):  # everything but the stage times (a resumed run times nothing)
        return {k: v for k, v in r.items() if k not in ("seconds", "images_per_second")}

    for s, ms in res["students"].items():
        assert {m: numbers(r) for m, r in ms.items()} == {m: numbers(r) for m, r in res2["students"][s].items()}
    assert {b: numbers(r) for b, r in res["bounds"].items()} == {b: numbers(r) for b, r in res2["bounds"].items()}
    assert all(r["ran_now"] == [] for runs in res2["runs"].values() for r in runs)
    # and reports the stage times measured when the stages ran
    assert [r["seconds"] for runs in res2["runs"].values() for r in runs] == \
        [r["seconds"] for runs in res["runs"].values() for r in runs]


@pytest.mark.slow
def test_the_demo_runs_end_to_end_and_says_what_its_numbers_mean(tmp_path):
    """`make demo`'s two commands (configs/demo.yaml) on the smoke kit with small counts: real evaluation domains,
    the per-domain table, the chance line and the preview grid's path."""
    env = dict(os.environ, DFKD_CACHE=str(tmp_path / "cache"), PYTHONPATH=str(REPO_ROOT), DFKD_DIGITS_PROFILE="smoke")
    root = tmp_path / "domains"
    made = subprocess.run([sys.executable, "-m", "bench.digits.domains", str(root), "--per-class", "3"], cwd=REPO_ROOT,
                          env=env, capture_output=True, text=True, timeout=300, check=False)
    assert made.returncode == 0, made.stderr[-2000:]
    assert "optdigits 30" in made.stdout and len(list((root / "mnist_m" / "seven").glob("*.png"))) == 3
    run = subprocess.run([sys.executable, "-m", "dfkd", "run", "--config", "configs/demo.yaml",
                          f"output_dir={tmp_path / 'demo'}", f"eval.data={root}", "synth.images_per_class=2",
                          "synth.clip_guided.iterations=2", "distill.max_steps=3", "distill.batch_size=10", "synth.progress=false"],
                         cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=900, check=False)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-3000:]
    out = run.stdout
    assert "building digits:clip-demo" in out
    for domain in domains.DOMAINS:
        assert f"| {domain} | 30 |" in out
    assert "Chance is 10.0 % (10 classes)" in out
    assert f"preview grid  {tmp_path / 'demo' / 'dataset' / 'preview.png'}" in out
    assert (tmp_path / "demo" / "dataset" / "preview.png").is_file()
    bad = subprocess.run([sys.executable, "-m", "bench.digits.domains", str(root), "--per-class", "0"], cwd=REPO_ROOT,
                         env=env, capture_output=True, text=True, timeout=120, check=False)
    assert bad.returncode == 2 and "--per-class must be at least 1" in bad.stderr
