"""Config validation and grid expansion."""
from pathlib import Path

import pytest

from topoland.config import expand_grid, load_config, to_toml, validate
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
    from topoland.config import _cell_settings, cell_id
    cfg = validate(_cfg())
    cell = expand_grid(cfg)[0]
    old = _cell_settings(cell.config)
    assert "distances" not in old["topology"] and "sketch_dim" not in old["topology"]
    assert cell.cell_id == cell_id(old)
    # the quickstart's first cell id, computed before the later keys were added
    assert expand_grid(load_config(Path(__file__).parents[1] / "experiments" / "quickstart.toml"))[0].cell_id == "923a69fffd"
    changed = expand_grid(validate(_cfg(topology={"distances": "sketch"})))[0]
    assert changed.cell_id != cell.cell_id


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
