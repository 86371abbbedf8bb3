"""What a stage of one cell may read: its config, its options, its data and the folders of the
stages before it."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from topoland.declare import arguments
from topoland.errors import StoreError
from topoland.runs import layout
from topoland.runs.config import defaults
from topoland.runs.store import RunStore
from topoland.utils import resolve_device


class DataCache:
    """The datasets of a run's cells, each loaded once per process (keyed by the data section and
    the run seed, which generates synthetic sets and draws the splits)."""

    def __init__(self):
        self._sets: dict[str, object] = {}

    def load(self, cfg: dict):
        """The :class:`~topoland.data.DataSplits` a cell's config names."""
        from topoland.data import load_dataset
        d = cfg["data"]
        key = json.dumps([d, cfg["run"]["seed"]], sort_keys=True)
        if key not in self._sets:
            self._sets[key] = load_dataset(**arguments(load_dataset, d, seed=cfg["run"]["seed"]))
        return self._sets[key]


@dataclass
class CellContext:
    """What a stage of one cell may read: its config and the folders of finished stages.

    ``overrides``: stage -> options given on the command line for this invocation (they replace
    keys of the stage's section, see :meth:`options`); ``data_cache``: shared by the cells a
    process runs."""
    store: RunStore
    cell_id: str
    config: dict
    overrides: dict = field(default_factory=dict)
    data_cache: DataCache = field(default_factory=DataCache)

    def stage_dir(self, stage: str) -> Path:
        if not self.store.is_done(self.cell_id, stage):
            raise StoreError(f"stage '{stage}' of cell '{self.cell_id}' is not finished; run it first")
        return self.store.stage_dir(self.cell_id, stage)

    @property
    def seed(self) -> int:
        return self.config["run"]["seed"]

    @property
    def device(self):
        return resolve_device(self.config["run"]["device"])

    @property
    def data(self):
        return self.data_cache.load(self.config)

    @property
    def loss(self) -> str:
        """The cell's training loss (``train.loss``: a name or a factory string); every stage that
        evaluates the landscape evaluates this loss."""
        return self.config["train"].get("loss", "cross_entropy")

    @property
    def metrics(self) -> dict:
        """The user metrics ``train.metrics`` of the cell, imported: ``{name: callable}``."""
        from topoland.nets.metrics import load_metrics
        return load_metrics(self.config["train"].get("metrics"))

    def stage_metrics(self, target, accuracy: str = "accuracy") -> list | None:
        """What a stage records: the loss's defaults (accuracy as ``accuracy``: "accuracy" or
        "error") and the user metrics; None (the stage's default) without user metrics."""
        from topoland.nets.losses import resolve_loss
        from topoland.nets.metrics import with_defaults
        extra = self.metrics
        if not extra:
            return None
        return with_defaults(extra, loss_name=resolve_loss(self.loss)[0], target=target, accuracy=accuracy)

    def options(self, stage: str) -> dict:
        """A stage's config section for this cell, with the invocation's overrides applied.

        Keys missing from the cell's stored config (run directories made before a key or an
        optional stage existed) take their defaults."""
        return defaults().get(stage, {}) | dict(self.config.get(stage, {})) | self.overrides.get(stage, {})

    def model(self):
        """The trained minimum of this cell (an ``nn.Module`` in eval mode), built from the cell's
        validated config, not from the spec inside the file (a checkpoint's spec is untrusted)."""
        from topoland.nets import build_model, load_checkpoint
        name, kwargs = model_spec(self.config)
        shell = build_model(name, self.data.input_shape, self.data.num_classes, **kwargs)
        model, _ = load_checkpoint(self.stage_dir("train") / layout.MODEL, model=shell)
        return model.eval()


def model_spec(cfg: dict) -> tuple[str, dict]:
    m = dict(cfg["model"])
    return m.pop("name"), m
