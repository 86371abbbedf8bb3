"""User factories in experiment configs: ``[model] name = "custom"`` / ``"torchvision:<name>"`` and
``[data] name = "custom"``; validation imports the factory and names the key and the string."""
import sys
import textwrap

import pytest
import torch

from tests.helpers import cli
from topoland.errors import CheckpointError, ConfigError

MOD = "tl_user_factories"
TRIPWIRE = "tl_user_tripwire"

SOURCE = '''
import math
import torch
from torch import nn
from topoland.data import DataSplits

def make_mlp(input_shape, num_classes, hidden=16):
    return nn.Sequential(nn.Flatten(), nn.Linear(math.prod(input_shape), hidden), nn.ReLU(),
                         nn.Linear(hidden, num_classes))

def loose(**kwargs):             # names neither input_shape nor num_classes: gets only the config's keys
    m = nn.Linear(4, 2)
    m.got = dict(kwargs)
    return m

def _blobs(n, seed, dim=4):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, dim, generator=g)
    return x, (x[:, 0] > 0).long()

def pairs(n=60, seed=0):
    return _blobs(n, seed), None, _blobs(30, seed + 1)

def splits(seed=0):
    return DataSplits.from_tensors(_blobs(50, seed), _blobs(10, seed + 1), _blobs(20, seed + 2), name="mine")

def no_seed(n=40):
    return _blobs(n, 0), _blobs(10, 1), _blobs(10, 2)

NOT_CALLABLE = 3

def returns_list(input_shape, num_classes):
    return [1, 2]

def returns_dict(seed=0):
    return {"x": 1}

def raises(input_shape, num_classes):
    raise ValueError("boom\\nsecond line")
'''


@pytest.fixture(scope="module")
def factory_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("factories")
    (d / f"{MOD}.py").write_text(SOURCE)
    (d / f"{TRIPWIRE}.py").write_text("raise RuntimeError('imported')\n")
    yield d
    for name in (MOD, TRIPWIRE):
        sys.modules.pop(name, None)


@pytest.fixture
def on_path(factory_dir, monkeypatch):
    monkeypatch.syspath_prepend(str(factory_dir))
    return factory_dir


def _cfg(model=None, data=None, **sections):
    raw = {"data": data or {"name": "synthetic"}, "model": model or {"name": "mlp", "widths": [8]},
           "train": {"epochs": 1}}
    return raw | sections


def _validate(raw):
    from topoland.runs.config import expand_grid, validate
    cfg = validate(raw)
    return cfg, expand_grid(cfg)


# ------------------------------------------------------------------ models


def test_custom_model_is_built_from_the_factory_under_the_seed(on_path):
    from topoland.nets import build_model
    from topoland.pipeline.context import model_spec
    cfg, cells = _validate(_cfg(model={"name": "custom", "factory": f"{MOD}:make_mlp", "hidden": 8}))
    name, kwargs = model_spec(cells[0].config)
    a, b, c = (build_model(name, (4,), 3, seed=s, **kwargs) for s in (0, 0, 1))
    assert a[1].in_features == 4 and a[1].out_features == 8 and a[3].out_features == 3
    assert torch.equal(a[1].weight, b[1].weight) and not torch.equal(a[1].weight, c[1].weight)
    # a factory that names neither input_shape nor num_classes gets only the config's keywords
    loose = build_model("custom", (4,), 2, factory=f"{MOD}:loose", width=3)
    assert loose.got == {"width": 3}
    # in Python the factory may be the callable itself
    assert isinstance(build_model("custom", (4,), 2, factory=sys.modules[MOD].make_mlp), torch.nn.Sequential)


def test_torchvision_model_by_name():
    from topoland.nets import build_model
    from topoland.pipeline.context import DataCache, model_spec
    data = {"name": "synthetic", "synthetic": {"input_shape": [3, 32, 32], "num_classes": 3, "n_train": 20,
                                               "n_test": 10}}
    cfg, cells = _validate(_cfg(model={"name": "torchvision:resnet18"}, data=data))
    splits = DataCache().load(cells[0].config)
    name, kwargs = model_spec(cells[0].config)
    model = build_model(name, splits.input_shape, splits.num_classes, seed=0, **kwargs).eval()
    with torch.no_grad():
        assert model(splits.x_train[:2]).shape == (2, 3)
    with pytest.raises(ConfigError, match=r"model.weights.*never downloads"):
        _validate(_cfg(model={"name": "torchvision:resnet18", "weights": "IMAGENET1K_V1"}, data=data))
    with pytest.raises(ConfigError, match=r"'model.name' = 'torchvision:resnet_nope'"):
        _validate(_cfg(model={"name": "torchvision:resnet_nope"}))
    with pytest.raises(ConfigError, match=r"model.num_classes"):
        _validate(_cfg(model={"name": "torchvision:resnet18", "num_classes": 5}))
    with pytest.raises(ConfigError, match=r"RGB images \(3, H, W\)"):
        build_model("torchvision:resnet18", (1, 8, 8), 3)


# ------------------------------------------------------------------ data


def test_custom_data_from_pairs_takes_kwargs_the_seed_and_label_noise(on_path):
    from topoland.pipeline.context import DataCache
    data = {"name": "custom", "factory": f"{MOD}:pairs", "kwargs": {"n": 80}, "val_fraction": 0.25}
    cfg, cells = _validate(_cfg(data=data))
    d = DataCache().load(cells[0].config)
    assert (len(d.y_train), len(d.y_val), len(d.y_test)) == (60, 20, 30)    # val held out of the 80
    assert d.input_shape == (4,) and d.num_classes == 2 and d.kind == "vector"
    assert d.meta["factory"] == f"{MOD}:pairs" and d.meta["source"] == "factory"
    other = DataCache().load(cells[0].config | {"run": cells[0].config["run"] | {"seed": 5}})
    assert not torch.equal(other.x_test, d.x_test)                          # seed= is the run seed
    noisy = DataCache().load(cells[0].config | {"data": cells[0].config["data"] | {"label_noise": 0.5}})
    assert torch.equal(noisy.y_train_clean, d.y_train) and not torch.equal(noisy.y_train, d.y_train)


def test_custom_data_as_a_datasplits_and_a_factory_without_seed(on_path):
    from topoland.data import load_dataset
    d = load_dataset("custom", factory=f"{MOD}:splits", seed=3)
    assert (len(d.y_train), len(d.y_val), len(d.y_test)) == (50, 10, 20) and d.name == "mine"
    d = load_dataset("custom", factory=f"{MOD}:no_seed", kwargs={"n": 30}, seed=3)
    assert len(d.y_train) == 30


def test_data_keys_that_do_not_go_together(on_path):
    for data, culprit in (({"name": "custom"}, "data.factory"),
                          ({"name": "custom", "factory": f"{MOD}:pairs", "n_train": 10}, "data.n_train"),
                          ({"name": "synthetic", "factory": f"{MOD}:pairs"}, "data.factory"),
                          ({"name": "synthetic", "kwargs": {"n": 1}}, "data.kwargs"),
                          ({"name": "custom", "factory": f"{MOD}:pairs", "kwargs": {"seed": 1}}, "data.kwargs.seed"),
                          ({"name": "custom", "factory": f"{MOD}:pairs", "kwargs": {"m": 1}}, "'data.factory'")):
        with pytest.raises(ConfigError, match=culprit.replace(".", r"\.")):
            _validate(_cfg(data=data))


# ------------------------------------------------------------------ bad factory strings


BAD = [("nocolon", "a factory is 'package.module:function'"),
       ("a b:c", "a factory is 'package.module:function'"),
       ("tl_no_such_module_xyz:f", "importing module 'tl_no_such_module_xyz' failed"),
       (f"{TRIPWIRE}:f", "RuntimeError: imported"),
       (f"{MOD}:missing", f"module '{MOD}' has no attribute 'missing'"),
       (f"{MOD}:NOT_CALLABLE", "'NOT_CALLABLE' is not callable")]


@pytest.mark.parametrize("section", ["model", "data"])
@pytest.mark.parametrize("spec, why", BAD, ids=[b[0] for b in BAD])
def test_every_bad_factory_string_is_one_line_naming_key_and_string(on_path, section, spec, why):
    raw = _cfg(model={"name": "custom", "factory": spec}) if section == "model" else \
        _cfg(data={"name": "custom", "factory": spec})
    with pytest.raises(ConfigError) as e:
        _validate(raw)
    msg = str(e.value)
    assert f"'{section}.factory' = {spec!r}" in msg and why in msg and "\n" not in msg, msg


def test_a_factory_that_returns_the_wrong_thing_or_raises(on_path):
    from topoland.data import load_dataset
    from topoland.nets import build_model
    cases = [(lambda: build_model("custom", (4,), 2, factory=f"{MOD}:returns_list"),
              f"'model.factory' = '{MOD}:returns_list': the factory returned a list, not a torch.nn.Module"),
             (lambda: build_model("custom", (4,), 2, factory=f"{MOD}:raises"),
              f"'model.factory' = '{MOD}:raises': the factory raised ValueError: boom"),
             (lambda: load_dataset("custom", factory=f"{MOD}:returns_dict"),
              f"'data.factory' = '{MOD}:returns_dict': the factory returned a dict, not a DataSplits"),
             (lambda: load_dataset("custom", factory=f"{MOD}:make_mlp", kwargs={"input_shape": (4,), "num_classes": 2}),
              f"'data.factory' = '{MOD}:make_mlp': the factory returned a Sequential")]
    for call, text in cases:
        with pytest.raises(ConfigError) as e:
            call()
        assert text in str(e.value) and "\n" not in str(e.value), str(e.value)


def test_a_checkpoint_spec_never_imports_a_factory(on_path):
    """A checkpoint's spec is untrusted: a user model factory in it is refused, a user data
    factory's section dropped (the dataset is then not recorded), neither imported."""
    from topoland.nets import check_spec
    spec = {"name": "custom", "input_shape": [4], "num_classes": 2, "kwargs": {"factory": f"{TRIPWIRE}:f"}}
    with pytest.raises(CheckpointError, match="never makes topoland import code"):
        check_spec(spec, "model.safetensors")
    spec = {"name": "mlp", "input_shape": [4], "num_classes": 2, "data": {"name": "custom", "factory": f"{TRIPWIRE}:f"}}
    assert "data" not in check_spec(spec, "model.safetensors")
    with pytest.raises(ConfigError, match="'model.input_shape'"):
        _validate(_cfg(model={"name": "custom", "factory": f"{MOD}:loose", "input_shape": [4]}))


# ------------------------------------------------------------------ cell ids


def test_the_factory_and_its_keywords_enter_the_cell_id_and_old_ids_stay(on_path):
    from topoland.runs.config import _cell_settings
    plain = _validate(_cfg())[1][0]
    assert plain.cell_id == "3eccf22e05"                     # the id before factories existed
    assert "factory" not in _cell_settings(plain.config)["data"]
    assert "kwargs" not in _cell_settings(plain.config)["data"]
    ids = {plain.cell_id}
    for model, data in (({"name": "custom", "factory": f"{MOD}:make_mlp"}, None),
                        ({"name": "custom", "factory": f"{MOD}:make_mlp", "hidden": 8}, None),
                        ({"name": "custom", "factory": f"{MOD}:loose"}, None),
                        (None, {"name": "custom", "factory": f"{MOD}:pairs"}),
                        (None, {"name": "custom", "factory": f"{MOD}:pairs", "kwargs": {"n": 80}}),
                        (None, {"name": "custom", "factory": f"{MOD}:no_seed"})):
        ids.add(_validate(_cfg(model=model, data=data))[1][0].cell_id)
    assert len(ids) == 7
    # a grid over the factory's keywords gives one cell per value
    grid = _validate(_cfg(data={"name": "custom", "factory": f"{MOD}:pairs"},
                          grid={"data.kwargs": [{"n": 40}, {"n": 80}]}))[1]
    assert len({c.cell_id for c in grid}) == 2


# ------------------------------------------------------------------ the command


def test_topoland_run_with_user_factories_and_a_bad_one(factory_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("PYTHONPATH", str(factory_dir))
    body = textwrap.dedent(f'''
        [run]
        name = "mine"
        stages = ["train"]
        [data]
        name = "custom"
        factory = "{MOD}:pairs"
        kwargs = {{n = 64}}
        [model]
        name = "custom"
        factory = "{MOD}:make_mlp"
        hidden = 8
        [train]
        epochs = 2
        batch_size = 16
        ''')
    good = tmp_path / "good.toml"
    good.write_text(body)
    cli("run", good, "--out", tmp_path / "run", "--quiet", check=True)
    assert list((tmp_path / "run" / "cells").glob("*/train/model.safetensors"))
    bad = tmp_path / "bad.toml"
    bad.write_text(body.replace(f"{MOD}:make_mlp", f"{MOD}:returns_list").replace("hidden = 8", ""))
    r = cli("run", bad, "--out", tmp_path / "run_bad")
    assert r.returncode == 2
    assert r.stderr.startswith("error: ") and r.stderr.count("\n") == 1, r.stderr
    assert f"'model.factory' = '{MOD}:returns_list'" in r.stderr
    assert not (tmp_path / "run_bad").exists()               # refused before the run directory
