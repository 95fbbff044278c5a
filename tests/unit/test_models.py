"""Models return logits from forward and expose the hidden pre-activations of the same pass."""

import pytest
import torch

from trainables.models import SaturatingNet
from trainables.settings import ArchitectureSettings as Arch


def test_mlp_preactivations_are_the_linear_outputs():
    torch.manual_seed(0)
    net = SaturatingNet(Arch(kind="mlp", hidden=[16, 8]), "sigmoid", (1, 8, 8), 10)
    x = torch.rand(5, 1, 8, 8)
    logits, pre = net.forward_with_preactivations(x)
    assert logits.shape == (5, 10)
    assert [h.shape for h in pre] == [(5, 16), (5, 8)]
    assert torch.equal(pre[0], net.dense[0](x.flatten(1)))
    assert torch.equal(pre[1], net.dense[1](torch.sigmoid(pre[0])))
    assert torch.equal(net(x), logits)


def test_cnn_counts_conv_channels_at_every_position():
    net = SaturatingNet(Arch(kind="cnn", hidden=[32], channels=[4, 6]), "relu", (1, 8, 8), 10)
    _, pre = net.forward_with_preactivations(torch.rand(3, 1, 8, 8))
    assert [tuple(h.shape) for h in pre] == [(3, 4, 8, 8), (3, 6, 4, 4), (3, 32)]


def test_cnn_too_deep_for_the_input_is_refused():
    with pytest.raises(ValueError, match="fewer channels"):
        SaturatingNet(Arch(kind="cnn", hidden=[8], channels=[4, 4, 4, 4]), "relu", (1, 8, 8), 10)


def test_unknown_activation_is_refused():
    with pytest.raises(ValueError, match="activation"):
        SaturatingNet(Arch(kind="mlp", hidden=[8]), "gelu", (1, 8, 8), 10)


def test_architecture_names_are_readable():
    assert Arch(kind="mlp", hidden=[200, 200]).name == "mlp-200x200"
    assert Arch(kind="cnn", hidden=[64], channels=[8, 16]).name == "cnn-c8x16-64"
