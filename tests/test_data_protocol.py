"""The data protocol: DataSplits.from_tensors / from_datasets, as_splits / as_pair, Datasets
materialised within a memory budget, and every form giving the same results at the entry points."""
import math

import numpy as np
import pandas as pd
import pytest
import torch
from torch.utils.data import Dataset, IterableDataset, TensorDataset

import topoland as tl
from topoland.data import DataSplits, as_pair, as_splits, kind_of, materialize
from topoland.errors import ConfigError, DataError, TopolandError
from topoland.nets.models import build_model
from topoland.sampling.sampler import jump_and_retrain
from topoland.train.ensembles import fast_geometric_ensemble
from topoland.train.training import TrainRecipe, train_minimum


def _blobs(n, shape=(6,), classes=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    centres = 2.0 * torch.randn(classes, math.prod(shape), generator=g)
    y = torch.arange(n) % classes
    x = (centres[y] + torch.randn(n, math.prod(shape), generator=g)).reshape(n, *shape)
    return x, y


class _ListDataset(Dataset):
    """A plain map-style Dataset (numpy inputs, int labels), not a TensorDataset."""

    def __init__(self, x, y):
        self.x, self.y = x.numpy(), y.tolist()

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        return self.x[i], self.y[i]


pytestmark = pytest.mark.usefixtures("one_thread")


# ------------------------------------------------------------------ from_tensors


@pytest.mark.parametrize("shape,kind", [((6,), "vector"), ((2, 9), "signal"), ((1, 4, 4), "image")])
def test_from_tensors_infers_the_fields(shape, kind):
    x, y = _blobs(40, shape)
    xv, yv = _blobs(9, shape, seed=1)
    xt, yt = _blobs(7, shape, seed=2)
    yt[0] = 4                                   # a class only the test split has still counts
    d = DataSplits.from_tensors(train=(x.double().numpy(), y.int().numpy()), val=(xv, yv), test=(xt, yt))
    assert (d.name, d.kind, d.input_shape, d.num_classes) == ("custom", kind, shape, 5)
    assert d.x_train.dtype == d.x_val.dtype == d.x_test.dtype == torch.float32
    assert d.y_train.dtype == d.y_val.dtype == d.y_test.dtype == torch.int64
    assert torch.equal(d.x_train, x.float()) and torch.equal(d.y_val, yv) and torch.equal(d.x_test, xt)
    assert torch.equal(d.y_train_clean, d.y_train) and d.y_train_clean is not d.y_train and not d.noisy_mask.any()
    assert kind_of(d.x_train) == kind and d.meta["val_held_out"] is False
    assert DataSplits.from_tensors((x, y), test=(xt, yt), num_classes=8).num_classes == 8


def test_the_held_out_validation_split_is_seeded_stratified_and_disjoint():
    x, y = _blobs(60)
    x[:, 0] = torch.arange(60, dtype=torch.float32)          # column 0 names the sample
    test = _blobs(10, seed=3)
    a = DataSplits.from_tensors(train=(x, y), test=test, val_fraction=0.2, seed=5)
    b = DataSplits.from_tensors(train=(x, y), test=test, val_fraction=0.2, seed=5)
    c = DataSplits.from_tensors(train=(x, y), test=test, val_fraction=0.2, seed=6)
    assert torch.equal(a.x_val, b.x_val) and torch.equal(a.x_train, b.x_train)
    assert not torch.equal(a.x_val, c.x_val)
    tr, va = set(a.x_train[:, 0].long().tolist()), set(a.x_val[:, 0].long().tolist())
    assert not tr & va and tr | va == set(range(60))
    assert len(va) == 12 and torch.bincount(a.y_val).tolist() == [4, 4, 4]      # per class round(0.2 * 20)
    assert torch.equal(a.y_train, y[a.x_train[:, 0].long()])
    assert a.meta == {"source": "tensors", "normalized": False, "val_held_out": True,
                      "val_fraction": 0.2, "val_seed": 5}


def _bad(case):
    x, y = _blobs(20)
    t = _blobs(5, seed=1)
    return {
        "length": dict(train=(x, y[:-1])),
        "shape": dict(train=(x, y), val=(torch.zeros(3, 7), torch.zeros(3, dtype=torch.long))),
        "mixed targets": dict(train=(x, y.float())),
        "missing test": dict(train=(x, y), test=None),
        "negative": dict(train=(x, y - 1)),
        "rank": dict(train=(x.reshape(-1), y)),
        "2-d labels": dict(train=(x, y[:, None])),
        "nan": dict(train=(x.clone().index_fill_(0, torch.tensor([2]), float("nan")), y)),
        "classes": dict(train=(x, y), num_classes=2),
        "not a pair": dict(train=x),
        "dataset": dict(train=TensorDataset(x, y)),
        "empty test": dict(train=(x, y), test=(torch.zeros(0, 6), torch.zeros(0, dtype=torch.long))),
    }[case] | ({} if case == "missing test" else {"test": t} if case != "empty test" else {})


@pytest.mark.parametrize("case,message", [
    ("length", r"x_train has 20 samples but y_train has 19 labels"),
    ("shape", r"x_val has per-sample shape \(7,\) but x_train has \(6,\)"),
    ("mixed targets", r"the splits mix class labels and regression targets \(y_train: float, y_test: int64\)"),
    ("missing test", r"test: the test split is missing; .*generalization gap"),
    ("negative", r"y_train has negative labels \(min -1\)"),
    ("rank", r"x_train has shape \(120,\); inputs must be \(N, F\), \(N, C, L\) or \(N, C, H, W\)"),
    ("2-d labels", r"y_train has integer values of shape \(20, 1\); class labels must have shape \(N,\)"),
    ("nan", r"x_train: 1 inputs contain NaN or inf"),
    ("classes", r"labels reach 2 but num_classes is 2"),
    ("not a pair", r"train: expected an \(x, y\) pair .* got Tensor"),
    ("dataset", r"train: from_tensors takes an \(x, y\) pair; for a TensorDataset use DataSplits.from_datasets"),
    ("empty test", r"test: the split is empty"),
])
def test_every_bad_input_gets_its_message(case, message):
    with pytest.raises(DataError, match=message):
        DataSplits.from_tensors(**_bad(case))


def test_bad_options_are_config_errors():
    x, y = _blobs(20)
    with pytest.raises(ConfigError, match=r"val_fraction must be in \[0, 1\), got 1.5"):
        DataSplits.from_tensors((x, y), test=(x, y), val_fraction=1.5)
    with pytest.raises(ConfigError, match="split must be 'train', 'val' or 'test'"):
        as_pair((x, y), "dev")


# ------------------------------------------------------------------ the forms


def test_as_splits_and_as_pair_accept_each_form():
    (x, y), val, test = _blobs(30), _blobs(6, seed=1), _blobs(8, seed=2)
    d = DataSplits.from_tensors((x, y), val, test)
    assert as_splits(d) is d and tl.as_splits is as_splits and tl.DataSplits is DataSplits
    for form in ({"train": (x, y), "val": val, "test": test},
                 {"train": TensorDataset(x, y), "val": TensorDataset(*val), "test": _ListDataset(*test)}):
        s = as_splits(form)
        for name in ("train", "val", "test"):
            assert all(torch.equal(a, b) for a, b in zip(s.split(name), d.split(name)))
        assert all(torch.equal(a, b) for a, b in zip(as_pair(form, "test"), test))
    for one in ((x, y), TensorDataset(x, y), _ListDataset(x, y)):
        px, py = tl.as_pair(one)
        assert torch.equal(px, x) and torch.equal(py, y) and py.dtype == torch.int64
    assert as_pair(d, "val") == d.split("val")
    with pytest.raises(DataError, match=r"train_minimum data is an \(x, y\) pair, a single split, but train, "
                                        r"val and test splits are needed: pass DataSplits.from_tensors"):
        as_splits((x, y), what="train_minimum data")
    with pytest.raises(DataError, match="sampler data is a TensorDataset, a single split"):
        as_splits(TensorDataset(x, y), what="sampler data")
    with pytest.raises(DataError, match=r"data: unknown split\(s\) 'dev'"):
        as_splits({"train": (x, y), "dev": test})
    with pytest.raises(DataError, match="data: test: the test split is missing"):
        as_splits({"train": (x, y)})
    with pytest.raises(DataError, match="FGE data: x_train has 30 samples but y_train has 8 labels"):
        as_pair((x, test[1]), what="FGE data")
    with pytest.raises(DataError, match="data must be a DataSplits, a mapping of splits, an .* got str"):
        as_pair("digits")


def test_a_dataset_is_materialised_once_within_the_memory_budget():
    x, y = _blobs(10, (2, 3))
    sx, sy = materialize(_ListDataset(x, y), max_bytes=10 * 32)          # 6 floats + 1 label: 32 bytes
    assert torch.equal(sx, x) and torch.equal(sy, y) and sx.shape == (10, 2, 3)
    with pytest.raises(DataError, match=r"train: the _ListDataset of 10 items x 32 bytes per item \(320 bytes\) "
                                        r"does not fit in the memory budget of 319 bytes"):
        materialize(_ListDataset(x, y), what="train", max_bytes=319)
    with pytest.raises(DataError, match=r"train: the TensorDataset of 10 items x 32 bytes per item"):
        DataSplits.from_datasets(TensorDataset(x, y), test=TensorDataset(x, y), max_bytes=100)
    with pytest.raises(DataError, match=r"train: the TensorDataset of 10 items x 32 bytes .* budget of 100 bytes"):
        as_pair(TensorDataset(x, y), max_bytes=100)

    class Stream(IterableDataset):
        def __iter__(self):
            return iter([])
    with pytest.raises(DataError, match="a Stream has no length"):
        materialize(Stream())
    ragged = _ListDataset(x, y)
    ragged.x = [np.zeros(6, np.float32)] + [np.zeros((2, 3), np.float32)] * 9
    with pytest.raises(DataError, match=r"Dataset item 1 has input shape \(2, 3\) but item 0 has \(6,\)"):
        materialize(ragged)
    with pytest.raises(DataError, match="Dataset items must be"):
        materialize(TensorDataset(x))


# ------------------------------------------------------------------ the entry points


SMALL = dict(directions=2, steps=(0.5, 1.0), epochs=1, batch_size=16, lr=0.05, records_per_epoch=2,
             eval_batch_size=32, device="cpu")


def test_jump_and_retrain_gives_the_same_table_for_every_data_form():
    (x, y), val, test = _blobs(48, (1, 8)), _blobs(12, (1, 8), seed=1), _blobs(12, (1, 8), seed=2)
    ref_data = DataSplits.from_tensors((x, y), val, test, name="toy")
    model = build_model("mlp", ref_data.input_shape, ref_data.num_classes, seed=1, widths=(8,))
    ref = jump_and_retrain(model, ref_data, **SMALL).table
    forms = [{"train": TensorDataset(x, y), "val": TensorDataset(*val), "test": TensorDataset(*test)},
             DataSplits.from_datasets(_ListDataset(x, y), TensorDataset(*val), test=_ListDataset(*test)),
             {"train": (x.numpy(), y.numpy()), "val": val, "test": test}]
    for form in forms:
        pd.testing.assert_frame_equal(jump_and_retrain(model, form, **SMALL).table, ref)
    held = jump_and_retrain(model, DataSplits.from_tensors((x, y), test=test), **SMALL).table
    pd.testing.assert_frame_equal(jump_and_retrain(model, {"train": TensorDataset(x, y), "test": test}, **SMALL).table,
                                  held)
    with pytest.raises(DataError, match="jump_and_retrain data is a TensorDataset, a single split"):
        jump_and_retrain(model, TensorDataset(x, y), **SMALL)


def test_training_and_ensembles_take_every_form():
    (x, y), val, test = _blobs(40), _blobs(10, seed=1), _blobs(10, seed=2)
    data = DataSplits.from_tensors((x, y), val, test)
    recipe = TrainRecipe(lr=0.05, epochs=1, batch_size=16)
    results = []
    for form in (data, {"train": TensorDataset(x, y), "val": val, "test": TensorDataset(*test)}):
        model = build_model("mlp", data.input_shape, data.num_classes, seed=0, widths=(8,))
        results.append(train_minimum(model, form, recipe, device="cpu").metrics)
    assert results[0] == results[1]
    with pytest.raises(TopolandError, match=r"train_minimum data is an \(x, y\) pair"):
        train_minimum(build_model("mlp", (6,), 3, widths=(4,)), (x, y), recipe, device="cpu")
    snaps = []
    for form in (data, (x, y), TensorDataset(x, y), _ListDataset(x, y)):
        model = build_model("mlp", data.input_shape, data.num_classes, seed=0, widths=(8,))
        snaps.append(fast_geometric_ensemble(model, form, cycles=2, cycle_epochs=1, batch_size=16,
                                             lr1=0.05, lr2=0.01, device="cpu").snapshots)
    assert all(torch.equal(s, snaps[0]) for s in snaps[1:])


def test_regression_targets_are_kept_as_float_with_their_shape():
    g = torch.Generator().manual_seed(0)
    x, t = torch.randn(40, 3, generator=g), torch.randn(40, 2, generator=g).double()
    d = DataSplits.from_tensors(train=(x, t), test=(x[:10], t[:10]), val_fraction=0.25, seed=3)
    assert d.task == "regression" and d.num_classes == 2
    assert d.y_train.dtype == torch.float32 and d.y_train.shape == (30, 2) and d.y_val.shape == (10, 2)
    # the held-out rows are the seeded random ones: together they are the training rows, once each
    rows = {tuple(r.tolist()) for r in torch.cat([d.x_train, d.x_val])}
    assert rows == {tuple(r.tolist()) for r in x}
    same = DataSplits.from_tensors(train=(x, t), test=(x[:10], t[:10]), val_fraction=0.25, seed=3)
    assert torch.equal(same.x_val, d.x_val)
    ds = DataSplits.from_datasets(TensorDataset(x, t), test=_ItemDataset(x[:10], t[:10]))
    assert ds.task == "regression" and torch.allclose(ds.y_test, t[:10].float())
    one = DataSplits.from_tensors(train=(x, t[:, 0]), test=(x, t[:, 0]))
    assert one.num_classes == 1 and one.y_train.ndim == 1
    c = DataSplits.from_tensors(train=(x, torch.arange(40) % 3), test=(x, torch.arange(40) % 3))
    assert c.task == "classification"


class _ItemDataset(torch.utils.data.Dataset):
    def __init__(self, x, y):
        self.x, self.y = x, y

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return self.x[i], self.y[i]


@pytest.mark.parametrize("train,test,message", [
    ((torch.zeros(4, 2), torch.zeros(4, 2)), (torch.zeros(4, 2), torch.zeros(4, 3)),
     r"y_test has per-sample target shape \(3,\) but y_train has \(2,\)"),
    ((torch.zeros(4, 2), torch.tensor([0.0, float("nan"), 1.0, 2.0])), (torch.zeros(4, 2), torch.zeros(4)),
     r"y_train: 1 regression targets contain NaN or inf"),
])
def test_bad_regression_targets_get_their_message(train, test, message):
    with pytest.raises(DataError, match=message):
        DataSplits.from_tensors(train=train, test=test)
