"""Datasets, splits, augmentation and label corruption.

Every dataset is returned as in-memory float32 tensors in a :class:`DataSplits`. Your own data
enters through :meth:`DataSplits.from_tensors` / :meth:`DataSplits.from_datasets`, and every entry
point that takes data converts it with :func:`as_splits` / :func:`as_pair` (these live in
:mod:`topoland.splits`, re-exported here). A config reaches your data through a factory:
``load_dataset("custom", factory="package.module:function", kwargs={...})`` (``[data] name =
"custom"``), which imports that module and calls the function: it runs your code.

Pipeline of :func:`load_dataset` (each random step has its own seeded generator):

1. Load the official training and test sets (raw scale; images in [0, 1]).
2. ``n_train`` / ``n_test``: random subsample of the official training / test set (quick runs).
3. Validation split: ``val_fraction`` of the (subsampled) training set is held out, stratified
   by class (per class ``round(val_fraction * count)`` examples), drawn with ``val_seed``.
4. Normalization: per-channel standardization (per feature for ``"vector"`` data) with mean and
   standard deviation computed on the remaining training split only, applied to all splits.
   A channel with zero spread gets std 1.
5. Label corruption: ``round(label_noise * N_train)`` training examples, chosen with
   ``label_seed``, get a label drawn uniformly from all classes (as in Zhang et al. 2017, the
   new label may equal the old one by chance). Validation and test labels are never touched;
   ``y_train_clean`` keeps the original training labels.
"""
from __future__ import annotations

import dataclasses
import functools
import os
import random as _pyrandom

import numpy as np
import torch
from torch import Tensor

from topoland import checks
from topoland.declare import Param, call_factory, declare, factory_call, load_factory, none_if_zero
from topoland.errors import ConfigError, DataError
from topoland.splits import (DataSplits, _gen, _stratified_holdout, as_pair, as_splits,  # noqa: F401 (re-exported)
                             kind_of, materialize)

DATASETS: tuple[str, ...] = ("mnist1d", "digits", "synthetic", "cifar10", "mnist", "fashion_mnist")


# --------------------------------------------------------------------------- raw loaders
# Each returns (x_train, y_train, x_test, y_test, kind, num_classes) with x float32 raw scale.


def _load_synthetic(seed: int, *, n_train: int = 256, n_test: int = 128, num_classes: int = 3,
                    input_shape=(8,), separation: float = 3.0, noise: float = 1.0):
    """Gaussian blobs: class centres ``separation * N(0, I)``, samples ``centre + noise * N(0, I)``."""
    shape = tuple(int(s) for s in input_shape)
    kind = {1: "vector", 2: "signal", 3: "image"}.get(len(shape))
    if kind is None:
        raise ConfigError(f"synthetic input_shape must have 1 to 3 dims, got {shape}")
    g = _gen(seed, "synthetic")
    dim = int(np.prod(shape))
    centres = separation * torch.randn(num_classes, dim, generator=g)

    def draw(n):
        y = torch.arange(n) % num_classes
        y = y[torch.randperm(n, generator=g)]
        x = centres[y] + noise * torch.randn(n, dim, generator=g)
        return x.reshape(n, *shape).float(), y.long()

    x_tr, y_tr = draw(n_train)
    x_te, y_te = draw(n_test)
    return x_tr, y_tr, x_te, y_te, kind, num_classes


def cache_dir():
    """Where generated datasets are kept between processes: ``$TOPOLAND_CACHE_DIR``, else
    ``$XDG_CACHE_HOME/topoland``, else ``~/.cache/topoland``. Returns a :class:`pathlib.Path`."""
    from pathlib import Path
    if os.environ.get("TOPOLAND_CACHE_DIR"):
        return Path(os.environ["TOPOLAND_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "topoland"


def _mnist1d_generate(seed: int):
    import mnist1d.data

    # mnist1d seeds numpy's and Python's global RNGs; restore them so callers are unaffected.
    np_state, py_state = np.random.get_state(), _pyrandom.getstate()
    try:
        args = mnist1d.data.get_dataset_args()
        args.seed = int(seed)
        ds = mnist1d.data.make_dataset(args)
    finally:
        np.random.set_state(np_state)
        _pyrandom.setstate(py_state)
    return (np.asarray(ds["x"], np.float32), np.asarray(ds["y"], np.int64),
            np.asarray(ds["x_test"], np.float32), np.asarray(ds["y_test"], np.int64))


def _mnist1d_cache_path(seed: int):
    import hashlib
    import json
    from importlib.metadata import version

    import mnist1d.data
    args = {k: v for k, v in sorted(vars(mnist1d.data.get_dataset_args()).items()) if k != "seed"}
    key = json.dumps([version("mnist1d"), args], sort_keys=True, default=str)
    return cache_dir() / "mnist1d" / f"seed{int(seed)}-{hashlib.sha256(key.encode()).hexdigest()[:12]}.npz"


_ARRAYS = ("x_train", "y_train", "x_test", "y_test")


@functools.lru_cache(maxsize=4)
def _mnist1d_arrays(seed: int):
    # generating the set takes ~5 s; every process (worker, later run) reads the same npz instead,
    # keyed by the package version and its generation arguments
    path = _mnist1d_cache_path(seed)
    if path.exists():
        with np.load(path) as f:
            return tuple(f[k] for k in _ARRAYS)
    arrays = _mnist1d_generate(seed)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.stem}.{os.getpid()}.tmp.npz")
        np.savez(tmp, **dict(zip(_ARRAYS, arrays)))
        os.replace(tmp, path)  # atomic: a concurrent reader sees the whole file or none
    except OSError as e:  # an unwritable cache costs time, not correctness: say so and go on
        import warnings
        warnings.warn(f"MNIST-1D not cached at {path} ({e}); it is generated again in every process "
                      "(set TOPOLAND_CACHE_DIR to a writable folder)", RuntimeWarning, stacklevel=2)
    return arrays


def _load_mnist1d(seed: int):
    """MNIST-1D generated with generation seed ``seed`` (the package's canonical set uses 42)."""
    xtr, ytr, xte, yte = _mnist1d_arrays(int(seed))
    return (torch.from_numpy(xtr.copy())[:, None, :], torch.from_numpy(ytr.copy()),
            torch.from_numpy(xte.copy())[:, None, :], torch.from_numpy(yte.copy()), "signal", 10)


def _load_digits(seed: int):
    """sklearn's 8x8 digits scaled to [0, 1]; a fixed stratified 20% test split (seed 0)."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    x = (d.images / 16.0).astype(np.float32)[:, None, :, :]
    y = d.target.astype(np.int64)
    # The test split is part of the dataset's definition, so it does not move with `seed`.
    xtr, xte, ytr, yte = train_test_split(x, y, test_size=0.2, stratify=y, random_state=0)
    return (torch.from_numpy(xtr), torch.from_numpy(ytr), torch.from_numpy(xte),
            torch.from_numpy(yte), "image", 10)


_CIFAR_TRAIN = tuple(f"data_batch_{i}" for i in range(1, 6))
_CIFAR_TEST = ("test_batch",)
_CIFAR_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
_MNIST_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
                "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


def _missing_message(name, folder, files, root):
    listed = ", ".join(files)
    return (f"dataset {name!r}: missing file(s) in {folder}: put {listed} there "
            f"(the files of the official release, uncompressed), or set download = true in the "
            f"config to fetch them into root {root!r} where a network exists")


def _download(name, cls, root):
    try:
        cls(root=root, train=True, download=True)
        if name != "cifar10":  # CIFAR-10's archive holds both splits
            cls(root=root, train=False, download=True)
    except Exception as exc:  # network errors come in many types
        raise DataError(f"dataset {name!r}: download into {root!r} failed: {exc}") from exc


def _load_cifar10(root, download):
    from torchvision.datasets import CIFAR10

    folder = os.path.join(root, CIFAR10.base_folder)
    missing = [f for f in _CIFAR_TRAIN + _CIFAR_TEST if not os.path.isfile(os.path.join(folder, f))]
    if missing and download:
        _download("cifar10", CIFAR10, root)
        missing = [f for f in _CIFAR_TRAIN + _CIFAR_TEST if not os.path.isfile(os.path.join(folder, f))]
    if missing:
        raise DataError(_missing_message("cifar10", folder, missing, root))

    def read(fname):
        # torchvision's reader, one file at a time so that an error names the file. The md5
        # check is skipped (subsets and re-encoded copies are allowed); contents are validated.
        one = type("_OneCifarFile", (CIFAR10,), {
            "train_list": [[fname, None]], "test_list": [],
            "_load_meta": lambda self: setattr(self, "classes", list(_CIFAR_CLASSES))})
        path = os.path.join(folder, fname)
        try:
            ds = one(root=root, train=True)
            x = np.asarray(ds.data)
            y = np.asarray(ds.targets, dtype=np.int64)
        except Exception as exc:
            raise DataError(f"dataset 'cifar10': cannot read {path} ({type(exc).__name__}: {exc}); "
                            f"the file is corrupted, replace it") from exc
        if x.ndim != 4 or x.shape[1:] != (32, 32, 3) or x.dtype != np.uint8 or len(y) != len(x) \
                or (len(y) and (y.min() < 0 or y.max() > 9)):
            raise DataError(f"dataset 'cifar10': {path} has invalid contents "
                            f"(data {x.shape} {x.dtype}, {len(y)} labels); replace it")
        return x, y

    def load(files):
        xs, ys = zip(*(read(f) for f in files))
        x = torch.from_numpy(np.concatenate(xs)).permute(0, 3, 1, 2).float().div_(255.0)
        return x.contiguous(), torch.from_numpy(np.concatenate(ys))

    xtr, ytr = load(_CIFAR_TRAIN)
    xte, yte = load(_CIFAR_TEST)
    return xtr, ytr, xte, yte, "image", 10


def _load_mnist_like(name, root, download):
    from torchvision.datasets import MNIST, FashionMNIST
    from torchvision.datasets.mnist import read_image_file, read_label_file

    cls = MNIST if name == "mnist" else FashionMNIST
    folder = os.path.join(root, cls.__name__, "raw")
    missing = [f for f in _MNIST_FILES if not os.path.isfile(os.path.join(folder, f))]
    if missing and download:
        _download(name, cls, root)
        missing = [f for f in _MNIST_FILES if not os.path.isfile(os.path.join(folder, f))]
    if missing:
        raise DataError(_missing_message(name, folder, missing, root))

    def read(fname, images):
        path = os.path.join(folder, fname)
        try:
            t = read_image_file(path) if images else read_label_file(path)
        except Exception as exc:
            raise DataError(f"dataset {name!r}: cannot read {path} ({type(exc).__name__}: {exc}); "
                            f"the file is corrupted, replace it") from exc
        ok = (t.ndim == 3 and t.shape[1:] == (28, 28)) if images else (t.ndim == 1 and (
            len(t) == 0 or (int(t.min()) >= 0 and int(t.max()) <= 9)))
        if not ok:
            raise DataError(f"dataset {name!r}: {path} has invalid contents (shape {tuple(t.shape)})")
        return t

    out = []
    for img_file, lab_file in ((_MNIST_FILES[0], _MNIST_FILES[1]), (_MNIST_FILES[2], _MNIST_FILES[3])):
        x, y = read(img_file, True), read(lab_file, False)
        if len(x) != len(y):
            raise DataError(f"dataset {name!r}: {img_file} has {len(x)} images but {lab_file} "
                            f"has {len(y)} labels in {folder}")
        out += [x[:, None].float().div_(255.0), y.long()]
    return (*out, "image", 10)


def dataset_available(name: str, root=None) -> tuple[bool, str]:
    """Whether ``name`` can be loaded without a download: ``(ok, where or what is missing)``.

    Generated datasets are always available; file-based ones are checked for their files
    (existence only, contents are validated on loading).
    """
    if name not in DATASETS:
        raise ConfigError(f"unknown dataset {name!r}; known: {', '.join(DATASETS)}")
    if name in ("mnist1d", "digits", "synthetic"):
        return True, "generated locally"
    if root is None:
        return False, "no root folder given"
    if name == "cifar10":
        folder, files = os.path.join(os.fspath(root), "cifar-10-batches-py"), _CIFAR_TRAIN + _CIFAR_TEST
    else:
        folder = os.path.join(os.fspath(root), "MNIST" if name == "mnist" else "FashionMNIST", "raw")
        files = _MNIST_FILES
    missing = [f for f in files if not os.path.isfile(os.path.join(folder, f))]
    if missing:
        return False, _missing_message(name, folder, missing, os.fspath(root))
    return True, folder


def _load_raw(name, root, seed, download, synthetic):
    if name == "synthetic":
        return _load_synthetic(seed, **(synthetic or {}))
    if synthetic:
        raise ConfigError("synthetic options apply only to dataset 'synthetic'")
    if name == "mnist1d":
        return _load_mnist1d(seed)
    if name == "digits":
        return _load_digits(seed)
    if root is None:
        raise DataError(f"dataset {name!r} is read from a local folder: set root "
                        f"(e.g. root = \"data\") in the config")
    root = os.fspath(root)
    if name == "cifar10":
        return _load_cifar10(root, download)
    return _load_mnist_like(name, root, download)


# --------------------------------------------------------------------------- splitting


def _subsample(n_total: int, n: int | None, g: torch.Generator, what: str) -> Tensor | None:
    if n is None:
        return None
    if not isinstance(n, (int, np.integer)) or isinstance(n, bool) or n <= 0:
        raise ConfigError(f"{what} must be a positive integer, got {n!r}")
    if n > n_total:
        raise ConfigError(f"{what}={n} exceeds the {n_total} examples available")
    return torch.randperm(n_total, generator=g)[:n].sort().values


def _channel_stats(x: Tensor, kind: str) -> tuple[Tensor, Tensor]:
    """Mean and std with the shape of one sample broadcastable over ``x``."""
    if kind == "vector":
        dims = (0,)
    else:  # channel is dim 1: reduce over batch and spatial dims
        dims = (0,) + tuple(range(2, x.ndim))
    mean = x.double().mean(dim=dims, keepdim=True)
    std = x.double().std(dim=dims, keepdim=True, unbiased=False)
    std = torch.where(std > 0, std, torch.ones_like(std))
    return mean.float()[0], std.float()[0]


def random_labels(n: int, num_classes: int, seed: int) -> Tensor:
    """``(n,)`` int64 labels drawn uniformly from ``range(num_classes)`` with a seeded generator."""
    g = torch.Generator()
    g.manual_seed(int(seed))
    return torch.randint(0, int(num_classes), (int(n),), generator=g, dtype=torch.long)


@declare({
    "name": Param((str,), "mnist1d", checks.one_of(*DATASETS, "custom"), "dataset ('custom': made by factory)"),
    "root": Param((str,), "", None, "local folder of torchvision datasets", arg=none_if_zero),
    "download": Param((bool,), False, None, "let torchvision download where a network exists"),
    "val_fraction": Param((int, float), 0.1, checks.frac, "share of the training set held out for validation"),
    "val_seed": Param((int,), 0, checks.seed, "seed of the validation split"),
    "label_noise": Param((int, float), 0.0, checks.unit, "share of training labels replaced by random ones"),
    "n_train": Param((int,), 0, checks.nonneg, "subsample the training set (0 = all)", arg=none_if_zero),
    "n_test": Param((int,), 0, checks.nonneg, "subsample the test set (0 = all)", arg=none_if_zero),
    "label_seed": Param((int,), 0, checks.seed, "seed of the label corruption"),
    "synthetic": Param((dict,), {}, checks.synthetic_opts,
                      "synthetic set: n_train, n_test, num_classes, input_shape, separation, noise", arg=none_if_zero),
    "factory": Param((str,), "", None, "name = 'custom': 'package.module:function' making the set (imports "
                     "and runs your code)", arg=none_if_zero),
    "kwargs": Param((dict,), {}, None, "name = 'custom': the factory's keyword arguments", arg=none_if_zero),
})
def load_dataset(name: str, *, root=None, seed: int = 0, val_fraction: float = 0.1, val_seed=None,
                 label_noise: float = 0.0, label_seed=None, download: bool = False,
                 n_train: int | None = None, n_test: int | None = None, normalize: bool = True,
                 synthetic: dict | None = None, factory=None, kwargs: dict | None = None) -> DataSplits:
    """Load a dataset as :class:`DataSplits` (see the module docstring for the pipeline).

    ``seed`` is the generation seed of generated sets (``mnist1d``, ``synthetic``) and seeds the
    ``n_train``/``n_test`` subsamples; ``val_seed`` and ``label_seed`` default to ``seed``
    (each purpose draws from its own derived stream). ``n_train`` subsamples the official
    training set *before* the validation split is held out of it. ``root`` is the folder of the
    torchvision datasets. ``synthetic`` passes options to the synthetic generator
    (``n_train``, ``n_test``, ``num_classes``, ``input_shape``, ``separation``, ``noise``).

    ``name = "custom"``: your own set, made by ``factory`` (``"package.module:function"``,
    imported: your code runs; or a callable) called with ``kwargs`` and, when it names a ``seed``
    parameter, ``seed=seed``. It returns a :class:`DataSplits` or ``(train, val, test)`` with each
    an ``(x, y)`` pair or map-style Dataset (``val`` may be None: then ``val_fraction`` of train is
    held out with ``val_seed``, :meth:`DataSplits.from_datasets`). Such a set is taken as given
    (not subsampled, not standardized); ``label_noise`` / ``label_seed`` corrupt its training
    labels as for the built-in sets. Errors name ``data.factory``.
    """
    if name not in DATASETS + (CUSTOM,):
        raise ConfigError(f"unknown dataset {name!r}; known: {', '.join(DATASETS)}, {CUSTOM!r}")
    if not (0.0 <= float(val_fraction) < 1.0):
        raise ConfigError(f"val_fraction must be in [0, 1), got {val_fraction!r}")
    if not (0.0 <= float(label_noise) <= 1.0):
        raise ConfigError(f"label_noise must be in [0, 1], got {label_noise!r}")
    val_seed = seed if val_seed is None else val_seed
    label_seed = seed if label_seed is None else label_seed
    if name == CUSTOM:
        if not factory:
            raise ConfigError("dataset 'custom' needs factory='package.module:function' (or a callable)")
        if root or download or n_train or n_test or synthetic:
            raise ConfigError("dataset 'custom': root, download, n_train, n_test and synthetic do not apply "
                              "(its factory makes the set; pass its options in kwargs)")
        data = _custom_dataset(factory, kwargs or {}, seed=seed, val_fraction=val_fraction, val_seed=val_seed)
        if not label_noise:
            return data
        noisy = _noisy_labels(data.y_train, data.num_classes, label_noise, label_seed)
        return dataclasses.replace(data, y_train=noisy, meta=data.meta | {"label_noise": float(label_noise),
                                                                          "label_seed": int(label_seed)})
    if factory or kwargs:
        raise ConfigError(f"dataset {name!r}: factory and kwargs are read only with name = 'custom'")

    x_tr, y_tr, x_te, y_te, kind, num_classes = _load_raw(name, root, seed, download, synthetic)
    for split, x in (("training", x_tr), ("test", x_te)):
        if not torch.isfinite(x).all():
            bad = int((~torch.isfinite(x)).flatten(1).any(1).sum())
            raise DataError(f"dataset {name!r}: {bad} {split} inputs contain NaN or inf")

    idx = _subsample(len(y_tr), n_train, _gen(seed, "subsample_train"), "n_train")
    if idx is not None:
        x_tr, y_tr = x_tr[idx], y_tr[idx]
    idx = _subsample(len(y_te), n_test, _gen(seed, "subsample_test"), "n_test")
    if idx is not None:
        x_te, y_te = x_te[idx], y_te[idx]

    keep, held = _stratified_holdout(y_tr, float(val_fraction), _gen(val_seed, "val"))
    x_val, y_val = x_tr[held], y_tr[held]
    x_tr, y_tr = x_tr[keep], y_tr[keep]
    if len(y_tr) == 0:
        raise ConfigError(f"dataset {name!r}: no training examples left after the validation split")

    meta = {"seed": int(seed), "val_seed": int(val_seed), "label_seed": int(label_seed),
            "label_noise": float(label_noise), "val_fraction": float(val_fraction),
            "normalized": bool(normalize)}
    if normalize:
        mean, std = _channel_stats(x_tr, kind)
        x_tr, x_val, x_te = ((x - mean) / std for x in (x_tr, x_val, x_te))
        meta["norm_mean"], meta["norm_std"] = mean.flatten().tolist(), std.flatten().tolist()

    y_clean = y_tr.clone()
    y_noisy = _noisy_labels(y_tr, num_classes, label_noise, label_seed)

    return DataSplits(
        name=name, x_train=x_tr.float().contiguous(), y_train=y_noisy,
        x_val=x_val.float().contiguous(), y_val=y_val.long(),
        x_test=x_te.float().contiguous(), y_test=y_te.long(),
        input_shape=tuple(x_tr.shape[1:]), num_classes=int(num_classes), kind=kind,
        y_train_clean=y_clean, meta=meta)


def _noisy_labels(y: Tensor, num_classes: int, label_noise: float, label_seed: int) -> Tensor:
    """A copy of ``y`` with ``round(label_noise * N)`` labels, chosen with ``label_seed``, drawn anew."""
    y_noisy = y.clone()
    n_noisy = int(round(float(label_noise) * len(y)))
    if n_noisy:
        g = _gen(label_seed, "labels")
        which = torch.randperm(len(y), generator=g)[:n_noisy]
        y_noisy[which] = torch.randint(0, num_classes, (n_noisy,), generator=g, dtype=torch.long)
    return y_noisy


# --------------------------------------------------------------------------- your own data

CUSTOM = "custom"
#: [data] keys a custom set does not read (its factory makes the whole set)
_NOT_FOR_CUSTOM = ("root", "download", "n_train", "n_test", "synthetic")


def check_data_section(data: dict, where: str = "data") -> None:
    """Check the keys of a resolved ``[data]`` section that go together (each key was checked on
    its own): ``factory`` / ``kwargs`` only with ``name = "custom"``, which needs a factory and
    reads none of the built-in sets' keys. For a custom set this imports the factory's module
    (running the user's code) and checks that ``kwargs`` (and ``seed``) bind to its signature.
    One-line :class:`ConfigError` naming ``where.key``."""
    name, factory, kwargs = data.get("name"), data.get("factory"), data.get("kwargs")
    if name != CUSTOM:
        for key, value in (("factory", factory), ("kwargs", kwargs)):
            if value:
                raise ConfigError(f"config key '{where}.{key}' is read only with {where}.name = 'custom' "
                                  f"(it is {name!r})")
        return
    if not factory:
        raise ConfigError(f"config key '{where}.factory' is missing: {where}.name = 'custom' needs "
                          "factory = 'package.module:function'")
    for key in _NOT_FOR_CUSTOM:
        if key in data and data[key] != load_dataset.parameters[key].default:
            raise ConfigError(f"config key '{where}.{key}' does not apply to {where}.name = 'custom' (its "
                              f"factory makes the set; give the factory options in {where}.kwargs)")
    func = load_factory(factory, f"{where}.factory")
    factory_call(func, kwargs or {}, {"seed": 0}, where=f"{where}.factory", spec=factory, section=f"{where}.kwargs")


def _custom_dataset(factory, kwargs: dict, *, seed: int, val_fraction: float, val_seed: int) -> DataSplits:
    """The :class:`DataSplits` a user factory makes (see :func:`load_dataset`, ``name = "custom"``)."""
    spec = factory if isinstance(factory, str) else getattr(factory, "__qualname__", repr(factory))
    head = f"config key 'data.factory' = {spec!r}"
    func = load_factory(factory, "data.factory")
    call = factory_call(func, dict(kwargs), {"seed": int(seed)}, where="data.factory", spec=spec,
                        section="data.kwargs")
    out = call_factory(func, call, where="data.factory", spec=spec)
    meta = {"source": "factory", "factory": spec, "seed": int(seed)}
    try:
        if isinstance(out, DataSplits):
            if tuple(out.y_train_clean.shape) != tuple(out.y_train.shape):
                raise DataError(f"y_train_clean has shape {tuple(out.y_train_clean.shape)}, y_train "
                                f"{tuple(out.y_train.shape)}")
            checked = DataSplits.from_tensors(out.split("train"), out.split("val"), out.split("test"),
                                              name=out.name, num_classes=out.num_classes)
            return dataclasses.replace(checked, y_train_clean=out.y_train_clean.long(), meta=dict(out.meta) | meta)
        if isinstance(out, (tuple, list)) and len(out) == 3:
            data = DataSplits.from_datasets(*out, name=spec, val_fraction=val_fraction, seed=val_seed)
            return dataclasses.replace(data, meta=data.meta | meta)
    except (DataError, ConfigError) as exc:
        raise ConfigError(f"{head}: the factory's data are refused: {exc}") from None
    what = type(out).__name__ + (f" of {len(out)}" if isinstance(out, (tuple, list)) else "")
    raise ConfigError(f"{head}: the factory returned a {what}, not a DataSplits or (train, val, test) "
                      "(each an (x, y) pair or a Dataset; val may be None)")


# --------------------------------------------------------------------------- batching


def minibatch_order(n: int, batch_size: int, generator: torch.Generator, drop_last: bool = False) -> list[Tensor]:
    """One epoch: a random permutation of ``range(n)`` cut into int64 index batches."""
    if batch_size <= 0:
        raise ConfigError(f"batch_size must be positive, got {batch_size!r}")
    perm = torch.randperm(int(n), generator=generator)
    batches = list(torch.split(perm, int(batch_size)))
    if drop_last and batches and len(batches[-1]) < batch_size:
        batches.pop()
    return batches


def augment_batch(x: Tensor, kind: str, generator: torch.Generator, *, pad: int = 4,
                  max_shift: int | None = None) -> Tensor:
    """Randomly augment a batch, independently per sample; deterministic given ``generator``.

    image ``(N, C, H, W)``: zero-pad by ``pad`` and crop back to ``(H, W)`` at a random offset,
    then flip horizontally with probability 1/2. signal ``(N, C, L)``: circular shift by a
    random integer in ``[-max_shift, max_shift]`` (default ``L // 8``). vector: unchanged.
    Draws happen on the CPU generator; the result lives on ``x.device``.
    """
    n = x.shape[0]
    if kind == "vector":
        return x
    if kind == "image":
        if x.ndim != 4:
            raise ConfigError(f"image augmentation needs (N, C, H, W) input, got {tuple(x.shape)}")
        _, c, h, w = x.shape
        oy = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
        ox = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
        flip = torch.rand(n, generator=generator) < 0.5
        oy, ox, flip = oy.to(x.device), ox.to(x.device), flip.to(x.device)
        xp = torch.nn.functional.pad(x, (pad, pad, pad, pad))
        rows = oy[:, None] + torch.arange(h, device=x.device)[None, :]            # (N, H)
        cols = torch.arange(w, device=x.device)[None, :].expand(n, w)
        cols = torch.where(flip[:, None], cols.flip(1), cols) + ox[:, None]    # (N, W)
        bi = torch.arange(n, device=x.device)[:, None, None]
        # gather (N, H, W, C) then back to channels-first
        out = xp.permute(0, 2, 3, 1)[bi, rows[:, :, None], cols[:, None, :]]
        return out.permute(0, 3, 1, 2).contiguous()
    if kind == "signal":
        if x.ndim != 3:
            raise ConfigError(f"signal augmentation needs (N, C, L) input, got {tuple(x.shape)}")
        length = x.shape[-1]
        m = length // 8 if max_shift is None else int(max_shift)
        shift = torch.randint(-m, m + 1, (n,), generator=generator).to(x.device)
        src = (torch.arange(length, device=x.device)[None, :] - shift[:, None]) % length  # (N, L)
        return torch.gather(x, 2, src[:, None, :].expand(-1, x.shape[1], -1))
    raise ConfigError(f"unknown data kind {kind!r}; expected 'image', 'signal' or 'vector'")


def _augment_loop(x: Tensor, kind: str, generator: torch.Generator, *, pad: int = 4,
                  max_shift: int | None = None) -> Tensor:
    """Per-sample reference for :func:`augment_batch` (same draws, plain loop)."""
    n = x.shape[0]
    if kind == "vector":
        return x
    out = torch.empty_like(x)
    if kind == "image":
        _, _, h, w = x.shape
        oy = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
        ox = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
        flip = torch.rand(n, generator=generator) < 0.5
        for i in range(n):
            xp = torch.nn.functional.pad(x[i], (pad, pad, pad, pad))
            crop = xp[:, int(oy[i]):int(oy[i]) + h, int(ox[i]):int(ox[i]) + w]
            out[i] = crop.flip(-1) if bool(flip[i]) else crop
        return out
    length = x.shape[-1]
    m = length // 8 if max_shift is None else int(max_shift)
    shift = torch.randint(-m, m + 1, (n,), generator=generator)
    for i in range(n):
        out[i] = torch.roll(x[i], int(shift[i]), dims=-1)
    return out


def seeded_subset(x: Tensor, y: Tensor, n: int | None, seed: int) -> tuple[Tensor, Tensor]:
    """The first ``n`` examples of a seeded permutation of ``(x, y)`` (in permutation order), or
    all of them when ``n`` is 0/None or not below ``len(x)``: the fixed training subset that
    surfaces, curvature and paths evaluate on."""
    if not n or n >= len(x):
        return x, y
    idx = torch.randperm(len(x), generator=torch.Generator().manual_seed(int(seed)))[:n]
    return x[idx], y[idx]
