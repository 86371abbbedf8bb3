"""Scalar features of a minimum's sampled trajectories (:func:`trajectory_features`): losses,
accuracies, recovery, path lengths and displacements."""
from __future__ import annotations

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from topoland.errors import ConfigError
from topoland.sampling.storage import _SPLITS

__all__ = ["trajectory_features"]


def _final_rows(table: pd.DataFrame) -> pd.DataFrame:
    return table.sort_values("epoch").groupby("trajectory").tail(1).sort_values("trajectory")


def trajectory_features(table: pd.DataFrame, theta_star: Tensor | None = None,
                        params: Tensor | None = None, gram: Tensor | None = None,
                        loss: str = "val_loss") -> dict[str, float]:
    """Scalar features of a minimum's trajectories (the analysis ``trajectory`` group).

    Always: ``frac_diverged``; over non-diverged trajectories: mean/max final ``loss``,
    mean jump-point ``loss``, ``recovery_ratio_mean`` (mean of final / jump-point loss: 0 =
    fully recovered, 1 = no progress), mean final train/val/test accuracy.
    With ``params`` ``(N, D)`` (rows = sample_id): ``path_length_mean`` (sum of consecutive
    snapshot distances), ``displacement_mean`` (|final - jump|), ``straightness_mean``;
    the same from ``gram`` ``(N, N)`` when params are absent. With ``theta_star`` and params:
    ``return_ratio_mean`` = mean |final - θ*| / |jump - θ*| (< 1: moved back toward θ*).
    Diverged trajectories are excluded from every mean; NaN when none is left.
    """
    if loss not in table.columns:
        raise ConfigError(f"loss column {loss!r} not in the sample table")
    t = table.sort_values("sample_id")
    div = t.groupby("trajectory")["diverged"].any()
    ok_traj = div.index[~div.values]
    first = t[t.epoch == 0].set_index("trajectory")
    last = _final_rows(t).set_index("trajectory")
    f = {"n_trajectories": float(len(div)), "frac_diverged": float(div.mean())}
    nan = float("nan")

    def mean(s):
        return float(s.mean()) if len(s) else nan

    lf, l0 = last.loc[ok_traj, loss], first.loc[ok_traj, loss]
    f["final_loss_mean"] = mean(lf)
    f["final_loss_max"] = float(lf.max()) if len(lf) else nan
    f["jump_loss_mean"] = mean(l0)
    f["recovery_ratio_mean"] = mean(lf / l0)
    for s in _SPLITS:
        f[f"final_{s}_acc_mean"] = mean(last.loc[ok_traj, f"{s}_acc"])

    if params is None and gram is None:
        return f
    lengths, disp, ret = [], [], []
    for tr in ok_traj:
        ids = t.loc[t.trajectory == tr].sort_values("epoch")["sample_id"].to_numpy()
        if params is not None:
            p = params[torch.from_numpy(ids.copy())].double()
            lengths.append(float((p[1:] - p[:-1]).norm(dim=1).sum()))
            disp.append(float((p[-1] - p[0]).norm()))
            if theta_star is not None:
                ts = theta_star.double()
                ret.append(float((p[-1] - ts).norm() / (p[0] - ts).norm()))
        else:
            sel = torch.from_numpy(ids.copy())
            g = gram.double()[sel][:, sel]
            diag = g.diagonal()
            consec = (diag[1:] + diag[:-1] - 2 * g.diagonal(1)).clamp_min(0).sqrt()
            lengths.append(float(consec.sum()))
            disp.append(float((diag[-1] + diag[0] - 2 * g[0, -1]).clamp_min(0).sqrt()))
    f["path_length_mean"] = float(np.mean(lengths)) if lengths else nan
    f["displacement_mean"] = float(np.mean(disp)) if disp else nan
    f["straightness_mean"] = (float(np.mean([a / b for a, b in zip(disp, lengths) if b > 0]))
                              if lengths else nan)
    if ret:
        f["return_ratio_mean"] = float(np.mean(ret))
    return f
