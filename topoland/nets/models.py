"""Model zoo: MLP, small CNN, pre-activation WideResNet and CIFAR ResNet.

All models take ``x`` of shape ``(N, *input_shape)`` and return logits ``(N, num_classes)``.
Convolutional models use ``Conv1d`` for signal inputs ``(C, L)`` and ``Conv2d`` for image
inputs ``(C, H, W)``. Forward passes are pure (no in-place ops on parameters, no ``.item()``),
so they work under ``torch.func.functional_call`` + ``vmap``.

Initialization is seeded: :func:`build_model` builds on the CPU under
``torch.random.fork_rng`` with the CPU generator seeded by ``seed``, so the same seed gives
bit-identical weights and the caller's global RNG state is left unchanged.
"""
from __future__ import annotations

import functools
import inspect
import math

import torch
from torch import nn

from topoland import checks
from topoland.declare import Param, declare
from topoland.errors import ConfigError
from topoland.nets.external import build_external, check_external_section, is_external

__all__ = ["build_model", "count_parameters", "MODELS"]


def _conv_cls(nd):
    return nn.Conv1d if nd == 1 else nn.Conv2d


def _bn_cls(nd):
    return nn.BatchNorm1d if nd == 1 else nn.BatchNorm2d


def _spatial_dims(input_shape, name):
    if len(input_shape) not in (2, 3):
        raise ConfigError(f"model {name!r} needs signal (C, L) or image (C, H, W) inputs, "
                          f"got input_shape {tuple(input_shape)}")
    return len(input_shape) - 1


def _positive_int(value, key):
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ConfigError(f"model argument {key} must be a positive integer, got {value!r}")
    return value


# --------------------------------------------------------------------------- MLP


class MLP(nn.Module):
    """Flatten, then ``Linear-[BatchNorm1d]-ReLU`` per hidden width, then a linear head."""

    def __init__(self, input_shape, num_classes, widths=(64, 64), batchnorm=False):
        super().__init__()
        layers, d = [nn.Flatten()], math.prod(input_shape)
        for w in widths:
            layers.append(nn.Linear(d, w))
            if batchnorm:
                layers.append(nn.BatchNorm1d(w))
            layers.append(nn.ReLU())
            d = w
        layers.append(nn.Linear(d, num_classes))
        self.net = nn.Sequential(*layers)

    def forward(self, x):
        return self.net(x)


def _mlp(input_shape, num_classes, *, widths=(64, 64), batchnorm=False):
    widths = tuple(widths)
    for w in widths:
        _positive_int(w, "widths")
    return MLP(input_shape, num_classes, widths, bool(batchnorm))


# --------------------------------------------------------------------------- CNN


class CNN(nn.Module):
    """conv3(pad 1)-[BN]-ReLU-conv3(pad 1)-[BN]-ReLU-maxpool2-flatten-linear(hidden)-ReLU-linear."""

    def __init__(self, input_shape, num_classes, channels=(16, 32), hidden=64, batchnorm=False):
        super().__init__()
        nd = len(input_shape) - 1
        conv, bn = _conv_cls(nd), _bn_cls(nd)
        pool = nn.MaxPool1d(2) if nd == 1 else nn.MaxPool2d(2)
        c0, (c1, c2) = input_shape[0], channels
        layers = [conv(c0, c1, 3, padding=1)]
        layers += [bn(c1)] if batchnorm else []
        layers += [nn.ReLU(), conv(c1, c2, 3, padding=1)]
        layers += [bn(c2)] if batchnorm else []
        layers += [nn.ReLU(), pool, nn.Flatten()]
        flat = c2 * math.prod(s // 2 for s in input_shape[1:])
        layers += [nn.Linear(flat, hidden), nn.ReLU(), nn.Linear(hidden, num_classes)]
        self.net = nn.Sequential(*layers)

    def forward(self, x):
        return self.net(x)


def _cnn(input_shape, num_classes, *, channels=(16, 32), hidden=64, batchnorm=False):
    _spatial_dims(input_shape, "cnn")
    channels = tuple(channels)
    if len(channels) != 2:
        raise ConfigError(f"model argument channels must have two entries, got {channels!r}")
    for c in channels:
        _positive_int(c, "channels")
    _positive_int(hidden, "hidden")
    if any(s < 2 for s in input_shape[1:]):
        raise ConfigError(f"model 'cnn' needs spatial sizes >= 2, got input_shape {tuple(input_shape)}")
    return CNN(input_shape, num_classes, channels, hidden, bool(batchnorm))


# --------------------------------------------------------------------------- WideResNet


class _WideBlock(nn.Module):
    """Pre-activation block: BN-ReLU-conv3(stride)-BN-ReLU-[dropout]-conv3, plus shortcut.

    The shortcut is the identity, or a 1x1 conv (no bias) on the pre-activated input when the
    shape changes.
    """

    def __init__(self, nd, c_in, c_out, stride, dropout):
        super().__init__()
        conv, bn = _conv_cls(nd), _bn_cls(nd)
        self.bn1 = bn(c_in)
        self.conv1 = conv(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn2 = bn(c_out)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.conv2 = conv(c_out, c_out, 3, stride=1, padding=1, bias=False)
        self.shortcut = (conv(c_in, c_out, 1, stride=stride, bias=False)
                         if (c_in != c_out or stride != 1) else None)
        self.relu = nn.ReLU()

    def forward(self, x):
        o = self.relu(self.bn1(x))
        skip = x if self.shortcut is None else self.shortcut(o)
        o = self.conv1(o)
        o = self.conv2(self.dropout(self.relu(self.bn2(o))))
        return o + skip


class WideResNet(nn.Module):
    """Pre-activation WRN-depth-widen: channels 16, 16k, 32k, 64k; (depth-4)/6 blocks per group."""

    def __init__(self, input_shape, num_classes, depth=16, widen=1, dropout=0.0):
        super().__init__()
        nd = len(input_shape) - 1
        conv, bn = _conv_cls(nd), _bn_cls(nd)
        n = (depth - 4) // 6
        widths = [16, 16 * widen, 32 * widen, 64 * widen]
        self.conv1 = conv(input_shape[0], widths[0], 3, padding=1, bias=False)
        blocks, c_in = [], widths[0]
        for g, stride in zip(range(3), (1, 2, 2)):
            for i in range(n):
                blocks.append(_WideBlock(nd, c_in, widths[g + 1], stride if i == 0 else 1, dropout))
                c_in = widths[g + 1]
        self.blocks = nn.Sequential(*blocks)
        self.bn = bn(c_in)
        self.relu = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool1d(1) if nd == 1 else nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(c_in, num_classes)
        _kaiming_init(self)

    def forward(self, x):
        o = self.blocks(self.conv1(x))
        o = self.pool(self.relu(self.bn(o))).flatten(1)
        return self.fc(o)


def _wrn(input_shape, num_classes, *, depth=16, widen=1, dropout=0.0):
    _spatial_dims(input_shape, "wrn")
    _positive_int(depth, "depth")
    if depth < 10 or (depth - 4) % 6 != 0:
        raise ConfigError(f"model argument depth must satisfy (depth - 4) % 6 == 0 and depth >= 10 "
                          f"for a WRN, got {depth}")
    _positive_int(widen, "widen")
    if not (0.0 <= float(dropout) < 1.0):
        raise ConfigError(f"model argument dropout must be in [0, 1), got {dropout!r}")
    return WideResNet(input_shape, num_classes, depth, widen, float(dropout))


# --------------------------------------------------------------------------- CIFAR ResNet


class _ShortcutA(nn.Module):
    """Option A (He et al. 2016, CIFAR): subsample by striding and zero-pad the new channels."""

    def __init__(self, nd, c_in, c_out, stride):
        super().__init__()
        self.nd, self.stride, self.extra = nd, stride, c_out - c_in

    def forward(self, x):
        x = x[:, :, ::self.stride] if self.nd == 1 else x[:, :, ::self.stride, ::self.stride]
        pad = [0, 0] * self.nd + [self.extra // 2, self.extra - self.extra // 2]
        return nn.functional.pad(x, pad)


class _BasicBlock(nn.Module):
    """conv3-BN-ReLU-conv3-BN, plus the shortcut (if ``skip``), then ReLU."""

    def __init__(self, nd, c_in, c_out, stride, skip, batchnorm, shortcut):
        super().__init__()
        conv, bn = _conv_cls(nd), _bn_cls(nd)
        norm = (lambda c: bn(c)) if batchnorm else (lambda c: nn.Identity())
        self.conv1 = conv(c_in, c_out, 3, stride=stride, padding=1, bias=not batchnorm)
        self.bn1 = norm(c_out)
        self.conv2 = conv(c_out, c_out, 3, padding=1, bias=not batchnorm)
        self.bn2 = norm(c_out)
        self.relu = nn.ReLU()
        self.skip = skip
        if not skip:
            self.shortcut = None
        elif c_in == c_out and stride == 1:
            self.shortcut = nn.Identity()
        elif shortcut == "A":
            self.shortcut = _ShortcutA(nd, c_in, c_out, stride)
        else:
            self.shortcut = nn.Sequential(conv(c_in, c_out, 1, stride=stride, bias=not batchnorm),
                                          norm(c_out))

    def forward(self, x):
        o = self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x)))))
        if self.shortcut is not None:
            o = o + self.shortcut(x)
        return self.relu(o)


class CifarResNet(nn.Module):
    """ResNet-depth for CIFAR: conv3(16)-BN-ReLU, 3 stages of (depth-2)/6 basic blocks with
    16, 32, 64 channels, global average pool, linear head."""

    def __init__(self, input_shape, num_classes, depth=20, skip=True, batchnorm=True, shortcut="A"):
        super().__init__()
        nd = len(input_shape) - 1
        conv, bn = _conv_cls(nd), _bn_cls(nd)
        n = (depth - 2) // 6
        self.conv1 = conv(input_shape[0], 16, 3, padding=1, bias=not batchnorm)
        self.bn1 = bn(16) if batchnorm else nn.Identity()
        self.relu = nn.ReLU()
        blocks, c_in = [], 16
        for c_out, stride in ((16, 1), (32, 2), (64, 2)):
            for i in range(n):
                blocks.append(_BasicBlock(nd, c_in, c_out, stride if i == 0 else 1, skip,
                                          batchnorm, shortcut))
                c_in = c_out
        self.blocks = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool1d(1) if nd == 1 else nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(64, num_classes)
        _kaiming_init(self)

    def forward(self, x):
        o = self.blocks(self.relu(self.bn1(self.conv1(x))))
        return self.fc(self.pool(o).flatten(1))


def _resnet(input_shape, num_classes, *, depth=20, skip=True, batchnorm=True, shortcut="A"):
    _spatial_dims(input_shape, "resnet")
    _positive_int(depth, "depth")
    if depth < 8 or (depth - 2) % 6 != 0:
        raise ConfigError(f"model argument depth must satisfy (depth - 2) % 6 == 0 and depth >= 8 "
                          f"for a CIFAR ResNet, got {depth}")
    if shortcut not in ("A", "B"):
        raise ConfigError(f"model argument shortcut must be 'A' or 'B', got {shortcut!r}")
    return CifarResNet(input_shape, num_classes, depth, bool(skip), bool(batchnorm), shortcut)


def _kaiming_init(model):
    for m in model.modules():
        if isinstance(m, (nn.Conv1d, nn.Conv2d)):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.zeros_(m.bias)


# --------------------------------------------------------------------------- registry


MODELS: dict[str, callable] = {"mlp": _mlp, "cnn": _cnn, "wrn": _wrn, "resnet": _resnet}


def model_arguments(name: str) -> list[str]:
    """The keyword arguments model ``name``'s builder takes (besides the input shape and classes)."""
    return [p for p in inspect.signature(MODELS[name]).parameters if p not in ("input_shape", "num_classes")]


def _model_name(v) -> str | None:
    """The check of ``model.name``: a registry model, ``"custom"`` or ``"torchvision:<name>"``."""
    if v in MODELS or v == "custom" or (v.startswith("torchvision:") and len(v) > len("torchvision:")):
        return None
    return f"unknown model (known: {', '.join(MODELS)}, 'custom' with a factory, 'torchvision:<name>')"


def check_model_section(model: dict, where: str = "model") -> None:
    """Check a config's ``[model]`` section (``name`` and the builder's arguments) before anything
    is built; :class:`ConfigError` names ``where.key``. Builder arguments are checked by name
    (:func:`model_arguments`), sizes for sign, and the depths of the residual networks.
    ``"custom"`` and ``"torchvision:<name>"`` sections are checked by
    :func:`topoland.nets.external.check_external_section`, which imports a custom factory's
    module: validating such a config runs the user's code."""
    name = model.get("name", "mlp")
    if not isinstance(name, str) or _model_name(name):
        raise ConfigError(f"config key '{where}.name' = {name!r}: unknown model (known: {', '.join(MODELS)}, "
                          "'custom' with model.factory, 'torchvision:<name>')")
    if is_external(name):
        check_external_section(model, where)
        return
    allowed = model_arguments(name)
    for k in model:
        if k != "name" and k not in allowed:
            raise ConfigError(f"unknown config key '{where}.{k}' for model '{name}' (its arguments: {', '.join(allowed)})")
    for k, v in model.items():
        if k == "name":
            continue
        if isinstance(v, (int, float)) and not isinstance(v, bool) and v < 0:
            raise ConfigError(f"config key '{where}.{k}' = {v!r}: must be >= 0")
        if isinstance(v, list) and any(isinstance(x, (int, float)) and not isinstance(x, bool) and x <= 0
                                       for x in v):
            raise ConfigError(f"config key '{where}.{k}' = {v!r}: every layer size must be > 0")
    if name == "wrn":
        depth = model.get("depth", 16)
        if not isinstance(depth, int) or depth < 10 or (depth - 4) % 6:
            raise ConfigError(f"config key '{where}.depth' = {depth!r}: a WideResNet needs depth with "
                              "(depth - 4) % 6 == 0, e.g. 10, 16, 22, 28")
    if name == "resnet":
        depth = model.get("depth", 20)
        if not isinstance(depth, int) or depth < 8 or (depth - 2) % 6:
            raise ConfigError(f"config key '{where}.depth' = {depth!r}: a CIFAR ResNet needs depth with "
                              "(depth - 2) % 6 == 0, e.g. 20, 56, 110")


@declare({
    "name": Param((str,), "mlp", _model_name, "architecture: mlp, cnn, wrn, resnet, 'torchvision:<name>' "
                  "or 'custom' (factory = 'package.module:function': runs your code)"),
})
def build_model(name: str, input_shape, num_classes: int, *, seed: int = 0, **kwargs) -> nn.Module:
    """Build model ``name`` for per-sample ``input_shape`` and ``num_classes`` outputs.

    Arguments per model: ``mlp(widths=(64, 64), batchnorm=False)``;
    ``cnn(channels=(16, 32), hidden=64, batchnorm=False)``;
    ``wrn(depth=16, widen=1, dropout=0.0)``;
    ``resnet(depth=20, skip=True, batchnorm=True, shortcut="A")`` (option A: parameter-free
    strided zero-padding shortcut, as in He et al. 2016 for CIFAR; "B": 1x1 conv + BN; without
    BN the convs get biases). Weights are initialized from ``seed`` (global RNG untouched).
    Invalid arguments raise :class:`ConfigError` naming the argument.

    ``"custom"``: ``factory=`` is ``"package.module:function"`` (imported: your code runs) or a
    callable, called as ``function(**kwargs)`` plus ``input_shape=`` / ``num_classes=`` where it
    names those parameters; it must return an ``nn.Module``. ``"torchvision:<name>"``:
    ``torchvision.models.get_model(<name>, weights=None, num_classes=num_classes, **kwargs)`` for
    ``(3, H, W)`` inputs (see :mod:`topoland.nets.external`). Both are built under the same seeded
    generator.
    """
    if not isinstance(name, str) or _model_name(name):
        raise ConfigError(f"unknown model {name!r}; known: {', '.join(MODELS)}, 'custom', 'torchvision:<name>'")
    if is_external(name):
        builder = functools.partial(build_external, name)
    else:
        builder = MODELS[name]
        allowed = model_arguments(name)
        for key in kwargs:
            if key not in allowed:
                raise ConfigError(f"unknown model argument {key!r} for {name!r}; allowed: {', '.join(allowed)}")
    try:
        input_shape = tuple(int(s) for s in input_shape)
    except (TypeError, ValueError):
        raise ConfigError(f"input_shape must be a tuple of positive integers, got {input_shape!r}") from None
    if not input_shape or any(s <= 0 for s in input_shape):
        raise ConfigError(f"input_shape must be a tuple of positive integers, got {input_shape!r}")
    _positive_int(num_classes, "num_classes")
    # fork_rng saves/restores the CPU generator; seeding only that generator (not
    # torch.manual_seed, which also reseeds CUDA) keeps every global RNG untouched.
    with torch.random.fork_rng(devices=[]):
        torch.random.default_generator.manual_seed(int(seed))
        model = builder(input_shape, int(num_classes), **kwargs)
    return model


def count_parameters(model: nn.Module) -> int:
    """Number of trainable scalar parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
