"""Defaults and locations: the cache directory, the default model, the shared data."""

from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

DEFAULT_EMBEDDER = "efficientnet-lite2"
#: The classifier's default backbone: the three bundled backbones concatenated (see pipeline/classify.py).
CLASSIFIER_EMBEDDER = "ensemble:efficientnet-lite2+efficientnet-lite0+mobilenetv2"
# weight of the backbone's ImageNet concepts beside a catalog's alignment in zero-shot
# (productlens.heads.conse; chosen on train photos only, docs/benchmarks.md)
ZERO_SHOT_IMAGENET_WEIGHT = 0.25
#: weight of a text the user gives with a query (a clip's title or transcript) against the
#: image score, where the catalog has no weight chosen on its training photos (one built
#: from a products.jsonl). A default, not fitted: a text equal to a product's title adds 0.3 to
#: that product's score (character n-gram TF-IDF cosine 1), a partial match less; look-alike
#: products' image cosines differ by a few hundredths, so a given title decides among them.
GIVEN_TEXT_WEIGHT = 0.3


def cache_dir() -> Path:
    """Where exported models and downloads are cached.

    ``$PRODUCTLENS_CACHE`` if set, else the platform's user cache directory.
    """
    env = os.environ.get("PRODUCTLENS_CACHE")
    if env:
        path = Path(env)
    else:
        from platformdirs import user_cache_dir

        path = Path(user_cache_dir("productlens"))
    path.mkdir(parents=True, exist_ok=True)
    return path


def num_threads() -> int:
    """Threads for inference: ``$PRODUCTLENS_THREADS`` or the number of usable cores."""
    env = os.environ.get("PRODUCTLENS_THREADS")
    if env:
        try:
            return max(1, int(env))
        except ValueError:
            from productlens.types import ProductLensError

            raise ProductLensError(f"$PRODUCTLENS_THREADS must be a whole number, got {env!r}") from None
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - macOS, Windows
        return max(1, os.cpu_count() or 1)


@contextmanager
def torch_threads(n: int = 0) -> Iterator[int]:
    """Run the block with torch on ``n`` threads (0: :func:`num_threads`), then restore torch's setting."""
    import torch

    before = torch.get_num_threads()
    n = n if n > 0 else num_threads()
    torch.set_num_threads(n)
    try:
        yield n
    finally:
        torch.set_num_threads(before)


@contextmanager
def seeded_torch(seed: int | None, threads: int = 0) -> Iterator[None]:
    """Run seeded torch work: on ``threads`` threads (as :func:`torch_threads`), with torch's global
    random state forked and, unless ``seed`` is None, seeded. The caller's thread count and random
    state come back afterwards."""
    import torch

    with torch_threads(threads), torch.random.fork_rng(devices=[]):
        if seed is not None:
            torch.manual_seed(seed)
        yield
