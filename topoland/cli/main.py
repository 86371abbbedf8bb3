"""The ``topoland`` command: arguments and output only; the work is done by ``topoland.pipeline``
(stages) and ``topoland.runs`` (run-directory queries).

Every error a user can cause ends in one ``error: ...`` line naming the culprit and exit 2.
"""
from __future__ import annotations

import argparse
import os
import sys
import textwrap
from pathlib import Path

from topoland.cli.output import finish
from topoland.errors import TopolandError
from topoland.runs.stages import STAGES, stage_list

EPILOG = """\
typical session:
  topoland run experiments/quickstart.toml          # train, sample, topology, ..., PDF report
  topoland list runs/quickstart                     # the minima and their metrics
  topoland compare runs/quickstart --by train.weight_decay --metric topology.activity_h0
  topoland report runs/quickstart                   # rewrite the PDF
  topoland score measures.csv --measure all --gap acc_gap --hp train.weight_decay,train.batch_size

every subcommand has --help; config keys: topoland config --keys
"""


class _Fmt(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    pass


def _sub(subs, name, help, description, epilog=None):
    return subs.add_parser(name, help=help, description=textwrap.dedent(description),
                           epilog=textwrap.dedent(epilog) if epilog else None, formatter_class=_Fmt)


def _stage_list(text):
    return [s.strip() for s in text.split(",") if s.strip()]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="topoland", formatter_class=_Fmt, epilog=EPILOG,
        description="Geometry and topology of neural-network loss landscapes.\n\n"
                    "Train minima over a grid of settings, sample around each by jump and retrain,\n"
                    "measure the topology of the sampled region (PHATE, k-NN graphs, persistence),\n"
                    "surfaces, curvature and minimum-energy paths, and relate them to generalization.")
    from topoland import __version__
    p.add_argument("--version", action="version", version=f"topoland {__version__}")
    subs = p.add_subparsers(dest="command", metavar="COMMAND")

    s = _sub(subs, "run", "run every stage of an experiment config (resumable)", """\
        Run every stage the config asks for, grid cell by grid cell: train the minima,
        jump-and-retrain, topology, surfaces and curvature, paths, then the analysis and the
        PDF report. Finished stages are skipped, so a killed run resumes where it stopped.""",
        f"""\
        examples:
          topoland run experiments/quickstart.toml
          topoland run experiments/quickstart.toml --out runs/qs2 --only train,sample
          topoland run experiments/quickstart.toml --force topology     # recompute one stage
          topoland run experiments/horoi2022_wrn_cifar10.toml --executor ray --address auto
        stages: {stage_list(STAGES)}
        ([optional]: it runs when run.stages names it)""")
    s.add_argument("config", help="experiment config (TOML)")
    s.add_argument("--out", help="run directory (default: runs/<run.name>)")
    s.add_argument("--only", type=_stage_list, help="comma-separated stages to run")
    s.add_argument("--force", type=_stage_list, default=[], help="comma-separated stages to recompute")
    s.add_argument("--executor", choices=["local", "ray"], help="override run.executor")
    s.add_argument("--address", help="Ray cluster address (e.g. 'auto'); default: a local Ray instance")
    s.add_argument("--quiet", action="store_true", help="no progress bars")

    s = _sub(subs, "train", "train the grid of minima of a config", """\
        Train every minimum of the config's grid and store it (checkpoint, metrics, history).
        Rerunning on the same run directory skips finished cells.""",
        """\
        examples:
          topoland train experiments/quickstart.toml
          topoland train my.toml --out runs/mine""")
    s.add_argument("config", help="experiment config (TOML)")
    s.add_argument("--out", help="run directory (default: runs/<run.name>)")
    s.add_argument("--quiet", action="store_true", help="no progress bars")

    s = _sub(subs, "list", "table of the stored minima and their metrics", """\
        Print one row per grid cell: its settings, metrics and the status of each stage.""",
        "example:\n  topoland list runs/quickstart --csv minima.csv")
    s.add_argument("run_dir", help="run directory")
    s.add_argument("--csv", help="also write the table to this CSV file")

    s = _sub(subs, "info", "versions, device and datasets found", """\
        Print the versions of topoland and its libraries, the compute device, and which
        datasets are available (embedded ones always; torchvision ones under --root).""")
    s.add_argument("--root", default="data", help="folder searched for torchvision datasets")

    s = _sub(subs, "config", "check a config, or list every config key", """\
        With a CONFIG: validate it and print its grid. With --keys: every key, default and meaning.""",
        "examples:\n  topoland config --keys\n  topoland config experiments/quickstart.toml")
    s.add_argument("config", nargs="?", help="experiment config (TOML)")
    s.add_argument("--keys", action="store_true", help="list every config key")

    s = _sub(subs, "verify", "check a run directory's index against its files", """\
        Check that every finished stage's files exist with the checksums the index recorded,
        that no folder lacks an index entry, and that the run directory holds no file or
        folder a run does not write. Exit 1 if anything is inconsistent.""")
    s.add_argument("run_dir", help="run directory")

    for name, what in (("sample", "jump-and-retrain around every trained minimum"),
                       ("topology", "PHATE, k-NN graphs and persistence of every sampled minimum"),
                       ("curvature", "Hessian eigenvalues, trace, sharpness and basin volume of every minimum")):
        s = _sub(subs, name, what, f"""\
            Run the '{name}' stage for every cell of RUN_DIR that lacks it ({what}).
            Options not given come from the run's config.""",
            f"example:\n  topoland {name} runs/quickstart")
        s.add_argument("run_dir", help="run directory")
        s.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                       help=f"override a [{name}] config key for this invocation, e.g. --set epochs=5; "
                            "a finished stage that read another value is recomputed, and what depends on it "
                            "is invalidated")
        s.add_argument("--force", action="store_true",
                       help="recompute where already done (stages that depend on it are invalidated)")
        s.add_argument("--quiet", action="store_true", help="no progress bars")
        if name == "sample":
            for opt, typ, hlp in (("--directions", int, "random directions"),
                                  ("--steps", str, "comma-separated step sizes"),
                                  ("--epochs", int, "retraining epochs"),
                                  ("--lr", float, "retraining learning rate"),
                                  ("--storage", str, "full, half or sketch")):
                s.add_argument(opt, type=typ, help=hlp)

    s = _sub(subs, "report", "write the PDF report of a run", """\
        Write reports/<run>.pdf (multi-page: config, minima, per-minimum topology and surfaces,
        across-minima statistics, paths, notes) with the tables as CSV beside it.""",
        "example:\n  topoland report runs/quickstart --dir reports")
    s.add_argument("run_dir", help="run directory")
    s.add_argument("--dir", default="reports", help="folder of the PDF")

    s = _sub(subs, "compare", "statistical comparison of minima by a setting", """\
        Compare a metric or feature between the groups of minima that differ in one grid axis,
        over the grid cells only, stratified on the other grid axes: a permutation test with
        labels permuted within strata (Wilcoxon signed-rank too for matched pairs), Cliff's
        delta and a bootstrap CI; pairwise stratified tests for more than two groups. --by a
        setting of the extra cells ([[cells]], e.g. train.pretrain_random_epochs) compares them
        with the grid cells, matched on the grid axes they share.""",
        """\
        examples:
          topoland compare runs/quickstart --by train.weight_decay --metric test_acc
          topoland compare runs/quickstart --by train.augment --metric topology.activity_h0""")
    s.add_argument("run_dir", help="run directory")
    s.add_argument("--by", required=True, help="setting column, e.g. train.weight_decay")
    s.add_argument("--metric", required=True, help="metric or feature column")
    s.add_argument("--permutations", type=int, default=9999,
                   help="random within-strata relabellings (all are enumerated when fewer)")
    s.add_argument("--seed", type=int, default=0, help="seed of permutations and bootstrap")

    s = _sub(subs, "score", "score generalization measures against the gap over a table of models", """\
        Score measures as predictors of the generalization gap over a population of models, one
        row per model of a CSV or Parquet table: Kendall's tau, the granulated tau Psi of Jiang
        et al. 2020 with a tau per axis, the PGDL competition's conditional mutual information
        score and the robust sign error of Dziugaite et al. 2020, with percentile bootstrap
        intervals over models and a permutation p-value of tau, adjusted over the measures.""",
        """\
        examples:
          topoland score models.csv --measure sharpness,path_norm --gap gap --hp lr,width,depth
          topoland score models.parquet --measure all --hp lr,width --n-boot 500 --out scores.csv""")
    s.add_argument("table", help="CSV or Parquet file, one row per model")
    s.add_argument("--measure", required=True,
                   help="measure column(s), comma-separated, or 'all': every numeric column but the gap and "
                        "the hyperparameters (test-split and seed columns left out)")
    s.add_argument("--gap", default="gap", help="generalization-gap column")
    s.add_argument("--hp", required=True, help="hyperparameter columns (the grid axes, not the seed), comma-separated")
    s.add_argument("--n-boot", type=int, default=200, help="bootstrap resamples of the models")
    s.add_argument("--permutations", type=int, default=999, help="relabellings for the p-value of tau")
    s.add_argument("--seed", type=int, default=0, help="seed of the bootstrap and the permutations")
    s.add_argument("--min-gap-difference", type=float, default=0.0,
                   help="robust sign error: leave out pairs whose gaps differ by no more than this")
    s.add_argument("--skip-empty-slices", action="store_true",
                   help="PGDL on an incomplete grid: average over the slices that hold models")
    s.add_argument("--out", help="write the score table here (CSV)")

    _add_extra_commands(subs)
    return p


def _add_extra_commands(subs):
    """Commands that work on checkpoints rather than run directories (surface, neb, connect)."""
    from topoland.cli import tools as cli_tools
    cli_tools.add_commands(subs, _sub)


# ---------------------------------------------------------------------------------- handlers
def _cmd_run(a):
    from topoland.pipeline.driver import run
    rep = run(a.config, out=a.out, only=a.only, force=a.force, executor=a.executor, address=a.address,
              progress=not a.quiet)
    return finish(rep)


def _cmd_train(a):
    from topoland.pipeline.driver import run
    return finish(run(a.config, out=a.out, only=["train"], progress=not a.quiet))


def _cmd_list(a):
    from topoland.runs.tables import minima_table
    df = minima_table(a.run_dir)
    import pandas as pd
    with pd.option_context("display.max_columns", None, "display.width", 200, "display.max_rows", 500):
        print(df.to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    if "reached_target" in df:
        missed = df.loc[df["reached_target"].eq(False), "cell_id"].tolist()
        print(f"training target missed by {len(missed)} of {int(df['reached_target'].notna().sum())} minima"
              + (f": {', '.join(missed)}" if missed else ""))
    if a.csv:
        df.to_csv(a.csv, index=False)
        print(f"written: {a.csv}")
    return 0


def _cmd_info(a):
    import platform

    import torch

    from topoland import __version__
    from topoland.data import DATASETS, dataset_available
    print(f"topoland   {__version__}")
    print(f"python     {platform.python_version()}")
    for mod in ("torch", "torchvision", "numpy", "scipy", "sklearn", "pandas", "phate", "gudhi", "networkx",
                "matplotlib", "seaborn", "safetensors", "h5py", "mnist1d", "ray"):
        try:
            m = __import__(mod)
            print(f"{mod:<10} {getattr(m, '__version__', '?')}")
        except ImportError:
            print(f"{mod:<10} not installed")
    if torch.cuda.is_available():
        names = ", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count()))
        print(f"device     cuda ({names})")
    else:
        print(f"device     cpu ({os.cpu_count()} cores, {torch.get_num_threads()} torch threads); no CUDA device")
    print("datasets:")
    for name in DATASETS:
        ok, where = dataset_available(name, a.root)
        print(f"  {name:<14} {'found' if ok else 'missing'}: {where}")
    return 0


def _cmd_config(a):
    from topoland.runs.config import describe_schema, expand_grid, load_config
    if a.keys or not a.config:
        print(describe_schema())
        return 0
    cfg = load_config(a.config)
    cells = expand_grid(cfg)
    print(f"{a.config}: valid; {len(cells)} cells; stages: {', '.join(cfg['run']['stages'])}")
    for c in cells:
        print(f"  {c.cell_id}  {c.label}")
    return 0


def _cmd_verify(a):
    from topoland.runs.store import RunStore
    problems = RunStore.open(a.run_dir).verify()
    if problems:
        print(f"{len(problems)} problem(s) in {a.run_dir}:")
        for pr in problems:
            print(f"  {pr}")
        return 1
    print(f"{a.run_dir}: consistent (index and files agree, checksums match)")
    return 0


def _parse_sets(sets, extra=None):
    import tomllib
    out = {}
    for item in sets:
        if "=" not in item:
            raise TopolandError(f"--set expects KEY=VALUE, got {item!r}")
        k, v = item.split("=", 1)
        try:
            out[k.strip()] = tomllib.loads(f"v = {v}")["v"]
        except tomllib.TOMLDecodeError:
            out[k.strip()] = v
    for k, v in (extra or {}).items():
        if v is not None:
            out[k] = v
    return out


def _cmd_stage(a):
    from topoland.pipeline.driver import run_stage_in_dir
    extra = {}
    if a.command == "sample":
        extra = {"directions": a.directions, "epochs": a.epochs, "lr": a.lr, "storage": a.storage,
                 "steps": [float(x) for x in a.steps.split(",")] if a.steps else None}
    rep = run_stage_in_dir(a.run_dir, a.command, overrides=_parse_sets(a.set, extra), force=a.force,
                           progress=not a.quiet)
    return finish(rep)


def _cmd_report(a):
    from topoland.pipeline.driver import write_report
    path = write_report(a.run_dir, a.dir)
    print(f"report: {path}")
    return 0


def _cmd_compare(a):
    from topoland.runs.tables import compare_in_dir
    import pandas as pd
    res = compare_in_dir(a.run_dir, by=a.by, metric=a.metric, n_permutations=a.permutations, seed=a.seed)
    sizes = ", ".join(f"{k}: {v}" for k, v in res.n.items())
    print(f"{res.metric} by {res.by} ({sizes} minima)")
    if res.strata:
        print(f"  stratified on {', '.join(res.strata)}: {res.n_strata} strata used"
              + (f", {res.n_strata_dropped} lacking a group left out" if res.n_strata_dropped else ""))
        kind = "exact relabellings" if res.perm_exact else "random within-strata relabellings"
        print(f"  stratified permutation test: statistic = {res.statistic:.4g}, p = {res.p_value:.4g} "
              f"({kind}; smallest attainable p = {res.p_min:.3g})")
    if res.pairwise is None:
        a_, b_ = res.groups
        if not res.strata:
            print(f"  Mann-Whitney U = {res.statistic:.4g}, p = {res.p_value:.4g}")
            print(f"  permutation test on the difference of means: p = {res.perm_p_value:.4g} "
                  f"({res.n_permutations} {'exact relabellings' if res.perm_exact else 'permutations'}; "
                  f"smallest attainable p = {res.p_min:.3g})")
        if res.wilcoxon_p is not None:
            print(f"  Wilcoxon signed-rank on {res.n_strata} matched pairs: p = {res.wilcoxon_p:.4g}")
        print(f"  mean({a_}) - mean({b_}) = {res.mean_diff:.4g}{' (mean over strata)' if res.strata else ''}, "
              f"{100 * res.ci_level:.0f}% bootstrap CI [{res.ci_low:.4g}, {res.ci_high:.4g}]")
        print(f"  Cliff's delta = {res.cliffs_delta:.3f}")
    else:
        if not res.strata:
            print(f"  Kruskal-Wallis H = {res.statistic:.4g}, p = {res.p_value:.4g}")
        print("  pairwise tests, Holm-corrected within this comparison:")
        with pd.option_context("display.width", 160, "display.max_columns", None):
            print(res.pairwise.to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    print("  one test, unadjusted: the analysis stage adjusts every comparison of a run as one family "
          "(run/analysis/comparisons.csv, p_adjusted)")
    for note in res.notes:
        print(f"  note: {note}")
    print(f"assumptions: {res.assumptions}")
    return 0


def _read_models(path):
    import pandas as pd
    path = Path(path)
    if not path.is_file():
        raise TopolandError(f"table {path} does not exist")
    suffix = path.suffix.lower()
    if suffix not in (".csv", ".parquet", ".pq"):
        raise TopolandError(f"table {path}: expected a .csv or .parquet file")
    try:
        return pd.read_csv(path) if suffix == ".csv" else pd.read_parquet(path)
    except Exception as e:  # a parser's own error, reduced to one line
        raise TopolandError(f"table {path} cannot be read: {str(e).splitlines()[0] if str(e) else type(e).__name__}") from None


def _cmd_score(a):
    import pandas as pd

    from topoland.analysis import is_test_derived, score_measures
    from topoland.io import atomic_path
    df = _read_models(a.table)
    hps = _stage_list(a.hp)
    if a.measure.strip() == "all":
        numeric = [c for c in df.columns if pd.api.types.is_numeric_dtype(df[c]) and c != a.gap and c not in hps]
        left = [c for c in numeric if is_test_derived(str(c)) or str(c).split(".")[-1] == "seed"]
        measures = [c for c in numeric if c not in left]
        if left:
            print(f"note: --measure all leaves out {', '.join(map(str, left))} (test split or seed)")
        if not measures:
            raise TopolandError(f"--measure all: {a.table} has no numeric column besides the gap and the hyperparameters")
    else:
        measures = _stage_list(a.measure)
    res = score_measures(df, measures, gap=a.gap, hyperparameters=hps, n_boot=a.n_boot, seed=a.seed,
                         n_permutations=a.permutations, min_gap_difference=a.min_gap_difference,
                         on_empty="skip" if a.skip_empty_slices else "raise")

    def ci(r, s, scale=1.0):
        return f"{scale * r[s]:.3f} [{scale * r[s + '_ci_low']:.3f}, {scale * r[s + '_ci_high']:.3f}]"
    axes = res.attrs["hyperparameters"]
    shown = pd.DataFrame([{"measure": r["measure"], "n": r["n_models"], "tau": ci(r, "kendall_tau"),
                           "p_adj": f"{r['tau_p_adjusted']:.3g}", "psi": ci(r, "psi"),
                           **{f"tau_{x}": f"{r[f'tau_{x}']:.3f}" for x in axes},
                           "pgdl x100": ci(r, "pgdl", 100), "robust_sign_err": ci(r, "robust_sign_error")}
                          for _, r in res.iterrows()])
    print(f"{len(df)} models; gap {a.gap!r}; axes {', '.join(axes)}; {100 * res.attrs['level']:.0f}% percentile "
          f"bootstrap intervals over models ({a.n_boot} resamples); sorted by psi")
    with pd.option_context("display.width", 250, "display.max_columns", None, "display.max_colwidth", 40):
        print(shown.to_string(index=False))
    for _, r in res.iterrows():
        if r["n_dropped"]:
            n_drop = int(r["n_dropped"])
            print(f"note: {r['measure']}: {n_drop} model{'s' if n_drop != 1 else ''} without a value left out")
        if r["note"]:
            print(f"note: {r['measure']}: {r['note']}")
    print(f"tau p-values: permutation test ({a.permutations} relabellings), Holm-adjusted over "
          f"{len(res)} measure(s); pgdl shown x100")
    if a.out:
        with atomic_path(a.out) as tmp:
            res.to_csv(tmp, index=False)
        print(f"written: {a.out}")
    return 0


HANDLERS = {"run": _cmd_run, "train": _cmd_train, "list": _cmd_list, "info": _cmd_info, "config": _cmd_config,
            "verify": _cmd_verify, "sample": _cmd_stage, "topology": _cmd_stage, "curvature": _cmd_stage,
            "report": _cmd_report, "compare": _cmd_compare, "score": _cmd_score}


def _quiet_library_warnings():
    # library deprecation chatter drowns the progress display; topoland's own warnings stay
    import warnings
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"torch\..*")
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", message=".*SGD-MDS may not have converged.*")
    warnings.filterwarnings("ignore", message="Graph is disconnected")  # trajectories form separate clusters


def main(argv=None) -> int:
    _quiet_library_warnings()
    parser = build_parser()
    try:
        a = parser.parse_args(argv)
    except TopolandError as e:  # an argument type that names its own culprit (--range)
        print(f"error: {e}", file=sys.stderr)
        return 2
    if not a.command:
        parser.print_help()
        return 0
    from topoland.cli import tools as cli_tools
    handler = HANDLERS.get(a.command) or cli_tools.HANDLERS[a.command]
    try:
        return handler(a)
    except TopolandError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; rerun the same command to resume", file=sys.stderr)
        return 130
    except BrokenPipeError:  # output piped into head & co.
        sys.stderr.close()
        return 0
