"""The stages of a run, named once: their order, what each reads of the others and of the config.

Per-cell stages: train -> sample -> topology -> surface -> curvature -> measures -> ensemble
(measures and ensemble are optional: they run only when ``run.stages`` names them). Run-level
stages (across cells): paths -> analysis -> report.
"""
from __future__ import annotations

CELL_STAGES = ("train", "sample", "topology", "surface", "curvature", "measures", "ensemble")
RUN_STAGES = ("paths", "analysis", "report")
#: every stage, in pipeline order
STAGES = CELL_STAGES + RUN_STAGES
#: the stages a config runs when it does not list run.stages: the optional ones (measures, ensemble) are
#: asked for by name, so configs written before them run exactly as before
OPTIONAL_STAGES = ("measures", "ensemble")
DEFAULT_STAGES = tuple(s for s in STAGES if s not in OPTIONAL_STAGES)

#: what each stage reads of other stages: a per-cell stage the named stages of its own cell, a
#: run-level stage the named stages of every cell and the named run-level stages. Recomputing or
#: forcing a stage invalidates every stage that depends on it (:func:`dependents`).
DEPENDS = {"train": (), "sample": ("train",), "topology": ("sample",), "surface": ("train",),
           "curvature": ("train",), "measures": ("train",), "ensemble": ("train",), "paths": ("train",),
           "analysis": ("train", "sample", "topology", "surface", "curvature", "measures"),
           "report": ("train", "sample", "topology", "surface", "curvature", "measures", "ensemble", "paths",
                      "analysis")}

#: the config sections each stage reads (and run.seed); recorded with the stage, and a stage
#: whose sections changed since is recomputed (:func:`stage_inputs`)
READS = {"train": ("data", "model", "train"), "sample": ("data", "model", "train", "sample"),
         "topology": ("topology",), "surface": ("data", "surface"), "curvature": ("data", "curvature"),
         "measures": ("data", "measures"), "ensemble": ("data", "train", "ensemble"), "paths": ("data", "paths"),
         "analysis": ("analysis",),
         "report": ()}
assert set(DEPENDS) == set(READS) == set(STAGES)


def dependents(stage: str) -> list[str]:
    """Every stage that reads ``stage``, directly or through others, in pipeline order."""
    out = {stage}
    for s in STAGES:  # pipeline order: a stage's inputs come before it
        if out & set(DEPENDS[s]):
            out.add(s)
    return [s for s in STAGES if s in out and s != stage]


def stage_list(stages) -> str:
    """``"train, sample, ..., [ensemble], ..."``: the stages in order, optional ones bracketed."""
    return ", ".join(f"[{s}]" if s in OPTIONAL_STAGES else s for s in stages)
