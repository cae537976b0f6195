"""Detection on Clothing Co-Parsing (ccp) and detector crops for grocery search.

    python benchmarks/bench_detect.py [--data ../shared/data] [--skip-grocery]

1. ccp ``train.json`` -> ``val.json``: productlens's detector (FCOS head with
   FPN and towers on the frozen EfficientNet-Lite2 maps, the library defaults)
   beside the baseline trained the same way in the same run: linear
   predictions on each backbone map (no FPN, no towers). Both run end to end
   through ``productlens eval detect``'s function (views, training, export,
   detection, scoring; the seconds include all of it). COCO mAP@0.5,
   mAP@0.5:0.95 and per-class AP@0.5 (pycocotools). val is only scored.
2. Inference time: single images resized so that the longer side is 640 px,
   one at a time, p50 and p99 of ``Detector.detect`` (decoding excluded), with
   the backbone's own time beside it.
3. Grocery search with ``--detect``: a class-agnostic product detector trained
   on copy-paste composites (the 81 white-background shop photos cut out and
   pasted onto ccp street photos; no grocery phone photo is used), then
   retrieval-shop (challenge mode, adapted on train.csv, frozen backbone)
   ranked with and without the best detected box of each query.
"""

from __future__ import annotations

import argparse
import glob
import json
import platform
import tempfile
import time
from pathlib import Path

import numpy as np

from productlens.data.coco import read_coco
from productlens.data.images import load_image
from productlens.eval.detection import evaluate_detection
from productlens.models.detectors import load_detector
from productlens.models.detectors.fcos import HeadConfig
from productlens.pipeline.detect_train import DetectTrainOptions, train_detector

ROOT = Path(__file__).resolve().parents[1]
GROCERY_EPOCHS = 3  # one class (product), 600 composites: fewer epochs keep the run short


def ccp(data_dir: Path, work: Path) -> dict:
    """Both rows through ``evaluate_detection``, the function behind ``productlens eval detect``."""
    train, val = data_dir / "ccp" / "train.json", data_dir / "ccp" / "val.json"
    rows = {}
    base = DetectTrainOptions(head=HeadConfig(convs=0, fpn=False))
    for name, o in (("baseline (linear per map)", base), ("productlens", DetectTrainOptions())):
        m = evaluate_detection(train, val, o, model_out=work / name.split()[0])
        rows[name] = m
        print(f"{name}: mAP@0.5 {m['map50']:.3f}  mAP {m['map']:.3f}  {m['seconds']:.0f} s end to end", flush=True)
    return rows


def timing(data_dir: Path, folder: Path, n: int = 60) -> dict:
    import onnxruntime as ort

    from productlens.models.detectors.pyramid import cached_onnx
    from productlens.models.detectors.runtime import letterbox

    det = load_detector(folder)
    paths = sorted(glob.glob(str(data_dir / "ccp" / "photos" / "*.jpg")))[:n]
    imgs = []
    for p in paths:
        im = load_image(p)
        f = 640 / max(im.size)
        imgs.append(im.resize((round(im.size[0] * f), round(im.size[1] * f))))
    det.detect(imgs[0])
    times = []
    for im in imgs:
        t = time.perf_counter()
        det.detect(im)
        times.append((time.perf_counter() - t) * 1000)
    sess = ort.InferenceSession(str(cached_onnx(DetectTrainOptions().backbone)), providers=["CPUExecutionProvider"])
    bb = []
    for im in imgs[:20]:
        x, _ = letterbox(im, det.spec.size)
        t = time.perf_counter()
        sess.run(None, {"pixels": x[None]})
        bb.append((time.perf_counter() - t) * 1000)
    return {"p50": float(np.percentile(times, 50)), "p99": float(np.percentile(times, 99)),
            "backbone_p50": float(np.percentile(bb, 50)), "input": f"{imgs[0].size[0]}x{imgs[0].size[1]}",
            "size": det.spec.size}


def grocery(data_dir: Path, work: Path) -> dict:
    from productlens.data.readers import read_gallery
    from productlens.data.synth import synthesize_coco
    from productlens.eval.retrieval import evaluate_retrieval

    g = data_dir / "grocery"
    shop = [it.image for it in read_gallery(g / "retrieval-shop" / "gallery.csv")]
    backgrounds = sorted(glob.glob(str(data_dir / "ccp" / "photos" / "*.jpg")))
    t = time.perf_counter()
    ann = synthesize_coco(shop, backgrounds, work / "composites", n_images=600)
    train_detector(read_coco(ann), work / "products", DetectTrainOptions(epochs=GROCERY_EPOCHS))
    t_det = time.perf_counter() - t
    det = load_detector(work / "products")
    out = {"detector_seconds": round(t_det, 1)}
    for name, d in (("whole photo", None), ("--detect", det)):
        m = evaluate_retrieval(g / "retrieval-shop" / "gallery.csv", g / "retrieval-shop" / "queries.csv",
                               train_csv=g / "train.csv", finetune=False, detector=d)
        out[name] = m
        print(f"retrieval-shop {name}: mAP@1000 {m['map@1000']:.3f} top-1 {m['top1']:.3f}", flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    ap.add_argument("--skip-grocery", action="store_true")
    ap.add_argument("--json", type=Path, help="Also write the raw results here.")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-detect-") as tmp:
        work = Path(tmp)
        rows = ccp(args.data, work)
        speed = timing(args.data, work / "productlens")
        groc = None if args.skip_grocery else grocery(args.data, work)
    print(f"\n# Detection on ccp val ({platform.machine()}, {platform.node()})\n")
    print("| detector | mAP@0.5 | mAP@0.5:0.95 | classes | target mAP@0.5 | seconds |")
    print("|---|---|---|---|---|---|")
    for name, m in rows.items():
        target = ">= 0.40 " + ("met" if m["map50"] >= 0.40 else "not met") if name == "productlens" else ""
        print(f"| {name} | {m['map50']:.3f} | {m['map']:.3f} | {len(m['per_class'])} | {target} | {m['seconds']} |")
    pc = rows["productlens"]["per_class"]
    pb = rows["baseline (linear per map)"]["per_class"]
    print("\nPer-class AP@0.5 (productlens / baseline), classes with val boxes, best first:\n")
    print(", ".join(f"{c} {pc[c]:.2f}/{pb.get(c, 0):.2f}" for c in sorted(pc, key=lambda c: -pc[c])))
    print(f"\nInference, {speed['input']} input resized to {speed['size']} px: p50 {speed['p50']:.1f} ms, "
          f"p99 {speed['p99']:.1f} ms (backbone alone p50 {speed['backbone_p50']:.1f} ms); target p50 <= 150 ms "
          + ("met" if speed["p50"] <= 150 else "not met"))
    if groc:
        a, b = groc["whole photo"], groc["--detect"]
        print("\n| retrieval-shop, challenge, adapted on train.csv | mAP@1000 | top-1 | seconds |\n|---|---|---|---|")
        for name in ("whole photo", "--detect"):
            print(f"| {name} | {groc[name]['map@1000']:.3f} | {groc[name]['top1']:.3f} | {groc[name]['seconds']} |")
        print(f"\nchange with --detect: {b['map@1000'] - a['map@1000']:+.3f} mAP@1000 "
              f"(product detector trained on composites in {groc['detector_seconds']} s)")
    if args.json:
        args.json.write_text(json.dumps({"ccp": rows, "speed": speed, "grocery": groc}, indent=1, default=str))


if __name__ == "__main__":
    main()
