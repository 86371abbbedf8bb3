"""The facts of a run that every report page reads: config, cells, their names, stage status."""
from __future__ import annotations

import tomllib

from topoland.report.document import ReportError
from topoland.runs.stages import CELL_STAGES, DEFAULT_STAGES, OPTIONAL_STAGES
from topoland.runs.store import RUN_LEVEL, RunStore

__all__ = ["RunFacts"]


class RunFacts:
    """What the report reads from a run directory, loaded once: the config, the cells (named
    ``M1``, ``M2``, ... by grid position) and the stages table of ``store``."""

    def __init__(self, store: RunStore):
        self.store = store
        try:
            self.cfg = tomllib.loads(store.config_text())
        except (OSError, tomllib.TOMLDecodeError) as e:
            raise ReportError(f"config file '{store.path / 'config.toml'}' is unreadable ({e})") from None
        self.cells = store.cells()
        self.stages = store.stages()
        self.names = {r.cell_id: f"M{int(r.position) + 1}" for r in self.cells.itertuples()}
        self.labels = {r.cell_id: r.label for r in self.cells.itertuples()}
        self.name = self.cfg.get("run", {}).get("name") or store.path.name

    def status(self, cell_id: str, stage: str) -> str | None:
        s = self.stages[(self.stages.cell_id == cell_id) & (self.stages.stage == stage)]
        return None if s.empty else str(s.status.iloc[0])

    def done(self, cell_id: str, stage: str) -> bool:
        return self.status(cell_id, stage) == "done"

    def summary(self, cell_id: str, stage: str) -> dict:
        return self.store.summary(cell_id, stage) if self.done(cell_id, stage) else {}

    def wanted(self) -> list[str]:
        """The stages the config asks for (``run.stages``; by default :data:`DEFAULT_STAGES`)."""
        return list(self.cfg.get("run", {}).get("stages", DEFAULT_STAGES))

    def label(self, cell_id: str) -> str:
        return f"{self.names.get(cell_id, cell_id)}" if cell_id != RUN_LEVEL else "run"

    def cell_stages(self) -> tuple[str, ...]:
        """The per-cell stages of this run, in pipeline order: the default ones, plus optional
        ones asked for or stored."""
        wanted = self.wanted()
        return tuple(s for s in CELL_STAGES
                     if s not in OPTIONAL_STAGES or s in wanted or (self.stages.stage == s).any())
