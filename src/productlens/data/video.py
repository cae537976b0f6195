"""Frames from a video file: at most ``max_frames`` of them, spread evenly over the clip in time,
bounded in time and memory whatever the file's length, resolution or frame rate.

- A file whose container gives a frame count is read by seeking to the middle of each of
  ``max_frames`` equal spans, so an hours-long file costs no more than a short one. OpenCV seeks
  through the mean frame rate; on a clip of variable frame rate (a phone's screen recording) seeks
  can land past the end and read nothing. A clip of at most ``IN_ORDER_MAX`` frames whose seeks miss
  is read again in order, each frame taken at its own timestamp; a longer one keeps what it read, and
  a warning says how many frames could not be read (a truncated or corrupt file, most often).
- A stream without a frame count (raw MJPEG, some live captures) is read in order with a stride that
  doubles as it goes, so that the frames kept cover all of it, up to ``STREAM_MAX`` frames; a longer
  stream is cut there with a warning.
- Frames are shrunk to ``MAX_SIDE`` pixels on their longer side as they are decoded (a 4K frame is
  25 MB) and timed by their own timestamps.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from productlens.types import ProductLensError

log = logging.getLogger(__name__)

MAX_FRAMES = 48
MAX_FRAMES_LIMIT = 1000  # frames held at once: 1000 at MAX_SIDE are about 1.8 GB
MAX_SIDE = 1024  # pixels on a kept frame's longer side (enough for the print OCR reads)
IN_ORDER_MAX = 3600  # frames (2 minutes at 30 fps): a clip this short is read again in order when seeks miss
STREAM_MAX = 54_000  # frames read from a stream without a frame count (30 minutes at 30 fps)


@dataclass
class Frame:
    index: int
    time: float  # seconds from the start
    image: Image.Image


def sample_frames(path: str | os.PathLike, max_frames: int = MAX_FRAMES) -> tuple[list[Frame], float]:
    """Up to ``max_frames`` RGB frames spread evenly over the video, and its duration in seconds.

    Raises ProductLensError when the file is missing, cannot be opened or has no readable frame, or
    when ``max_frames`` is not within 1 and ``MAX_FRAMES_LIMIT``.
    """
    import cv2

    # FFmpeg's own lines ("moov atom not found") would precede ours, which say the same thing
    os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")
    check_max_frames(max_frames)
    path = Path(path)
    if path.is_dir():
        raise ProductLensError(f"{path}: a folder; give a video file")
    if not path.is_file():
        raise ProductLensError(f"{path}: no such video file")
    cap = cv2.VideoCapture(str(path))
    try:
        if not cap.isOpened():
            raise ProductLensError(f"{path}: cannot open the video (unknown format, corrupt file, or no frames)")
        fps = cap.get(cv2.CAP_PROP_FPS) or 0.0
        fps = fps if 0 < fps < 1000 else 25.0
        count = int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
        if count > 0:
            frames, missed = _read_seeking(cap, count, fps, max_frames)
            if missed and count <= IN_ORDER_MAX:
                cap.release()
                cap = cv2.VideoCapture(str(path))
                frames, end, _ = _read_in_order(cap, max_frames, count / fps, fps)
                if end < 0.9 * count / fps:
                    log.warning("%s: the frames end at %.1f s of the %.1f s the file announces (a truncated or "
                                "corrupt file?)", path, end, count / fps)
            else:
                if missed:
                    log.warning("%s: %d of %d sampled frames could not be read (a truncated or corrupt file?)",
                                path, missed, missed + len(frames))
                end = _end_time(cap, count, fps, frames)
        else:
            frames, end, complete = _read_stream(cap, max_frames, fps)
            if not complete:
                log.warning("%s: a stream without a frame count; only its first %d frames (%.0f s) were read",
                            path, STREAM_MAX, end)
    finally:
        cap.release()
    if not frames:
        raise ProductLensError(f"{path}: the video has no readable frame (a truncated or corrupt file?)")
    return frames, max(end, frames[-1].time)


def check_max_frames(max_frames: int) -> None:
    """Raise ProductLensError unless 1 <= ``max_frames`` <= ``MAX_FRAMES_LIMIT``."""
    if not 1 <= max_frames <= MAX_FRAMES_LIMIT:
        raise ProductLensError(f"max_frames must be within 1 and {MAX_FRAMES_LIMIT}, got {max_frames}")


def _picture(bgr: np.ndarray) -> Image.Image:
    """An RGB image of a decoded frame, shrunk to ``MAX_SIDE`` on its longer side."""
    import cv2

    h, w = bgr.shape[:2]
    if max(h, w) > MAX_SIDE:
        f = MAX_SIDE / max(h, w)
        bgr = cv2.resize(bgr, (max(1, round(w * f)), max(1, round(h * f))), interpolation=cv2.INTER_AREA)
    return Image.fromarray(np.ascontiguousarray(bgr[:, :, ::-1]))


def _read_seeking(cap, count: int, fps: float, n: int) -> tuple[list[Frame], int]:
    """The middle frame of each of ``n`` equal spans (every frame of a shorter clip), by seeking; and
    how many seeks read nothing. A clip's first and last frames, often a fade from or to black, are
    read only when every frame is."""
    import cv2

    n = min(n, count)
    wanted = np.unique(((np.arange(n) + 0.5) * count / n).astype(int).clip(0, count - 1))
    frames: list[Frame] = []
    for idx in wanted.tolist():
        cap.set(cv2.CAP_PROP_POS_FRAMES, idx)
        ok, bgr = cap.read()
        if ok and bgr is not None:
            frames.append(Frame(idx, _frame_time(cap, idx, fps), _picture(bgr)))
    return frames, len(wanted) - len(frames)


def _read_in_order(cap, n: int, span: float, fps: float, limit: int = 2 * IN_ORDER_MAX
                   ) -> tuple[list[Frame], float, bool]:
    """Every frame in order, keeping the first at or after each of ``n`` times spread evenly over
    ``span`` seconds (one frame shown across several of those times is kept once); the frames, the
    clip's end (last timestamp plus its frame interval) and whether the end was reached within
    ``limit`` frames."""
    targets = (np.arange(n) + 0.5) * span / n
    frames: list[Frame] = []
    j = idx = 0
    last = prev = 0.0
    while idx < limit:
        if not cap.grab():
            return frames, _after(last, prev, fps, idx), True
        prev, last = last, _frame_time(cap, idx, fps)
        if j < n and last >= targets[j]:
            ok, bgr = cap.retrieve()
            if ok and bgr is not None:
                frames.append(Frame(idx, last, _picture(bgr)))
            while j < n and targets[j] <= last:
                j += 1
        idx += 1
    return frames, _after(last, prev, fps, idx), False


def _read_stream(cap, n: int, fps: float) -> tuple[list[Frame], float, bool]:
    """A stream without a frame count, read in order up to ``STREAM_MAX`` frames: every ``stride``-th
    frame is kept, and when ``2 n`` are held every other one is let go and the stride doubles; ``n``
    spread evenly over those are returned, with the end time and whether the stream ended."""
    held: list[Frame] = []
    stride, idx = 1, 0
    last = prev = 0.0
    complete = False
    while idx < STREAM_MAX:
        if not cap.grab():
            complete = True
            break
        prev, last = last, _frame_time(cap, idx, fps)
        if idx % stride == 0:
            ok, bgr = cap.retrieve()
            if ok and bgr is not None:
                held.append(Frame(idx, last, _picture(bgr)))
            if len(held) >= 2 * n:
                held, stride = held[::2], stride * 2
        idx += 1
    if len(held) > n:
        held = [held[i] for i in ((np.arange(n) + 0.5) * len(held) / n).astype(int)]
    return held, _after(last, prev, fps, idx), complete


def _after(last: float, prev: float, fps: float, read: int) -> float:
    """The end of a clip read in order: its last frame's time plus that frame's interval (the one
    before it, else one mean interval); ``read / fps`` where the decoder gave no timestamp."""
    if last <= 0:
        return read / fps
    return last + (last - prev if read > 1 and last > prev else 1 / fps)


def _end_time(cap, count: int, fps: float, frames: list[Frame]) -> float:
    """The clip's duration: its last frame's timestamp plus one mean frame interval (``count / fps`` for a
    constant rate; a variable one, whose mean rate OpenCV reports, needs the timestamp), read by seeking
    to that frame unless it was sampled; ``count / fps`` where the decoder gives no timestamp."""
    import cv2

    if frames and frames[-1].index == count - 1:
        last = frames[-1].time
    else:
        cap.set(cv2.CAP_PROP_POS_FRAMES, count - 1)
        ok, _ = cap.read()
        last = _frame_time(cap, count - 1, fps) if ok else (count - 1) / fps
    return last + 1 / fps if last > 0 else count / fps


def _frame_time(cap, idx: int, fps: float) -> float:
    """Seconds from the start of the frame ``cap`` has just read: its own timestamp, which a clip of
    variable frame rate (a phone's screen recording) needs, where frame / mean fps drifts by seconds;
    ``idx / fps`` where the decoder gives none."""
    import cv2

    ms = cap.get(cv2.CAP_PROP_POS_MSEC)
    if ms is not None and np.isfinite(ms) and (ms > 0 or idx == 0):
        return float(ms) / 1000.0
    return idx / fps
