"""Package faces that import their submodules on first use (``import topoland`` stays fast)."""
from __future__ import annotations

import importlib


def lazy_exports(package: str, exports: dict[str, str]):
    """``__getattr__`` and ``__dir__`` for a package whose public names live in submodules.

    ``exports``: name -> the module that defines it. A name is imported on first access and
    then cached in the package's namespace."""
    pkg = importlib.import_module(package)

    def __getattr__(name: str):
        mod = exports.get(name)
        if mod is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(mod), name)
        setattr(pkg, name, value)
        return value

    def __dir__():
        return sorted(set(vars(pkg)) | set(exports))

    return __getattr__, __dir__
