"""An MLP and a small CNN whose forward pass also hands back every hidden pre-activation.

The penalty needs `h`, the input of each hidden nonlinearity, from the same forward pass that
produced the logits; `forward` returns logits only, so exported models are plain classifiers.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from trainables.activations import activation as activation_entry
from trainables.settings import ArchitectureSettings


class SaturatingNet(nn.Module):
    """The architecture of the spec (`mlp` or `cnn`) with one activation everywhere."""

    def __init__(
        self,
        arch: ArchitectureSettings,
        activation: str,
        input_shape: tuple[int, int, int],
        num_classes: int,
    ):
        super().__init__()
        self.activation = activation
        self.act = activation_entry(activation).forward
        channels_in, height, width = input_shape
        self.convs = nn.ModuleList()
        for channels in arch.channels:
            self.convs.append(nn.Conv2d(channels_in, channels, kernel_size=3, padding=1))
            channels_in, height, width = channels, height // 2, width // 2
            if height == 0 or width == 0:
                raise ValueError(
                    f"architecture {arch.name}: {len(arch.channels)} conv+pool stages shrink a "
                    f"{input_shape[1]}x{input_shape[2]} input to nothing; list fewer channels"
                )
        features = channels_in * height * width
        self.dense = nn.ModuleList()
        for width_out in arch.hidden:
            self.dense.append(nn.Linear(features, width_out))
            features = width_out
        self.out = nn.Linear(features, num_classes)

    def forward_with_preactivations(
        self, x: torch.Tensor
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Logits and the list of hidden pre-activations, in layer order."""
        preacts = []
        for conv in self.convs:
            h = conv(x)
            preacts.append(h)
            x = F.max_pool2d(self.act(h), 2)
        x = x.flatten(1)
        for linear in self.dense:
            h = linear(x)
            preacts.append(h)
            x = self.act(h)
        return self.out(x), preacts

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_with_preactivations(x)[0]

    def weight_layers(self) -> dict[str, nn.Module]:
        """Named weight layers in order, for per-layer diagnostics."""
        layers = {f"conv{i + 1}": m for i, m in enumerate(self.convs)}
        layers.update({f"dense{i + 1}": m for i, m in enumerate(self.dense)})
        layers["out"] = self.out
        return layers
