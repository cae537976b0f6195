"""Load on the HTTP service: /v1/identify under wrk at concurrency 1, 4 and 16.

    python benchmarks/bench_serve.py [--data ../shared/data] [--seconds 20] [--json PATH]

Builds the demo catalog (grocery shop photos, adapted on train.csv), starts
``productlens serve`` on a loopback port in its own process, and drives it
with wrk (Debian's package; a Lua script posts one multipart val photo).
Beside it, the bare pipeline's own time per image (decoding the same bytes
and ``Engine.identify``, in this process, same catalog) is measured in the
same run.
Requests answered 503 (queue full) are counted; they are not failures.

A second table measures the batching of waiting requests: a catalog with
whole-photo queries (``--query-views none``, where batches help) served with
``--max-batch 1`` and with the default, at concurrency 1, 4 and 8. The demo
catalog pools seven views per query, so its default batch is one query.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]

LUA = r"""
local f = io.open("{photo}", "rb"); local data = f:read("*all"); f:close()
local b = "----productlensbench"
wrk.method = "POST"
wrk.headers["Content-Type"] = "multipart/form-data; boundary=" .. b
wrk.body = "--" .. b .. "\r\nContent-Disposition: form-data; name=\"image\"; filename=\"q.jpg\"\r\n" ..
           "Content-Type: image/jpeg\r\n\r\n" .. data .. "\r\n--" .. b .. "--\r\n"
done = function(summary, latency, requests)
  io.write(string.format("P50 %.3f\nP99 %.3f\n", latency:percentile(50) / 1000, latency:percentile(99) / 1000))
end
"""


def _ms(text: str) -> float:
    m = re.match(r"([\d.]+)(us|ms|s)", text)
    v, unit = float(m.group(1)), m.group(2)
    return v / 1000 if unit == "us" else v * 1000 if unit == "s" else v


def run_wrk(url: str, script: Path, connections: int, seconds: int) -> dict:
    out = subprocess.run(["wrk", "-t", str(min(connections, 2)), "-c", str(connections), "-d", f"{seconds}s",
                          "--timeout", "30s", "-s", str(script), url + "/v1/identify"],
                         capture_output=True, text=True, check=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    total = int(re.search(r"(\d+) requests in", out).group(1))
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors = re.search(r"Socket errors: (.*)", out)
    ok = total - (int(non2xx.group(1)) if non2xx else 0)
    return {"connections": connections, "rps": rps, "ok_rps": round(rps * ok / max(total, 1), 1), "requests": total,
            "p50_ms": float(re.search(r"P50 ([\d.]+)", out).group(1)),
            "p99_ms": float(re.search(r"P99 ([\d.]+)", out).group(1)),
            "non_2xx": int(non2xx.group(1)) if non2xx else 0, "socket_errors": errors.group(1) if errors else ""}


def idle(url: str, timeout: float = 60.0) -> None:
    """Wait until the service has no request running or waiting."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if json.load(urllib.request.urlopen(url + "/v1/health", timeout=5))["in_flight"] == 0:
            return
        time.sleep(0.2)


def load(catalog: Path, script: Path, connections: tuple[int, ...], seconds: int,
         extra: list[str] = ()) -> tuple[list[dict], str]:
    """Serve ``catalog`` in its own process and drive it with wrk at each concurrency; (rows, health after)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-m", "productlens.cli.main", "serve", str(catalog),
                               "--port", str(port), *extra], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                              env={**os.environ})
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(600):
            try:
                urllib.request.urlopen(url + "/v1/health", timeout=1)
                break
            except OSError:
                time.sleep(0.1)
        rows = []
        for c in connections:
            idle(url)  # requests left over from the previous row would fill the queue at the start of this one
            rows.append(run_wrk(url, script, c, seconds))
        alive = json.load(urllib.request.urlopen(url + "/v1/health", timeout=5))["status"]
    finally:
        server.terminate()
        server.wait(10)
    return rows, alive


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    ap.add_argument("--seconds", type=int, default=20)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    if not shutil.which("wrk"):
        sys.exit("wrk is not installed (apt-get install wrk)")
    from productlens.data.readers import read_catalog, read_labelled_csv
    from productlens.pipeline.catalog_build import build_catalog
    from productlens.serve import ServeConfig
    from productlens.serve.engine import Engine, sniff_image

    g = args.data / "grocery"
    photo = read_labelled_csv(g / "val.csv")[0].image
    with tempfile.TemporaryDirectory(prefix="bench-serve-") as tmp:
        tmp = Path(tmp)
        cat, _ = build_catalog(read_catalog(g), tmp / "catalog", train=read_labelled_csv(g / "train.csv"),
                               use_gallery_labels=True, progress=False)
        cat.close()
        # the bare pipeline: decode the uploaded bytes and Engine.identify, no HTTP
        engine = Engine(ServeConfig(catalog=tmp / "catalog"))
        data = Path(photo).read_bytes()
        engine.identify(sniff_image(data, 40_000_000))
        bare = []
        for _ in range(30):
            t = time.perf_counter()
            engine.identify(sniff_image(data, 40_000_000))
            bare.append((time.perf_counter() - t) * 1000)
        engine.close()
        script = tmp / "post.lua"
        script.write_text(LUA.format(photo=photo))
        rows, alive = load(tmp / "catalog", script, (1, 4, 16), args.seconds)
        build_catalog(read_catalog(g), tmp / "whole", train=read_labelled_csv(g / "train.csv"),
                      use_gallery_labels=True, progress=False, query_views="none")[0].close()
        batching = {name: load(tmp / "whole", script, (1, 4, 8), args.seconds, extra)[0]
                    for name, extra in (("max batch 1", ["--max-batch", "1"]), ("default batch", []))}
    b50 = float(np.median(bare))
    print(f"\n# HTTP service under load ({platform.machine()}, {platform.node()}), {args.seconds} s per row\n")
    print("| concurrency | requests/s | p50 ms | p99 ms | requests | non-2xx (503) |\n|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['connections']} | {r['rps']:.1f} | {r['p50_ms']:.1f} | {r['p99_ms']:.1f} | {r['requests']} | "
              f"{r['non_2xx']} |")
    ratio = rows[0]["p50_ms"] / b50
    print(f"\nbare pipeline (decode + Engine.identify, no HTTP): p50 {b50:.1f} ms; HTTP p50 at concurrency 1 is "
          f"{ratio:.2f}x (target within 1.20x: {'met' if ratio <= 1.2 else 'not met'}); health after load: {alive}")
    print("\n| whole-photo queries | concurrency | answered 200 per s | p50 ms | p99 ms | non-2xx (503) |\n"
          "|---|---|---|---|---|---|")
    for name, brows in batching.items():
        for r in brows:
            print(f"| {name} | {r['connections']} | {r['ok_rps']:.1f} | {r['p50_ms']:.1f} | {r['p99_ms']:.1f} | "
                  f"{r['non_2xx']} |")
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "bare_p50_ms": b50, "health_after": alive,
                                         "batching": batching}, indent=1))


if __name__ == "__main__":
    main()
