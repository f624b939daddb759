"""The synth stage of ``dfkd run`` (the contract: :mod:`dfkd.stage`): the synthetic dataset in
``OUTPUT_DIR/dataset``, generated or finished shard by shard."""

from __future__ import annotations

from pathlib import Path

from dfkd import schema
from dfkd.stage import Stage

from .cli import main
from .config import SynthExperiment
from .plan import check_or_write_state, fingerprint, plan_shards
from .run import check_settings
from .writer import done_shards


def dataset_is_complete(cfg: SynthExperiment) -> bool:
    """True when the dataset of this config is complete (every planned shard committed, card written); a
    dataset of another config is a UserError (unless ``synth.overwrite``). Reads, never writes."""
    dataset_dir = cfg.out / schema.DATASET_DIR
    if not (dataset_dir / schema.CARD_NAME).is_file() or cfg.synth.overwrite:
        return False
    check_or_write_state(dataset_dir, cfg, False, write=False)
    specs = plan_shards(len(cfg.classes), cfg.synth.images_per_class, cfg.synth.shard_size, fingerprint(cfg))
    return len(done_shards(dataset_dir / schema.DATA_DIR, specs)) == len(specs)


class SynthStage(Stage):
    name = "synth"

    def preflight(self, cfg: SynthExperiment) -> None:
        check_settings(cfg)
        check_or_write_state(cfg.out / schema.DATASET_DIR, cfg, cfg.synth.overwrite, write=False)

    def is_done(self, cfg: SynthExperiment) -> bool:
        return dataset_is_complete(cfg)

    def run(self, cfg: SynthExperiment) -> None:
        main(cfg)

    def done_note(self, cfg: SynthExperiment) -> str:
        return f"dataset {cfg.out / schema.DATASET_DIR} is complete; skipping"

    def run_note(self, cfg: SynthExperiment) -> str:
        return "generating the synthetic dataset (finished shards are kept)"

    def outputs(self, cfg: SynthExperiment) -> dict[str, Path]:
        dataset = cfg.out / schema.DATASET_DIR
        return {"dataset": dataset, "preview grid": dataset / "preview.png"}
