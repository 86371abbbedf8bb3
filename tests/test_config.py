"""Config validation and grid expansion."""
from pathlib import Path

import numpy as np
import pytest

from topoland.runs.config import expand_grid, load_config, to_toml, validate
from topoland.errors import ConfigError

BASE = {"data": {"name": "synthetic"}, "model": {"name": "mlp", "widths": [8]}, "train": {"epochs": 1}}


def _cfg(**sections):
    raw = {k: dict(v) for k, v in BASE.items()}
    for k, v in sections.items():
        raw[k] = v
    return raw


def test_defaults_fill_every_section():
    cfg = validate(_cfg())
    assert cfg["train"]["momentum"] == 0.9 and cfg["topology"]["k"] == 20
    assert cfg["topology"]["value"] == "val_loss"


@pytest.mark.parametrize("raw, culprit", [
    (_cfg(train={"epoch": 3}), "train.epoch"),
    (_cfg(train={"lr": "fast"}), "train.lr"),
    (_cfg(train={"weight_decay": -1e-4}), "train.weight_decay"),
    (_cfg(train={"batch_size": True}), "train.batch_size"),
    (_cfg(data={"name": "imagenet"}), "data.name"),
    (_cfg(model={"name": "wrn", "depth": 12}), "model.depth"),
    (_cfg(model={"name": "resnet", "depth": 21}), "model.depth"),
    (_cfg(grid={"train.weight_decay": []}), "grid.train.weight_decay"),
    (_cfg(grid={"train.weight_decay": [0.0, 0.0]}), "grid.train.weight_decay"),
    (_cfg(grid={"train.wd": [0.0]}), "grid.train.wd"),
    (_cfg(grid={"train.lr": [0.1, -1.0]}), "grid.train.lr[1]"),
    (_cfg(bogus={"x": 1}), "[bogus]"),
    (_cfg(sample={"storage": "zip"}), "sample.storage"),
    (_cfg(topology={"distances": "pca"}), "topology.distances"),
    (_cfg(topology={"sketch_dim": 0}), "topology.sketch_dim"),
    (_cfg(sample={"storage": "sketch"}, topology={"distances": "sketch"}), "topology.distances"),
    (_cfg(sample={"storage": "sketch"}, grid={"topology.distances": ["exact", "sketch"]}),
     "topology.distances"),
    # "inherit" only where [train] has the retraining's counterpart
    (_cfg(sample={"lr": "inherit"}), "'sample.lr' = 'inherit'"),
    (_cfg(sample={"epochs": "inherit"}), "'sample.epochs' = 'inherit'"),
    (_cfg(grid={"sample.directions": [4, "inherit"]}), "'grid.sample.directions[1]' = 'inherit'"),
    (_cfg(cells=[{"sample.records_per_epoch": "inherit"}]), "'cells[0].sample.records_per_epoch' = 'inherit'"),
    (_cfg(train={"lr": "inherit"}), "'train.lr' = 'inherit'"),
    (_cfg(sample={"weight_decay": "inherited"}), "sample.weight_decay"),
    (_cfg(train={"optimizer": "adam"}), "sample.momentum"),          # Adam has no SGD momentum
    (_cfg(grid={"train.optimizer": ["sgd", "pal"]}), "sample.momentum"),
    (_cfg(train={"target_loss": -0.1}), "train.target_loss"),
    (_cfg(train={"target_acc": 1.5}), "train.target_acc"),
    (_cfg(train={"optimizer": "swa", "target_acc": 0.9}), "train.target_acc"),
    (_cfg(topology={"t": -5}), "topology.t"),
    (_cfg(surface={"grid": 1}), "surface.grid"),
    (_cfg(sample={"steps": []}), "sample.steps"),
    (_cfg(sample={"steps": [0.5, "big"]}), "sample.steps"),
    (_cfg(surface={"range": [-1.0, float("nan")]}), "surface.range"),
    (_cfg(surface={"range": [1.0, -1.0]}), "surface.range"),
    (_cfg(model={"name": "mlp", "widths": [16, 0]}), "model.widths"),
    (_cfg(run={"seed": 2 ** 32}), "run.seed"),
    (_cfg(run={"stages": []}), "run.stages"),
    (_cfg(topology={"t": "soon"}), "topology.t"),
    (_cfg(topology={"min_persistence": -0.1}), "topology.min_persistence"),
    (_cfg(topology={"min_persistence": float("nan")}), "topology.min_persistence"),
    (_cfg(topology={"min_persistence": "noise"}), "topology.min_persistence"),
    (_cfg(topology={"ci_level": 1.5}), "topology.ci_level"),
    (_cfg(topology={"n_resamples": -1}), "topology.n_resamples"),
    (_cfg(topology={"complex": "alpha"}), "topology.complex"),
    (_cfg(topology={"graph": "rips"}), "topology.graph"),
    (_cfg(topology={"plane": "umap"}), "topology.plane"),
])
def test_bad_values_name_the_key(raw, culprit):
    with pytest.raises(ConfigError, match=__import__("re").escape(culprit)):
        cfg = validate(raw)
        expand_grid(cfg)


def test_grid_is_product_plus_cells_with_stable_ids():
    raw = _cfg(grid={"train.weight_decay": [0.0, 1e-3], "train.batch_size": [16, 32]},
               cells=[{"train.pretrain_random_epochs": 2}])
    cells = expand_grid(validate(raw))
    assert len(cells) == 5
    assert cells[3].config["train"]["weight_decay"] == 1e-3 and cells[3].config["train"]["batch_size"] == 32
    assert cells[4].config["train"]["pretrain_random_epochs"] == 2
    again = expand_grid(validate(raw))
    assert [c.cell_id for c in cells] == [c.cell_id for c in again]
    assert len({c.cell_id for c in cells}) == 5


def test_keys_added_later_keep_old_cell_ids():
    """Cell ids of configs that leave the later keys at their defaults do not change, so run
    directories made before those keys existed are resumed, not redone."""
    from topoland.runs.config import _cell_settings, cell_id
    cfg = validate(_cfg())
    cell = expand_grid(cfg)[0]
    old = _cell_settings(cell.config)
    assert "distances" not in old["topology"] and "sketch_dim" not in old["topology"]
    assert cell.cell_id == cell_id(old)
    assert "target_loss" not in old["train"] and "target_acc" not in old["train"]
    # the retraining counts by its resolved values: a [sample] section written out with numbers
    # enters the id exactly as written, as it did before "inherit" existed (so run directories made
    # then keep their ids), and so does augment's "inherit"; an inherited value enters as the
    # minimum's own
    explicit = expand_grid(validate(_cfg(sample={"weight_decay": 1e-4, "batch_size": 128, "momentum": 0.9})))[0]
    assert _cell_settings(explicit.config)["sample"] == explicit.config["sample"]
    inherited = old["sample"]
    assert (inherited["weight_decay"], inherited["batch_size"], inherited["momentum"], inherited["augment"]) == \
        (0.0, 128, 0.9, "inherit")
    assert cell.config["sample"]["weight_decay"] == "inherit"            # the config itself is untouched
    # the quickstart itself retrains with each minimum's weight decay and trains to a target: new ids
    assert expand_grid(load_config(Path(__file__).parents[1] / "experiments" / "quickstart.toml"))[0].cell_id == QUICKSTART_ID
    changed = expand_grid(validate(_cfg(topology={"distances": "sketch"})))[0]
    assert changed.cell_id != cell.cell_id
    assert expand_grid(validate(_cfg(train={"target_acc": 0.9})))[0].cell_id != cell.cell_id


#: the quickstart's first cell id (was 923a69fffd; changed when its retraining began to inherit the
#: minimum's weight decay and its training got a target, again with the topology defaults of 2f23b96,
#: and again when its retraining began to inherit each minimum's batch size)
QUICKSTART_ID = "613c96e6e8"


def test_retraining_inherits_the_minimum_by_default():
    from topoland.runs.config import inheritable_keys, resolve_inherited
    assert inheritable_keys() == ["sample.momentum", "sample.weight_decay", "sample.batch_size", "sample.augment"]
    cfg = validate(_cfg(train={"epochs": 1, "weight_decay": 1e-3, "batch_size": 64, "momentum": 0.5,
                               "augment": True}))
    assert all(cfg["sample"][k] == "inherit" for k in ("momentum", "weight_decay", "batch_size", "augment"))
    got = resolve_inherited(cfg["sample"], cfg["train"])
    assert (got["weight_decay"], got["batch_size"], got["momentum"], got["augment"]) == (1e-3, 64, 0.5, True)
    assert got["lr"] == 0.001 and cfg["sample"]["weight_decay"] == "inherit"   # a copy; the rest untouched
    mine = resolve_inherited(dict(cfg["sample"], weight_decay=0.0, augment=False), cfg["train"])
    assert (mine["weight_decay"], mine["augment"], mine["batch_size"]) == (0.0, False, 64)  # explicit wins
    with pytest.raises(ConfigError, match="sample.momentum"):
        resolve_inherited(cfg["sample"], dict(cfg["train"], optimizer="adam"))
    with pytest.raises(ConfigError, match="sample.lr"):
        resolve_inherited(dict(cfg["sample"], lr="inherit"), cfg["train"])


def test_inherit_and_the_equal_explicit_value_share_a_cell_id():
    grid = {"train.weight_decay": [0.0, 1e-3]}
    inherit = expand_grid(validate(_cfg(grid=grid)))
    explicit = expand_grid(validate(_cfg(grid=grid, sample={"weight_decay": 0.0})))
    assert inherit[0].cell_id == explicit[0].cell_id       # both retrain with 0.0
    assert inherit[1].cell_id != explicit[1].cell_id       # 1e-3 vs 0.0
    # a config whose training uses Adam needs sample.momentum only when it samples
    assert expand_grid(validate(_cfg(train={"optimizer": "adam"}, run={"stages": ["train"]})))
    assert expand_grid(validate(_cfg(train={"optimizer": "adam"}, sample={"momentum": 0.9})))


def test_duplicate_cells_refused():
    raw = _cfg(grid={"train.weight_decay": [0.0, 1e-3]}, cells=[{"train.weight_decay": 0.0}])
    with pytest.raises(ConfigError, match="duplicate cells"):
        expand_grid(validate(raw))


def test_toml_syntax_error_has_line_number(tmp_path):
    p = tmp_path / "bad.toml"
    p.write_text('[run]\nname = "x"\n[train]\nlr = 0.1 0.2\n')
    with pytest.raises(ConfigError, match="line 4"):
        load_config(p)


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.toml")


def test_resolved_config_roundtrips_through_toml(tmp_path):
    raw = _cfg(grid={"train.weight_decay": [0.0, 1e-3]}, cells=[{"train.pretrain_random_epochs": 2}])
    cfg = validate(raw)
    p = tmp_path / "c.toml"
    p.write_text(to_toml(cfg))
    again = load_config(p)
    assert [c.cell_id for c in expand_grid(again)] == [c.cell_id for c in expand_grid(cfg)]


def test_quickstart_is_valid():
    from pathlib import Path
    cells = expand_grid(load_config(Path(__file__).parents[1] / "experiments" / "quickstart.toml"))
    assert len(cells) >= 8


def test_unknown_model_argument_named():
    with pytest.raises(ConfigError, match="model.skip"):
        validate(_cfg(model={"name": "wrn", "depth": 16, "skip": True}))


def test_unsafe_run_name_refused():
    with pytest.raises(ConfigError, match="run.name"):
        validate(_cfg(run={"name": "../../evil"}))


@pytest.mark.parametrize("path", sorted(
    p for p in (__import__("pathlib").Path(__file__).parents[1] / "experiments").glob("*.toml")
    if p.name != "loss_patterns.toml"), ids=lambda p: p.name)
def test_every_experiment_config_is_valid(path):
    assert expand_grid(load_config(path))


def test_analysis_adjustment_and_permutation_keys():
    a = validate({})["analysis"]
    assert a["p_adjust"] == "holm" and a["n_permutations"] == "auto" and a["compare_permutations"] == 9999
    assert validate({"analysis": {"p_adjust": "bh", "n_permutations": 9}})["analysis"]["p_adjust"] == "bh"
    for body, match in (({"p_adjust": "bonferroni"}, "analysis.p_adjust"),
                        ({"n_permutations": "many"}, "analysis.n_permutations"),
                        ({"n_permutations": True}, "analysis.n_permutations"),
                        ({"compare_permutations": 0}, "analysis.compare_permutations")):
        with pytest.raises(ConfigError, match=match):
            validate({"analysis": body})


#: single-key corruptions that are valid on purpose: the empty root (no folder), an empty
#: milestone list (a constant learning rate), no classifier targets (the analysis still
#: correlates and compares), the empty data factory (none: a built-in dataset)
_VALID_CORRUPTIONS = {("data.root", '""'), ("train.milestones", "[]"), ("analysis.targets", "[]"),
                      ("data.factory", '""')}


def _toml_value(v):
    if isinstance(v, dict):
        return "{ a = 1 }"
    if isinstance(v, float) and v != v:
        return "nan"
    if isinstance(v, str):
        return f'"{v}"'
    if isinstance(v, list):
        return "[]"
    return repr(v)


def _corruptions(spec):
    """Wrong type, out of range, NaN and empty values for one key (as TOML text)."""
    t, out = spec.types, []
    out.append("{ a = 1 }" if str in t else ('"abc"' if set(t) & {int, float, list, bool} else "1"))
    if set(t) & {int, float} and bool not in t:
        out += ["-1000000", str(2 ** 62)]
    if float in t:
        out.append("nan")
    if list in t:
        out.append("[]")
    if str in t and int not in t:
        out.append('""')
    return out


def test_random_single_key_corruptions_are_refused_by_name(tmp_path, capsys):
    """Every key of every section, corrupted one at a time (wrong type, out of range, NaN, empty),
    is refused by `topoland config` with one error line naming the key, exit 2."""
    from topoland.cli.main import main
    from topoland.runs.schema import schema
    rng = np.random.default_rng(0)
    cases = [(f"{s}.{k}", c) for s, keys in schema().items() if s != "model"
             for k, spec in keys.items() for c in _corruptions(spec)]
    cases += [("model.widths", "[100, 0]"), ("run.seed", str(2 ** 32)), ("surface.range", "[0.0, nan]")]
    rng.shuffle(cases)
    accepted, unnamed = [], []
    for i, (key, text) in enumerate(cases):
        section, name = key.split(".")
        path = tmp_path / f"c{i}.toml"
        path.write_text(f'[model]\nname = "mlp"\nwidths = [8]\n\n[{section}]\n{name} = {text}\n'
                        if section != "model" else f'[model]\nname = "mlp"\n{name} = {text}\n')
        rc = main(["config", str(path)])
        err = capsys.readouterr().err
        if (key, text) in _VALID_CORRUPTIONS:
            assert rc == 0, (key, text, err)
        elif rc == 0:
            accepted.append((key, text))
        elif rc != 2 or f"'{key}" not in err or len(err.strip().splitlines()) != 1:
            unnamed.append((key, text, rc, err.strip()[:120]))
    assert not accepted, accepted
    assert not unnamed, unnamed
    assert len(cases) > 150


def test_model_section_as_a_grid_axis():
    cfg = validate({"model": {"name": "mlp", "widths": [8]},
                    "grid": {"model": [{"name": "mlp", "widths": [8]}, {"name": "cnn", "channels": [4, 8]}],
                             "train.weight_decay": [0.0, 0.1]}})
    cells = expand_grid(cfg)
    assert len(cells) == 4
    # each value replaces the whole section: the CNN keeps no MLP keyword
    assert cells[2].config["model"] == {"name": "cnn", "channels": [4, 8]}
    assert cells[0].config["model"] == {"name": "mlp", "widths": [8]}
    assert cells[2].label.startswith("model=cnn(channels=[4, 8])")
    assert len({c.cell_id for c in cells}) == 4
    # a plain config's cell ids do not change because the axis exists
    plain = expand_grid(validate({"model": {"name": "mlp", "widths": [8]}, "grid": {"train.weight_decay": [0.0, 0.1]}}))
    assert [c.cell_id for c in plain] == [cells[0].cell_id, cells[1].cell_id]


@pytest.mark.parametrize("value, match", [
    ("mlp", "a 'model' value is a table"),
    ({"name": "mlp", "depth": 3}, "depth"),
    ({"name": "nosuchnet"}, "nosuchnet"),
])
def test_model_axis_bad_values_name_the_key(value, match):
    with pytest.raises(ConfigError, match=match) as e:
        validate({"grid": {"model": [{"name": "mlp"}, value]}})
    assert "grid.model[1]" in str(e.value)
