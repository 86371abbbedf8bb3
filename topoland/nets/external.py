"""Models from outside the registry: your own factory and torchvision's classification models.

``[model] name = "custom"``, ``factory = "package.module:function"``: the section's other keys
are the function's keyword arguments, and topoland adds ``input_shape=`` (the per-sample shape,
a tuple) and ``num_classes=`` (an int) when the function names those parameters (a bare
``**kwargs`` gets only the config's keywords). It must return a ``torch.nn.Module`` that maps
``(N, *input_shape)`` to logits ``(N, num_classes)``. Validating such a config imports the
module, which runs its top-level code, and building the model calls the function: both run
your own code, with your permissions.

``[model] name = "torchvision:<name>"`` (e.g. ``"torchvision:resnet18"``): the section's other
keys go to ``torchvision.models.get_model(<name>, weights=None, num_classes=..., **keys)``; only
the classification models (``torchvision.models.list_models(module=torchvision.models)``) are
offered, always untrained: pretrained weights are never downloaded (a ``weights`` key is refused).
They take RGB images ``(3, H, W)``.

Both are built on the CPU under the seeded generator of :func:`topoland.nets.models.build_model`
(weights drawn from ``torch``'s default CPU generator are reproducible from the run seed; a
factory that draws from its own generators or from numpy is not seeded by topoland).
"""
from __future__ import annotations

import torch
from torch import nn

from topoland.declare import call_factory, factory_call, load_factory
from topoland.errors import ConfigError

CUSTOM = "custom"
TORCHVISION = "torchvision:"
#: keys topoland fills itself (or that the custom model does not take from the section)
_RESERVED = ("input_shape", "num_classes", "seed")


def is_external(name) -> bool:
    """Whether a model name is a user factory (``"custom"``) or a torchvision model."""
    return isinstance(name, str) and (name == CUSTOM or name.startswith(TORCHVISION))


def custom_kwargs(model: dict) -> dict:
    """The factory's keyword arguments of a ``[model]`` section: every key but name and factory."""
    return {k: v for k, v in model.items() if k not in ("name", "factory")}


def _spec_text(factory) -> str:
    return factory if isinstance(factory, str) else getattr(factory, "__qualname__", repr(factory))


def _check_custom(model: dict, where: str) -> None:
    if not model.get("factory"):
        raise ConfigError(f"config key '{where}.factory' is missing: {where}.name = 'custom' needs "
                          "factory = 'package.module:function'")
    for k in _RESERVED:
        if k in model:
            why = "is the run seed (run.seed), under which the model is built" if k == "seed" else "comes from the data"
            raise ConfigError(f"config key '{where}.{k}': {k} {why}; remove the key")
    spec = model["factory"]
    func = load_factory(spec, f"{where}.factory")
    factory_call(func, custom_kwargs(model), {"input_shape": (1,), "num_classes": 2},
                 where=f"{where}.factory", spec=_spec_text(spec), section=where)


def _torchvision_name(name: str, where: str) -> str:
    import torchvision.models as tvm
    tv = name[len(TORCHVISION):]
    known = tvm.list_models(module=tvm)
    if tv not in known:
        examples = ", ".join(k for k in ("resnet18", "vgg11", "mobilenet_v3_small") if k in known)
        raise ConfigError(f"config key '{where}.name' = {name!r}: torchvision has no classification model "
                          f"{tv!r} (e.g. {examples}; torchvision.models.list_models() names them all)")
    return tv


def _check_torchvision_keys(name: str, kwargs: dict, where: str) -> None:
    for k in kwargs:
        if k.startswith("weights"):
            raise ConfigError(f"config key '{where}.{k}': {name} is built untrained (weights=None); topoland "
                              "never downloads pretrained weights; remove the key")
        if k in _RESERVED or k == "factory":
            why = {"num_classes": "comes from the data", "seed": "is the run seed (run.seed)",
                   "input_shape": "comes from the data", "factory": "is read only with name = 'custom'"}[k]
            raise ConfigError(f"config key '{where}.{k}': {k} {why}; remove the key")


def _check_torchvision(model: dict, where: str) -> None:
    import torchvision.models as tvm
    name = model["name"]
    tv = _torchvision_name(name, where)
    _check_torchvision_keys(name, {k: v for k, v in model.items() if k != "name"}, where)
    kwargs = custom_kwargs(model)
    try:  # unknown keywords: torchvision's builders take **kwargs, so build once on the meta device
        with torch.device("meta"):
            tvm.get_model(tv, weights=None, num_classes=2, **kwargs)
    except Exception as exc:
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(f"config key '{where}' (name = {name!r}): torchvision cannot build it with "
                          f"{kwargs}: {type(exc).__name__}: {text}") from None


def check_external_section(model: dict, where: str = "model") -> None:
    """Check a ``[model]`` section naming ``"custom"`` or ``"torchvision:<name>"``; one-line
    :class:`ConfigError` naming ``where.key``. For ``"custom"`` this imports the factory's module
    (running its top-level code) and checks that the section's keys bind to its signature."""
    if model["name"] == CUSTOM:
        _check_custom(model, where)
    else:
        _check_torchvision(model, where)


def build_external(name: str, input_shape: tuple, num_classes: int, **kwargs) -> nn.Module:
    """Build a ``"custom"`` (``factory=`` in ``kwargs``) or ``"torchvision:<name>"`` model; the
    caller (:func:`~topoland.nets.models.build_model`) seeds the generator. A factory that does not
    return an ``nn.Module`` raises :class:`ConfigError` naming ``model.factory``."""
    if name == CUSTOM:
        factory = kwargs.pop("factory", None)
        if not factory:
            raise ConfigError("model 'custom' needs factory='package.module:function' (or a callable)")
        spec = _spec_text(factory)
        func = load_factory(factory, "model.factory")
        call = factory_call(func, kwargs, {"input_shape": tuple(input_shape), "num_classes": int(num_classes)},
                            where="model.factory", spec=spec, section="model")
        model = call_factory(func, call, where="model.factory", spec=spec)
        if not isinstance(model, nn.Module):
            raise ConfigError(f"config key 'model.factory' = {spec!r}: the factory returned a "
                              f"{type(model).__name__}, not a torch.nn.Module")
        return model
    import torchvision.models as tvm
    tv = _torchvision_name(name, "model")
    _check_torchvision_keys(name, kwargs, "model")
    if len(input_shape) != 3 or input_shape[0] != 3:
        raise ConfigError(f"model {name!r} takes RGB images (3, H, W) (torchvision's classification "
                          f"models), got input_shape {tuple(input_shape)}")
    return tvm.get_model(tv, weights=None, num_classes=int(num_classes), **kwargs)
