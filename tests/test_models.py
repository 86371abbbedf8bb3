"""Models: parameter counts, shapes, argument checks, seeding, functional_call + vmap."""
import pytest
import torch
from torch import nn
from torch.func import functional_call, stack_module_state, vmap

from topoland.errors import ConfigError
from topoland.nets.models import MODELS, build_model, count_parameters

CIFAR = (3, 32, 32)


@pytest.mark.parametrize("depth,widen,expected", [
    (10, 1, 77_850), (16, 1, 175_066), (22, 1, 272_282),
    (10, 2, 303_706), (16, 2, 691_674), (22, 2, 1_079_642)])
def test_wrn_parameter_counts_match_reference(depth, widen, expected):
    assert count_parameters(build_model("wrn", CIFAR, 10, depth=depth, widen=widen)) == expected


def test_cnn_on_digits_is_about_38k():
    # conv 1->16: 16*9+16 = 160; conv 16->32: 32*16*9+32 = 4,640; after 2x2 pool 32*4*4 = 512
    # linear 512->64: 512*64+64 = 32,832; head 64->10: 650.  Total 38,282.
    m = build_model("cnn", (1, 8, 8), 10)
    assert count_parameters(m) == 160 + 4_640 + 32_832 + 650
    assert m(torch.zeros(5, 1, 8, 8)).shape == (5, 10)
    sig = build_model("cnn", (1, 40), 10)                    # Conv1d path for signals
    assert isinstance(sig.net[0], nn.Conv1d)
    assert count_parameters(sig) == (16 * 3 + 16) + (32 * 16 * 3 + 32) + (32 * 20 * 64 + 64) + 650


def test_mlp_counts_and_batchnorm():
    m = build_model("mlp", (8,), 3, widths=(16,))
    assert count_parameters(m) == 8 * 16 + 16 + 16 * 3 + 3
    bn = build_model("mlp", (1, 4, 2), 3, widths=(16, 4), batchnorm=True)
    assert count_parameters(bn) == (8 * 16 + 16) + 32 + (16 * 4 + 4) + 8 + (4 * 3 + 3)
    assert bn(torch.zeros(2, 1, 4, 2)).shape == (2, 3)


def test_resnet_variants():
    # option A shortcuts are parameter-free: ResNet-20 has 0.27M, ResNet-56 0.85M (He et al.)
    assert count_parameters(build_model("resnet", CIFAR, 10, depth=20)) == 269_722
    assert count_parameters(build_model("resnet", CIFAR, 10, depth=56)) == 853_018
    small = (3, 16, 16)  # counts do not depend on the spatial size (global average pool)
    plain = build_model("resnet", small, 10, depth=20, skip=False)
    assert count_parameters(plain) == 269_722
    assert all(b.shortcut is None for b in plain.blocks)
    nobn = build_model("resnet", small, 10, depth=20, batchnorm=False)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in nobn.modules())
    b = build_model("resnet", small, 10, depth=20, shortcut="B")
    assert count_parameters(b) == 269_722 + (16 * 32 + 2 * 32) + (32 * 64 + 2 * 64)
    x = torch.randn(2, *small)
    for m in (plain, nobn, b):
        assert m(x).shape == (2, 10)
    # the skip switch changes the function (same init seed, same weights)
    full = build_model("resnet", small, 10, depth=20).eval()
    assert not torch.allclose(full(x), plain.eval()(x))


def test_invalid_arguments_name_the_argument():
    with pytest.raises(ConfigError, match="depth"):
        build_model("wrn", CIFAR, 10, depth=12)
    with pytest.raises(ConfigError, match="depth"):
        build_model("resnet", CIFAR, 10, depth=21)
    with pytest.raises(ConfigError, match="unknown model 'vit'"):
        build_model("vit", CIFAR, 10)
    with pytest.raises(ConfigError, match="widths"):
        build_model("mlp", (8,), 3, widths=(16, -4))
    with pytest.raises(ConfigError, match="widen"):
        build_model("wrn", CIFAR, 10, widen=0)
    with pytest.raises(ConfigError, match="'width'"):
        build_model("mlp", (8,), 3, width=3)
    with pytest.raises(ConfigError, match="input_shape"):
        build_model("cnn", (8,), 3)


def test_seeded_init_leaves_global_rng_alone():
    state = torch.get_rng_state()
    a = build_model("wrn", (1, 12, 12), 4, depth=10, seed=3)
    assert torch.equal(torch.get_rng_state(), state)
    b = build_model("wrn", (1, 12, 12), 4, depth=10, seed=3)
    c = build_model("wrn", (1, 12, 12), 4, depth=10, seed=4)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    assert not all(torch.equal(p, q) for p, q in zip(a.parameters(), c.parameters()))


SMALL = [("mlp", (6,), {"batchnorm": True}), ("cnn", (1, 8, 8), {}), ("cnn", (2, 12), {"batchnorm": True}),
         ("wrn", (3, 8, 8), {"depth": 10}), ("resnet", (3, 8, 8), {"depth": 8}),
         ("resnet", (1, 16), {"depth": 8, "shortcut": "B"})]


@pytest.mark.parametrize("name,shape,kw", SMALL)
def test_vmap_functional_call_matches_loop(name, shape, kw):
    models = [build_model(name, shape, 3, seed=s, **kw).eval() for s in range(3)]
    params, buffers = stack_module_state(models)
    base = models[0]
    x = torch.randn(4, *shape, generator=torch.Generator().manual_seed(0))
    out = vmap(lambda p, b: functional_call(base, (p, b), (x,)))(params, buffers)
    ref = torch.stack([m(x) for m in models])
    assert out.shape == (3, 4, 3)
    assert torch.allclose(out, ref, atol=1e-5)


def test_registry():
    assert set(MODELS) == {"mlp", "cnn", "wrn", "resnet"}
