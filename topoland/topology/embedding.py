"""Cosine distances between parameter snapshots, and PHATE embeddings built on them.

Snapshots are rows of an ``(N, D)`` matrix (one flattened parameter vector per recorded
sample). Distances are computed blockwise with torch so that ``N`` in the thousands and
``D`` in the millions never materialise more than one ``(N, chunk)`` slab at a time.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from topoland.errors import ConfigError, DataError
from topoland.utils import make_generator, resolve_device

__all__ = [
    "PhateResult",
    "cosine_distances",
    "cosine_distances_from_gram",
    "cosine_distances_reference",
    "cosine_sketch",
    "sketch_cosine_distances",
    "alpha_decay_affinity",
    "phate_embedding",
    "DEFAULT_T",
]

#: Fixed diffusion time used by default (PHATE's ``t="auto"`` swings between runs; see docs).
DEFAULT_T = 20


def _as_2d_tensor(X, name: str) -> torch.Tensor:
    if isinstance(X, np.ndarray):
        X = torch.from_numpy(X)
    if not isinstance(X, torch.Tensor):
        raise DataError(f"{name} must be a numpy array or torch tensor, got {type(X).__name__}.")
    if X.ndim != 2:
        raise DataError(f"{name} must have shape (N, D), got {tuple(X.shape)}.")
    if not X.dtype.is_floating_point:
        raise DataError(f"{name} must be floating point, got {X.dtype}.")
    return X


def _check_squared_norms(sq: torch.Tensor):
    """Rows whose squared norm is non-finite or zero have no cosine distance: name them."""
    if not torch.isfinite(sq).all():
        bad = torch.nonzero(~torch.isfinite(sq)).flatten()[:5].tolist()
        raise DataError(f"X rows {bad} contain non-finite values; cosine distance is undefined.")
    if (sq == 0).any():
        bad = torch.nonzero(sq == 0).flatten()[:5].tolist()
        raise DataError(f"X rows {bad} are all zeros; cosine distance is undefined.")


def cosine_distances(X, *, block_size: int = 256, chunk_size: int | None = None,
                     device="auto") -> np.ndarray:
    """Cosine distances ``1 - <x_i, x_j> / (|x_i| |x_j|)`` between the rows of ``X``.

    ``X``: ``(N, D)`` float16/bfloat16/float32/float64 array or tensor (CPU or device).
    Returns a symmetric ``(N, N)`` float64 numpy array with a zero diagonal, values in
    ``[0, 2]``.

    Accuracy: rows are normalised with float64 norms and centred on the mean unit vector
    ``m`` before the float32 products, because ``1 - cos(u_i, u_j) = |v_i - v_j|^2 / 2``
    with ``v = u - m``; the float32 rounding then scales with ``|v|^2`` (the spread of the
    snapshots) instead of with ``|u|^2 = 1``, which matters when the snapshots are close
    together (float64 input keeps float64 products). Products over ``D``-chunks of ``chunk_size`` columns are accumulated in
    float64, and only the upper block triangle (row blocks of ``block_size``) is computed.
    Peak extra memory: ``N * chunk_size * 12`` bytes of chunk buffers (default ``chunk_size``:
    about 384 MB in all) plus the ``(N, N)`` float64 result.
    """
    X = _as_2d_tensor(X, "X")
    dev = resolve_device(device)
    n, d = X.shape
    if n == 0:
        return np.zeros((0, 0))
    if chunk_size is None:  # float64 chunk buffer of about 256 MB (plus 128 MB float32)
        chunk_size = max(1024, (1 << 25) // max(n, 1))
    # preallocated chunk buffers (fresh N x chunk allocations each chunk cost page faults);
    # every elementwise pass below runs in one dtype (mixed-dtype torch ops are 10x slower)
    width = min(chunk_size, d)
    buf = torch.empty((n, width), dtype=torch.float64, device=dev)
    work = torch.float64 if X.dtype == torch.float64 else torch.float32
    vbuf = buf if work == torch.float64 else torch.empty((n, width), dtype=work, device=dev)
    # pass 1: float64 norms
    sq = torch.zeros(n, dtype=torch.float64, device=dev)
    for c0 in range(0, d, chunk_size):
        b = buf[:, :min(chunk_size, d - c0)]
        b.copy_(X[:, c0:c0 + chunk_size])
        sq += torch.linalg.vector_norm(b, dim=1).square_()
    _check_squared_norms(sq)
    inv = (1.0 / torch.sqrt(sq))[:, None]
    # pass 2: Gram of the centred unit vectors, upper block triangle, float64 accumulation
    G = torch.zeros((n, n), dtype=torch.float64, device=dev)
    blocks = [(b0, min(b0 + block_size, n)) for b0 in range(0, n, block_size)]
    for c0 in range(0, d, chunk_size):
        w = min(chunk_size, d - c0)
        b = buf[:, :w]
        b.copy_(X[:, c0:c0 + chunk_size])
        m = (inv.T @ b) / n                                  # (1, w): the mean unit vector
        torch.addcmul(-m, b, inv, out=b)                     # v = x * inv - m, in float64
        v = vbuf[:, :w]
        if v is not b:
            v.copy_(b)
        for i, (a0, a1) in enumerate(blocks):
            for b0, b1 in blocks[i:]:
                G[a0:a1, b0:b1] += (v[a0:a1] @ v[b0:b1].T).to(torch.float64)
    # the centring vector changes per chunk, which is fine: |v_i - v_j|^2 is unchanged by
    # subtracting any common vector, chunk by chunk.
    for i, (a0, a1) in enumerate(blocks):  # mirror the upper triangle (BLAS need not)
        blk = G[a0:a1, a0:a1]
        blk.copy_(torch.triu(blk) + torch.triu(blk, diagonal=1).T)
        for b0, b1 in blocks[i + 1:]:
            G[b0:b1, a0:a1] = G[a0:a1, b0:b1].T
    diag = torch.diagonal(G).clone()
    # in place: D = ((G_ii + G_jj) - 2 G_ij) / 2, one row block at a time (no N x N
    # temporaries; G_ii + G_jj as one sum keeps D exactly symmetric)
    D = G
    for a0, a1 in blocks:
        D[a0:a1].mul_(-2.0).add_(diag[a0:a1, None] + diag[None, :]).mul_(0.5)
    D.clamp_(0.0, 2.0)
    D.fill_diagonal_(0.0)
    return D.cpu().numpy()


def cosine_distances_reference(X) -> np.ndarray:
    """Plain float64 reference: ``1 - x_i.x_j / (|x_i||x_j|)`` with a Python loop over rows.

    ``X``: ``(N, D)``; returns ``(N, N)`` float64. Slow; for tests.
    """
    A = np.asarray(X.detach().cpu() if isinstance(X, torch.Tensor) else X, dtype=np.float64)
    n = A.shape[0]
    out = np.zeros((n, n))
    norms = [float(np.sqrt(A[i] @ A[i])) for i in range(n)]
    for i in range(n):
        for j in range(n):
            if i != j:
                out[i, j] = 1.0 - float(A[i] @ A[j]) / (norms[i] * norms[j])
    return out


def _sketch_layout(d: int, dim: int, seed: int):
    """Slot ``s`` of the padded ``(reps * dim,)`` layout takes coordinate ``src[s]`` with sign
    ``sign[s]`` (0 on padding slots) and adds into bucket ``s % dim``; coordinates are
    assigned to slots by a seeded random permutation, so each bucket gets ``reps`` of them."""
    reps = -(-d // dim)
    g = make_generator(seed)
    slots = torch.randperm(reps * dim, generator=g)          # slot -> padded coordinate
    signs = torch.randint(0, 2, (reps * dim,), generator=g, dtype=torch.int64) * 2 - 1
    pad = slots >= d
    src = torch.where(pad, 0, slots)
    sign = torch.where(pad, 0, signs).to(torch.float32)
    return reps, src, sign


def cosine_sketch(X, dim: int = 4096, *, seed: int = 0, block_size: int = 256,
                  device="auto") -> torch.Tensor:
    """Count sketch of the unit rows of ``X``: ``Y = S (x_i / |x_i|)``, then centred.

    ``X``: ``(N, D)`` float array or tensor. ``S`` is a seeded ``(dim, D)`` count-sketch
    matrix: every coordinate goes to one of ``dim`` buckets (a random permutation spreads
    ``ceil(D / dim)`` coordinates over each bucket) with a random sign. One pass over ``X``
    (``O(N D)``). Returns ``(N, dim)`` float32 on ``device``, rows centred
    on their mean (distances between rows are unchanged by centring; rounding shrinks).
    With ``dim >= D`` each coordinate has its own bucket and ``S`` is an isometry.
    """
    X = _as_2d_tensor(X, "X")
    if not isinstance(dim, (int, np.integer)) or isinstance(dim, bool) or dim < 1:
        raise ConfigError(f"sketch dim must be a positive integer, got {dim!r}.")
    dev = resolve_device(device)
    n, d = X.shape
    reps, src, sign = _sketch_layout(d, int(dim), seed)
    src, sign = src.to(dev), sign.to(dev)
    Y = torch.empty((n, dim), dtype=torch.float32, device=dev)
    sq = torch.empty(n, dtype=torch.float64, device=dev)
    gathered = torch.empty((min(block_size, n), reps * dim), dtype=X.dtype, device=dev)
    work = torch.empty(gathered.shape, dtype=torch.float32, device=dev)
    for b0 in range(0, n, block_size):
        b1 = min(b0 + block_size, n)
        rows = X[b0:b1].to(dev)
        g, w = gathered[:b1 - b0], work[:b1 - b0]
        for r in range(b1 - b0):  # a 1-D gather per row is 5x faster than a 2-D column gather
            torch.index_select(rows[r], 0, src, out=g[r])
        w.copy_(g).mul_(sign)
        # float32 norms: a float64 reduction is 20x slower, and a 1e-7 relative norm error
        # is far below the sketch's own sqrt(2 / dim)
        sq[b0:b1] = torch.linalg.vector_norm(w, dim=1).to(torch.float64).square()
        Y[b0:b1] = w.view(b1 - b0, reps, dim).sum(1)
    _check_squared_norms(sq)
    Y.mul_((1.0 / sq.sqrt()).to(torch.float32)[:, None])
    Y.sub_(Y.mean(0, dtype=torch.float64).to(torch.float32))
    return Y


def sketch_cosine_distances(X, dim: int = 4096, *, seed: int = 0, device="auto") -> np.ndarray:
    """Cosine distances estimated from a count sketch of the unit rows (:func:`cosine_sketch`).

    Since ``1 - cos(x_i, x_j) = |u_i - u_j|^2 / 2`` for unit rows ``u``, the estimate is
    ``|S u_i - S u_j|^2 / 2``: unbiased, with a relative standard deviation of about
    ``sqrt(2 / dim)`` for each pair (2.2% at ``dim=4096``) whatever the distance's size,
    so the nearest neighbours that PHATE's kernel reads stay nearest. Exact (up to float32
    rounding) when ``dim >= D``. Cost: one ``O(N D)`` pass plus an ``N x N x dim`` product,
    against ``N x N x D / 2`` for :func:`cosine_distances`.
    ``X``: ``(N, D)``; returns a symmetric ``(N, N)`` float64 array, zero diagonal, in ``[0, 2]``.
    """
    Y = cosine_sketch(X, dim, seed=seed, device=device)
    if Y.device.type == "cpu":  # numpy's Y @ Y.T is a symmetric rank-k update (half the work)
        Yn = Y.numpy()
        G = torch.from_numpy(Yn @ Yn.T)
    else:
        G = Y @ Y.T
    n = G.shape[0]
    diag = torch.diagonal(G).to(torch.float64)
    D = torch.empty((n, n), dtype=torch.float64, device=G.device)
    for a0 in range(0, n, 1024):  # row blocks: no N x N temporaries
        a1 = min(a0 + 1024, n)
        # (|y_i|^2 + |y_j|^2) as one sum keeps D exactly symmetric when G is
        torch.add(diag[a0:a1, None], diag[None, :], out=D[a0:a1])
        D[a0:a1].sub_(G[a0:a1].to(torch.float64), alpha=2.0).mul_(0.5)
    if G.device.type != "cpu":  # cuBLAS need not return an exactly symmetric G
        D = 0.5 * (D + D.T)
    D.clamp_(0.0, 2.0)
    D.fill_diagonal_(0.0)
    return D.cpu().numpy()


def alpha_decay_affinity(distances, knn: int = 5, decay: float = 40, thresh: float = 1e-4,
                         *, block_size: int = 1024):
    """PHATE's alpha-decay kernel of a distance matrix, built blockwise and kept sparse.

    ``distances``: ``(N, N)``. Row ``i``: ``exp(-(d_ij / bw_i) ** decay)`` with ``bw_i`` the
    distance to the ``knn``-th nearest other point; entries below ``thresh`` dropped. This is
    exactly graphtools' ``TraditionalGraph`` kernel for ``precomputed="distance"`` before its
    ``(K + K.T) / 2`` symmetrization, but never holds a dense ``(N, N)`` kernel. Returns a
    ``scipy.sparse.csr_matrix`` ``(N, N)`` float64 (unsymmetrized).
    """
    from scipy import sparse

    D = np.asarray(distances)
    n = D.shape[0]
    # exp(-(d / bw) ** decay) >= thresh only where d <= bw * (-log thresh) ** (1 / decay)
    # (1.057 bw at PHATE's defaults), so the kernel is evaluated on those entries alone; the
    # 1e-9 margin keeps every entry the dense formula keeps, which is applied to them unchanged.
    reach = (-np.log(thresh)) ** (1.0 / decay) * (1 + 1e-9) if 0 < thresh < 1 else np.inf
    rows, cols, vals = [], [], []
    for b0 in range(0, n, block_size):
        blk = np.asarray(D[b0:b0 + block_size], dtype=np.float64)
        bw = np.partition(blk, knn, axis=1)[:, knn]  # index 0 is the point itself (distance 0)
        ri, ci = np.nonzero(blk <= (bw * reach)[:, None]) if np.isfinite(reach) else \
            np.nonzero(np.ones_like(blk, dtype=bool))
        d, b = blk[ri, ci], bw[ri]
        with np.errstate(divide="ignore", invalid="ignore"):
            k = np.exp(-np.power(d / b, decay))
        k = np.where(np.isnan(k), 1.0, k)
        keep = (k >= thresh) & (k > 0)  # the dense kernel's sparse form holds no zeros
        rows.append(ri[keep] + b0)
        cols.append(ci[keep])
        vals.append(k[keep])
    rows, cols, vals = (np.concatenate(a) for a in (rows, cols, vals))
    return sparse.csr_matrix((vals, (rows, cols)), shape=(n, n))


def cosine_distances_from_gram(G) -> np.ndarray:
    """Cosine distances from a Gram matrix ``G_ij = <x_i, x_j>`` (the sampler's sketch).

    ``G``: ``(N, N)`` symmetric; returns ``(N, N)`` float64 ``1 - G_ij / sqrt(G_ii G_jj)``,
    clipped to ``[0, 2]``, zero diagonal.
    """
    if isinstance(G, torch.Tensor):
        G = G.detach().cpu().numpy()
    G = np.asarray(G, dtype=np.float64)
    if G.ndim != 2 or G.shape[0] != G.shape[1]:
        raise DataError(f"gram must be a square (N, N) matrix, got shape {G.shape}.")
    if not np.isfinite(G).all():
        raise DataError("gram contains non-finite entries.")
    diag = np.diag(G).copy()
    if (diag <= 0).any():
        bad = np.flatnonzero(diag <= 0)[:5].tolist()
        raise DataError(f"gram has non-positive diagonal entries at rows {bad}; "
                        "cosine distance is undefined.")
    s = np.sqrt(diag)
    Gs = 0.5 * (G + G.T)
    D = 1.0 - Gs / s[:, None] / s[None, :]
    np.clip(D, 0.0, 2.0, out=D)
    np.fill_diagonal(D, 0.0)
    return D


@dataclass
class PhateResult:
    """A PHATE fit.

    coords: ``(N, n_components)`` embedding. potential: diffusion potential,
    ``(N, N)`` without landmarks or ``(N, n_landmark)`` with them (natural-log units,
    ``-log(P^t + 1e-7)``). t_used: the diffusion time actually used. operator: the fitted
    ``phate.PHATE`` object (graph and diffusion operator reusable via ``set_params(t=...)``).
    kernel_components: connected components of the symmetrized kernel graph (between two
    components the potential saturates at ``-log(1e-7)`` and carries no geometry).
    """
    coords: np.ndarray
    potential: np.ndarray
    t_used: int
    operator: Any
    kernel_components: int = 1


def phate_embedding(distances=None, X=None, *, n_components: int = 2, knn: int = 5,
                    decay: float = 40, t: int | str = DEFAULT_T, n_landmark: int | None = None,
                    seed: int = 0, mds_dist: str = "cosine", mds: str = "metric",
                    mds_solver: str = "sgd", gamma: float = 1, n_jobs: int = 1,
                    device="auto") -> PhateResult:
    """PHATE on cosine distances between snapshots.

    Give either ``distances`` (``(N, N)`` cosine distances, e.g. from
    :func:`cosine_distances` or :func:`cosine_distances_from_gram`) or ``X`` (``(N, D)``
    snapshots, whose cosine distances are computed here blockwise on ``device``). PHATE runs
    on the sparse alpha-decay kernel of these distances (:func:`alpha_decay_affinity`,
    ``knn_dist="precomputed_affinity"``), identical to ``knn_dist="precomputed_distance"``;
    on the same data this gives the embedding of PHATE's own ``knn_dist="cosine",
    n_pca=None`` path. ``t``: fixed diffusion time (default
    :data:`DEFAULT_T`) or ``"auto"`` (PHATE's knee of the von Neumann entropy; the choice is
    returned in ``t_used``). ``n_landmark``: None (exact) or a number of landmarks for large N.
    ``seed`` seeds PHATE's landmarking and MDS.
    """
    import phate

    if (distances is None) == (X is None):
        raise ConfigError("phate_embedding needs exactly one of distances= or X=.")
    if distances is None:
        distances = cosine_distances(X, device=device)
    D = np.asarray(distances, dtype=np.float64)
    if D.ndim != 2 or D.shape[0] != D.shape[1]:
        raise DataError(f"distances must be a square (N, N) matrix, got shape {D.shape}.")
    n = D.shape[0]
    if n <= knn:
        raise DataError(f"PHATE needs more than knn={knn} points, got N={n}.")
    if not (t == "auto" or (isinstance(t, (int, np.integer)) and t >= 1)):
        raise ConfigError(f"phate t must be a positive integer or 'auto', got {t!r}.")
    if mds_dist not in ("cosine", "euclidean"):
        raise ConfigError(f"phate mds_dist must be 'cosine' or 'euclidean', got {mds_dist!r}.")
    logger = logging.getLogger("graphtools")
    old = logger.level
    # The kernel is built here sparse and handed over as a precomputed affinity: the same
    # matrices as knn_dist="precomputed_distance" (graphtools then symmetrizes it the same
    # way), without graphtools' dense N x N kernel copies (memory and landmarking time).
    K = alpha_decay_affinity(D, knn=knn, decay=decay)
    op = phate.PHATE(n_components=n_components, knn=knn, decay=decay, t=t,
                     n_landmark=n_landmark, gamma=gamma, n_pca=None,
                     knn_dist="precomputed_affinity", mds_dist=mds_dist, mds=mds,
                     mds_solver=mds_solver, n_jobs=n_jobs, random_state=seed, verbose=-1)
    # verbose=-1 (ERROR): PHATE logs "SGD-MDS may not have converged" even at verbose=0.
    # PHATE's logger is global; restore its level afterwards.
    try:
        coords = op.fit_transform(K)
        t_used = int(op.optimal_t) if t == "auto" else int(t)
        potential = np.asarray(op.diff_potential, dtype=np.float64)
    finally:
        logger.setLevel(old)
    from scipy.sparse.csgraph import connected_components
    n_comp = int(connected_components(K + K.T, directed=False)[0])
    return PhateResult(coords=np.asarray(coords, dtype=np.float64), potential=potential,
                       t_used=t_used, operator=op, kernel_components=n_comp)
