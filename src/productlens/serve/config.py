"""Service settings, from arguments or ``PRODUCTLENS_*`` environment variables."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path


def _env_bool(name: str, default: bool) -> bool:
    v = os.environ.get(name)
    return default if v is None else v.strip().lower() in ("1", "true", "yes", "on")


@dataclass
class ServeConfig:
    """What the service serves and how.

    ``api_key``: needed (header ``X-API-Key``) by the catalog admin calls;
    ``$PRODUCTLENS_API_KEY`` by default; without one, admin calls are refused.
    ``open_reads``: identify, products and thumbnails need no key (default).
    ``workers``: inferences at once (each already uses every core; 1 is right
    on a CPU). ``queue``: requests allowed to wait beyond those; more get 503.
    ``max_batch``: waiting identify requests run together in one model run,
    at most this many (default: the engine's choice for its catalog).
    ``search_detected``: with a detector and no box given, search with the
    best detected box (True) or the whole photo (False; boxes are still drawn).
    ``min_box_score``, ``max_boxes``: which detections are returned (and drawn):
    at most this many, best first, scoring at least this much.
    ``verify``: spatial verification of the top matches (:mod:`productlens.pipeline.verify`;
    None: on where OpenCV is installed).
    ``write_wait``: seconds an admin call waits while another process writes to the catalog;
    then it answers 503 (reads go on meanwhile).
    """

    catalog: Path
    api_key: str | None = field(default_factory=lambda: os.environ.get("PRODUCTLENS_API_KEY") or None)
    open_reads: bool = field(default_factory=lambda: _env_bool("PRODUCTLENS_OPEN_READS", True))
    detector: str | None = None
    search_detected: bool = True
    min_box_score: float = 0.3
    max_boxes: int = 10
    verify: bool | None = None
    max_upload_mb: float = 10.0
    max_pixels: int = 40_000_000
    workers: int = 1
    queue: int = 8
    max_batch: int | None = None
    history_db: Path | None = None  # default: <catalog>/history.sqlite
    cors_origins: tuple[str, ...] = ()  # CORS off unless origins are listed
    write_wait: float = 60.0

    def __post_init__(self) -> None:
        from productlens.types import ProductLensError

        self.catalog = Path(self.catalog)
        for name in ("max_upload_mb", "max_pixels", "workers", "write_wait"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):  # NaN fails this too
                raise ProductLensError(f"{name.replace('_', '-')} must be a positive number, got {value}")
        if self.queue < 0 or (self.max_batch is not None and self.max_batch < 1):
            raise ProductLensError(f"queue must be 0 or more and max-batch 1 or more, got {self.queue} and "
                                   f"{self.max_batch}")
        if self.history_db is None:
            self.history_db = self.catalog / "history.sqlite"
