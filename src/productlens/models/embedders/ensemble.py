"""``ensemble:A+B+...``: several bundled backbones as one embedder (concatenated features).

The exported graph takes the uint8 pixels at the largest member's input size
(N x S x S x 3), resizes them inside the graph (bilinear) for smaller members,
runs every member with its own normalisation and GeM pooling, L2-normalises
each member's vector and concatenates them, divided by sqrt(number of
members): one unit vector of the summed dimension (3 x 1280 for the
classifier's default ``ensemble:efficientnet-lite2+efficientnet-lite0+mobilenetv2``).
The members were trained apart, so their errors differ: a head trained on the
concatenation beats each of them (see :mod:`productlens.pipeline.classify`).
Exported once to ONNX, cached by the members' weight hashes, like each member.
"""

from __future__ import annotations

import hashlib
import math
from pathlib import Path
from typing import Callable

from productlens.config import cache_dir
from productlens.models.embedders.base import Embedder, Preprocess
from productlens.models.embedders.export import EXPORT_VERSION, export_onnx, file_sha256, image_model
from productlens.types import ProductLensError

MEMBERS = ("efficientnet-lite2", "efficientnet-lite0", "mobilenetv2")


def member_parts(name: str) -> tuple[Path, Callable[[], object], Preprocess]:
    """(weights file, torch builder, preprocessing) of a bundled backbone."""
    if name in ("efficientnet-lite0", "efficientnet-lite2"):
        from productlens.models.embedders import efficientnet_lite as m

        return m.weights_path(name), lambda: m.build_torch(name), m.preprocess(name)
    if name == "mobilenetv2":
        from productlens.models.embedders import mobilenetv2 as mn

        return mn.weights_path(), mn.build_torch, mn.preprocess()
    raise ProductLensError(f"ensemble member {name!r} is not a bundled backbone; choose from {', '.join(MEMBERS)}")


def parse_members(spec: str) -> list[str]:
    """``'a+b+c'`` -> the member names (at least two, no repeats, all bundled)."""
    names = [n.strip() for n in spec.split("+") if n.strip()]
    if len(names) < 2 or len(set(names)) != len(names):
        raise ProductLensError(f"an ensemble needs at least two different backbones joined by '+', got {spec!r}")
    unknown = [n for n in names if n not in MEMBERS]
    if unknown:
        raise ProductLensError(f"ensemble member {unknown[0]!r} is not a bundled backbone; "
                               f"choose from {', '.join(MEMBERS)}")
    return names


def ensemble_model(parts: list[tuple[object, Preprocess]], size: int, gem_p: float):
    """The torch module: uint8 N x size x size x 3 -> the members' unit vectors, concatenated / sqrt(k)."""
    import torch
    import torch.nn.functional as F

    class EnsembleModel(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.members = torch.nn.ModuleList(image_model(b, pre, gem_p) for b, pre in parts)
            self.sizes = [pre.size for _, pre in parts]
            self.scale = 1.0 / math.sqrt(len(parts))

        def forward(self, pixels):
            x = pixels.float()
            outs = []
            for member, s in zip(self.members, self.sizes):
                xi = x
                if s != size:
                    xi = F.interpolate(x.permute(0, 3, 1, 2), size=(s, s), mode="bilinear",
                                       align_corners=False).permute(0, 2, 3, 1)
                f = member(xi)
                outs.append(f / f.norm(dim=1, keepdim=True).clamp(min=1e-12))
            return torch.cat(outs, dim=1) * self.scale

    return EnsembleModel().eval()


def ensemble(spec: str, gem_p: float = 3.0, **kwargs) -> Embedder:
    """The backbones named in ``spec`` (``'efficientnet-lite2+efficientnet-lite0+mobilenetv2'``) as one embedder."""
    return members_embedder(parse_members(spec), gem_p=gem_p, **kwargs)


def members_embedder(names: list[str], input_size: int | None = None, gem_p: float = 3.0, **kwargs) -> Embedder:
    """Bundled backbones ``names`` (one or more, validated by the caller) as one embedder.

    ``input_size``: the side of the graph's input pixels (default the largest
    member's); members of another size get the pixels resized inside the graph.
    A joined embedder (:mod:`~productlens.models.embedders.joined`) builds its
    companions at its main backbone's size this way, so both take the same batch.
    """
    if not names:
        raise ProductLensError("an ensemble needs at least one member")
    members = [member_parts(n) for n in names]
    size = int(input_size or max(pre.size for _, _, pre in members))
    digest = hashlib.sha256("".join(file_sha256(w) for w, _, _ in members).encode()).hexdigest()[:16]
    at = "" if input_size is None else f"-in{size}"
    target = cache_dir() / "onnx" / f"ensemble-{'+'.join(names)}-{digest}{at}-gem{gem_p:g}-v{EXPORT_VERSION}.onnx"
    if not target.exists():
        export_onnx(ensemble_model([(build(), pre) for _, build, pre in members], size, gem_p), size, target)
    return Embedder(f"ensemble:{'+'.join(names)}", target, Preprocess(size=size, uint8=True), gem_p=gem_p, **kwargs)
