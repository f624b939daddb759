"""``dfkd synth`` and ``dfkd push-dataset`` (also ``python -m synth`` / ``accelerate launch -m synth``)."""

from __future__ import annotations

from dfkd.models import random_weights_note
from dfkd.runtime import is_main_process


def _rate(images: int, seconds: float) -> str:
    """Images per second, or seconds per image when it takes longer than a second each (a large model on a CPU)."""
    rate = images / seconds
    return f"{rate:.1f} images/s" if rate >= 1 else f"{seconds / images:.1f} s/image"


def main(cfg, args=None) -> int:
    from prompts.cli import learn, styles_learned
    from prompts.methods import method_needs_learning

    from .run import check_settings, synthesize

    check_settings(cfg)  # backend, device and plan size first: a refused run learns nothing
    if method_needs_learning(cfg.prompts.method) and not styles_learned(cfg):  # as `dfkd run` does
        if is_main_process():
            print(f"dfkd synth: prompts.method={cfg.prompts.method} learns its styles first (`dfkd prompts learn`, "
                  f"into {cfg.out / 'prompts'})", flush=True)
        learn(cfg)
    result = synthesize(cfg)
    if result.num_processes > 1:
        print(f"process {result.process_index}/{result.num_processes}: wrote {result.written_shards} of "
              f"{result.planned_shards} shards ({result.generated} images)", flush=True)
    if is_main_process():
        d = result.diagnostics
        print(f"dataset: {result.dataset_dir} ({d.get('rows', 0)} rows, teacher agreement "
              f"{d.get('teacher_agreement', 0):.3f}, Vendi {d.get('vendi_score', 0):.2f}); this run generated "
              f"{result.generated} images in {result.generation_seconds:.1f} s"
              + (f" ({_rate(result.generated, result.generation_seconds)})" if result.generated and result.generation_seconds else "")
              + f", {result.seconds:.1f} s in all with model loading and diagnostics")
        note = random_weights_note(cfg.teacher.model, cfg.synth.model)
        if note:
            print(f"note: {note}")
    return 0


def push_dataset(args) -> int:
    from .hub import push_dataset_folder

    push_dataset_folder(args.folder, args.repo, private=args.private, revision=args.revision)
    return 0
