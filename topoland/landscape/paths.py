"""Minimum-energy paths and mode connectivity: the public API in one place.

- losses of flat parameter vectors: :func:`batched_loss`, :func:`network_loss`,
  :func:`network_metrics` (and the plain-loop reference :func:`network_loss_loop`);
- paths: :func:`neb`, :func:`auto_neb` (``AUTONEB_REFERENCE``), :func:`fit_curve`,
  :func:`linear_path`;
- barriers: :func:`path_profile`, :func:`barriers`, :func:`path_plane`,
  :func:`project_to_plane`;
- many minima: :func:`connect_all`, :func:`barrier_matrix`, :func:`disconnectivity_tree`.

Implementation: ``path_losses.py`` (the loss-function protocol), ``network_losses.py``
(losses of networks), ``barriers.py`` (paths, profiles, barriers), ``connectivity.py`` (many
minima), ``neb.py``, ``curves.py``.
"""
from topoland.landscape.profiles import (Path, barriers, linear_path, path_plane, path_profile,
                                          project_to_plane, resample_polyline)
from topoland.landscape.connectivity import (DisconnectivityTree, barrier_matrix, connect_all,
                                              disconnectivity_tree)
from topoland.landscape.curves import CURVE_KINDS, Curve, curve_weights, fit_curve
from topoland.landscape.elastic_band import (AUTONEB_REFERENCE, auto_neb, insert_images, neb,
                                     neb_forces, neb_forces_loop, respace)
from topoland.landscape.network_losses import (NetworkLoss, model_vector, network_loss,
                                                network_loss_loop, network_metrics)
from topoland.landscape.path_losses import PathError, batched_loss

__all__ = [
    "AUTONEB_REFERENCE", "CURVE_KINDS", "Curve", "DisconnectivityTree", "NetworkLoss", "Path",
    "PathError", "auto_neb", "barrier_matrix", "barriers", "batched_loss", "connect_all",
    "curve_weights", "disconnectivity_tree", "fit_curve", "insert_images", "linear_path",
    "model_vector", "neb", "neb_forces", "neb_forces_loop", "network_loss", "network_loss_loop",
    "network_metrics", "path_plane", "path_profile", "project_to_plane", "resample_polyline",
    "respace",
]
