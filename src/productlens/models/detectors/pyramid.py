"""Multi-scale features of a bundled backbone, for detection.

An EfficientNet-Lite backbone gives three maps: C3 (stride 8), C4 (stride 16)
and C5 (stride 32, the 1280-channel head convolution, the most semantic one).
The ONNX export takes uint8 RGB pixels (1 x H x W x 3, H and W multiples of 32,
any size) and returns the three maps; it is cached by the hash of the weights,
like the embedders' exports.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from productlens.config import cache_dir
from productlens.models.embedders.export import export_pixels_model, file_sha256

if TYPE_CHECKING:
    import torch

EXPORT_VERSION = 1
STRIDES = (8, 16, 32)
#: arch -> (block index whose output is C3, block index whose output is C4, channels C3, C4, C5, blocks)
_TAPS = {
    "efficientnet-lite0": (4, 10, (40, 112, 1280), 16),
    "efficientnet-lite2": (6, 14, (48, 120, 1280), 21),
}


def supported() -> list[str]:
    return sorted(_TAPS)


def channels(arch: str) -> tuple[int, int, int]:
    """Channels of (C3, C4, C5) for ``arch``."""
    return _TAPS[_check(arch)][2]


def _check(arch: str) -> str:
    if arch not in _TAPS:
        from productlens.types import ProductLensError

        raise ProductLensError(f"detection backbone must be one of {supported()}, got {arch!r}")
    return arch


def build_torch(arch: str) -> torch.nn.Module:
    """Torch module: uint8 N x H x W x 3 RGB pixels -> (C3, C4, C5), eval mode."""
    return split_torch(arch)[0]


def tune_range(arch: str) -> tuple[int, int]:
    """The first tunable block's bounds (inclusive) for ``arch``: after C4's tap, so that only
    C5 changes; the upper bound (the number of blocks) tunes the head convolution alone."""
    _, c4_at, _, blocks = _TAPS[_check(arch)]
    return c4_at + 1, blocks


def split_torch(arch: str, tune_from: int | None = None) -> tuple[torch.nn.Module, torch.nn.Module, torch.nn.Module]:
    """(pyramid, trunk, tail) sharing one backbone's layers, all in eval mode.

    ``pyramid``: uint8 N x H x W x 3 RGB pixels -> (C3, C4, C5). With ``tune_from``
    (a block after C4's tap, see :func:`tune_range`), ``trunk`` maps the pixels to
    (C3, C4, T), T being the input of block ``tune_from``, and ``tail`` maps T to C5
    (blocks ``tune_from``... and the head convolution): training ``tail`` trains
    ``pyramid``, which is then exported whole. Without it, the trunk runs every
    block and the tail is the head convolution alone.
    """
    import torch

    from productlens.models.embedders.efficientnet_lite import build_torch as backbone

    c3_at, c4_at, _, blocks = _TAPS[_check(arch)]
    split = blocks if tune_from is None else tune_from
    if tune_from is not None:
        low, high = tune_range(arch)
        if not low <= tune_from <= high:
            from productlens.types import ProductLensError

            raise ProductLensError(f"{arch}: the first tuned block must be in {low}..{high} (after C4's tap; "
                                   f"{high}: the head convolution alone), got {tune_from}")
    net = backbone(arch).net
    assert len(net._blocks) == blocks, f"{arch}: {len(net._blocks)} blocks, _TAPS says {blocks}"

    class Trunk(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = net

        def forward(self, pixels):
            x = pixels.permute(0, 3, 1, 2).float() * (2.0 / 255.0) - 1.0  # Lite: [-1, 1]
            x = net._swish(net._bn0(net._conv_stem(x)))
            c3 = c4 = None
            for i, block in enumerate(net._blocks[:split]):
                x = block(x)
                if i == c3_at:
                    c3 = x
                elif i == c4_at:
                    c4 = x
            return c3, c4, x

    class Tail(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.blocks = net._blocks[split:]
            self.head, self.bn = net._conv_head, net._bn1

        def forward(self, x):
            for block in self.blocks:
                x = block(x)
            return net._swish(self.bn(self.head(x)))

    trunk, tail = Trunk().eval(), Tail().eval()

    class Pyramid(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.trunk, self.tail = trunk, tail

        def forward(self, pixels):
            c3, c4, x = trunk(pixels)
            return c3, c4, tail(x)

    return Pyramid().eval(), trunk, tail


def export(module: torch.nn.Module, target: Path, outputs: list[str], size: tuple[int, int] = (256, 256)) -> Path:
    """Export ``module`` (uint8 1 x H x W x 3 -> ``outputs``) with dynamic H and W, atomically."""
    return export_pixels_model(module, target, size, outputs, {"pixels": {0: "batch", 1: "height", 2: "width"}})


def cached_onnx(arch: str, tune_from: int | None = None) -> Path:
    """The cached ONNX export of :func:`build_torch` (exported on first use; needs torch), or with
    ``tune_from`` of :func:`split_torch`'s trunk (outputs c3, c4 and the tuned blocks' input)."""
    from productlens.models.embedders.efficientnet_lite import weights_path

    digest = file_sha256(weights_path(_check(arch)))[:16]
    part = "pyramid" if tune_from is None else f"trunk{tune_from}"
    target = cache_dir() / "onnx" / f"{arch}-{part}-{digest}-v{EXPORT_VERSION}.onnx"
    if target.exists():
        return target
    if tune_from is None:
        return export(build_torch(arch), target, ["c3", "c4", "c5"])
    return export(split_torch(arch, tune_from)[1], target, ["c3", "c4", "t"])
