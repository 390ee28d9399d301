"""The CIFAR ResNets of He et al. (2016) by name: structure, parameter counts, initialisation, both image sizes."""
from __future__ import annotations

import numpy as np
import pytest

import xpcnn
from xpcnn import Residual, ZeroPadShortcut
from xpcnn.errors import InputValueError


@pytest.mark.parametrize("depth, blocks", [(20, 9), (32, 15), (56, 27)])
def test_depth_gives_three_stages_of_n_blocks(depth, blocks):
    model = xpcnn.build_model(f"resnet{depth}", 3, 10, 32)
    res = [m for m in model if isinstance(m, Residual)]
    assert len(res) == blocks
    convs = [m for m in model.modules() if isinstance(m, xpcnn.Conv2d)]
    assert len(convs) + 1 == depth  # weighted layers: the convs and the final linear (option A adds none)
    n = blocks // 3
    widths = [r.body[0].out_channels for r in res]
    assert widths == [16] * n + [32] * n + [64] * n
    shortcuts = [(i, r.shortcut) for i, r in enumerate(res) if r.shortcut is not None]
    assert [i for i, _ in shortcuts] == [n, 2 * n]  # option A only where the shape changes
    assert all(isinstance(s, ZeroPadShortcut) and s.stride == 2 for _, s in shortcuts)
    assert model.architecture == f"resnet{depth}"


def test_parameter_counts_are_the_papers():
    # He et al., table 6: 0.27M, 0.46M, 0.85M. By hand, for n blocks a stage: stem conv 3*16*9 + BN 32; a block
    # 2 convs c*c*9 + 2 BNs 4c, the first of stages 2 and 3 with a (c/2)*c*9 conv instead; linear 64*10 + 10
    def count(n):
        stem, head = 3 * 16 * 9 + 32, 650
        stages = sum(n * (2 * c * c * 9 + 4 * c) - (c * c * 9 - c // 2 * c * 9 if c > 16 else 0)
                     for c in (16, 32, 64))
        return stem + stages + head
    counts = {d: xpcnn.build_model(f"resnet{d}", 3, 10, 32).num_parameters() for d in (20, 32, 56)}
    assert counts == {20: count(3), 32: count(5), 56: count(9)} == {20: 269722, 32: 464154, 56: 853018}


@pytest.mark.parametrize("channels, size, sides", [(1, 28, (28, 14, 7)), (3, 32, (32, 16, 8))])
def test_grey_28_and_colour_32_images(channels, size, sides, rng):
    model = xpcnn.build_model("resnet20", channels, 10, size, dtype="float64")
    x = rng.standard_normal((2, channels, size, size))
    seen = []
    h = model.backend.asarray(x)
    for layer in model:
        h = layer.forward(h)
        if isinstance(layer, Residual):
            seen.append(h.shape[-1])
    assert sorted(set(seen), reverse=True) == list(sides)
    assert model(x).shape == (2, 10)


def test_kaiming_normal_init_and_batch_norm_ones_and_zeros():
    model = xpcnn.build_model("resnet56", 3, 10, 32, dtype="float64", seed=3)
    w = [m.weight.data for m in model.modules() if isinstance(m, xpcnn.Conv2d) and m.in_channels == 64]
    fan_in = 64 * 9
    values = np.concatenate([np.asarray(a).ravel() for a in w])  # ~1e6 draws: std within 0.5%
    assert abs(values.std() / np.sqrt(2 / fan_in) - 1) < 5e-3 and abs(values.mean()) < 1e-3
    assert abs(np.asarray(model[-1].weight.data).std() / np.sqrt(2 / 64) - 1) < 0.1
    for m in model.modules():
        if isinstance(m, xpcnn.BatchNorm2d):
            assert np.all(np.asarray(m.weight.data) == 1) and np.all(np.asarray(m.bias.data) == 0)
    again = xpcnn.build_model("resnet56", 3, 10, 32, dtype="float64", seed=3)
    other = xpcnn.build_model("resnet56", 3, 10, 32, dtype="float64", seed=4)
    np.testing.assert_array_equal(again.state_dict()["3.body.0.weight"], model.state_dict()["3.body.0.weight"])
    assert not np.array_equal(other.state_dict()["3.body.0.weight"], model.state_dict()["3.body.0.weight"])


def test_init_is_the_same_on_every_backend():
    a = xpcnn.build_model("resnet20", 1, 10, 8, dtype="float64", seed=5)
    b = xpcnn.build_model("resnet20", 1, 10, 8, backend="array_api_strict:device1", dtype="float64", seed=5)
    for (k, va), vb in zip(a.state_dict().items(), b.state_dict().values()):
        np.testing.assert_array_equal(xpcnn.to_numpy(va), xpcnn.to_numpy(vb), err_msg=k)


def test_bad_sizes_are_clear_errors():
    from xpcnn.models import cifar_resnet
    with pytest.raises(InputValueError, match="6n \\+ 2"):
        cifar_resnet(21)
    with pytest.raises(InputValueError, match="at least 4x4"):
        xpcnn.build_model("resnet20", 1, 10, 3)
