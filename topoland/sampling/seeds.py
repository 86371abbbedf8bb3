"""Seeds derived from a sampler's ``seed``: the direction seeds, the data-stream seed and the
fixed random projection of the sketch storage (independent ``SeedSequence`` streams)."""
from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from topoland.utils import make_generator

__all__ = ["direction_seeds", "data_seed", "random_projection"]

_TAG_DIRECTION, _TAG_DATA, _TAG_SKETCH = 1, 2, 3
_PROJECTION_BLOCK = 65536  # rows of the projection drawn per generator: fixes R whatever the memory


def _derived(seed: int, tag: int, index: int = 0) -> int:
    return int(np.random.SeedSequence([int(seed), tag, int(index)]).generate_state(1, np.uint64)[0] >> 1)


def direction_seeds(seed: int, n: int) -> list[int]:
    """The ``n`` direction seeds derived from a sampler ``seed`` (independent streams)."""
    return [_derived(seed, _TAG_DIRECTION, k) for k in range(int(n))]


def data_seed(seed: int) -> int:
    """Seed of the minibatch-order/augmentation generator derived from a sampler ``seed``."""
    return _derived(seed, _TAG_DATA)


def random_projection(d: int, r: int, seed: int, *, rows: slice | None = None,
                      device="cpu") -> Tensor:
    """The fixed sketch projection ``(D, r)`` float32 (or its ``rows``): N(0, 1/r) entries.

    Drawn in blocks of 65,536 rows, each from its own CPU generator seeded by ``(seed, block)``,
    so any row range can be regenerated without the rest and results never depend on memory.
    ``E[|xR|^2] = |x|^2`` (Johnson-Lindenstrauss).
    """
    rows = slice(0, d) if rows is None else rows
    start, stop = rows.start or 0, d if rows.stop is None else min(rows.stop, d)
    parts = []
    for b in range(start // _PROJECTION_BLOCK, (max(stop, 1) - 1) // _PROJECTION_BLOCK + 1):
        lo = b * _PROJECTION_BLOCK
        n = min(_PROJECTION_BLOCK, d - lo)
        blk = torch.randn(n, int(r), generator=make_generator(_derived(seed, _TAG_SKETCH, b)))
        parts.append(blk[max(start - lo, 0):min(stop - lo, n)])
    out = torch.cat(parts) if parts else torch.zeros(0, int(r))
    return out.mul_(1.0 / math.sqrt(r)).to(device)
