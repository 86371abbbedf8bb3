"""Datasets: splits, normalization, label noise, real-format loaders, augmentation."""
import os
import pickle
import random
import struct

import numpy as np
import pytest
import torch

from topoland import data as D
from topoland.data import DATASETS, augment_batch, load_dataset, minibatch_order, random_labels
from topoland.errors import ConfigError, DataError


def _rows(x):
    return {bytes(r.numpy().tobytes()) for r in x.reshape(len(x), -1)}


# --------------------------------------------------------------------------- splits


def test_synthetic_shapes_and_types(tiny_data):
    d = tiny_data
    assert d.kind == "vector" and d.input_shape == (8,) and d.num_classes == 3
    for x, y in (d.split("train"), d.split("val"), d.split("test")):
        assert x.dtype == torch.float32 and y.dtype == torch.int64
        assert x.shape[1:] == (8,) and len(x) == len(y)
    assert len(d.x_train) + len(d.x_val) == 256 and len(d.x_test) == 128
    with pytest.raises(ConfigError):
        d.split("bogus")


def test_splits_disjoint_and_cover_official_train():
    full = load_dataset("synthetic", seed=3, val_fraction=0.0, normalize=False)
    d = load_dataset("synthetic", seed=3, val_fraction=0.25, normalize=False)
    tr, va = _rows(d.x_train), _rows(d.x_val)
    assert len(tr) == len(d.x_train) and len(va) == len(d.x_val)  # rows unique (continuous data)
    assert not tr & va
    assert tr | va == _rows(full.x_train)
    assert not (tr | va) & _rows(d.x_test)


def test_validation_split_is_stratified_and_seeded():
    d = load_dataset("synthetic", seed=1, val_fraction=0.2, normalize=False)
    full = load_dataset("synthetic", seed=1, val_fraction=0.0, normalize=False)
    counts = torch.bincount(full.y_train, minlength=3)
    assert torch.bincount(d.y_val, minlength=3).tolist() == [round(0.2 * int(c)) for c in counts]
    again = load_dataset("synthetic", seed=1, val_fraction=0.2, normalize=False)
    assert torch.equal(d.x_val, again.x_val) and torch.equal(d.x_train, again.x_train)
    other = load_dataset("synthetic", seed=1, val_fraction=0.2, val_seed=99, normalize=False)
    assert torch.equal(other.x_test, d.x_test)            # same data, different split
    assert not torch.equal(other.x_val, d.x_val)


def test_label_noise_confined_to_training_split():
    clean = load_dataset("synthetic", seed=2)
    noisy = load_dataset("synthetic", seed=2, label_noise=0.5)
    assert torch.equal(noisy.x_train, clean.x_train)
    assert torch.equal(noisy.y_val, clean.y_val) and torch.equal(noisy.y_test, clean.y_test)
    assert torch.equal(noisy.y_train_clean, clean.y_train)
    n = len(clean.y_train)
    changed = int(noisy.noisy_mask.sum())
    # round(0.5 n) labels redrawn uniformly; about 2/3 of them change with 3 classes
    assert 0 < changed <= round(0.5 * n)
    assert abs(changed - round(0.5 * n) * 2 / 3) < 25
    assert torch.equal(load_dataset("synthetic", seed=2, label_noise=0.5).y_train, noisy.y_train)
    assert not torch.equal(load_dataset("synthetic", seed=2, label_noise=0.5, label_seed=7).y_train,
                           noisy.y_train)
    full = load_dataset("synthetic", seed=2, label_noise=1.0)
    assert int((full.y_train != full.y_train_clean).sum()) > 0.5 * n


def test_normalization_uses_training_statistics():
    raw = load_dataset("synthetic", seed=4, normalize=False,
                       synthetic={"input_shape": (2, 5, 5), "n_train": 80, "n_test": 40})
    d = load_dataset("synthetic", seed=4, synthetic={"input_shape": (2, 5, 5), "n_train": 80, "n_test": 40})
    for c in range(2):
        vals = raw.x_train[:, c].double()
        mean, std = vals.mean(), vals.std(unbiased=False)
        assert torch.allclose(d.x_train[:, c].double().mean(), torch.zeros((), dtype=torch.float64), atol=1e-5)
        assert torch.allclose(d.x_test[:, c].double(), (raw.x_test[:, c].double() - mean) / std, atol=1e-5)
        assert torch.allclose(d.x_val[:, c].double(), (raw.x_val[:, c].double() - mean) / std, atol=1e-5)
    assert len(d.meta["norm_mean"]) == 2


def test_subsampling_and_bad_options():
    d = load_dataset("synthetic", seed=0, n_train=100, n_test=30, val_fraction=0.1)
    assert len(d.x_train) + len(d.x_val) == 100 and len(d.x_test) == 30
    with pytest.raises(ConfigError, match="n_train"):
        load_dataset("synthetic", n_train=10_000)
    with pytest.raises(ConfigError, match="n_test"):
        load_dataset("synthetic", n_test=-1)
    with pytest.raises(ConfigError, match="unknown dataset 'imagenet'"):
        load_dataset("imagenet")
    with pytest.raises(ConfigError, match="label_noise"):
        load_dataset("synthetic", label_noise=1.5)
    with pytest.raises(ConfigError, match="val_fraction"):
        load_dataset("synthetic", val_fraction=1.0)


def test_nan_inputs_rejected(monkeypatch):
    x = torch.zeros(10, 3)
    x[4, 1] = float("nan")
    monkeypatch.setattr(D, "_load_raw", lambda *a: (x, torch.zeros(10, dtype=torch.long), torch.zeros(4, 3),
                                                    torch.zeros(4, dtype=torch.long), "vector", 2))
    with pytest.raises(DataError, match="1 training inputs contain NaN"):
        load_dataset("synthetic")


def test_mnist1d_generated_locally_and_deterministic(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    np_state, py_state = np.random.get_state(), random.getstate()
    d = load_dataset("mnist1d", seed=0)
    assert os.listdir(tmp_path) == []                                   # nothing written to cwd
    assert np.array_equal(np.random.get_state()[1], np_state[1]) and random.getstate() == py_state
    assert d.input_shape == (1, 40) and d.kind == "signal" and d.num_classes == 10
    assert len(d.x_train) + len(d.x_val) == 4000 and len(d.x_test) == 1000
    assert 350 <= len(d.x_val) <= 450
    assert torch.equal(load_dataset("mnist1d", seed=0).x_train, d.x_train)


def test_digits():
    d = load_dataset("digits", normalize=False)
    assert d.input_shape == (1, 8, 8) and d.kind == "image"
    assert len(d.x_train) + len(d.x_val) + len(d.x_test) == 1797 and len(d.x_test) == 360
    assert float(d.x_train.min()) == 0.0 and float(d.x_train.max()) == 1.0
    assert set(DATASETS) >= {"mnist1d", "digits", "synthetic", "cifar10", "mnist", "fashion_mnist"}


# --------------------------------------------------------------------------- real-format files


def _write_cifar(folder, n_per_file=4, seed=0):
    """Real CIFAR-10 python batches: pickled dicts with uint8 'data' (N, 3072) and 'labels'."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True)
    written = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data = rng.integers(0, 256, (n_per_file, 3072), dtype=np.uint8)
        labels = [int(v) for v in rng.integers(0, 10, n_per_file)]
        with open(folder / name, "wb") as f:
            pickle.dump({"data": data, "labels": labels, "batch_label": name}, f)
        written[name] = (data, labels)
    return written


def test_cifar10_real_format(tmp_path):
    written = _write_cifar(tmp_path / "cifar-10-batches-py")
    d = load_dataset("cifar10", root=tmp_path, val_fraction=0.0, normalize=False)
    assert d.input_shape == (3, 32, 32) and len(d.x_train) == 20 and len(d.x_test) == 4
    data, labels = written["data_batch_1"]
    # row layout: 1024 red, 1024 green, 1024 blue values, each 32x32 row-major
    c, i, j = 2, 5, 7
    assert float(d.x_train[0, c, i, j]) == pytest.approx(data[0, c * 1024 + i * 32 + j] / 255.0)
    assert d.y_train[:4].tolist() == labels
    assert d.y_test.tolist() == written["test_batch"][1]


def test_cifar10_missing_folder_message(tmp_path):
    with pytest.raises(DataError) as err:
        load_dataset("cifar10", root=tmp_path)
    msg = str(err.value)
    assert os.path.join(str(tmp_path), "cifar-10-batches-py") in msg
    assert "data_batch_1" in msg and "data_batch_5" in msg and "test_batch" in msg
    assert "download = true" in msg


def test_download_failure_and_availability(tmp_path, monkeypatch):
    import torchvision.datasets as tvd

    def offline(self):
        raise OSError("network unreachable")

    monkeypatch.setattr(tvd.CIFAR10, "download", offline)
    with pytest.raises(DataError, match="download into .* failed: network unreachable"):
        load_dataset("cifar10", root=tmp_path, download=True)
    ok, why = D.dataset_available("cifar10", tmp_path)
    assert not ok and "data_batch_1" in why
    _write_cifar(tmp_path / "cifar-10-batches-py")
    assert D.dataset_available("cifar10", tmp_path)[0] and D.dataset_available("mnist1d")[0]


def test_cifar10_corrupted_file_named(tmp_path):
    _write_cifar(tmp_path / "cifar-10-batches-py")
    (tmp_path / "cifar-10-batches-py" / "data_batch_3").write_bytes(b"\x80\x04garbage")
    with pytest.raises(DataError, match="data_batch_3"):
        load_dataset("cifar10", root=tmp_path)


def _idx(path, arr, ndim):
    magic = 0x0800 + ndim                                   # unsigned byte, ndim dimensions
    with open(path, "wb") as f:
        f.write(struct.pack(">I", magic))
        for s in arr.shape:
            f.write(struct.pack(">I", s))
        f.write(arr.astype(np.uint8).tobytes())


def _write_mnist(raw, n_train=12, n_test=6, seed=0):
    rng = np.random.default_rng(seed)
    raw.mkdir(parents=True)
    arrays = {}
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        imgs = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        labs = rng.integers(0, 10, n, dtype=np.uint8)
        _idx(raw / f"{prefix}-images-idx3-ubyte", imgs, 3)
        _idx(raw / f"{prefix}-labels-idx1-ubyte", labs, 1)
        arrays[prefix] = (imgs, labs)
    return arrays


@pytest.mark.parametrize("name,folder", [("mnist", "MNIST"), ("fashion_mnist", "FashionMNIST")])
def test_mnist_real_idx_format(tmp_path, name, folder):
    arrays = _write_mnist(tmp_path / folder / "raw")
    d = load_dataset(name, root=tmp_path, val_fraction=0.0, normalize=False)
    assert d.input_shape == (1, 28, 28)
    imgs, labs = arrays["train"]
    assert torch.equal(d.x_train[:, 0], torch.from_numpy(imgs).float() / 255.0)
    assert d.y_train.tolist() == labs.tolist()
    assert d.y_test.tolist() == arrays["t10k"][1].tolist()


def test_mnist_missing_and_corrupted(tmp_path):
    with pytest.raises(DataError) as err:
        load_dataset("mnist", root=tmp_path)
    msg = str(err.value)
    assert os.path.join(str(tmp_path), "MNIST", "raw") in msg
    assert "train-images-idx3-ubyte" in msg and "t10k-labels-idx1-ubyte" in msg and "download = true" in msg
    _write_mnist(tmp_path / "MNIST" / "raw")
    path = tmp_path / "MNIST" / "raw" / "train-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:500])                # truncated
    with pytest.raises(DataError, match="train-images-idx3-ubyte"):
        load_dataset("mnist", root=tmp_path)
    with pytest.raises(DataError, match="root"):
        load_dataset("mnist")


# --------------------------------------------------------------------------- batching, augmentation


def _g(seed):
    g = torch.Generator()
    g.manual_seed(seed)
    return g


def test_minibatch_order():
    batches = minibatch_order(10, 4, _g(0))
    assert [len(b) for b in batches] == [4, 4, 2]
    assert sorted(torch.cat(batches).tolist()) == list(range(10))
    assert [len(b) for b in minibatch_order(10, 4, _g(0), drop_last=True)] == [4, 4]
    assert all(torch.equal(a, b) for a, b in zip(batches, minibatch_order(10, 4, _g(0))))


def test_random_labels():
    y = random_labels(500, 7, seed=3)
    assert y.dtype == torch.int64 and y.min() >= 0 and y.max() <= 6 and len(set(y.tolist())) == 7
    assert torch.equal(y, random_labels(500, 7, seed=3))


@pytest.mark.parametrize("kind,shape", [("image", (9, 3, 6, 5)), ("signal", (9, 2, 16))])
def test_augment_matches_loop_reference(kind, shape):
    x = torch.randn(*shape, generator=_g(1))
    a = augment_batch(x, kind, _g(5), pad=2)
    b = D._augment_loop(x, kind, _g(5), pad=2)
    assert torch.equal(a, b)
    assert torch.equal(a, augment_batch(x, kind, _g(5), pad=2))
    assert not torch.equal(a, augment_batch(x, kind, _g(6), pad=2))


def test_augment_known_answers():
    x = torch.tensor([[[[1.0, 2.0, 3.0]]]])                      # (1, 1, 1, 3)
    outs = {tuple(augment_batch(x, "image", _g(s), pad=0).flatten().tolist()) for s in range(20)}
    assert outs == {(1.0, 2.0, 3.0), (3.0, 2.0, 1.0)}          # pad 0: only flips
    sig = torch.arange(8.0).reshape(1, 1, 8)
    assert torch.equal(augment_batch(sig, "signal", _g(0), max_shift=0), sig)
    shifted = augment_batch(sig.expand(50, 1, 8), "signal", _g(0), max_shift=1)
    allowed = [torch.roll(sig[0], s, dims=-1) for s in (-1, 0, 1)]
    assert all(any(torch.equal(r, a) for a in allowed) for r in shifted)
    # padded crop: every output pixel is an input pixel or a zero from the padding
    img = torch.arange(1, 17.0).reshape(1, 1, 4, 4).expand(30, 1, 4, 4)
    out = augment_batch(img, "image", _g(2), pad=1)
    assert set(out.unique().tolist()) <= set(range(0, 17))
    v = torch.randn(4, 5)
    assert torch.equal(augment_batch(v, "vector", _g(0)), v)
    with pytest.raises(ConfigError):
        augment_batch(v, "audio", _g(0))


def test_mnist1d_cache_is_read_back_exactly_and_written_atomically(tmp_path, monkeypatch):
    monkeypatch.setenv("TOPOLAND_CACHE_DIR", str(tmp_path / "cache"))
    D._mnist1d_arrays.cache_clear()
    fresh = D._mnist1d_generate(3)
    first = D._mnist1d_arrays(3)                       # generates and writes the cache
    path = D._mnist1d_cache_path(3)
    assert path.exists() and path.parent == tmp_path / "cache" / "mnist1d"
    assert [p.name for p in path.parent.iterdir()] == [path.name]      # no temporary left behind
    D._mnist1d_arrays.cache_clear()
    monkeypatch.setattr(D, "_mnist1d_generate", lambda seed: pytest.fail("the cache was not read"))
    again = D._mnist1d_arrays(3)
    for a, b, c in zip(fresh, first, again):
        assert a.dtype == b.dtype == c.dtype and np.array_equal(a, b) and np.array_equal(a, c)
    D._mnist1d_arrays.cache_clear()


def test_mnist1d_unwritable_cache_warns_and_still_loads(tmp_path, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("TOPOLAND_CACHE_DIR", str(blocker))
    D._mnist1d_arrays.cache_clear()
    with pytest.warns(RuntimeWarning, match="not cached"):
        arrays = D._mnist1d_arrays(4)
    assert arrays[0].shape == (4000, 40)
    D._mnist1d_arrays.cache_clear()
