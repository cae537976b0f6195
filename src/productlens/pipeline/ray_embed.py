"""Embed a large catalog on a Ray cluster: resumable parquet shards, then load them into a store.

The work dir (manifest and shards, laid out as :mod:`productlens.pipeline.shards`
describes) must be on a file system every Ray node can read and write.

Shard ``i`` holds manifest rows ``[i * shard_size, (i + 1) * shard_size)``. Each
shard is written by one Ray Data actor (a model-holding worker created once)
with :func:`~productlens.pipeline.embed.iter_embeddings`, the same code and
model as the single-process path, to a temporary name and renamed into place,
its errors file first: a shard file that exists is complete, so a killed run
resumes with the shards that are missing.

>>> write_manifest(read_catalog("photos/"), "work")            # doctest: +SKIP
>>> embed_shards("work", embedder="efficientnet-lite2", workers=8)  # doctest: +SKIP
>>> with open_store("catalog/store", dim=1280) as store:       # doctest: +SKIP
...     load_shards("work", store)

Ray is imported only inside the functions that need it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import shutil
import signal
import socket
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from productlens.data.images import FILE_NOT_FOUND
from productlens.fileio import atomic_path
from productlens.pipeline.manifest import MANIFEST, _dumps, _pa, read_manifest, write_manifest
from productlens.pipeline.shards import META, SHARDS, iter_shards, load_shards, read_meta, shard_errors, shard_path
from productlens.progress import bar_disable
from productlens.types import Box, Item, ProductLensError

log = logging.getLogger(__name__)



@dataclass
class ShardReport:
    """What :func:`embed_shards` did; image counts and errors are for this run's shards."""

    shards_total: int
    shards_done_before: int
    shards_written: int
    images_embedded: int
    images_skipped: int
    errors: list[tuple[int, str, str]] = field(default_factory=list)  # (manifest row, image, message)
    seconds: float = 0.0
    ray_start_seconds: float = 0.0  # 0 when Ray was already running or nothing was pending

    @property
    def complete(self) -> bool:
        return self.shards_done_before + self.shards_written == self.shards_total


def _canonical_name(name: str) -> str:
    """``onnx:relative.onnx`` -> ``onnx:/abs/relative.onnx`` (workers may run elsewhere); others unchanged."""
    if name.startswith("onnx:"):
        return "onnx:" + os.path.abspath(os.path.expanduser(name[5:]))
    return name


def _read_rows(manifest, start: int, stop: int):
    """Rows ``[start, stop)`` of a ``pyarrow.parquet.ParquetFile``, reading only the row groups that hold them."""
    sizes = [manifest.metadata.row_group(g).num_rows for g in range(manifest.num_row_groups)]
    ends = np.cumsum(sizes)
    first, last = int(np.searchsorted(ends, start, "right")), int(np.searchsorted(ends, stop - 1, "right"))
    return manifest.read_row_groups(range(first, last + 1)).slice(start - int(ends[first] - sizes[first]), stop - start)


class _ShardWorker:
    """A Ray Data actor: holds one embedder and writes the shards it is given."""

    def __init__(self, work_dir: str, embedder: str, dim: int, batch_size: int, threads: int) -> None:
        os.environ["PRODUCTLENS_THREADS"] = str(threads)  # before the ONNX session is created
        from productlens.models.embedders import create_embedder

        self.work_dir, self.batch_size = Path(work_dir), batch_size
        self.embedder = create_embedder(embedder, threads=threads)
        if self.embedder.dim != dim:
            raise ProductLensError(f"{embedder} gives {self.embedder.dim}-d vectors on this worker, not {dim}-d")
        self._manifest = None

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, list]:
        out: dict[str, list] = {"shard": [], "embedded": [], "errors": []}
        for shard, start, stop in zip(batch["shard"], batch["start"], batch["stop"]):
            n, errors = self.write_shard(int(shard), int(start), int(stop))
            out["shard"].append(int(shard))
            out["embedded"].append(n)
            out["errors"].append(_dumps(errors))
        return out

    def write_shard(self, shard: int, start: int, stop: int) -> tuple[int, list[dict]]:
        from productlens.pipeline.embed import iter_embeddings

        pa, pq = _pa()
        if self._manifest is None:
            self._manifest = pq.ParquetFile(self.work_dir / MANIFEST)
        rows = _read_rows(self._manifest, start, stop)
        ids = rows.column("id").to_numpy()
        images = rows.column("image").to_pylist()
        boxes = [Box(**b) if b else None for b in rows.column("box").to_pylist()]
        metadata = rows.column("metadata")
        ok, chunks, errors = [], [], []
        for idx, vecs, errs in iter_embeddings(self.embedder, images, boxes=boxes, batch_size=self.batch_size):
            ok.append(idx)
            chunks.append(vecs)
            errors += [{"index": start + i, "id": int(ids[i]), "image": images[i], "message": msg}
                       for i, _, msg in errs]
        keep = np.concatenate(ok)
        vectors = np.ascontiguousarray(np.concatenate(chunks), dtype=np.float32)
        table = pa.table({
            "id": pa.array(ids[keep], pa.int64()),
            "vector": pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1), pa.float32()),
                                                        self.embedder.dim),
            "metadata": metadata.take(pa.array(keep)),
        })
        # the errors first: a shard file that exists is complete
        with atomic_path(shard_path(self.work_dir, shard).with_suffix(".errors.json")) as tmp:
            tmp.write_text(json.dumps(errors, ensure_ascii=False), encoding="utf-8")
        with atomic_path(shard_path(self.work_dir, shard)) as tmp:
            pq.write_table(table, tmp)
        return len(keep), errors


def _check_reachable(address: str) -> None:
    """Fail fast (ProductLensError) when ``address``'s host:port does not accept connections."""
    if address in ("auto", "local"):
        return
    hostport = address.split("://", 1)[-1].rstrip("/")
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit():
        host, port = hostport, "10001" if address.startswith("ray://") else "6379"
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=5).close()
    except OSError as exc:
        raise ProductLensError(f"cannot reach the Ray cluster at {address!r}: {exc}") from None


@contextlib.contextmanager
def _ray_session(address: str | None, num_cpus: int) -> Iterator[float]:
    """Use the running Ray, else start one (a cluster at ``address`` or a local one); yields start-up seconds."""
    try:
        import ray
    except ImportError as exc:
        raise ProductLensError(f"embed_shards needs Ray: pip install 'productlens[ray]' ({exc})") from None
    if ray.is_initialized():
        yield 0.0
        return
    t0, tmp = time.perf_counter(), None
    # ray.init puts its own SIGTERM handler (sys.exit(15), with a stack dump) in place of the command's,
    # which ends a command through its clean-ups with status 143: put the command's back
    term = signal.getsignal(signal.SIGTERM) if threading.current_thread() is threading.main_thread() else None
    if address:
        _check_reachable(address)
        try:
            ray.init(address=address, logging_level=logging.WARNING)
        except Exception as exc:
            raise ProductLensError(f"cannot connect to the Ray cluster at {address!r}: {exc}") from exc
    else:  # Ray's socket paths must stay under 107 characters: a short temp dir
        tmp = tempfile.mkdtemp(prefix="plray", dir="/tmp")
        try:
            ray.init(num_cpus=num_cpus, include_dashboard=False, _temp_dir=tmp, logging_level=logging.WARNING,
                     object_store_memory=256 * 2**20)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    if term is not None:
        signal.signal(signal.SIGTERM, term)
    try:
        yield time.perf_counter() - t0
    finally:
        ray.shutdown()
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def _quiet_ray_data() -> Iterator[None]:
    """No Ray Data progress bars or INFO lines on the console while we show our own bar."""
    import ray.data

    ctx = ray.data.DataContext.get_current()
    bars, handlers = ctx.enable_progress_bars, []
    ctx.enable_progress_bars = False
    for h in logging.getLogger("ray.data").handlers:
        if "File" not in type(h).__name__:  # keep Ray Data's own log file complete
            handlers.append((h, h.level))
            h.setLevel(max(h.level, logging.ERROR))
    try:
        yield
    finally:
        ctx.enable_progress_bars = bars
        for h, level in handlers:
            h.setLevel(level)


def embed_shards(work_dir: str | os.PathLike, *, embedder: str, shard_size: int = 1024, workers: int = 2,
                 address: str | None = None, batch_size: int = 32, progress: bool = True,
                 manifest: str | os.PathLike | Sequence[Item] | None = None,
                 cpus_per_worker: int = 1, retry_errors: bool = False) -> ShardReport:
    """Embed the work dir's manifest into parquet shards on Ray; shards already written are skipped.

    ``manifest`` (optional): items or a manifest file (see :func:`read_manifest`)
    to write as the work dir's manifest first (:func:`write_manifest`).
    ``workers`` model-holding actors (``cpus_per_worker`` CPUs and inference
    threads each) run the pending shards through Ray Data ``map_batches``. Ray:
    the running one if initialised, else the cluster at ``address``, else a
    local Ray with ``workers * cpus_per_worker`` CPUs; only a Ray started here
    is shut down. A work dir started with another embedder or shard size is
    refused. Bad images are reported in the report and each shard's errors file.
    ``retry_errors``: shards written with photos skipped as missing are embedded again too
    (a share mounted since); a corrupt photo does not make its shard run again. Only
    before any shard is loaded into a store, which records the shards it holds.
    """
    work_dir = Path(work_dir)
    t0 = time.perf_counter()
    for name, value in (("shard_size", shard_size), ("workers", workers), ("batch_size", batch_size),
                        ("cpus_per_worker", cpus_per_worker)):
        if int(value) < 1:
            raise ProductLensError(f"{name} must be at least 1, got {value}")
    if manifest is not None:
        write_manifest(manifest if isinstance(manifest, Sequence) and not isinstance(manifest, str)
                       else read_manifest(manifest), work_dir)
    if not (work_dir / MANIFEST).is_file():
        raise ProductLensError(f"{work_dir} has no {MANIFEST}: write one with write_manifest or pass manifest=")
    _, pq = _pa()
    rows = pq.read_metadata(work_dir / MANIFEST).num_rows
    name = _canonical_name(embedder)
    meta, want = read_meta(work_dir), {"embedder": name, "shard_size": shard_size, "rows": rows}
    wrong = [k for k, v in want.items() if meta is not None and meta[k] != v]
    if meta is not None and wrong:
        if any((work_dir / SHARDS).glob("shard-*.parquet")):
            raise ProductLensError(f"{work_dir} was started with {wrong[0]} {meta[wrong[0]]!r}, not "
                                   f"{want[wrong[0]]!r}: resume it with the same settings, or use a new work dir")
        meta = None  # no shard written yet: start afresh with these settings
    n_shards = math.ceil(rows / shard_size)
    pending = [s for s in range(n_shards) if not shard_path(work_dir, s).is_file()
               or (retry_errors and any(msg.endswith(FILE_NOT_FOUND) for _, _, msg in shard_errors(work_dir, s)))]
    report = ShardReport(n_shards, n_shards - len(pending), 0, 0, 0)
    if not pending:
        report.seconds = time.perf_counter() - t0
        return report
    if meta is None:  # the model is loaded here once (a bundled one is exported to the cache) to learn dim
        from productlens.models.embedders import get_embedder

        try:
            dim = get_embedder(name).dim
        except KeyError as exc:
            raise ProductLensError(f"unknown embedder {embedder!r}: {exc}") from None
        meta = {**want, "dim": dim}
        with atomic_path(work_dir / SHARDS / META) as tmp:
            tmp.write_text(json.dumps(meta, indent=1))
    for stale in (work_dir / SHARDS).glob("shard-*.tmp"):  # partial files of a killed run
        stale.unlink(missing_ok=True)
    _run_ray(work_dir, meta, pending, report, workers=workers, address=address, batch_size=batch_size,
             progress=progress, cpus_per_worker=cpus_per_worker)
    report.seconds = time.perf_counter() - t0
    if report.errors:
        log.warning("skipped %d images that could not be read, e.g. %s", len(report.errors), report.errors[0][2])
    return report


def _run_ray(work_dir: Path, meta: dict, pending: list[int], report: ShardReport, *, workers: int,
             address: str | None, batch_size: int, progress: bool, cpus_per_worker: int) -> None:
    from tqdm.auto import tqdm

    size, rows = meta["shard_size"], meta["rows"]
    todo = [{"shard": s, "start": s * size, "stop": min(rows, (s + 1) * size)} for s in pending]
    with _ray_session(address, workers * cpus_per_worker) as started, _quiet_ray_data():
        import ray.data

        report.ray_start_seconds = started
        ds = ray.data.from_items(todo, override_num_blocks=len(todo)).map_batches(
            _ShardWorker, batch_size=1, num_cpus=cpus_per_worker,
            compute=ray.data.ActorPoolStrategy(size=min(workers, len(todo)), max_tasks_in_flight_per_actor=1),
            fn_constructor_kwargs={"work_dir": str(work_dir.absolute()), "embedder": meta["embedder"],
                                   "dim": meta["dim"], "batch_size": batch_size, "threads": cpus_per_worker})
        with tqdm(total=sum(t["stop"] - t["start"] for t in todo), desc="embedding shards", unit="img",
                  disable=bar_disable(progress), dynamic_ncols=True) as bar:
            try:
                for row in ds.iter_rows():
                    errors = json.loads(row["errors"])
                    report.shards_written += 1
                    report.images_embedded += int(row["embedded"])
                    report.images_skipped += len(errors)
                    report.errors += [(e["index"], e["image"], e["message"]) for e in errors]
                    bar.update(int(row["embedded"]) + len(errors))
                    bar.set_postfix(shards=f"{report.shards_done_before + report.shards_written}/"
                                           f"{report.shards_total}", skipped=report.images_skipped, refresh=False)
            except ProductLensError:
                raise
            except Exception as exc:
                raise ProductLensError(f"embedding shards on Ray failed after {report.shards_written} of "
                                       f"{len(todo)} shards (written shards are kept; rerun to resume): "
                                       f"{exc}") from exc
    report.errors.sort()


__all__ = ["ShardReport", "embed_shards", "iter_shards", "load_shards", "read_manifest", "shard_path",
           "write_manifest"]
