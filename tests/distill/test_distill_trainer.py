"""The training loop on tiny models: a step, learning, exact resume, bad input."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from fixtures import TINY_CLASSES, TINY_TEACHER, tiny_config
from safetensors.torch import load_file

from dfkd.cli import main as dfkd_main
from dfkd.errors import UserError
from distill.augment import step_generator
from distill.data import decode_image, load_synthetic
from distill.export import load_student
from distill.step import StepModels, make_optimizer, train_step
from distill.students import DistillStudent, create_student
from distill.teacher import DistillTeacher
from distill.trainer import STATE_FILE, list_checkpoints, make_accelerator, train
from prompts.teacher import load_teacher


def _state(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def test_one_step_changes_student_not_teacher(make_cfg, tmp_path, syn_dataset):
    from distill.data import Batch

    cfg = make_cfg(tmp_path, "distill.loss.emb=1.0", "distill.loss.ce=0.5")
    accelerator = make_accelerator(cfg)
    student, _ = create_student("tiny_cnn", 7)
    teacher = DistillTeacher(load_teacher(TINY_TEACHER, TINY_CLASSES), (0.5,) * 3, (0.5,) * 3)
    model = DistillStudent(student, 7, teacher.feature_dim)
    optimizer = make_optimizer(model.parameters(), cfg)
    model, optimizer = accelerator.prepare(model, optimizer)
    ds = load_synthetic(syn_dataset, TINY_CLASSES)
    images = torch.stack([decode_image(ds[i]["image"]["bytes"]) for i in range(8)])
    batch = Batch(images, torch.tensor(ds["label"][:8]), torch.zeros(8, dtype=torch.bool))
    before_s, before_t = _state(model), _state(teacher)
    mean_std = (torch.full((1, 3, 1, 1), 0.5), torch.full((1, 3, 1, 1), 0.5))
    loss, parts = train_step(StepModels(model, teacher, accelerator, 32, mean_std), batch, cfg,
                         step_generator(0, 0, 0))
    optimizer.step()
    assert torch.isfinite(loss) and set(parts) == {"kd", "ce", "emb"}
    after_s, after_t = _state(model), _state(teacher)
    assert any(not torch.equal(before_s[k], after_s[k]) for k in before_s)
    assert "head.weight" in after_s and not torch.equal(before_s["head.weight"], after_s["head.weight"])
    assert all(torch.equal(before_t[k], after_t[k]) for k in before_t)
    assert all(not p.requires_grad for p in teacher.parameters())


def _first_batch(syn_dataset, n=8):
    from distill.data import Batch

    ds = load_synthetic(syn_dataset, TINY_CLASSES)
    images = torch.stack([decode_image(ds[i]["image"]["bytes"]) for i in range(n)])
    return Batch(images, torch.tensor(ds["label"][:n]), torch.zeros(n, dtype=torch.bool))


def _student_view(cfg, batch, micro_step=0):
    """The augmented, student-normalised view ``train_step`` feeds both models at ``micro_step``, rebuilt by hand."""
    from distill.augment import augment

    d = cfg.distill
    x = augment(batch.images, d.input_size, d.augment, step_generator(cfg.seed, 0, micro_step))
    return (x - torch.tensor(d.mean).view(1, 3, 1, 1)) / torch.tensor(d.std).view(1, 3, 1, 1)


def _pixel_stats(cfg):
    return tuple(torch.tensor(v).view(1, 3, 1, 1) for v in (cfg.distill.mean, cfg.distill.std))


STUDENT_STATS = ("distill.mean=[0.3,0.5,0.6]", "distill.std=[0.2,0.35,0.25]")


def test_teacher_undoes_student_normalisation_and_uses_clip_preprocessing():
    """DistillTeacher(student-normalised x) == the CLIP zero-shot classifier computed by hand on x
    (transformers' CLIPImageProcessor + CLIPModel, CLIP's own mean/std)."""
    import numpy as np
    from fixtures import clip_zero_shot_by_hand

    from dfkd.models import CLIP_MEAN, CLIP_STD
    from prompts.templates import load_templates

    mean, std = (0.3, 0.5, 0.6), (0.2, 0.35, 0.25)
    teacher = DistillTeacher(load_teacher(TINY_TEACHER, TINY_CLASSES), mean, std)
    assert tuple(teacher.clip.mean.flatten().tolist()) == pytest.approx(CLIP_MEAN)
    assert tuple(teacher.clip.std.flatten().tolist()) == pytest.approx(CLIP_STD)
    size = teacher.clip.image_size
    arrays = np.random.default_rng(0).integers(0, 256, (4, size, size, 3), dtype=np.uint8)
    x = torch.from_numpy(arrays).permute(0, 3, 1, 2).float() / 255
    student_input = (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    out = teacher(student_input)
    logits, feats = clip_zero_shot_by_hand(list(arrays), TINY_CLASSES, load_templates("short_7"))
    assert torch.allclose(out.features, feats, atol=1e-5)
    assert torch.allclose(out.logits, logits, atol=1e-4)
    assert (logits.max(-1).values - logits.min(-1).values).min() > 0.01  # the classes are told apart


def test_kd_term_uses_the_configured_temperature(make_cfg, tmp_path, syn_dataset):
    """The KD part train_step returns (and logs) is tau^2 KL(p_T^tau || p_S^tau) at distill.loss.temperature,
    computed by hand on the same view, and it changes with the temperature."""
    teacher = DistillTeacher(load_teacher(TINY_TEACHER, TINY_CLASSES), (0.3, 0.5, 0.6), (0.2, 0.35, 0.25))
    batch = _first_batch(syn_dataset)
    kd = {}
    accelerator = None
    for tau in (2.0, 8.0):
        cfg = make_cfg(tmp_path / f"tau{tau}", f"distill.loss.temperature={tau}", *STUDENT_STATS)
        accelerator = accelerator or make_accelerator(cfg)
        torch.manual_seed(0)
        model = DistillStudent(create_student("tiny_cnn", 7)[0], 7).train()
        x = _student_view(cfg, batch)
        with torch.no_grad():
            s, t = model(x)[0], teacher(x).logits
        log_p_s, p_t = (s / tau).log_softmax(-1), (t / tau).softmax(-1)
        expected = tau**2 * (p_t * (p_t.log() - log_p_s)).sum(-1).mean()
        _, parts = train_step(StepModels(model, teacher, accelerator, 32, _pixel_stats(cfg)), batch, cfg,
                         step_generator(cfg.seed, 0, 0))
        assert set(parts) == {"kd"}
        assert torch.allclose(parts["kd"], expected, rtol=1e-4, atol=1e-6), (tau, parts["kd"], expected)
        kd[tau] = float(parts["kd"])
    assert abs(kd[2.0] - kd[8.0]) > 1e-3 * max(kd.values()), kd


def test_embedding_loss_alone_reaches_the_student_backbone(make_cfg, tmp_path, syn_dataset):
    """kd=0, ce=0, emb=1: the loss is 1 - cos(h(f_S(x)), g(x)) with f_S the classifier's input (by hand), and
    its gradient reaches the backbone's convolutions, not only the projection head."""
    from torch import nn

    cfg = make_cfg(tmp_path, "distill.loss.kd=0", "distill.loss.ce=0", "distill.loss.emb=1", *STUDENT_STATS)
    teacher = DistillTeacher(load_teacher(TINY_TEACHER, TINY_CLASSES), cfg.distill.mean, cfg.distill.std)
    torch.manual_seed(0)
    student, _ = create_student("tiny_cnn", 7)
    model = DistillStudent(student, 7, teacher.feature_dim).train()
    batch = _first_batch(syn_dataset)
    x = _student_view(cfg, batch)
    with torch.no_grad():
        feats = nn.Sequential(*list(student)[:-1])(x)  # everything before the classifier
        expected = (1 - nn.functional.cosine_similarity(model.head(feats), teacher(x).features, dim=-1)).mean()
    loss, parts = train_step(StepModels(model, teacher, make_accelerator(cfg), 32, _pixel_stats(cfg)), batch, cfg,
                         step_generator(cfg.seed, 0, 0))
    assert set(parts) == {"emb"} and torch.allclose(loss, expected, atol=1e-5)
    convs = [m for m in student.modules() if isinstance(m, nn.Conv2d)]
    assert convs and all(m.weight.grad is not None and m.weight.grad.abs().sum() > 0 for m in convs)
    assert model.head.weight.grad.abs().sum() > 0


def test_custom_module_attr_student_trains_and_exports(make_cfg, tmp_path):
    cfg = make_cfg(tmp_path, "distill.student=user_nets:small_mlp", "distill.student_kwargs={hidden: 12}",
                   "distill.max_steps=4", "distill.checkpointing_steps=100")
    result = train(cfg)
    assert result.steps == 4 and result.student_dir is not None
    losses = [h["loss"] for h in result.history]
    assert all(torch.isfinite(torch.tensor(losses)))
    with pytest.raises(UserError, match="trust_code=True"):  # a folder never imports code by itself
        load_student(result.student_dir)
    with pytest.raises(UserError, match="trust_code=True"):
        load_student(result.student_dir, trust_code="user_nets:other_net")
    student = load_student(result.student_dir, trust_code=True)
    assert student.classes == TINY_CLASSES
    assert student(torch.rand(3, 3, 40, 50)).shape == (3, 7)
    assert load_student(result.student_dir, trust_code="user_nets:small_mlp").classes == TINY_CLASSES
    assert list_checkpoints(cfg.out)[-1].name == "checkpoint-4"  # final state saved for later resumes


def _agreement_and_kl(teacher, student, images):
    """Top-1 agreement (fraction) and KL(p_T || p_S) of ``student`` with the teacher on ``images`` in [0, 1]."""
    with torch.no_grad():
        t = teacher.from_pixels(images).logits
        s = student(images)
    kl = torch.nn.functional.kl_div(s.log_softmax(-1), t.log_softmax(-1), log_target=True, reduction="batchmean")
    return (t.argmax(-1) == s.argmax(-1)).float().mean().item(), kl.item()


def test_agreement_with_teacher_rises_on_held_out_images(make_cfg, tmp_path):
    from dfkd.toydata import write_synthetic_dataset
    from distill.export import LoadedStudent
    from distill.students import Preprocessing

    held = write_synthetic_dataset(tmp_path / "held_out", TINY_CLASSES, per_class=6, size=32, seed=123)
    ds = load_synthetic(held, TINY_CLASSES)
    images = torch.stack([decode_image(r["bytes"]) for r in ds["image"]]).float() / 255
    cfg = make_cfg(tmp_path / "run", "distill.max_steps=40", "distill.lr=0.003", "distill.checkpointing_steps=1000",
                   "distill.mean=[0.5,0.5,0.5]", "distill.std=[0.5,0.5,0.5]", "distill.weight_decay=0")
    teacher = DistillTeacher(load_teacher(TINY_TEACHER, TINY_CLASSES), (0.5,) * 3, (0.5,) * 3)
    torch.manual_seed(cfg.seed)  # the trainer's initial student
    init, _ = create_student("tiny_cnn", 7)
    before = _agreement_and_kl(teacher, LoadedStudent(init, TINY_CLASSES, Preprocessing(32, (0.5,) * 3, (0.5,) * 3), {}), images)
    result = train(cfg)
    after = _agreement_and_kl(teacher, load_student(result.student_dir), images)
    assert after[1] < 0.5 * before[1], (before, after)
    assert after[0] > before[0] + 0.2, (before, after)


def _final_weights(out):
    return load_file(str(out / "student" / "model.safetensors"))


def _resume_matches(make_cfg, tmp_path, *extra):
    common = ["distill.max_steps=6", "distill.checkpointing_steps=3", "distill.checkpoints_total_limit=1", *extra]
    straight = train(make_cfg(tmp_path / "straight", *common))
    stopped = train(make_cfg(tmp_path / "resumed", *common), stop_after_step=3)
    assert stopped.steps == 3 and stopped.student_dir is None
    assert [p.name for p in list_checkpoints(tmp_path / "resumed")] == ["checkpoint-3"]
    checkpoint = list_checkpoints(tmp_path / "resumed")[0]
    assert not list(checkpoint.glob("custom_checkpoint_*"))  # the LR schedule is JSON in the trainer state
    assert json.loads((checkpoint / STATE_FILE).read_text())["scheduler"]["last_epoch"] == 3
    resumed = train(make_cfg(tmp_path / "resumed", *common, "distill.resume_from_checkpoint=latest"))
    assert straight.steps == resumed.steps == 6
    a, b = _final_weights(tmp_path / "straight"), _final_weights(tmp_path / "resumed")
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), [k for k in a if not torch.equal(a[k], b[k])]
    assert [p.name for p in list_checkpoints(tmp_path / "resumed")] == ["checkpoint-6"]  # total_limit=1 pruned


@pytest.mark.parametrize("damage", [b"", b'{"step": 6, "sched', b"[]", b'{"step": "6"}'])
def test_a_checkpoint_whose_trainer_state_is_torn_or_damaged_is_not_resumed(tmp_path, damage):
    """The trainer state is written last: a checkpoint whose state does not read back is not a checkpoint; the one
    before it is resumed instead (and a named one is refused in one line)."""
    from distill.trainer import find_resume_dir, fingerprint

    for step in (3, 6):
        (tmp_path / "checkpoints" / f"checkpoint-{step}").mkdir(parents=True)
        state = {"step": step, "fingerprint": fingerprint(tiny_config(tmp_path))}
        (tmp_path / "checkpoints" / f"checkpoint-{step}" / STATE_FILE).write_text(json.dumps(state))
    (tmp_path / "checkpoints" / "checkpoint-6" / STATE_FILE).write_bytes(damage)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["checkpoint-3"]
    cfg = tiny_config(tmp_path, "distill.resume_from_checkpoint=latest")
    assert find_resume_dir(cfg).name == "checkpoint-3"
    named = tiny_config(tmp_path, f"distill.resume_from_checkpoint={tmp_path / 'checkpoints' / 'checkpoint-6'}")
    with pytest.raises(UserError, match="not a complete checkpoint folder"):
        find_resume_dir(named)


@pytest.mark.parametrize("name", ["model.safetensors", "optimizer.bin", "random_states_0.pkl"])
def test_a_checkpoint_with_a_damaged_file_is_not_resumed_and_the_one_before_is(make_cfg, tmp_path, name):
    """Each file of a checkpoint is hashed into its trainer state: a damaged model or optimiser state (which
    Accelerate would fail on) or RNG state (which it would skip silently, changing the run) makes the checkpoint
    not a checkpoint; `latest` then resumes the one before and ends as a straight run."""
    from distill.trainer import find_resume_dir

    common = ["distill.max_steps=6", "distill.checkpointing_steps=3", "distill.checkpoints_total_limit=2"]
    straight = train(make_cfg(tmp_path / "straight", *common))
    out = tmp_path / "damaged"
    train(make_cfg(out, *common))
    assert set(json.loads((out / "checkpoints" / "checkpoint-6" / STATE_FILE).read_text())["files"]) >= {name}
    target = out / "checkpoints" / "checkpoint-6" / name
    raw = bytearray(target.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    target.write_bytes(bytes(raw))
    cfg = make_cfg(out, *common, "distill.resume_from_checkpoint=latest")
    assert [p.name for p in list_checkpoints(out)] == ["checkpoint-3"] and find_resume_dir(cfg).name == "checkpoint-3"
    shutil.rmtree(out / "student")
    resumed = train(cfg)
    assert resumed.steps == straight.steps == 6
    a, b = _final_weights(tmp_path / "straight"), _final_weights(out)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_resume_is_exact_device_resident(make_cfg, tmp_path):
    _resume_matches(make_cfg, tmp_path, "distill.warmup_steps=2", "distill.gradient_accumulation_steps=2",
                    "distill.batch_size=8")


def test_resume_is_exact_with_dataloader(make_cfg, tmp_path):
    _resume_matches(make_cfg, tmp_path, "distill.device_resident=never", "distill.optimizer=sgd")


def _cli(capsys, *argv):
    rc = dfkd_main(list(argv))
    err = capsys.readouterr().err.strip().splitlines()
    return rc, err


def test_bad_input_exits_2_with_one_line(tmp_path, capsys, syn_dataset, toy_domains):
    from fixtures import TINY_YAML

    from dfkd.toydata import write_synthetic_dataset

    base = ["distill", "--config", str(TINY_YAML), f"output_dir={tmp_path / 'run'}", f"distill.dataset={syn_dataset}",
            "distill.student=tiny_cnn"]
    other = write_synthetic_dataset(tmp_path / "other", ["cat", *TINY_CLASSES[1:]], per_class=2)
    broken = tmp_path / "broken"
    for d in toy_domains.iterdir():
        for c in d.iterdir():
            if c.name != "guitar":
                (broken / d.name / c.name).mkdir(parents=True)
                for f in c.iterdir():
                    (broken / d.name / c.name / f.name).write_bytes(f.read_bytes())
    cases = {
        "unknown student 'resnet_nope'": ["distill.student=resnet_nope"],
        "has no attribute 'nope'": ["distill.student=user_nets:nope"],
        "has classes that differ from the config": [f"distill.dataset={other}"],
        "has no class 'guitar'": [f"eval.data={broken}"],
        "no checkpoint": ["distill.resume_from_checkpoint=latest"],
    }
    capsys.readouterr()
    for message, overrides in cases.items():
        rc, err = _cli(capsys, *base, *overrides)
        assert rc == 2 and len(err) == 1 and message in err[0], (message, err)
    assert not (tmp_path / "run" / "checkpoints").exists() and not (tmp_path / "run" / "student").exists()
    rc, err = _cli(capsys, "eval", "--config", str(TINY_YAML), f"output_dir={tmp_path / 'run'}", f"eval.data={broken}")
    assert rc == 2 and len(err) == 1 and "has no class 'guitar'" in err[0]


def test_missing_tensorboard_degrades_to_no_tracker_with_one_line(capsys, monkeypatch):
    import importlib.util

    from distill.trainer import resolve_tracker

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name.startswith("tensorboard") else real(name, *a))
    assert resolve_tracker("tensorboard", is_main=True) is None
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1 and "tensorboard is not installed" in out[0]
    assert resolve_tracker("none", is_main=True) is None and resolve_tracker("wandb", is_main=True) == "wandb"


#: runs ``python -m distill`` with one pause point: after its first checkpoint is committed it writes ``paused`` next to
#: the checkpoints folder and waits there, so the test's signal lands at that moment on every machine, fast or slow
_PAUSE_AFTER_FIRST_CHECKPOINT = """
import runpy, signal, sys, time
# Ctrl-C as a terminal delivers it: a test runner started in the background (nohup, CI) passes SIGINT on ignored,
# and a Python started with SIGINT ignored never raises KeyboardInterrupt (this is what made the old test skip)
signal.signal(signal.SIGINT, signal.default_int_handler)
import distill.trainer as trainer
commit = trainer.save_checkpoint
def commit_then_wait(run, step):
    path = commit(run, step)
    (path.parent.parent / "paused").write_text(str(step))
    time.sleep(600)  # the signal arrives here
    return path
trainer.save_checkpoint = commit_then_wait
sys.argv = ["distill", *sys.argv[1:]]
runpy.run_module("distill", run_name="__main__")
"""


@pytest.mark.slow
@pytest.mark.parametrize("sig", ["SIGKILL", "SIGINT"])
def test_a_kill_or_ctrl_c_then_resume_latest_matches_straight_run(make_cfg, tmp_path, syn_dataset, sig):
    """A real kill (or Ctrl-C) of `python -m distill` right after its first checkpoint is committed, resume, compare.
    After Ctrl-C the one line says how to resume, and doing what it says ends as the straight run does."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from fixtures import REPO_ROOT, TINY_YAML

    common = ["distill.max_steps=60", "distill.checkpointing_steps=5", "distill.checkpoints_total_limit=2",
              "distill.batch_size=8", "distill.log_every=5"]
    train(make_cfg(tmp_path / "straight", *common))
    killed = tmp_path / "killed"
    cmd = [sys.executable, "-c", _PAUSE_AFTER_FIRST_CHECKPOINT, "--config", str(TINY_YAML), f"output_dir={killed}",
           f"distill.dataset={syn_dataset}", "distill.student=tiny_cnn", *common]
    with (tmp_path / "stderr.txt").open("w") as stderr:
        proc = subprocess.Popen(cmd, cwd=REPO_ROOT, stdout=subprocess.DEVNULL, stderr=stderr)
        deadline = time.time() + 120
        while not (killed / "paused").exists() and proc.poll() is None and time.time() < deadline:
            time.sleep(0.02)
        assert (killed / "paused").read_text() == "5", "the run never reached its first checkpoint"
        os.kill(proc.pid, getattr(signal, sig))
        code = proc.wait(timeout=60)
    if sig == "SIGINT":
        lines = (tmp_path / "stderr.txt").read_text().splitlines()
        assert code == 130 and "dfkd: interrupted; re-run the same command with " \
            "distill.resume_from_checkpoint=latest to resume" in lines, lines[-3:]
    else:
        assert code == -signal.SIGKILL
    assert [p.name for p in list_checkpoints(killed)] == ["checkpoint-5"] and not (killed / "student").exists()
    train(make_cfg(killed, *common, "distill.resume_from_checkpoint=latest"))
    a, b = _final_weights(tmp_path / "straight"), _final_weights(killed)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_checkpoints_of_other_settings_are_never_resumed_pruned_against_or_exported(make_cfg, tmp_path, capsys):
    """A folder with another run's checkpoints (another lr) is refused in one line; distill.overwrite=true deletes
    them and trains from scratch, ending as a run in a fresh folder does."""
    common = ["distill.max_steps=4", "distill.checkpointing_steps=2", "distill.checkpoints_total_limit=1"]
    train(make_cfg(tmp_path / "old", *common, "distill.max_steps=6"), stop_after_step=6)
    assert [p.name for p in list_checkpoints(tmp_path / "old")] == ["checkpoint-6"]
    for resume in ([], ["distill.resume_from_checkpoint=latest"]):
        with pytest.raises(UserError, match="holds checkpoints of other distill settings or data"):
            train(make_cfg(tmp_path / "old", *common, "distill.lr=0.01", *resume))
    assert [p.name for p in list_checkpoints(tmp_path / "old")] == ["checkpoint-6"]  # nothing was touched
    train(make_cfg(tmp_path / "old", *common, "distill.lr=0.01", "distill.overwrite=true"))
    train(make_cfg(tmp_path / "fresh", *common, "distill.lr=0.01"))
    assert [p.name for p in list_checkpoints(tmp_path / "old")] == ["checkpoint-4"]
    a, b = _final_weights(tmp_path / "old"), _final_weights(tmp_path / "fresh")
    assert all(torch.equal(a[k], b[k]) for k in a)
