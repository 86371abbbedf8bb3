"""Parameters declared beside the functions that take them.

A science entry point lists its config-facing parameters (type, default, check, meaning) with
:func:`declare`, as scikit-learn estimators list ``_parameter_constraints``. The config schema,
``topoland config --keys`` and config validation are generated from these declarations
(:mod:`topoland.runs.schema`), and a stage passes its config section through with
:func:`arguments`, so a new option is one edit beside the function that takes it::

    @declare({"k": Param((int,), 20, checks.pos, "neighbours of the k-NN graph")})
    def topology_of_samples(table, *, k=20, ...): ...
"""
from __future__ import annotations

import copy
import inspect
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from topoland import checks
from topoland.errors import ConfigError


@dataclass(frozen=True)
class Param:
    """One declared parameter.

    ``types``: the TOML value types it takes; ``default``: its config default; ``check``: value ->
    error text or None; ``help``: one line for ``topoland config --keys``; ``inherit``: the
    ``[train]`` key whose value ``"inherit"`` takes (None: no "inherit"); ``into``: the keyword
    (a dict) of the function the value travels in, e.g. ``"phate_kwargs"`` (None: its own
    keyword); ``arg``: converts the config value into the function's argument (None: as it is).
    """
    types: tuple
    default: Any
    check: Callable[[Any], str | None] | None = None
    help: str = ""
    inherit: str | None = None
    into: str | None = None
    arg: Callable[[Any], Any] | None = None


def _accepted(obj) -> set[str]:
    sig = inspect.signature(obj)  # a class: its __init__ (a dataclass: its fields)
    return {n for n, p in sig.parameters.items() if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)}


def declare(parameters: dict[str, Param]):
    """Decorator: attach ``parameters`` (name -> :class:`Param`, in config order) to a function or
    class as ``obj.parameters``. Every name (or its ``into`` keyword) must be one ``obj`` takes."""
    def attach(obj):
        names = _accepted(obj)
        for name, p in parameters.items():
            if (p.into or name) not in names:
                raise TypeError(f"{obj.__qualname__} declares parameter {name!r} but takes no argument "
                                f"{p.into or name!r}")
        obj.parameters = dict(parameters)
        return obj
    return attach


def declared(obj, *names: str) -> dict[str, Param]:
    """The declared parameters of ``obj``; only ``names`` (in that order) when given."""
    params = obj.parameters
    return dict(params) if not names else {n: params[n] for n in names}


def arguments(obj, values: dict, **fixed) -> dict:
    """The keyword arguments ``obj`` takes from a config section: each declared parameter found in
    ``values``, converted by its ``arg`` and grouped into its ``into`` keyword; ``fixed`` keywords
    are added last (and win)."""
    out: dict = {}
    for name, p in obj.parameters.items():
        if name not in values:
            continue
        v = p.arg(values[name]) if p.arg else values[name]
        if p.into:
            out.setdefault(p.into, {})[name] = v
        else:
            out[name] = v
    return out | fixed


def defaults(params: dict[str, Param]) -> dict:
    """``{name: default}`` of a section's parameters (copies)."""
    return {k: copy.deepcopy(p.default) for k, p in params.items()}


def type_name(types) -> str:
    names = {int: "integer", float: "number", str: "string", bool: "boolean", list: "list", dict: "table"}
    return " or ".join(dict.fromkeys(names.get(t, t.__name__) for t in types))


def check_value(where: str, param: Param, value) -> None:
    """Check one value against its declaration; :class:`ConfigError` naming ``where`` otherwise.
    (``"inherit"`` is the config's business: see :func:`topoland.runs.config.check_value`.)"""
    # bool is an int subclass: keep true/false out of numeric keys and vice versa
    ok = isinstance(value, param.types) and not (isinstance(value, bool) and bool not in param.types)
    if int in param.types and float in param.types and isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"config key '{where}': {value!r} is not a finite number")
    if not ok:
        raise ConfigError(f"config key '{where}' must be a {type_name(param.types)}, got "
                          f"{type(value).__name__} {value!r}")
    if isinstance(value, int) and not isinstance(value, bool) and value > checks.INT_LIMIT \
            and param.check is not checks.seed:
        raise ConfigError(f"config key '{where}' = {value!r}: must be <= {checks.INT_LIMIT} (no count or size "
                          "topoland handles is larger)")
    if param.check is not None:
        msg = param.check(value)
        if msg:
            raise ConfigError(f"config key '{where}' = {value!r}: {msg}")


def validate_section(section: str, params: dict[str, Param], values, *, check=None,
                     skip_undeclared: bool = False) -> dict:
    """``values`` checked key by key against ``params`` and resolved over their defaults.
    Unknown keys (unless ``skip_undeclared``: the builder checks them) and wrong values raise
    :class:`ConfigError` naming ``section.key``; ``check(where, param, value)`` replaces
    :func:`check_value` (the config's takes "inherit")."""
    if not isinstance(values, dict):
        raise ConfigError(f"config section '[{section}]' must be a table")
    check = check or check_value
    for k, v in values.items():
        where = f"{section}.{k}"
        if k not in params:
            if skip_undeclared:
                continue
            raise ConfigError(f"unknown config key '{where}' (known keys of [{section}]: {', '.join(params)})")
        check(where, params[k], v)
    return defaults(params) | dict(values)


def none_if_zero(v):
    """``arg`` of the parameters whose config value 0 means "none" (the function takes None)."""
    return v or None


# --------------------------------------------------------------------------- user factories
#: the shape of a factory string: ``package.module:function`` (the attribute may be dotted)
_FACTORY_FORM = r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*(\.[A-Za-z_]\w*)*"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0]}" if text else type(exc).__name__


def load_factory(spec, where: str):
    """The callable a factory string ``"package.module:function"`` names (or ``spec`` itself
    when it is already callable). ``where``: the config key that holds it (``model.factory``,
    ``data.factory``), named by every error.

    This imports the module, which runs its top-level code: the user's own code (the module
    must be importable: installed, or on ``sys.path`` / ``PYTHONPATH``). Raises one-line
    :class:`ConfigError` naming ``where`` and ``spec`` when the string is not ``module:attr``
    shaped, the import fails, the attribute is missing or is not callable.
    """
    import importlib
    import re
    if callable(spec):
        return spec
    head = f"config key '{where}' = {spec!r}"
    if not isinstance(spec, str) or not re.fullmatch(_FACTORY_FORM, spec):
        raise ConfigError(f"{head}: a factory is 'package.module:function' (an importable module, a colon, "
                          "a callable in it)")
    module_name, attr = spec.split(":")
    try:
        obj = importlib.import_module(module_name)
    except Exception as exc:  # the user's module: any error its top-level code raises
        hint = "; is it installed or on PYTHONPATH?" if isinstance(exc, ModuleNotFoundError) else ""
        raise ConfigError(f"{head}: importing module '{module_name}' failed ({_first_line(exc)}){hint}") from exc
    parts = attr.split(".")
    for i, part in enumerate(parts):
        if not hasattr(obj, part):
            owner = f"'{module_name}:{'.'.join(parts[:i])}'" if i else f"module '{module_name}'"
            raise ConfigError(f"{head}: {owner} has no attribute '{part}'")
        obj = getattr(obj, part)
    if not callable(obj):
        raise ConfigError(f"{head}: '{attr}' is not callable (its type is {type(obj).__name__})")
    return obj


def factory_call(func, kwargs: dict, offered: dict, *, where: str, spec, section: str) -> dict:
    """The keyword arguments ``func`` is called with: ``kwargs`` (the config's) plus each of
    ``offered`` (topoland's: ``input_shape``, ``num_classes``, ``seed``) that ``func`` names as a
    parameter (a bare ``**kwargs`` does not count: it gets only the config's keywords).

    :class:`ConfigError` (one line, naming ``where``, the factory key, and ``spec``) when a
    config keyword is one topoland passes itself, or the call could not bind (an unknown
    keyword, a required parameter left out); ``section``: where the config keywords live
    (``model``, ``data.kwargs``), named for a clash.
    """
    try:
        sig = inspect.signature(func)
    except (TypeError, ValueError):  # a builtin without a signature: call it and see
        return dict(kwargs)
    named = {n for n, p in sig.parameters.items() if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)}
    head = f"config key '{where}' = {spec!r}"
    for k in kwargs:
        if k in offered:
            raise ConfigError(f"config key '{section}.{k}': topoland passes {k}= to the factory {spec!r} "
                              f"itself; remove the key")
    call = dict(kwargs) | {k: v for k, v in offered.items() if k in named}
    try:
        sig.bind(**call)
    except TypeError as exc:
        raise ConfigError(f"{head}: cannot be called with keywords ({', '.join(call) or 'none'}): "
                          f"{_first_line(exc).removeprefix('TypeError: ')}") from None
    return call


def call_factory(func, call: dict, *, where: str, spec):
    """``func(**call)``; an exception the user's code raises becomes one :class:`ConfigError`
    line naming ``where`` and ``spec`` (chained to the original, whose traceback it keeps)."""
    try:
        return func(**call)
    except Exception as exc:  # the user's code: any error, topoland's own included (it names no key)
        raise ConfigError(f"config key '{where}' = {spec!r}: the factory raised {_first_line(exc)}") from exc
