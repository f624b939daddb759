import pytest
import torch

from dfkd.errors import UserError
from distill.students import (
    DistillStudent,
    check_student_output,
    create_student,
    resolve_student,
    student_preprocessing,
)


def test_timm_student_and_preprocessing_from_pretrained_cfg():
    model, kind = create_student("resnet18", 7)
    assert kind == "timm"
    pre = student_preprocessing(model)
    assert pre.input_size == 224 and pre.mean == pytest.approx((0.485, 0.456, 0.406))
    pre = student_preprocessing(model, input_size=32, mean=[0.5] * 3, std=[0.25] * 3)
    assert (pre.input_size, pre.mean, pre.std) == (32, (0.5,) * 3, (0.25,) * 3)
    check_student_output(model, "resnet18", 7, 32)


def test_registered_and_module_attr_students():
    model, kind = create_student("tiny_cnn", 5, {"width": 4})
    assert kind == "registered"
    check_student_output(model, "tiny_cnn", 5, 32)
    model, kind = create_student("user_nets:small_mlp", 5, {"hidden": 6})
    assert kind == "import" and model(torch.zeros(3, 3, 32, 32)).shape == (3, 5)


def _tiny_cnn_parameters(width: int, depth: int, num_classes: int) -> int:
    """tiny_cnn's parameter count by hand: per block a bias-free 3x3 conv and a BatchNorm, then the linear layer."""
    count, c_in = 0, 3
    for i in range(depth):
        c_out = width * 2**i
        count += c_in * c_out * 9 + 2 * c_out
        c_in = c_out
    return count + c_in * num_classes + num_classes


def test_student_kwargs_reach_a_registered_factory(make_cfg, tmp_path):
    """distill.student_kwargs from the config reach the registered factory (the trainer's check_student builds
    the student every run trains), and create_student passes them on too."""
    from distill.trainer import check_student

    default, narrow = _tiny_cnn_parameters(16, 3, 7), _tiny_cnn_parameters(4, 2, 7)
    assert default != narrow
    student, kind, _ = check_student(make_cfg(tmp_path, "distill.student_kwargs={width: 4, depth: 2}"))
    assert kind == "registered" and sum(p.numel() for p in student.parameters()) == narrow
    student, _, _ = check_student(make_cfg(tmp_path))
    assert sum(p.numel() for p in student.parameters()) == default
    model, _ = create_student("tiny_cnn", 7, {"width": 4, "depth": 2})
    assert sum(p.numel() for p in model.parameters()) == narrow


@pytest.mark.parametrize("name, message", [
    ("resnet_does_not_exist", "unknown student 'resnet_does_not_exist'"),
    ("os:no_such_factory", "has no attribute 'no_such_factory'"),
    ("no_such_module_xyz:f", "cannot import module 'no_such_module_xyz'"),
])
def test_unknown_students_are_user_errors(name, message):
    with pytest.raises(UserError, match=message):
        resolve_student(name)


def test_wrong_output_shape_is_user_error():
    model, _ = create_student("user_nets:wrong_shape_factory", 7)
    with pytest.raises(UserError, match=r"must return \(B, num_classes\)"):
        check_student_output(model, "wrong", 7, 32)


def test_embedding_head_taps_classifier_input():
    model, _ = create_student("tiny_cnn", 7, {"width": 4})
    wrapped = DistillStudent(model, 7, teacher_dim=16)
    logits, emb = wrapped(torch.randn(2, 3, 32, 32))
    assert logits.shape == (2, 7) and emb.shape == (2, 16)
    assert DistillStudent(model, 7)(torch.randn(2, 3, 32, 32))[1] is None


def test_a_module_attr_student_resolves_from_the_current_folder_under_the_console_script(tmp_path):
    """`dfkd distill` run from the folder that holds the user's module (no PYTHONPATH), as `python -m` would; the
    exported card says how it loads (trust_code) and it loads from that folder."""
    import os
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    from fixtures import TINY_YAML

    from dfkd.toydata import write_synthetic_dataset

    shutil.copy(Path(__file__).with_name("user_nets.py"), tmp_path / "my_nets.py")
    syn = write_synthetic_dataset(tmp_path / "syn", ["dog", "guitar", "house"], per_class=4, size=32)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"HF_HUB_OFFLINE": "1"}
    dfkd = Path(sys.executable).with_name("dfkd")
    run = subprocess.run([str(dfkd), "distill", "--config", str(TINY_YAML), "output_dir=out", "classes=[dog,guitar,house]",
                          f"distill.dataset={syn}", "distill.student=my_nets:small_mlp", "distill.max_steps=1", "distill.batch_size=4"],
                         check=False, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    card = (tmp_path / "out" / "student" / "README.md").read_text()
    assert 'load_student("path/to/this/folder", trust_code="my_nets:small_mlp")' in card and "PYTHONPATH" in card
    check = ("from distill import load_student; s = load_student('out/student', trust_code='my_nets:small_mlp'); "
             "print(s.classes)")
    loaded = subprocess.run([sys.executable, "-c", check], check=False, cwd=tmp_path, env=env, capture_output=True, text=True,
                            timeout=300)
    assert loaded.stdout.strip() == "['dog', 'guitar', 'house']", loaded.stderr[-2000:]
