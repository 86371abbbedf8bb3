"""Checkpoints: round trip, architecture mismatch, truncation, and refusal of pickles."""
import json
import os
import pickle

import pytest
import torch

from topoland.io import load_tensors, save_tensors
from topoland.nets.checkpoint import load_checkpoint, save_checkpoint
from topoland.errors import CheckpointError
from topoland.nets.models import build_model

SPEC = {"name": "mlp", "input_shape": [6], "num_classes": 3, "kwargs": {"widths": [8], "batchnorm": True}}


def _model(seed=0, **kw):
    kwargs = dict(SPEC["kwargs"], **kw)
    return build_model("mlp", (6,), 3, seed=seed, **kwargs)


def test_round_trip_rebuilds_from_spec(tmp_path):
    m = _model(seed=1)
    m.train()
    m(torch.randn(5, 6))                               # non-default BN running statistics
    path = tmp_path / "sub" / "min.safetensors"
    save_checkpoint(path, m, spec=SPEC, metrics={"test_loss": 0.25, "diverged": False})
    assert os.listdir(path.parent) == ["min.safetensors"]      # no temporary file left
    loaded, meta = load_checkpoint(path)
    sd, sd2 = m.state_dict(), loaded.state_dict()
    assert sd.keys() == sd2.keys() and all(torch.equal(sd[k], sd2[k]) for k in sd)
    assert meta["spec"]["name"] == "mlp" and meta["spec"]["kwargs"] == {"widths": [8], "batchnorm": True}
    assert meta["metrics"] == {"test_loss": 0.25, "diverged": 0.0}
    assert not loaded.training
    target = _model(seed=7)
    same, _ = load_checkpoint(path, model=target)
    assert same is target and torch.equal(target.state_dict()["net.1.weight"], sd["net.1.weight"])


def test_architecture_mismatch_lists_tensors(tmp_path):
    path = tmp_path / "m.safetensors"
    save_checkpoint(path, _model(), spec=SPEC)
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(path, model=_model(widths=[9]))
    msg = str(err.value)
    assert "shape mismatch" in msg and "net.1.weight (checkpoint (8, 6), model (9, 6))" in msg
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(path, model=_model(widths=[8, 4]))
    assert "missing: net.5.weight" in str(err.value)
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(path, model=_model(batchnorm=False))
    assert "unexpected: net.2.bias, net.2.num_batches_tracked, net.2.running_mean" in str(err.value)


def test_truncated_and_missing_files(tmp_path):
    path = tmp_path / "m.safetensors"
    save_checkpoint(path, _model(), spec=SPEC)
    blob = path.read_bytes()
    for cut in (4, 40, len(blob) - 10):
        path.write_bytes(blob[:cut])
        with pytest.raises(CheckpointError, match="truncated"):
            load_checkpoint(path)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "nope.safetensors")


class _Evil:
    """Unpickling this object would create the marker file."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_malicious_pickle_is_never_unpickled(tmp_path):
    marker = tmp_path / "PWNED"
    for name in ("evil.safetensors", "evil.pkl", "evil.pt"):
        path = tmp_path / name
        path.write_bytes(pickle.dumps({"net.1.weight": _Evil(str(marker))}, protocol=4))
        with pytest.raises(CheckpointError, match="pickle"):
            load_checkpoint(path, model=_model())
    proto0 = tmp_path / "evil0.pkl"
    proto0.write_bytes(pickle.dumps(_Evil(str(marker)), protocol=0))
    with pytest.raises(CheckpointError):
        load_checkpoint(proto0, model=_model())
    # a torch zip file with a code-running object inside: only weights_only loading is tried
    zpath = tmp_path / "evil_zip.pt"
    torch.save({"net.1.weight": _Evil(str(marker))}, zpath)
    with pytest.raises(CheckpointError, match="weights_only=True"):
        load_checkpoint(zpath, model=_model())
    assert not marker.exists()


def test_torch_state_dict_file_needs_model(tmp_path):
    m = _model(seed=2)
    path = tmp_path / "m.pt"
    torch.save(m.state_dict(), path)
    loaded, meta = load_checkpoint(path, model=_model(seed=3))
    assert meta["format"] == "torch" and torch.equal(loaded.state_dict()["net.4.bias"], m.state_dict()["net.4.bias"])
    with pytest.raises(CheckpointError, match="model="):
        load_checkpoint(path)


def test_save_and_load_tensors(tmp_path):
    t = {"a": torch.arange(6.0).reshape(2, 3), "b": torch.tensor([1, 2], dtype=torch.int64)}
    save_tensors(tmp_path / "t.safetensors", t, {"k": json.dumps([1, 2])})
    back, meta = load_tensors(tmp_path / "t.safetensors")
    assert torch.equal(back["a"], t["a"]) and torch.equal(back["b"], t["b"]) and meta == {"k": "[1, 2]"}
