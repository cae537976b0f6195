"""Reading frames from video files (productlens.data.video) and the per-frame blur rule."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from productlens.types import ProductLensError

cv2 = pytest.importorskip("cv2")


def _write(path, frames, fps=10, fourcc="mp4v"):
    h, w = frames[0].shape[:2]
    out = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), fps, (w, h))
    for f in frames:
        out.write(f)
    out.release()
    return path


def _shade(i, size=(48, 64)):
    return np.full((*size, 3), (i * 7) % 250, np.uint8)


class FakeCap:
    """A decoder of ``times`` (seconds): frames come in order; seeking to a frame index lands where
    ``seek`` says (None: the read fails, as OpenCV's mean-rate seeks past the end of a clip of
    variable frame rate)."""

    def __init__(self, times, seek=None):
        self.times, self.seek, self.pos, self.retrieved = list(times), seek, -1, []

    def grab(self):
        if self.pos + 1 >= len(self.times):
            return False
        self.pos += 1
        return True

    def retrieve(self):
        self.retrieved.append(self.pos)
        return True, np.full((4, 4, 3), self.pos % 255, np.uint8)

    def read(self):
        return (self.grab() and self.retrieve()[0]), np.full((4, 4, 3), 0, np.uint8)

    def set(self, prop, value):
        target = self.seek(int(value)) if self.seek else int(value)
        self.pos = (len(self.times) if target is None else target) - 1

    def get(self, prop):
        assert prop == cv2.CAP_PROP_POS_MSEC
        return self.times[self.pos] * 1000.0


def test_a_clip_read_in_order_is_sampled_evenly_in_time():
    """A variable-rate clip (100 frames in its first second, then 20 frames of a second each) read in
    order gives frames spread over its 21 s, each at its own time and none twice; the end is the last
    frame's time plus its interval."""
    from productlens.data.video import _read_in_order

    times = [i / 100 for i in range(100)] + [1.0 + i for i in range(20)]
    cap = FakeCap(times)
    frames, end, complete = _read_in_order(cap, 12, 21.0, fps=120 / 21)
    got = [f.time for f in frames]
    assert complete and end == pytest.approx(21.0)
    assert len(set(cap.retrieved)) == len(cap.retrieved) == len(frames)
    assert got == sorted(got) and got[-1] >= 19 and sum(t < 1 for t in got) == 1  # not 9 of 12 in the first 1 s
    assert all(times[f.index] == f.time for f in frames)


def test_missed_seeks_on_a_short_clip_are_read_again_in_order(tmp_path, monkeypatch, caplog):
    """Seeks that read nothing (OpenCV seeks by the mean frame rate) made a variable-rate clip lose most
    of its sampled frames unsaid: a short clip is now read again in order, a long one warns."""
    from productlens.data import video

    path = _write(tmp_path / "c.mp4", [_shade(i) for i in range(60)])
    real = cv2.VideoCapture

    class Missing:  # every third seek lands past the end
        def __init__(self, p):
            self.cap = real(p)
            self.missed = False

        def set(self, prop, value):
            self.missed = prop == cv2.CAP_PROP_POS_FRAMES and int(value) >= 40
            return self.cap.set(prop, value)

        def read(self):
            return (False, None) if self.missed else self.cap.read()

        def __getattr__(self, name):
            return getattr(self.cap, name)

    monkeypatch.setattr(cv2, "VideoCapture", Missing)
    frames, duration = video.sample_frames(path, max_frames=20)
    assert len(frames) == 20 and duration == pytest.approx(6.0)  # all of them, in order
    monkeypatch.setattr(video, "IN_ORDER_MAX", 10)  # as for a clip too long to read in order
    with caplog.at_level(logging.WARNING, logger="productlens.data.video"):
        frames, _ = video.sample_frames(path, max_frames=20)
    assert len(frames) < 20 and "sampled frames could not be read" in caplog.text


def test_a_stream_without_a_frame_count_is_covered_to_its_end(tmp_path):
    """A raw MJPEG stream has no frame count: only its first 9.6 s had been read (240 of 1500 frames);
    frames are now kept at a doubling stride over the whole stream, at most max_frames of them."""
    from productlens.data import video

    path = tmp_path / "stream.mjpeg"
    with open(path, "wb") as out:
        for i in range(600):  # 24 s at OpenCV's default 25 fps
            out.write(cv2.imencode(".jpg", _shade(i))[1].tobytes())
    probe = cv2.VideoCapture(str(path))
    if not probe.isOpened() or probe.get(cv2.CAP_PROP_FRAME_COUNT) > 0:
        pytest.skip("this OpenCV does not read a raw MJPEG stream as one without a frame count")
    frames, duration = video.sample_frames(path, max_frames=12)
    assert len(frames) == 12 and frames[-1].index > 500 and duration == pytest.approx(24.0, abs=0.5)
    idx = [f.index for f in frames]
    assert idx == sorted(idx) and max(np.diff(idx)) < 2 * min(np.diff(idx)) + 1  # evenly spread


def test_stream_reading_stops_at_its_bound(monkeypatch, caplog):
    from productlens.data import video

    monkeypatch.setattr(video, "STREAM_MAX", 100)
    frames, end, complete = video._read_stream(FakeCap([i / 25 for i in range(1000)]), 8, 25.0)
    assert not complete and len(frames) == 8 and frames[-1].index < 100 and end == pytest.approx(4.0)


def test_large_frames_are_shrunk_as_they_are_decoded(tmp_path):
    """A 4K clip held every sampled frame at 25 MB (2.3 GB for 48): frames are kept at MAX_SIDE."""
    from productlens.data.video import MAX_SIDE, sample_frames

    path = _write(tmp_path / "big.avi", [np.full((1200, 2000, 3), 90 + i, np.uint8) for i in range(3)],
                  fourcc="MJPG")
    frames, _ = sample_frames(path, max_frames=3)
    assert frames and all(max(f.image.size) == MAX_SIDE for f in frames)
    assert frames[0].image.size == (MAX_SIDE, round(1200 * MAX_SIDE / 2000))


def test_max_frames_is_bounded(tmp_path):
    from productlens.data.video import MAX_FRAMES_LIMIT, sample_frames

    path = _write(tmp_path / "c.mp4", [_shade(i) for i in range(5)])
    for bad in (0, MAX_FRAMES_LIMIT + 1):
        with pytest.raises(ProductLensError, match="max_frames must be within 1 and"):
            sample_frames(path, max_frames=bad)


def test_a_truncated_clip_says_so(tmp_path, caplog):
    """A clip cut in half (its index at the front) gave half its frames with no word of it."""
    from productlens.data.video import sample_frames

    path = _write(tmp_path / "c.mp4", [np.random.default_rng(i).integers(0, 255, (96, 128, 3), np.uint8)
                                      for i in range(60)])
    moov_first = tmp_path / "front.mp4"
    data = path.read_bytes()
    i = data.find(b"moov") - 4
    j = data.find(b"mdat") - 4
    if i < 0 or j < 0 or i < j:
        pytest.skip("the writer put the index first")
    moov = data[i:i + int.from_bytes(data[i:i + 4], "big")]
    # the index moved to the front; its chunk offsets then point len(moov) bytes early, so patch them
    n = int.from_bytes(moov[moov.find(b"stco") + 8:moov.find(b"stco") + 12], "big")
    at = moov.find(b"stco") + 12
    offs = [int.from_bytes(moov[at + 4 * k:at + 4 * k + 4], "big") + len(moov) for k in range(n)]
    moov = moov[:at] + b"".join(o.to_bytes(4, "big") for o in offs) + moov[at + 4 * n:]
    whole = data[:j] + moov + data[j:i] + data[i + len(moov):]
    moov_first.write_bytes(whole[:len(whole) // 2])
    with caplog.at_level(logging.WARNING, logger="productlens.data.video"):
        frames, duration = sample_frames(moov_first, max_frames=20)
    assert 0 < len(frames) < 20 and duration < 5 and "truncated or corrupt" in caplog.text


def test_a_plain_product_after_a_busy_one_keeps_its_sharp_frames():
    """Against the whole clip's median, every frame of a plain product (sharpness ~320) shown before a busy
    one (~2000) counted as blurred, and the product vanished; each frame is now judged by its neighbours
    (the two plain frames next to the change still are)."""
    from productlens.pipeline.video import blurred_frames

    plain_then_busy = np.array([320.0] * 24 + [2000.0] * 24)
    assert np.flatnonzero(blurred_frames(plain_then_busy)).tolist() == [22, 23]
    shaken = plain_then_busy.copy()
    shaken[[5, 6, 9, 30, 33, 35]] = [60.0, 90.0, 70.0, 300.0, 250.0, 400.0]  # half of a window motion-blurred
    assert np.flatnonzero(blurred_frames(shaken)).tolist() == [5, 6, 9, 22, 23, 30, 33, 35]


def test_make_clip_leaves_nothing_behind_when_a_photo_fails(tmp_path):
    from PIL import Image

    from productlens.data.clips import make_clip

    good = tmp_path / "a.jpg"
    Image.new("RGB", (64, 64), (200, 30, 30)).save(good)
    (tmp_path / "bad.jpg").write_bytes(b"not a photo")
    with pytest.raises(ProductLensError):
        make_clip([good, tmp_path / "bad.jpg"], tmp_path / "out" / "clip.mp4")
    assert list((tmp_path / "out").iterdir()) == []


def test_a_clip_whose_hits_were_removed_meanwhile(tmp_path, monkeypatch):
    """Items removed by another process between a frame's search and the read of their metadata had left
    frames with no product, and identify_video failed on min() of nothing."""
    from helpers import tiny_embedder, write_dataset
    from productlens.data.clips import make_clip
    from productlens.data.readers import read_gallery
    from productlens.pipeline.catalog_build import build_catalog
    from productlens.pipeline.video import identify_video

    paths = write_dataset(tmp_path, n_products=3, per_product=2)
    gallery = read_gallery(paths["gallery"])
    clip = make_clip([gallery[0].image], tmp_path / "clip.mp4", fps=6, seed=1)
    cat, _ = build_catalog(gallery, tmp_path / "cat", embedder=tiny_embedder(tmp_path), use_gallery_labels=True,
                           progress=False)
    with cat:
        real, gone = cat.store.get, {gallery[0].id}
        monkeypatch.setattr(cat.store, "get", lambda ids: [None if int(i) in gone else md
                                                           for i, md in zip(ids, real(ids))])
        res = identify_video(cat, clip, k=3)
        assert gallery[0].id not in {m.id for m in res.products}
        gone |= {g.id for g in gallery}  # every item
        with pytest.raises(ProductLensError, match="no catalog item matched a frame"):
            identify_video(cat, clip, k=3)
