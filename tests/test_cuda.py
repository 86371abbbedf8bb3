"""Device paths on a CUDA GPU against their CPU references (skipped where no GPU is present).

Every batched path is already tested against its plain loop on the CPU; these tests check that
the same code gives the same numbers on a GPU. TF32 is switched off for the comparisons: with
it, cuDNN convolutions round their inputs to 10-bit mantissas (about 1e-3 relative).
"""
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from topoland.nets import directions as D
from topoland import nets as P
from topoland.topology.embedding import cosine_distances, cosine_distances_reference
from topoland.landscape import surfaces as S
from topoland.landscape.hessian import hvp_fn
from topoland.landscape.spectrum import top_eigenvalues
from topoland.nets.models import build_model
from topoland.sampling.sampler import jump_and_retrain

from tests.helpers import cli
from tests.test_sampling import _data, _trained_bn_model

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.fixture(autouse=True)
def _no_tf32():
    old = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = old


def _splits(shape):
    return _data(shape=shape)


def _bn_model(data, name, **kw):
    return _trained_bn_model(data, name, **kw)


def test_cosine_distances_on_gpu_equal_the_float64_reference():
    g = torch.Generator().manual_seed(0)
    X = torch.randn(300, 5000, generator=g) + 3.0  # close snapshots: a hard case for rounding
    for x in (X, X.half(), X.cuda()):
        d = cosine_distances(x, block_size=64, chunk_size=1000, device="cuda")
        ref = cosine_distances_reference(x.float().cpu().double())
        np.testing.assert_allclose(d, ref, rtol=0, atol=2e-6 if x.dtype != torch.float16 else 2e-3)


@pytest.mark.parametrize("bn", [False, True])
def test_evaluate_on_gpu_equals_cpu_loop(bn):
    data = _splits((1, 8, 8))
    model = build_model("cnn", (1, 8, 8), 3, seed=0, channels=(4, 6), hidden=8, batchnorm=bn)
    if bn:
        model = _bn_model(data, "cnn", channels=(4, 6), hidden=8)
    base = P.flatten(P.get_params(model))
    pts = base + 0.3 * torch.randn(9, base.numel(), generator=torch.Generator().manual_seed(3))
    x, y = data.x_train, data.y_train
    a = P.evaluate(model, pts, x, y, batch_size=32, chunk_size=4, device="cuda")
    b = P.evaluate_loop(model, pts, x, y, batch_size=32, device="cpu")
    np.testing.assert_allclose(a["loss"], b["loss"], rtol=1e-5)
    np.testing.assert_allclose(a["accuracy"], b["accuracy"], rtol=1e-12)  # same counts
    if bn:
        a = P.evaluate(model, pts, x, y, batch_size=32, bn="recompute", device="cuda")
        b = P.evaluate_loop(model, pts, x, y, batch_size=32, bn="recompute", device="cpu")
        np.testing.assert_allclose(a["loss"], b["loss"], rtol=1e-5)


SMALL = dict(directions=2, steps=(0.5, 1.0), epochs=2, batch_size=16, lr=0.05,
             records_per_epoch=2, eval_batch_size=32)


@pytest.mark.parametrize("name,kw,shape", [("mlp", {"widths": (12,)}, (16,)),
                                           ("cnn", {"channels": (3, 4), "hidden": 8}, (1, 8, 8))])
def test_batched_sampler_on_gpu_equals_sequential_on_cpu(name, kw, shape):
    data = _splits(shape)
    model = _bn_model(data, name, **kw)
    a = jump_and_retrain(model, data, batched=True, device="cuda", **SMALL)
    b = jump_and_retrain(model, data, batched=False, device="cpu", **SMALL)
    for col in ("train_loss", "val_loss", "test_loss"):
        np.testing.assert_allclose(a.table[col], b.table[col], rtol=1e-4, atol=1e-5, err_msg=col)
    assert a.params.device.type == "cpu"  # results come back to the host
    torch.testing.assert_close(a.params, b.params, rtol=1e-4, atol=1e-5)


def test_fast_mlp_sampler_on_gpu_equals_cpu():
    data = _splits((16,))
    model = build_model("mlp", (16,), 3, seed=1, widths=(10, 10)).eval()
    a = jump_and_retrain(model, data, batched=True, device="cuda", **SMALL)
    b = jump_and_retrain(model, data, batched=False, device="cpu", **SMALL)
    torch.testing.assert_close(a.params, b.params, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("evaluator", ["linear-first", "batched"])
def test_plane_on_gpu_equals_cpu(evaluator):
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(48, 1, 8, 8, generator=g), torch.randint(0, 3, (48,), generator=g)
    m = build_model("cnn", (1, 8, 8), 3, seed=0, channels=(4, 6), hidden=8)
    d1, d2 = D.orthogonal_pair(m, 3)
    kw = dict(grid=4, range=(-1, 1), chunk_points=5, evaluator=evaluator)
    gpu = S.plane(m, d1, d2, x, y, device="cuda", **kw)
    cpu = S.plane(m, d1, d2, x, y, device="cpu", **kw)
    np.testing.assert_allclose(gpu.values["train_loss"], cpu.values["train_loss"], rtol=1e-5)


def test_hessian_on_gpu_equals_cpu_float64():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 3)).double()
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(40, 3, generator=g, dtype=torch.float64), torch.randint(0, 3, (40,), generator=g)
    cpu, _ = top_eigenvalues(hvp_fn(model, x, y, batch_size=16, n_samples=None), k=3)
    gpu, vecs = top_eigenvalues(hvp_fn(model, x, y, batch_size=16, n_samples=None, device="cuda"), k=3)
    assert vecs.device.type == "cuda"
    np.testing.assert_allclose(gpu.numpy(), cpu.numpy(), rtol=1e-8)


def test_pipeline_runs_on_gpu(tmp_path):
    cfg = (tmp_path / "gpu.toml")
    text = (Path(__file__).parent / "data" / "tiny_pipeline.toml").read_text()
    cfg.write_text(re.sub(r'name = "tiny"', 'name = "tiny_gpu"\ndevice = "cuda"', text, count=1))
    run = tmp_path / "run"
    r = cli("run", cfg, "--out", run, "--quiet", "--only", "train,sample,topology")
    assert r.returncode == 0, r.stdout + r.stderr
    from topoland.runs.store import RunStore
    assert RunStore(run).get_meta("device").startswith("cuda")
