"""Model checkpoints as safetensors, never pickle.

A checkpoint holds the model's ``state_dict`` tensors (parameters and persistent buffers) and
string metadata: ``topoland_checkpoint`` (format version), ``spec`` (JSON: model ``name``,
``kwargs``, ``input_shape``, ``num_classes``) and ``metrics`` (JSON). Writes are atomic (a
temporary name in the same folder, then ``os.replace``).

Reading: safetensors files are parsed by the safetensors library (no code execution). A raw
pickle is refused outright. A PyTorch zip checkpoint (``.pt``/``.pth``) is read only with
``torch.load(..., weights_only=True)``, whose restricted unpickler cannot run code; it carries
no model spec, so ``model=`` must be given.
"""
from __future__ import annotations

import json
import os

import torch
from torch import Tensor, nn

from topoland import checks
from topoland.data import load_dataset
from topoland.declare import Param, check_value, validate_section
from topoland.errors import CheckpointError, ConfigError
from topoland.io import load_tensors, save_tensors, sniff_format
from topoland.nets.models import build_model, check_model_section

FORMAT_VERSION = "1"
_SPEC_KEYS = ("name", "input_shape", "num_classes")

#: the largest model (scalar parameters) a checkpoint's spec may ask for unless the caller raises
#: it (``max_params=``, ``--max-params``): 200 million, 800 MB in float32 (a WRN-28-10 has 36.5 M)
MAX_PARAMS = 200_000_000


def _spec_json(spec: dict) -> str:
    if not isinstance(spec, dict):
        raise ConfigError(f"checkpoint spec must be a dict, got {type(spec).__name__}")
    missing = [k for k in _SPEC_KEYS if k not in spec]
    if missing:
        raise ConfigError(f"checkpoint spec lacks key(s) {', '.join(missing)}")
    clean = {"name": spec["name"], "input_shape": [int(s) for s in spec["input_shape"]],
             "num_classes": int(spec["num_classes"]), "kwargs": dict(spec.get("kwargs") or {})}
    for k, v in spec.items():
        if k not in clean:
            clean[k] = v
    try:
        return json.dumps(clean, sort_keys=True)
    except TypeError as exc:
        raise ConfigError(f"checkpoint spec is not JSON-serializable: {exc}") from exc


def _shape(v, what: str, path) -> list[int]:
    ok = isinstance(v, list) and 1 <= len(v) <= 3 and all(
        isinstance(s, int) and not isinstance(s, bool) and s >= 1 for s in v)
    if not ok:
        raise CheckpointError(f"checkpoint {path}: spec {what} must be a list of 1 to 3 positive integers, "
                              f"got {v!r}")
    return v


def _user_data(spec: dict) -> bool:
    data = spec.get("data")
    return isinstance(data, dict) and (data.get("name") == "custom" or bool(data.get("factory")))


def _check_spec_sections(spec: dict, kwargs: dict) -> dict:
    """The spec's model, seed and data checked by their own declarations (those of the config's
    [model] and [data] sections); returns the data section resolved over its defaults. A user
    model factory is refused; a user data factory's section is left out (not imported)."""
    check_value("model.name", build_model.parameters["name"], spec["name"])
    if spec["name"] == "custom" or "factory" in kwargs:
        raise ConfigError(f"its model is a user factory (model.factory = {kwargs.get('factory')!r}): a "
                          "checkpoint never makes topoland import code; build the model and pass model=")
    check_model_section({"name": spec["name"], **kwargs})
    check_value("run.seed", Param((int,), 0, checks.seed), spec.get("seed", 0))
    return validate_section("data", load_dataset.parameters, {} if _user_data(spec) else spec.get("data") or {})


def check_spec(spec, path, *, max_params: int | None = MAX_PARAMS) -> dict:
    """A checkpoint's embedded spec, checked as untrusted input before anything is built.

    The model and data sections and the seed are validated by the declarations the config's
    sections come from (:func:`topoland.nets.models.check_model_section`, the parameters of
    :func:`topoland.data.load_dataset`); ``input_shape`` and ``num_classes`` must be positive
    integers; the model's parameters are counted on the meta device (nothing allocated) and a
    model above ``max_params`` is refused (None: no limit). Returns the spec with the data
    section resolved over its defaults and ``download`` forced off: a checkpoint never makes
    topoland reach the network. Nor does it make topoland import code: a spec naming a user
    model factory (``"custom"``) is refused, and a user data factory's section is dropped (the
    dataset is then not recorded: the caller names one). Raises :class:`CheckpointError` naming
    the file and the key.
    """
    if not isinstance(spec, dict):
        raise CheckpointError(f"checkpoint {path}: spec must be a JSON object, got {type(spec).__name__}")
    missing = [k for k in _SPEC_KEYS if k not in spec]
    if missing:
        raise CheckpointError(f"checkpoint {path}: spec lacks key(s) {', '.join(missing)}")
    kwargs = spec.get("kwargs") or {}
    if not isinstance(kwargs, dict) or not isinstance(spec["name"], str):
        raise CheckpointError(f"checkpoint {path}: spec name must be a string and kwargs an object")
    n_cls = spec["num_classes"]
    if not isinstance(n_cls, int) or isinstance(n_cls, bool) or n_cls < 1:
        raise CheckpointError(f"checkpoint {path}: spec num_classes must be a positive integer, got {n_cls!r}")
    try:
        data = _check_spec_sections(spec, kwargs)
    except ConfigError as e:
        raise CheckpointError(f"checkpoint {path}: its spec is refused: {e}") from None
    out = dict(spec) | {"input_shape": _shape(spec["input_shape"], "input_shape", path), "kwargs": dict(kwargs)}
    if _user_data(spec):
        out.pop("data")
    elif spec.get("data"):
        out["data"] = data | {"download": False}
    if max_params is not None:
        n = spec_parameters(out, path)
        if n > max_params:
            raise CheckpointError(f"checkpoint {path}: its spec asks for a '{spec['name']}' model of {n:,} "
                                  f"parameters, above the budget of {max_params:,}; raise it (--max-params) "
                                  "if you trust the file")
    return out


def spec_parameters(spec: dict, path="checkpoint") -> int:
    """Scalar parameters and buffers of the model a spec describes, counted on the meta
    device (shapes only, no memory)."""
    try:
        with torch.device("meta"):
            model = build_model(spec["name"], spec["input_shape"], spec["num_classes"], **spec.get("kwargs", {}))
    except ConfigError as e:
        raise CheckpointError(f"checkpoint {path} has an invalid model spec: {e}") from None
    except Exception as e:  # a builder refusing impossible sizes (zero widths, too small inputs)
        raise CheckpointError(f"checkpoint {path} has a model spec that cannot be built: "
                              f"{type(e).__name__}: {e}") from None
    return sum(t.numel() for t in model.state_dict().values())


def nonfinite_problems(tensors: dict[str, Tensor]) -> list[str]:
    """``"tensor X has N non-finite values"`` for every floating tensor holding NaN or inf."""
    out = []
    for name in sorted(tensors):
        t = tensors[name]
        if t.is_floating_point() or t.is_complex():
            n = int((~torch.isfinite(t)).sum())
            if n:
                out.append(f"tensor {name!r} has {n} non-finite value{'s' * (n != 1)} (NaN or inf)")
    return out


def save_checkpoint(path, model: nn.Module, *, spec: dict, metrics: dict | None = None) -> None:
    """Save ``model.state_dict()`` and its ``spec`` (+ ``metrics``) to ``path`` atomically.

    ``spec``: ``{"name", "input_shape", "num_classes", "kwargs"}`` as given to
    :func:`topoland.nets.models.build_model` (extra JSON-serializable keys are kept).
    """
    metadata = {"topoland_checkpoint": FORMAT_VERSION, "spec": _spec_json(spec),
                "metrics": json.dumps({k: float(v) for k, v in (metrics or {}).items()}, sort_keys=True)}
    save_tensors(path, model.state_dict(), metadata)


def compare_state(model: nn.Module, tensors: dict[str, Tensor]) -> list[str]:
    """Differences between ``model.state_dict()`` and ``tensors``: one line per problem."""
    expected = model.state_dict()
    problems = []
    missing = [k for k in expected if k not in tensors]
    unexpected = sorted(k for k in tensors if k not in expected)
    mismatched = [f"{k} (checkpoint {tuple(tensors[k].shape)}, model {tuple(v.shape)})"
                  for k, v in expected.items() if k in tensors and tensors[k].shape != v.shape]
    for label, items in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", mismatched)):
        if items:
            shown = ", ".join(items[:8]) + (f", ... ({len(items)} in all)" if len(items) > 8 else "")
            problems.append(f"{label}: {shown}")
    return problems


def load_checkpoint(path, *, model: nn.Module | None = None, device="cpu",
                    max_params: int | None = MAX_PARAMS) -> tuple[nn.Module, dict]:
    """Load a checkpoint into ``model`` (or a model rebuilt from the stored spec).

    Returns ``(model in eval mode on device, meta)`` with ``meta = {"spec": dict | None,
    "metrics": dict, "format": str}``. A spec used to build the model is untrusted input
    (:func:`check_spec`: validated, at most ``max_params`` parameters, ``download`` off).
    Raises :class:`CheckpointError` when the file is missing, truncated, a pickle, its spec is
    refused, its tensors do not match the architecture (listing the missing, unexpected and
    mismatched tensors) or hold NaN or inf (naming each tensor).
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint {path} does not exist")
    with open(path, "rb") as f:
        head = f.read(16)
    if sniff_format(head) == "torch-zip":
        tensors, meta = _load_torch_zip(path), {"spec": None, "metrics": {}, "format": "torch"}
        if model is None:
            raise CheckpointError(f"{path} is a PyTorch file without a model spec: pass model= "
                                  f"to load it")
    else:
        tensors, raw = load_tensors(path, what="checkpoint", error=CheckpointError)
        try:
            spec = json.loads(raw["spec"]) if "spec" in raw else None
            metrics = json.loads(raw.get("metrics", "{}"))
        except ValueError as exc:
            raise CheckpointError(f"checkpoint {path} has corrupted metadata: {exc}") from exc
        meta = {"spec": spec, "metrics": metrics, "format": raw.get("topoland_checkpoint", "none")}
        if model is None:
            if spec is None:
                raise CheckpointError(f"checkpoint {path} has no model spec: pass model= to load it")
            spec = meta["spec"] = check_spec(spec, path, max_params=max_params)
            try:
                model = build_model(spec["name"], spec["input_shape"], spec["num_classes"],
                                    **spec.get("kwargs", {}))
            except (ConfigError, KeyError, TypeError) as exc:
                raise CheckpointError(f"checkpoint {path} has an invalid model spec: {exc}") from exc
    problems = compare_state(model, tensors)
    if problems:
        raise CheckpointError(f"checkpoint {path} does not match the model architecture: "
                              + "; ".join(problems))
    bad = nonfinite_problems(tensors)
    if bad:
        raise CheckpointError(f"checkpoint {path}: " + "; ".join(bad) + " (a diverged training?)")
    model.load_state_dict(tensors, strict=True)
    model.to(device)
    model.eval()
    return model, meta


def _load_torch_zip(path) -> dict[str, Tensor]:
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"{path} cannot be read with torch.load(weights_only=True) (it holds "
                              f"more than tensors, or is corrupted); topoland loads no other way: "
                              f"{type(exc).__name__}: {exc}") from exc
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, Tensor) for v in obj.values()):
        raise CheckpointError(f"{path} is a PyTorch file but not a state dict of tensors")
    return dict(obj)
