import subprocess
import sys

import pytest
import yaml
from fixtures import REPO_ROOT, TINY_YAML, tiny_config

from dfkd.config import config_from_dict, load_config
from dfkd.configtools import apply_overrides, parse_override, write_resolved_config
from dfkd.errors import UserError


def test_overrides_are_typed_and_nested(tmp_path):
    cfg = tiny_config(tmp_path, "synth.images_per_class=4", "distill.loss.temperature=2", "synth.filter.enabled=true",
                      "classes=[cat, dog]", "distill.mean=[0.5, 0.5, 0.5]")
    assert cfg.synth.images_per_class == 4
    assert cfg.distill.loss.temperature == 2.0 and isinstance(cfg.distill.loss.temperature, float)
    assert cfg.synth.filter.enabled is True
    assert cfg.classes == ["cat", "dog"]
    assert cfg.distill.mean == [0.5, 0.5, 0.5]
    assert cfg.output_dir == str(tmp_path)


def test_parse_override_values():
    assert parse_override("a.b=1") == (["a", "b"], 1)
    assert parse_override("a=null") == (["a"], None)
    assert parse_override("a=x/y") == (["a"], "x/y")
    with pytest.raises(UserError, match="key.sub=value"):
        parse_override("novalue")


def test_yaml_1_1_words_stay_strings_and_only_true_false_are_booleans(tmp_path):
    """``mixed_precision: no`` (the documented value) is the string 'no', on the command line and in a file; a bool
    key takes only true/false, so ``yes`` is refused in one line rather than silently read."""
    assert tiny_config(tmp_path, "distill.mixed_precision=no").distill.mixed_precision == "no"
    assert [parse_override(f"a={w}")[1] for w in ("no", "off", "yes", "on", "true", "False")] == \
        ["no", "off", "yes", "on", True, False]
    path = tmp_path / "exp.yaml"
    path.write_text(f"classes: [yes, no, cat]\noutput_dir: {tmp_path}\ndistill: {{mixed_precision: no}}\n")
    cfg = load_config(path)
    assert cfg.distill.mixed_precision == "no" and cfg.classes == ["yes", "no", "cat"]
    with pytest.raises(UserError, match="'synth.overwrite' must be true or false, got 'yes'"):
        tiny_config(tmp_path, "synth.overwrite=yes")


@pytest.mark.parametrize(
    "override, pattern",
    [
        ("synth.not_a_key=1", r"unknown config key 'synth.not_a_key'; valid keys here are: .*images_per_class"),
        ("nope=1", r"unknown config key 'nope'"),
        ("synth.images_per_clas=4", r"unknown config key 'synth.images_per_clas'; did you mean 'synth.images_per_class'\?$"),
        ("distill.learning_rate=0.1", r"unknown config key 'distill.learning_rate'; valid keys here are: .*\blr\b"),
        ("synth.images_per_class=four", r"'synth.images_per_class' must be an integer"),
        ("synth.images_per_class=0", r"'synth.images_per_class' must be at least 1"),
        ("synth.dtype=fp64", r"'synth.dtype' must be one of: fp32, fp16, bf16"),
        ("distill.optimizer=lion", r"'distill.optimizer' must be one of: adamw, sgd"),
        ("classes=[]", r"'classes' is empty"),
        ("classes=[dog, dog]", r"'classes' lists dog more than once"),
        ("seed=1.5", r"'seed' must be an integer"),
        ("synth.filter.threshold=2", r"'synth.filter.threshold' must be a probability"),
        ("synth.images_per_class.x=1", r"'synth.images_per_class' is a value, not a section"),
        ("distill.loss=3", r"'distill.loss' must be a mapping"),
        ("synth.clip_guided.augmentations=[affine, blur]", r"'synth.clip_guided.augmentations' has unknown \['blur'\]"),
        ("distill.log_every=0", r"'distill.log_every' must be at least 1"),
        ("distill.num_workers=-1", r"'distill.num_workers' must be >= 0"),
        ("distill.warmup_steps=-3", r"'distill.warmup_steps' must be >= 0"),
        ("distill.eval_every=-1", r"'distill.eval_every' must be >= 0"),
        ("distill.std=[0.2, 0, 0.2]", r"'distill.std' must be positive"),
    ],
)
def test_bad_values_name_the_key(tmp_path, override, pattern):
    with pytest.raises(UserError, match=pattern):
        tiny_config(tmp_path, override)


def test_missing_and_invalid_files(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("classes: [a\n")
    with pytest.raises(UserError, match="not valid YAML"):
        load_config(bad)
    listy = tmp_path / "list.yaml"
    listy.write_text("- a\n- b\n")
    with pytest.raises(UserError, match="mapping"):
        load_config(listy)
    nocls = tmp_path / "nocls.yaml"
    nocls.write_text("output_dir: x\n")
    with pytest.raises(UserError, match="'classes' is required"):
        load_config(nocls)


def test_yaml_tags_are_not_executed(tmp_path):
    evil = tmp_path / "evil.yaml"
    evil.write_text("classes: !!python/object/apply:os.system ['echo pwned']\noutput_dir: x\n")
    with pytest.raises(UserError, match="not valid YAML"):
        load_config(evil)


def test_resolved_config_round_trip(tmp_path):
    cfg = tiny_config(tmp_path / "run", "synth.images_per_class=3", "prompts.method=mix")
    path = write_resolved_config(cfg)
    assert path == tmp_path / "run" / "config.yaml"
    data = yaml.safe_load(path.read_text())
    again = config_from_dict(data)
    assert again == cfg
    # and loading the written file as a config gives the same experiment
    assert load_config(path) == cfg


def test_overrides_do_not_mutate_input():
    data = {"synth": {"steps": 1}}
    out = apply_overrides(data, ["synth.steps=2", "new.key=3"])
    assert data == {"synth": {"steps": 1}} and out["synth"]["steps"] == 2 and out["new"]["key"] == 3


def test_every_shipped_config_loads():
    configs = sorted((REPO_ROOT / "configs").glob("*.yaml"))
    names = {p.stem for p in configs}
    assert {"tiny", "pacs", "pacs_vqgan", "vlcs", "office_home", "domainnet", "imageclef_da", "visda2017"} <= names
    sizes = {}
    for path in configs:
        cfg = load_config(path)
        sizes[path.stem] = len(cfg.classes)
        if path.stem not in ("tiny", "digits", "demo"):  # digits, demo: the digits kit's own trained teachers
            assert cfg.teacher.model == "openai/clip-vit-base-patch32"
    assert sizes["pacs"] == 7 and sizes["vlcs"] == 5 and sizes["office_home"] == 65
    assert sizes["domainnet"] == 345 and sizes["imageclef_da"] == 12 and sizes["visda2017"] == 12
    assert sizes["digits"] == sizes["demo"] == 10
    demo, digits = (load_config(REPO_ROOT / "configs" / f"{n}.yaml") for n in ("demo", "digits"))
    assert demo.teacher.model == "digits:clip-demo" and demo.eval.data == "runs/demo/domains"
    assert not demo.prompts.articles and not digits.prompts.articles  # the kit's captions only ever say "a"
    assert load_config(REPO_ROOT / "configs" / "pacs_vqgan.yaml").synth.backend == "clip_guided"
    xl, flux = (load_config(REPO_ROOT / "configs" / f"pacs-{n}.yaml").synth for n in ("sdxl-turbo", "flux-schnell"))
    assert (xl.model, xl.steps, xl.guidance_scale, xl.resolution) == ("stabilityai/sdxl-turbo", 1, 0.0, 512)
    assert (flux.model, flux.steps, flux.guidance_scale, flux.dtype) == ("black-forest-labs/FLUX.1-schnell", 4, 0.0, "bf16")
    assert sizes["pacs-sdxl-turbo"] == sizes["pacs-flux-schnell"] == 7


def _dfkd(*args, cwd=REPO_ROOT):
    return subprocess.run([sys.executable, "-m", "dfkd", *args], cwd=cwd, check=False, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize(
    "args, needle",
    [
        (["synth", "--config", str(TINY_YAML), "synth.not_a_key=1"], "synth.not_a_key"),
        (["synth", "--config", str(TINY_YAML), "synth.images_per_class=four"], "synth.images_per_class"),
        (["synth", "--config", "does/not/exist.yaml"], "does/not/exist.yaml"),
    ],
)
def test_cli_user_errors_exit_2_with_one_line(args, needle):
    proc = _dfkd(*args)
    assert proc.returncode == 2
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert needle in lines[0] and "Traceback" not in proc.stderr


def test_cli_debug_shows_traceback():
    proc = _dfkd("config", "--config", str(TINY_YAML), "synth.not_a_key=1", "--debug")
    assert proc.returncode != 0 and "Traceback" in proc.stderr


def test_cli_help_lists_every_command_with_examples():
    proc = _dfkd("--help")
    assert proc.returncode == 0
    for command in ("run", "prompts", "synth", "push-dataset", "distill", "eval", "config", "make-tiny"):
        assert command in proc.stdout
    for command in (["synth"], ["distill"], ["prompts", "learn"], ["make-tiny"], ["eval"]):
        sub = _dfkd(*command, "--help")
        assert sub.returncode == 0 and "example" in sub.stdout


def test_config_command_prints_resolved_yaml_and_what_it_checked():
    proc = _dfkd("config", "--config", str(TINY_YAML), "synth.images_per_class=5")
    assert proc.returncode == 0
    assert yaml.safe_load(proc.stdout)["synth"]["images_per_class"] == 5
    assert "dfkd config: checked without loading weights: keys and values, teacher.model, synth.model" in proc.stderr
    assert "not checked here: the student name" in proc.stderr
    # a Hub dataset id (with or without an owner) is read from the Hub when it runs: a note, not a refusal
    for data in ("cifar10", "someone/pacs"):
        proc = _dfkd("config", "--config", str(TINY_YAML), f"eval.data={data}")
        assert proc.returncode == 0 and f"eval.data={data}: not a local folder; read as a Hugging Face dataset id" \
            in proc.stderr, proc.stderr
    # the generator is reported, not refused: a backend may load none (a Fourier image needs no model)
    proc = _dfkd("config", "--config", str(TINY_YAML), "synth.model=tiny:nope")
    assert proc.returncode == 0 and "dfkd config: synth.model=tiny:nope: unknown; valid: tiny:clip" in proc.stderr


@pytest.mark.parametrize("override, problem", [
    ("teacher.model=someone/not-cached", ("teacher.model=someone/not-cached cannot load: not in the local Hugging Face "
                                         "cache, and the Hub is offline")),
    ("teacher.model=tiny:nope", "teacher.model=tiny:nope cannot load: unknown; valid: tiny:clip"),
    ("prompts.encoder=./no/such/folder", "prompts.encoder=./no/such/folder cannot load: no such folder"),
    ("eval.data=/no/such/PACS", "eval.data='/no/such/PACS' does not exist; fix the path"),
    ("prompts.style_dictionary=/no/styles.txt", "prompts.style_dictionary='/no/styles.txt' does not exist"),
])
def test_config_command_refuses_what_cannot_load_in_one_line_and_fast(monkeypatch, override, problem):
    """`dfkd config` loads no model library: it answers in well under 2 s (the interpreter's start included)."""
    import time

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")

    start = time.perf_counter()
    proc = _dfkd("config", "--config", str(TINY_YAML), override)
    assert time.perf_counter() - start < 4  # < 2 s on an idle machine; headroom for a loaded CI
    assert proc.returncode == 2 and proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("dfkd: error: ") and problem in lines[0]


def test_module_entry_points_match_cli():
    for module in ("synth", "distill"):
        proc = subprocess.run([sys.executable, "-m", module, "--config", str(TINY_YAML), f"{module}.nope=1"],
                              cwd=REPO_ROOT, check=False, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 2 and f"'{module}.nope'" in proc.stderr


def test_imports_are_loaded(tmp_path, monkeypatch):
    (tmp_path / "my_plugin_mod.py").write_text("LOADED = True\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    tiny_config(tmp_path, "imports=[my_plugin_mod]")
    import my_plugin_mod

    assert my_plugin_mod.LOADED
    with pytest.raises(UserError, match="cannot import module 'no_such_mod_xyz'"):
        tiny_config(tmp_path, "imports=[no_such_mod_xyz]")


def test_the_backend_declares_the_text_encoder_styles_live_in(tmp_path):
    """prompts.encoder=auto asks the backend (no code switches on backend names): the diffusion pipeline's own
    text encoder, the teacher's for CLIP guidance and for a user's backend that declares nothing; `teacher` and an
    explicit id override it."""
    from synth.backends import _BACKENDS, Backend, register_backend

    cfg = tiny_config(tmp_path, "synth.backend=diffusion", "synth.model=tiny:sd", "teacher.model=tiny:clip")
    assert cfg.prompt_encoder() == ("tiny:sd", "pipeline")
    cfg = tiny_config(tmp_path, "synth.backend=clip_guided", "synth.model=tiny:vqgan", "teacher.model=tiny:clip")
    assert cfg.prompt_encoder() == ("tiny:clip", "clip")
    cfg = tiny_config(tmp_path, "synth.backend=diffusion", "synth.model=tiny:sd", "prompts.encoder=teacher")
    assert cfg.prompt_encoder() == (cfg.teacher.model, "clip")
    cfg = tiny_config(tmp_path, "synth.backend=diffusion", "prompts.encoder=some/encoder")
    assert cfg.prompt_encoder() == ("some/encoder", "auto")

    @register_backend("test_encoder_source")
    class Mine(Backend):
        @classmethod
        def text_encoder_source(cls, cfg):
            return "my/encoder", "clip"

    @register_backend("test_declares_nothing")
    class Plain(Backend):
        pass

    try:
        cfg.synth.backend, cfg.prompts.encoder = "test_encoder_source", "auto"
        assert cfg.prompt_encoder() == ("my/encoder", "clip")
        cfg.synth.backend = "test_declares_nothing"
        assert cfg.prompt_encoder() == (cfg.teacher.model, "clip")
    finally:
        _BACKENDS.pop("test_encoder_source")
        _BACKENDS.pop("test_declares_nothing")


def test_values_from_python_keep_working_tuples_as_lists_and_keys_as_names(tmp_path):
    from dfkd.config import config_from_dict
    from dfkd.configtools import load_yaml

    data = load_yaml(TINY_YAML)
    data["output_dir"] = str(tmp_path)
    data["distill"] = {**data["distill"], "mean": (0.5, 0.5, 0.5), "student_kwargs": {1: 2}}
    cfg = config_from_dict(data)
    assert cfg.distill.mean == [0.5, 0.5, 0.5] and cfg.distill.student_kwargs == {"1": 2}
