"""The data protocol: :class:`DataSplits` and the forms of data every entry point accepts.

Data reaches the API in one of these forms (:func:`as_splits`, :func:`as_pair`):

- a :class:`DataSplits` (``load_dataset``, ``DataSplits.from_tensors``, ``DataSplits.from_datasets``),
  passed through unchanged;
- a mapping ``{"train": s, "test": s}`` or ``{"train": s, "val": s, "test": s}`` whose values are
  ``(x, y)`` pairs or map-style Datasets (the same rules as :meth:`DataSplits.from_datasets`);
- one ``(x, y)`` pair of tensors / arrays, or one map-style ``torch.utils.data.Dataset`` whose
  items are ``(x, y)``: a single split, accepted only where one split suffices (:func:`as_pair`).

A Dataset is materialised once into stacked tensors; one that would not fit in the memory budget
(half the available memory unless ``max_bytes`` is given) is refused with its size.

Targets are either class indices, int64 ``(N,)`` in ``[0, num_classes)`` (a classification), or
float32 values ``(N, ...)`` of the model output's shape (a regression: ``DataSplits.task`` is
"regression", ``num_classes`` the number of target values per sample). All splits hold the
same kind.

This module sits below :mod:`topoland.data` (which re-exports its names) so that both stay small.
"""
from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset, IterableDataset, TensorDataset

from topoland.errors import ConfigError, DataError

_SEED_TAGS = {"subsample_train": 1, "subsample_test": 2, "val": 3, "labels": 4, "synthetic": 5}
_KINDS = {2: "vector", 3: "signal", 4: "image"}   # rank of the batched input -> kind
_SPLIT_NAMES = ("train", "val", "test")


# --------------------------------------------------------------------------- seeds and holdout


def _derived_seed(seed: int, tag: str) -> int:
    """Independent stream per purpose: the same user seed never gives correlated draws."""
    return int(np.random.SeedSequence([int(seed), _SEED_TAGS[tag]]).generate_state(1, np.uint64)[0] >> 1)


def _gen(seed: int, tag: str) -> torch.Generator:
    g = torch.Generator()
    g.manual_seed(_derived_seed(seed, tag))
    return g


def _stratified_holdout(y: Tensor, fraction: float, g: torch.Generator) -> tuple[Tensor, Tensor]:
    """Indices ``(keep, held)``: per class ``round(fraction * count)`` examples are held out."""
    perm = torch.randperm(len(y), generator=g)
    held = []
    for c in torch.unique(y).tolist():
        members = perm[y[perm] == c]
        k = int(round(fraction * len(members)))
        held.append(members[:k])
    held_idx = torch.cat(held).sort().values if held else torch.zeros(0, dtype=torch.long)
    mask = torch.ones(len(y), dtype=torch.bool)
    mask[held_idx] = False
    return torch.nonzero(mask).flatten(), held_idx


def _random_holdout(n: int, fraction: float, g: torch.Generator) -> tuple[Tensor, Tensor]:
    """Indices ``(keep, held)``: ``round(fraction * n)`` examples drawn with ``g`` are held out."""
    perm = torch.randperm(n, generator=g)
    k = int(round(fraction * n))
    return perm[k:].sort().values, perm[:k].sort().values


# --------------------------------------------------------------------------- the splits


@dataclass
class DataSplits:
    """Train / validation / test tensors of one dataset.

    ``x_*`` are float32 ``(N, *input_shape)``; ``y_*`` are int64 class indices ``(N,)``, or
    float32 regression targets ``(N, ...)`` (:attr:`task`; ``num_classes`` is then the number of
    target values per sample, the output size of a model). ``y_train`` may be
    corrupted; ``y_train_clean`` holds the labels before corruption. ``meta`` records the
    normalization statistics and the seeds used. Build one from your own data with
    :meth:`from_tensors` or :meth:`from_datasets`.
    """

    name: str
    x_train: Tensor
    y_train: Tensor
    x_val: Tensor
    y_val: Tensor
    x_test: Tensor
    y_test: Tensor
    input_shape: tuple[int, ...]
    num_classes: int
    kind: str
    y_train_clean: Tensor
    meta: dict = field(default_factory=dict)

    def split(self, name: str) -> tuple[Tensor, Tensor]:
        """Return ``(x, y)`` of the split ``"train"``, ``"val"`` or ``"test"``."""
        if name not in _SPLIT_NAMES:
            raise ConfigError(f"split must be 'train', 'val' or 'test', got {name!r}")
        return getattr(self, f"x_{name}"), getattr(self, f"y_{name}")

    @property
    def task(self) -> str:
        """``"classification"`` (int64 class indices) or ``"regression"`` (float targets)."""
        return "regression" if self.y_train.is_floating_point() else "classification"

    @property
    def noisy_mask(self) -> Tensor:
        """Boolean ``(N_train,)``: training labels that differ from the clean ones."""
        return self.y_train != self.y_train_clean

    @classmethod
    def from_tensors(cls, train, val=None, test=None, *, name: str = "custom", val_fraction: float = 0.1,
                     seed: int = 0, num_classes: int | None = None) -> "DataSplits":
        """Splits from ``(x, y)`` pairs of tensors or arrays; the other fields are inferred.

        x: ``(N, F)`` ("vector"), ``(N, C, L)`` ("signal") or ``(N, C, H, W)`` ("image"), cast
        to float32 as given (not rescaled, not standardized); y: integer class labels ``(N,)``,
        cast to int64. ``test`` is required (the generalization gap is measured on it).
        Without ``val``, ``val_fraction`` of the training pairs is held out, per class
        ``round(val_fraction * count)`` drawn with ``seed`` (the stream ``load_dataset`` uses
        for ``val_seed``). ``num_classes`` defaults to the largest label over all splits + 1
        (labels index the logits, so a class absent from a small split still counts); for
        regression targets, the number of values per sample, and the held-out val split is a
        seeded random ``round(val_fraction * N)`` (no classes to stratify);
        ``input_shape = x.shape[1:]``; ``y_train_clean`` is a copy of ``y_train``.
        Every problem raises :class:`DataError` / :class:`ConfigError` naming the split.
        """
        pairs = {"train": train, "val": val, "test": test}
        for split, value in pairs.items():
            if value is not None and _is_dataset(value):
                raise DataError(f"{split}: from_tensors takes an (x, y) pair; for a "
                                f"{type(value).__name__} use DataSplits.from_datasets")
        return cls._build(pairs, name=name, val_fraction=val_fraction, seed=seed, num_classes=num_classes)

    @classmethod
    def from_datasets(cls, train, val=None, test=None, *, name: str = "custom", val_fraction: float = 0.1,
                      seed: int = 0, num_classes: int | None = None, max_bytes: int | None = None) -> "DataSplits":
        """Like :meth:`from_tensors`, each split a map-style ``torch.utils.data.Dataset`` of
        ``(x, y)`` items (or an ``(x, y)`` pair), materialised once (:func:`materialize`, within
        ``max_bytes``)."""
        pairs = {s: None if v is None else _to_pair(v, s, max_bytes)
                 for s, v in (("train", train), ("val", val), ("test", test))}
        return cls._build(pairs, name=name, val_fraction=val_fraction, seed=seed, num_classes=num_classes)

    @classmethod
    def _build(cls, pairs, *, name, val_fraction, seed, num_classes) -> "DataSplits":
        if pairs["train"] is None:
            raise DataError("train: the training split is missing; pass train=(x, y)")
        if pairs["test"] is None:
            raise DataError("test: the test split is missing; pass test=(x, y): it is required because "
                            "the analysis measures the generalization gap (test - train loss) on it")
        if not (0.0 <= float(val_fraction) < 1.0):
            raise ConfigError(f"val_fraction must be in [0, 1), got {val_fraction!r}")
        xy = {s: _to_pair(v, s, None) for s, v in pairs.items() if v is not None}
        shape = tuple(xy["train"][0].shape[1:])
        for split, (x, _) in xy.items():
            if tuple(x.shape[1:]) != shape:
                raise DataError(f"x_{split} has per-sample shape {tuple(x.shape[1:])} but x_train has "
                                f"{shape}: every split needs the same sample shape")
        if len(xy["train"][0]) == 0 or len(xy["test"][0]) == 0:
            raise DataError(f"{'train' if len(xy['train'][0]) == 0 else 'test'}: the split is empty")
        regression = {s: y.is_floating_point() for s, (_, y) in xy.items()}
        if len(set(regression.values())) > 1:
            kinds = ", ".join(f"y_{s}: {'float' if r else 'int64'}" for s, r in regression.items())
            raise DataError(f"the splits mix class labels and regression targets ({kinds}): every split "
                            f"needs the same kind")
        if regression["train"]:
            tshape = tuple(xy["train"][1].shape[1:])
            for split, (_, y) in xy.items():
                if tuple(y.shape[1:]) != tshape:
                    raise DataError(f"y_{split} has per-sample target shape {tuple(y.shape[1:])} but y_train "
                                    f"has {tshape}: every split needs the same target shape")
            n_out = int(np.prod(tshape)) if tshape else 1
            if num_classes is not None and int(num_classes) != n_out:
                raise DataError(f"num_classes is {num_classes} but the regression targets have {n_out} "
                                f"values per sample; leave num_classes unset")
            num_classes = n_out
        else:
            top = max(int(y.max()) for _, y in xy.values() if len(y))
            if num_classes is None:
                num_classes = top + 1
            elif int(num_classes) <= top:
                raise DataError(f"labels reach {top} but num_classes is {num_classes}; labels must lie in "
                                f"[0, num_classes)")
        x_tr, y_tr = xy["train"]
        held_out = "val" not in xy
        if held_out:
            keep, held = (_random_holdout(len(y_tr), float(val_fraction), _gen(seed, "val")) if regression["train"]
                          else _stratified_holdout(y_tr, float(val_fraction), _gen(seed, "val")))
            xy["val"] = (x_tr[held], y_tr[held])
            x_tr, y_tr = x_tr[keep], y_tr[keep]
            if len(y_tr) == 0:
                raise DataError(f"train: no training examples left after holding out val_fraction="
                                f"{val_fraction} for validation")
        meta = {"source": "tensors", "normalized": False, "val_held_out": held_out,
                **({"val_fraction": float(val_fraction), "val_seed": int(seed)} if held_out else {})}
        (x_val, y_val), (x_te, y_te) = xy["val"], xy["test"]
        return cls(name=str(name), x_train=x_tr.contiguous(), y_train=y_tr, x_val=x_val.contiguous(), y_val=y_val,
                   x_test=x_te.contiguous(), y_test=y_te, input_shape=shape, num_classes=int(num_classes),
                   kind=kind_of(x_tr), y_train_clean=y_tr.clone(), meta=meta)


# --------------------------------------------------------------------------- conversions


def kind_of(x: Tensor) -> str:
    """The data kind of a batch ``x``: ``(N, F)`` "vector", ``(N, C, L)`` "signal", ``(N, C, H, W)`` "image"."""
    kind = _KINDS.get(x.ndim)
    if kind is None:
        raise DataError(f"inputs of shape {tuple(x.shape)} are not (N, F), (N, C, L) or (N, C, H, W)")
    return kind


def _is_dataset(value) -> bool:
    return isinstance(value, Dataset)


def _tensor(value, what: str) -> Tensor:
    if isinstance(value, Tensor):
        return value.detach()
    try:
        return torch.as_tensor(np.ascontiguousarray(value))
    except (TypeError, ValueError, RuntimeError) as exc:
        raise DataError(f"{what}: cannot convert a {type(value).__name__} to a tensor ({exc})") from exc


def _check_pair(x, y, split: str) -> tuple[Tensor, Tensor]:
    """``(x float32, y)`` with every check of one split: y int64 class indices ``(N,)`` or float32
    regression targets ``(N, ...)``."""
    x, y = _tensor(x, f"x_{split}"), _tensor(y, f"y_{split}")
    if x.ndim not in _KINDS:
        raise DataError(f"x_{split} has shape {tuple(x.shape)}; inputs must be (N, F), (N, C, L) or (N, C, H, W)")
    if y.ndim == 0:
        raise DataError(f"y_{split} is a scalar; targets need one row per sample, shape (N,) or (N, ...)")
    if len(x) != len(y):
        raise DataError(f"x_{split} has {len(x)} samples but y_{split} has {len(y)} labels")
    if y.is_complex():
        raise DataError(f"y_{split} holds {y.dtype} values; targets must be integer class indices or real values")
    if y.is_floating_point():
        y = y.float()
        if not torch.isfinite(y).all():
            bad = int((~torch.isfinite(y)).reshape(len(y), -1).any(1).sum())
            raise DataError(f"y_{split}: {bad} regression targets contain NaN or inf")
    else:
        if y.ndim != 1:
            raise DataError(f"y_{split} has integer values of shape {tuple(y.shape)}; class labels must have "
                            f"shape (N,) (regression targets must be float: cast with .float())")
        y = y.long()
        if len(y) and int(y.min()) < 0:
            raise DataError(f"y_{split} has negative labels (min {int(y.min())}); labels must lie in [0, num_classes)")
    x = x.float()
    if not torch.isfinite(x).all():
        bad = int((~torch.isfinite(x)).flatten(1).any(1).sum())
        raise DataError(f"x_{split}: {bad} inputs contain NaN or inf")
    return x, y


def _to_pair(value, split: str, max_bytes: int | None) -> tuple[Tensor, Tensor]:
    if _is_dataset(value):
        return materialize(value, what=split, max_bytes=max_bytes)
    if isinstance(value, (tuple, list)) and len(value) == 2:
        return _check_pair(value[0], value[1], split)
    raise DataError(f"{split}: expected an (x, y) pair of tensors or arrays or a map-style Dataset, "
                    f"got {type(value).__name__}")


def _memory_budget() -> int:
    """Half of the available memory in bytes (psutil if installed, else ``os.sysconf``)."""
    try:
        import psutil
        return int(psutil.virtual_memory().available) // 2
    except ImportError:
        return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")) // 2


def _fmt_bytes(n: int) -> str:
    for unit, size in (("GiB", 2 ** 30), ("MiB", 2 ** 20), ("KiB", 2 ** 10)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} bytes"


def materialize(dataset, *, what: str = "data", max_bytes: int | None = None) -> tuple[Tensor, Tensor]:
    """Stack a map-style Dataset of ``(x, y)`` items into ``(x (N, *shape) float32, y (N,) int64)``.

    The size is estimated from the first item (``N x (4 * x.numel() + 8)`` bytes); above
    ``max_bytes`` (default: half the available memory) a :class:`DataError` gives it. A
    ``TensorDataset`` of two tensors is taken as is, without a per-item loop.
    """
    if isinstance(dataset, IterableDataset) or not hasattr(dataset, "__len__"):
        raise DataError(f"{what}: a {type(dataset).__name__} has no length; pass a map-style Dataset "
                        f"(with __len__ and __getitem__) or (x, y) tensors")
    n = len(dataset)
    if n == 0:
        raise DataError(f"{what}: the {type(dataset).__name__} is empty")
    first = dataset[0]
    if not isinstance(first, (tuple, list)) or len(first) != 2:
        raise DataError(f"{what}: Dataset items must be (x, y) pairs, item 0 is a "
                        f"{type(first).__name__}{f' of {len(first)}' if isinstance(first, (tuple, list)) else ''}")
    x0 = _tensor(first[0], f"{what} item 0")
    per_item = 4 * x0.numel() + 8
    budget = _memory_budget() if max_bytes is None else int(max_bytes)
    if n * per_item > budget:
        raise DataError(f"{what}: the {type(dataset).__name__} of {n} items x {per_item} bytes per item "
                        f"({_fmt_bytes(n * per_item)}) does not fit in the memory budget of {_fmt_bytes(budget)}"
                        f"{'' if max_bytes is not None else ' (half the available memory)'}; "
                        f"pass a subset or set max_bytes")
    if isinstance(dataset, TensorDataset) and len(dataset.tensors) == 2:
        return _check_pair(*dataset.tensors, what)
    xs = torch.empty((n, *x0.shape), dtype=torch.float32)
    ys = []
    for i in range(n):
        item = first if i == 0 else dataset[i]
        xi = x0 if i == 0 else _tensor(item[0], f"{what} item {i}")
        if tuple(xi.shape) != tuple(x0.shape):
            raise DataError(f"{what}: Dataset item {i} has input shape {tuple(xi.shape)} but item 0 has "
                            f"{tuple(x0.shape)}")
        yi = _tensor(item[1], f"{what} item {i} label")
        if yi.is_floating_point():  # a regression target: any fixed shape
            if i and tuple(yi.shape) != tuple(ys[0].shape[1:]):
                raise DataError(f"{what}: Dataset item {i} has a target of shape {tuple(yi.shape)} but item 0 "
                                f"has {tuple(ys[0].shape[1:])}")
            ys.append(yi.unsqueeze(0))
        elif yi.numel() != 1:
            raise DataError(f"{what}: Dataset item {i} has an integer label of shape {tuple(yi.shape)}; "
                            f"a label is one class index (regression targets must be float)")
        else:
            ys.append(yi.reshape(1))
        xs[i] = xi
    return _check_pair(xs, torch.cat(ys), what)


# --------------------------------------------------------------------------- the entry points' helpers


def as_splits(data, *, what: str = "data", max_bytes: int | None = None) -> DataSplits:
    """The :class:`DataSplits` of ``data``: a DataSplits (returned unchanged) or a mapping of
    splits ``{"train": s, ("val": s,) "test": s}`` (``s`` an ``(x, y)`` pair or a map-style
    Dataset; see :meth:`DataSplits.from_datasets`). One pair or Dataset is refused: it is a
    single split, and the caller ``what`` needs train, val and test."""
    if isinstance(data, DataSplits):
        return data
    if isinstance(data, Mapping):
        unknown = sorted(set(map(str, data)) - set(_SPLIT_NAMES))
        if unknown:
            raise DataError(f"{what}: unknown split(s) {', '.join(map(repr, unknown))}; the keys are "
                            f"'train', 'val' (optional) and 'test'")
        try:
            return DataSplits.from_datasets(data.get("train"), data.get("val"), data.get("test"), max_bytes=max_bytes)
        except DataError as exc:
            raise DataError(f"{what}: {exc}") from None
    form = "an (x, y) pair" if isinstance(data, (tuple, list)) else f"a {type(data).__name__}"
    if isinstance(data, (tuple, list)) or _is_dataset(data):
        raise DataError(f"{what} is {form}, a single split, but train, val and test splits are needed: pass "
                        f"DataSplits.from_tensors(train=(x, y), test=(x, y)), DataSplits.from_datasets(...) "
                        f"or {{'train': ..., 'test': ...}}")
    raise DataError(f"{what} must be a DataSplits, a mapping of splits, an (x, y) pair or a Dataset, got "
                    f"{type(data).__name__}")


def as_pair(data, split: str = "train", *, what: str = "data", max_bytes: int | None = None) -> tuple[Tensor, Tensor]:
    """``(x, y)`` of one split of ``data``: the split ``split`` of a DataSplits or a mapping of
    splits, or the data itself when it is one ``(x, y)`` pair or one map-style Dataset.
    Pairs and Datasets are checked and converted (float32 inputs, int64 labels or float32
    regression targets)."""
    if split not in _SPLIT_NAMES:
        raise ConfigError(f"split must be 'train', 'val' or 'test', got {split!r}")
    if isinstance(data, (DataSplits, Mapping)):
        return as_splits(data, what=what, max_bytes=max_bytes).split(split)
    if isinstance(data, (tuple, list)) or _is_dataset(data):
        try:
            return _to_pair(data, split, max_bytes)
        except DataError as exc:
            raise DataError(f"{what}: {exc}") from None
    raise DataError(f"{what} must be a DataSplits, a mapping of splits, an (x, y) pair or a Dataset, got "
                    f"{type(data).__name__}")


def tensors_or_pair(x, y, *, what: str = "data", error: type[Exception] = DataError) -> tuple[Tensor, Tensor]:
    """``(x, y)`` of the functions that take ``x, y=None``: the tensors as given, or, with ``y``
    None, the train split of one data form in ``x`` (:func:`as_pair`). Anything else raises
    ``error`` naming ``what`` and the types."""
    if y is None:
        return as_pair(x, "train", what=what)
    if not isinstance(x, Tensor) or not isinstance(y, Tensor):
        raise error(f"{what}: x and y must be tensors (got {type(x).__name__}, {type(y).__name__}); or pass "
                    f"one data form (a DataSplits, an (x, y) pair, a Dataset) as x with y=None")
    return x, y
