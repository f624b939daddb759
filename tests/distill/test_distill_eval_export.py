"""`dfkd eval` on a DomainBed folder, class-name matching, export round trip, Hub upload (mocked), few-shot."""

from __future__ import annotations

import json

import pytest
import torch
from fixtures import TINY_CLASSES

from dfkd.cli import main as dfkd_main
from dfkd.errors import UserError
from distill.data import match_classes, normalize_name, read_domainbed, read_real
from distill.export import load_student
from distill.trainer import train


def test_class_folders_match_after_normalisation():
    assert normalize_name("Alarm_Clock") == normalize_name("alarm clock") == "alarmclock"
    mapping = match_classes(["Alarm_Clock", "Dog", "extra"], ["dog", "alarm clock"], "folder 'x'")
    assert mapping == {"Dog": 0, "Alarm_Clock": 1}
    with pytest.raises(UserError, match="has no class 'cat'"):
        match_classes(["Dog"], ["dog", "cat"], "folder 'x'")


def test_read_domainbed_layout(toy_domains):
    domains = read_domainbed(toy_domains, TINY_CLASSES)
    assert [d.domain for d in domains] == ["painting", "photo", "sketch"]
    assert all(len(d.items) == 3 * len(TINY_CLASSES) and sorted(set(d.labels)) == list(range(7)) for d in domains)
    assert [d.domain for d in read_domainbed(toy_domains, TINY_CLASSES, ["sketch"])] == ["sketch"]


def test_distill_then_dfkd_eval_writes_per_domain_table(make_cfg, tmp_path, toy_domains, capsys):
    from fixtures import TINY_YAML

    cfg = make_cfg(tmp_path, "distill.max_steps=3", f"eval.data={toy_domains}", "distill.eval_every=2")
    result = train(cfg)
    assert [r["domain"] for r in result.eval["domains"]] == ["painting", "photo", "sketch"]
    assert (tmp_path / "eval.md").is_file()
    card = (tmp_path / "student" / "README.md").read_text()
    assert "| **mean** |" in card and "tiny:clip" in card
    (tmp_path / "eval.json").unlink()
    capsys.readouterr()
    rc = dfkd_main(["eval", "--config", str(TINY_YAML), f"output_dir={tmp_path}", f"eval.data={toy_domains}"])
    out = capsys.readouterr().out
    assert rc == 0
    data = json.loads((tmp_path / "eval.json").read_text())
    assert [r["domain"] for r in data["domains"]] == ["painting", "photo", "sketch"]
    for r in data["domains"]:
        assert r["images"] == 21 and 0 <= r["teacher"] <= 100 and 0 <= r["student"] <= 100
    assert data["mean"]["student"] == pytest.approx(sum(r["student"] for r in data["domains"]) / 3)
    # the same trained student gives the same numbers in training-time and stand-alone evaluation
    assert data["mean"] == pytest.approx(result.eval["mean"])
    assert "| photo | 21 |" in out and "teacher (zero-shot)" in out


def test_hf_dataset_with_domain_column(tmp_path):
    import datasets

    from dfkd.toydata import jpeg_bytes, render

    rng = __import__("numpy").random.default_rng(0)
    rows = {"image": [], "label": [], "domain": []}
    names = ["Elephant", "Dog"]  # a different order and case than the config: matched by name
    for domain in ("photo", "sketch"):
        for label in range(2):
            rows["image"].append({"bytes": jpeg_bytes(render(label, 2, domain, rng, 32)), "path": None})
            rows["label"].append(label)
            rows["domain"].append(domain)
    feats = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=names),
                               "domain": datasets.Value("string")})
    (tmp_path / "hf" / "data").mkdir(parents=True)
    datasets.Dataset.from_dict(rows, features=feats).to_parquet(str(tmp_path / "hf" / "data" / "test-0.parquet"))
    domains = read_real(str(tmp_path / "hf"), ["dog", "elephant"])  # split "test" by default
    assert [d.domain for d in domains] == ["photo", "sketch"]
    assert domains[0].labels == [1, 0]  # "Elephant" (0 in the dataset) is config class 1


def test_export_round_trip_and_timm_format(make_cfg, tmp_path):
    import timm

    cfg = make_cfg(tmp_path, "distill.student=resnet18", "distill.max_steps=1", "distill.batch_size=8",
                   "distill.loss.emb=1.0")
    result = train(cfg)
    folder = result.student_dir
    config = json.loads((folder / "config.json").read_text())
    assert config["architecture"] == "resnet18" and config["label_names"] == TINY_CLASSES
    assert config["pretrained_cfg"]["input_size"] == [3, 32, 32]
    assert (folder / "emb_head.safetensors").is_file() and "library_name: timm" in (folder / "README.md").read_text()
    student = load_student(folder)
    x = torch.rand(2, 3, 32, 32)
    # timm's own loader reads the same folder (timm's Hub format)
    native = timm.create_model(f"local-dir:{folder}", pretrained=True).eval()
    mean, std = torch.tensor(student.pre.mean).view(1, 3, 1, 1), torch.tensor(student.pre.std).view(1, 3, 1, 1)
    with torch.no_grad():
        assert torch.allclose(student(x), native((x - mean) / std), atol=1e-5)
    # the embedding head makes it an open-vocabulary student: new class names through the teacher's text features
    from distill.export import open_vocabulary_head

    head = open_vocabulary_head(student, ["zebra", "violin", "castle"], templates="short_7")
    with torch.no_grad():
        emb = student.embed(x)
        assert emb.shape == (2, 16) and torch.allclose(emb.norm(dim=-1), torch.ones(2), atol=1e-5)
        assert head(emb).shape == (2, 3)


def test_push_to_hub_uploads_student_folder(make_cfg, tmp_path, monkeypatch):
    import huggingface_hub

    calls = []
    monkeypatch.setattr(huggingface_hub.HfApi, "create_repo", lambda self, repo, **kw: calls.append(("create", repo, kw)))

    def fake_upload(self, folder_path, repo_id, **kw):
        calls.append(("upload", repo_id, sorted(p.name for p in __import__("pathlib").Path(folder_path).iterdir())))

    monkeypatch.setattr(huggingface_hub.HfApi, "upload_folder", fake_upload)
    cfg = make_cfg(tmp_path, "distill.max_steps=1", "distill.push_to_hub=true", "distill.hub_repo=me/tiny-student",
                   "distill.hub_private=true")
    train(cfg)
    assert calls[0] == ("create", "me/tiny-student", {"repo_type": "model", "private": True, "exist_ok": True})
    # the checksums go along: a downloaded copy is verified by load_student too
    assert calls[1] == ("upload", "me/tiny-student", [".dfkd_sha256.json", "README.md", "config.json", "model.safetensors"])


def test_push_without_network_is_one_line_user_error(tmp_path):
    from distill.export import push_student

    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(UserError, match="cannot upload the student"):
        push_student(tmp_path, "me/x")


def test_few_shot_mixes_real_images(make_cfg, tmp_path, toy_domains):
    cfg = make_cfg(tmp_path, "distill.max_steps=2", f"distill.few_shot.data={toy_domains}",
                   "distill.few_shot.domain=photo", "distill.few_shot.shots=2")
    result = train(cfg)
    assert result.steps == 2 and all("loss_real_ce" in h for h in result.history)
    with pytest.raises(UserError, match="fewer than"):
        train(make_cfg(tmp_path / "too_many", f"distill.few_shot.data={toy_domains}", "distill.few_shot.domain=photo",
                       "distill.few_shot.shots=9"))


def test_few_shot_images_are_flagged_real_and_get_their_cross_entropy(make_cfg, tmp_path, toy_domains):
    """The few-shot rows (and only they) carry is_real, in the resident set and in every batch, and the
    real_ce part train_step returns is the cross-entropy of exactly those rows (by hand)."""
    from fixtures import TINY_TEACHER

    from distill.augment import augment, step_generator
    from distill.step import StepModels, train_step
    from distill.students import DistillStudent
    from distill.teacher import DistillTeacher
    from distill.trainer import build_train_data, check_inputs, make_accelerator
    from prompts.teacher import load_teacher

    cfg = make_cfg(tmp_path, f"distill.few_shot.data={toy_domains}", "distill.few_shot.domain=photo",
                   "distill.few_shot.shots=2", "distill.device_resident=always")
    accelerator = make_accelerator(cfg)
    inputs = check_inputs(cfg, accelerator.main_process_first)
    data = build_train_data(cfg, inputs, accelerator)
    n = len(inputs.dataset)
    assert data.is_real.tolist() == [False] * n + [True] * 2 * len(TINY_CLASSES)
    assert data.labels[:n].tolist() == inputs.dataset["label"]
    assert sorted(data.labels[n:].tolist()) == sorted(list(range(len(TINY_CLASSES))) * 2)
    assert not any(torch.equal(real, syn) for real in data.images[n:] for syn in data.images[:n])

    for micro in range(data.plan.batches_per_epoch):
        batch = next(data.batches(micro, micro + 1))
        assert batch.is_real.tolist() == (data.plan.indices(micro) >= n).tolist()
        if batch.is_real.any():
            break
    assert batch.is_real.any() and not batch.is_real.all()
    pre = inputs.pre
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in (pre.mean, pre.std))
    x = (augment(batch.images, pre.input_size, cfg.distill.augment, step_generator(cfg.seed, 0, micro)) - mean) / std
    model = DistillStudent(inputs.student, len(TINY_CLASSES)).train()
    with torch.no_grad():
        logits = model(x)[0]
    real = batch.is_real
    expected = torch.nn.functional.cross_entropy(logits[real], batch.labels[real])
    teacher = DistillTeacher(load_teacher(TINY_TEACHER, TINY_CLASSES), pre.mean, pre.std)
    _, parts = train_step(StepModels(model, teacher, accelerator, pre.input_size, (mean, std)), batch, cfg,
                         step_generator(cfg.seed, 0, micro))
    assert torch.allclose(parts["real_ce"], expected, atol=1e-5) and parts["real_ce"] > 0
