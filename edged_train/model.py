"""The network of edged's own FER models: a small VGG-style CNN on 48x48 gray faces."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from edged_train.data import NUM_CLASSES

DEFAULT_WIDTHS = (48, 96, 192, 256)


def build_model(
    widths: tuple[int, ...] = DEFAULT_WIDTHS, num_classes: int = NUM_CLASSES, dropout: float = 0.4
) -> Any:
    """4 stages of 2x (conv3x3-BN-ReLU), max-pool between, global average pool, linear.

    Fully convolutional up to the pooling, so the same weights run on any view size (the
    test-time modes of :mod:`edged_train.export`)."""
    import torch.nn as nn

    class EdgedFERNet(nn.Module):
        """VGG-style CNN: 4 stages of 2x (conv3x3-BN-ReLU), max-pool between, GAP, linear."""

        def __init__(self) -> None:
            super().__init__()
            layers: list[nn.Module] = []
            cin = 1
            for k, c in enumerate(widths):
                for _ in range(2):
                    layers += [
                        nn.Conv2d(cin, c, 3, padding=1, bias=False),
                        nn.BatchNorm2d(c),
                        nn.ReLU(inplace=True),
                    ]
                    cin = c
                if k < len(widths) - 1:
                    layers.append(nn.MaxPool2d(2))
            self.features = nn.Sequential(*layers)
            self.pool = nn.AdaptiveAvgPool2d(1)
            self.drop = nn.Dropout(dropout)
            self.fc = nn.Linear(cin, num_classes)
            for m in self.modules():
                if isinstance(m, nn.Conv2d):
                    nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

        def forward(self, x: Any) -> Any:
            x = self.pool(self.features(x)).flatten(1)
            return self.fc(self.drop(x))

    return EdgedFERNet()


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    import torch

    ck: dict[str, Any] = torch.load(path, map_location="cpu", weights_only=False)
    return ck


def load_trained(path: str | Path) -> tuple[Any, dict[str, Any]]:
    """A trained .pt (state_dict + arch) as an eval-mode network on the CPU, with its checkpoint."""
    ck = load_checkpoint(path)
    net = build_model(tuple(ck["arch"]["widths"]), NUM_CLASSES, ck["arch"].get("dropout", 0.4))
    net.load_state_dict(ck["state_dict"])
    return net.eval(), ck


def ensemble(nets: list[Any]) -> Any:
    """One teacher from several trained networks: the mean of their logits.

    Runs that differ in seed, targets or start point err on different faces; their mean is
    a better teacher than any one of them, and distilling it gives the daemon one set of
    weights, one file and one call per face (an ensemble in the graph would cost N calls)."""
    import torch
    import torch.nn as nn

    if len(nets) == 1:
        return nets[0]

    class Ensemble(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.members = nn.ModuleList(nets)

        def forward(self, x: Any) -> Any:
            return torch.stack([m(x) for m in self.members]).mean(0)

    return Ensemble().eval()
