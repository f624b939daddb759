"""``dfkd``: the command line. ``python -m synth`` / ``python -m distill`` land here too.

Each command is declared once in :data:`COMMANDS`; its handler is imported lazily (``"pkg.mod:fn"``)
so that ``--help`` is instant and a stage that is not built yet says so plainly.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import textwrap
from collections.abc import Callable
from dataclasses import dataclass, field

from .errors import UserError
from .runtime import check_output_dir, output_lock

PROG = "dfkd"


@dataclass
class Command:
    name: str
    help: str
    description: str
    example: str
    handler: str  #: "module:function"; called as fn(cfg, args) when uses_config else fn(args)
    uses_config: bool = True
    add_arguments: Callable[[argparse.ArgumentParser], None] | None = None
    subcommands: list[Command] = field(default_factory=list)


def _make_tiny_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("dir", help="folder to write clip/, sd/, vqgan/ and vae/ into")
    p.add_argument("--only", default=None, help="comma-separated subset of: clip, sd, vqgan, vae")


def _push_dataset_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("folder", help="a dataset folder written by `dfkd synth` (OUTPUT_DIR/dataset)")
    p.add_argument("repo", help="the Hub dataset repository, user/name")
    p.add_argument("--private", action="store_true", help="create the repository as private")
    p.add_argument("--revision", default=None, help="branch to upload to (default: main)")


def _export_onnx_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("student_dir", help="a student folder written by `dfkd distill` (OUTPUT_DIR/student)")
    p.add_argument("--opset", type=int, default=None, help="ONNX opset (default: the exporter's)")
    p.add_argument("--trust-code", action="store_true",
                   help="import the module:attr code a custom student names (only for code you trust)")


def _prompts_show_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--samples", type=int, default=3, help="rendered prompts to print per class (default: 3)")


COMMANDS: list[Command] = [
    Command(
        "run", "run the whole pipeline: prompts -> synth -> distill -> eval",
        "Runs every stage in order; a stage that already finished is skipped, one that was interrupted resumes.",
        "dfkd run --config configs/tiny.yaml output_dir=runs/tiny", "dfkd.pipeline:run",
    ),
    Command(
        "prompts", "learn and inspect diversified prompts",
        "Prompt diversification (Mix-, Random-, Contrastive-Prompt).", "dfkd prompts show --config configs/tiny.yaml prompts.method=mix",
        "", subcommands=[
            Command("learn", "learn Contrastive-Prompt style vectors into OUTPUT_DIR/prompts",
                    "Learns K style vectors with the InfoNCE diversity loss and the class-consistency loss, with a memory "
                    "bank; resumes from its checkpoint when interrupted.",
                    "dfkd prompts learn --config configs/tiny.yaml output_dir=/tmp/p", "prompts.cli:learn"),
            Command("show", "print sample prompts, text-level diversity and class consistency",
                    "Compares prompt methods in seconds, before any image is generated; writes OUTPUT_DIR/prompts/show-METHOD.json.",
                    "dfkd prompts show --config configs/tiny.yaml prompts.method=contrastive", "prompts.cli:show",
                    add_arguments=_prompts_show_args),
        ],
    ),
    Command(
        "synth", "synthesise the surrogate image dataset into OUTPUT_DIR/dataset",
        "Generates images_per_class images per class with the configured backend and prompt method, as a "
        "resumable Hugging Face dataset (parquet shards + card). Works under `accelerate launch -m synth`.",
        "dfkd synth --config configs/tiny.yaml synth.images_per_class=4 output_dir=/tmp/run", "synth.cli:main",
    ),
    Command(
        "push-dataset", "upload a synthesised dataset folder to the Hugging Face Hub",
        "Uploads OUTPUT_DIR/dataset shard by shard with huggingface_hub; the token comes from HF_TOKEN or `hf auth login`.",
        "dfkd push-dataset runs/pacs/dataset me/pacs-synthetic", "synth.cli:push_dataset", uses_config=False,
        add_arguments=_push_dataset_args,
    ),
    Command(
        "distill", "distil the CLIP teacher into a student on the synthetic dataset",
        "Trains the student with Accelerate (works under `accelerate launch -m distill`), checkpoints, resumes, "
        "evaluates and exports OUTPUT_DIR/student.",
        "dfkd distill --config configs/tiny.yaml distill.student=resnet18", "distill.cli:main",
    ),
    Command(
        "export-onnx", "write STUDENT_DIR/model.onnx, checked against PyTorch with onnxruntime",
        "Exports the student network (dynamic batch axis; an embedding output too when it was trained with the "
        "embedding loss), runs it with onnxruntime beside PyTorch on a random batch (max absolute difference at "
        "most 1e-4), and adds the input spec and an onnxruntime snippet to the model card. Needs the onnx extra.",
        "dfkd export-onnx runs/tiny/student", "distill.cli:export_onnx", uses_config=False,
        add_arguments=_export_onnx_args,
    ),
    Command(
        "eval", "evaluate teacher and student per domain on real data",
        "Per-domain top-1 of the teacher's zero-shot head and of the student, side by side, on a DomainBed-layout "
        "folder or a Hugging Face dataset with a domain column; writes OUTPUT_DIR/eval.json and eval.md.",
        "dfkd eval --config configs/pacs.yaml eval.data=/data/PACS", "distill.cli:evaluate",
    ),
    Command(
        "config", "validate a config and print it fully resolved",
        "Loads the YAML, applies the overrides, checks every key and value, and prints the result.",
        "dfkd config --config configs/pacs.yaml synth.images_per_class=10", "dfkd.cli:_show_config",
    ),
    Command(
        "make-tiny", "build the tiny offline models (tiny:clip, tiny:sd, tiny:vqgan, tiny:vae) into a folder",
        "Builds deterministic, random-weight tiny models with save_pretrained; they load with from_pretrained "
        "(CLIPModel, CLIPProcessor, StableDiffusionPipeline, VQModel, AutoencoderKL). Their tokenizer is the real "
        "OpenAI CLIP BPE.",
        "dfkd make-tiny /tmp/tiny", "dfkd.cli:_make_tiny", uses_config=False, add_arguments=_make_tiny_args,
    ),
]


def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", required=True, metavar="PATH", help="experiment YAML file (see configs/)")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                   help="dotted overrides, e.g. synth.images_per_class=4 output_dir=/tmp/run")


def _add_command(sub: argparse._SubParsersAction, cmd: Command) -> None:
    epilog = f"example:\n  {cmd.example}" if cmd.example else None
    p = sub.add_parser(cmd.name, help=cmd.help, description=cmd.description, epilog=epilog,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    if cmd.subcommands:
        inner = p.add_subparsers(dest=f"{cmd.name}_command", metavar="SUBCOMMAND", required=True)
        for c in cmd.subcommands:
            _add_command(inner, c)
        return
    if cmd.uses_config:
        _add_config_args(p)
    if cmd.add_arguments:
        cmd.add_arguments(p)
    p.set_defaults(_command=cmd)


def build_parser() -> argparse.ArgumentParser:
    examples = "\n".join(f"  {c.example}" for c in COMMANDS if c.example)
    parser = argparse.ArgumentParser(
        prog=PROG,
        description=textwrap.dedent("""\
            Data-free knowledge distillation of CLIP: synthesise style-diverse images for your class names
            with prompt diversification, then distil the CLIP teacher into a small student.

            Every command reads one experiment YAML (--config) plus dotted KEY=VALUE overrides.
            Add --debug anywhere to see full tracebacks."""),
        epilog="examples:\n" + examples,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for cmd in COMMANDS:
        _add_command(sub, cmd)
    return parser


def _resolve_handler(spec: str) -> Callable:
    module, _, attr = spec.partition(":")
    return getattr(importlib.import_module(module), attr)


def _show_config(cfg, args) -> int:
    """Print the resolved config, then (on stderr) what was checked without loading any model, and what was not."""
    from .configtools import to_yaml

    checked, notes, problems = offline_checks(cfg)
    if problems:
        raise UserError("; ".join(problems))
    print(to_yaml(cfg), end="")
    print(f"{PROG} config: checked without loading weights: {', '.join(checked)}", file=sys.stderr)
    for note in notes:
        print(f"{PROG} config: {note}", file=sys.stderr)
    print(f"{PROG} config: not checked here: the student name (timm), modules under imports, devices and the Hub "
          "login; every command checks them before its expensive work", file=sys.stderr)
    return 0


#: the config keys each command reads, for the checks made before any model library is imported
_READS = {"synth": ("teacher.", "synth.", "prompts."), "learn": ("teacher.", "synth.", "prompts."),
          "show": ("teacher.", "synth.", "prompts."),
          "distill": ("teacher.", "distill.", "eval.data"), "eval": ("teacher.", "eval."), "run": ("",), "config": ("",)}


def offline_checks(cfg, command: str = "config") -> tuple[list[str], list[str], list[str]]:
    """What can be checked in a moment, before any model library is imported: model ids (local, cached, built here,
    or left to the network) and the files and folders the config names, those that ``command`` reads. Returns
    (what was checked, notes, problems)."""
    from pathlib import Path

    from prompts.templates import TEMPLATE_SETS

    from .models import _looks_like_path, locate_model
    from .schema import DATASET_DIR

    reads = _READS.get(command, ())
    checked, notes, problems = ["keys and values"], [], []
    models = {"teacher.model": cfg.teacher.model}  # every command loads the teacher
    if cfg.prompts.encoder not in ("auto", "teacher"):
        models["prompts.encoder"] = cfg.prompts.encoder
    models = {k: v for k, v in models.items() if k.startswith(reads)}
    for key, model_id in models.items():
        found, where = locate_model(model_id)
        checked.append(key)
        if found is False:
            problems.append(f"{key}={model_id} cannot load: {where}")
        elif found is None:
            notes.append(f"{key}={model_id}: {where}")
    if command == "config":  # the generator: whether it is loaded at all is the backend's business (a Fourier image
        found, where = locate_model(cfg.synth.model)  # loads none), so only reported here
        checked.append("synth.model")
        if found is not True:
            notes.append(f"synth.model={cfg.synth.model}: {where} (it matters only to a backend that loads it)")
    paths = {"eval.data": cfg.eval.data, "distill.dataset": cfg.distill.dataset,
             "distill.few_shot.data": cfg.distill.few_shot.data if cfg.distill.few_shot.shots > 0 else None,
             "prompts.style_dictionary": cfg.prompts.style_dictionary,
             "teacher.templates": cfg.teacher.templates if cfg.teacher.templates not in TEMPLATE_SETS else None,
             "eval.student": cfg.eval.student}
    if cfg.distill.dataset and Path(cfg.distill.dataset).resolve() == (cfg.out / DATASET_DIR).resolve():
        paths["distill.dataset"] = None  # the dataset this run's synth writes
    for key, value in paths.items():
        if not value or not key.startswith(reads):
            continue
        checked.append(key)
        hub_dataset = key.endswith(".data") and not _looks_like_path(value)  # read_real's reading: a Hub dataset id
        if not Path(value).expanduser().exists():
            if hub_dataset:
                notes.append(f"{key}={value}: not a local folder; read as a Hugging Face dataset id when it runs")
            else:
                problems.append(f"{key}='{value}' does not exist; fix the path")
    return checked, notes, problems


def _make_tiny(args) -> int:
    from .tiny import TINY_BUILDERS, build_all

    names = None
    if args.only:
        names = [n.strip() for n in args.only.split(",") if n.strip()]
        bad = [n for n in names if n not in TINY_BUILDERS]
        if bad:
            raise UserError(f"unknown tiny model '{bad[0]}' in --only; valid: {', '.join(TINY_BUILDERS)}")
    for name, path in build_all(args.dir, names).items():
        print(f"tiny:{name:<6} -> {path}")
    return 0


def _setup_environment() -> None:
    # Quieter third-party progress bars/logs for a CLI whose own progress bars matter.
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    for logging in (transformers_logging, diffusers_logging):
        logging.set_verbosity_error()
        logging.disable_progress_bar()


def run_command(args: argparse.Namespace) -> int:
    from .config import load_config

    cmd: Command = args._command
    inputs = (load_config(args.config, args.overrides), args) if cmd.uses_config else (args,)
    if cmd.name == "config":  # no model library is imported: it answers in a moment
        return int(_show_config(*inputs) or 0)
    if cmd.uses_config:  # missing files and unloadable model ids: one line now, before the stage's imports
        problems = offline_checks(inputs[0], cmd.name)[2]
        if problems:
            raise UserError("; ".join(problems))
    handler = _resolve_handler(cmd.handler)
    _setup_environment()
    if not cmd.uses_config:
        return int(handler(*inputs) or 0)
    check_output_dir(inputs[0].out)  # every other command writes into OUTPUT_DIR, one command at a time
    with output_lock(inputs[0].out):
        return int(handler(*inputs) or 0)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv or os.environ.get("DFKD_DEBUG") == "1"
    argv = [a for a in argv if a != "--debug"]
    args = build_parser().parse_args(argv)
    try:
        return run_command(args)
    except UserError as exc:
        if debug:
            raise
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        how = " with distill.resume_from_checkpoint=latest" if args.command == "distill" else ""  # dfkd run: as is
        print(f"\n{PROG}: interrupted; re-run the same command{how} to resume", file=sys.stderr)  # below any bar
        return 130


def module_main(command: str) -> None:
    """Entry point of ``python -m synth`` / ``python -m distill`` (and ``accelerate launch -m ...``)."""
    sys.exit(main([command, *sys.argv[1:]]))


if __name__ == "__main__":
    sys.exit(main())
