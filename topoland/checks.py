"""Checks of single config values: each takes a value and returns an error text or None.

The config schema (:mod:`topoland.runs.config`) attaches one to every key.
"""
from __future__ import annotations

import math

def run_name(v):
    # the name becomes a folder and a file name: no separators, no '..', nothing hidden
    import re
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}", v) or ".." in v:
        return "must be a plain name (letters, digits, '_', '-', '.'; no path separators or '..')"
    return None


def synthetic_opts(v):
    allowed = {"n_train", "n_test", "num_classes", "input_shape", "separation", "noise"}
    bad = sorted(set(v) - allowed)
    return f"unknown option {bad[0]!r} (known: {', '.join(sorted(allowed))})" if bad else None


def nonneg(v):
    return None if v >= 0 else "must be >= 0"


def pos(v):
    return None if v > 0 else "must be > 0"


def frac(v):
    return None if 0 <= v < 1 else "must be in [0, 1)"


def unit(v):
    return None if 0 <= v <= 1 else "must be in [0, 1]"


def one_of(*opts):
    def check(v):
        return None if v in opts else f"must be one of {', '.join(map(repr, opts))}"
    return check


def each(check):
    def inner(vs):
        for v in vs:
            msg = check(v)
            if msg:
                return f"entry {v!r} {msg}"
        return None
    return inner


SEED_LIMIT = 2 ** 32      # numpy's legacy seeding, and the data splits, need seeds below 2^32
INT_LIMIT = 2 ** 31 - 1   # no count or size topoland handles is larger


def seed(v):
    return None if 0 <= v < SEED_LIMIT else f"must be in [0, {SEED_LIMIT})"


def numbers(check=None, *, min_len: int = 1):
    """A list of at least ``min_len`` finite numbers (not booleans), each passing ``check``."""
    def inner(vs):
        if len(vs) < min_len:
            return f"must list at least {min_len} number{'s' if min_len > 1 else ''}, got {len(vs)}"
        for x in vs:
            if isinstance(x, bool) or not isinstance(x, (int, float)) or not math.isfinite(x):
                return f"entry {x!r} is not a finite number"
            msg = check(x) if check else None
            if msg:
                return f"entry {x!r} {msg}"
        return None
    return inner


def interval(vs):
    msg = numbers(min_len=2)(vs)
    if msg:
        return msg
    if len(vs) != 2 or not vs[0] < vs[1]:
        return f"must be [lo, hi] with lo < hi, got {vs!r}"
    return None


def nonempty(check):
    def inner(vs):
        return "must not be empty" if not vs else check(vs)
    return inner


def at_least(n):
    def check(v):
        return None if v >= n else f"must be >= {n}"
    return check


def is_str(v):
    return None if isinstance(v, str) and v else "must be a non-empty string"


def open_unit(v):
    return None if 0 < v < 1 else "must be in (0, 1)"


def auto_or_nonneg(v):
    if isinstance(v, str):
        return None if v == "auto" else "must be 'auto' or a number >= 0"
    return None if math.isfinite(v) and v >= 0 else "must be 'auto' or a finite number >= 0"


def auto_or_pos_int(v):
    if isinstance(v, str):
        return None if v == "auto" else "must be 'auto' or a positive integer"
    return None if v >= 1 else "must be 'auto' or a positive integer"
