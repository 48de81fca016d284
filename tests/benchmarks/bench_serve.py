"""``featlab serve`` under load: 16 concurrent clients for 30 s against the default SVM, on loopback only.

The shipped real sample (160 faces, 256 px JPEGs) and the default SVM (open_nsfw features, default recipe) fitted
on it. Throughput is compared with ``featlab predict``'s batch throughput on the same images with an empty
embedding cache (decode + extraction + SVM, what the service does per request). Prints images/s, the ratio, p50 /
p99 latency and the error count. The clients and the server share this machine's cores, so on 2 cores the ratio
is a lower bound. Bounded: ``--seconds`` (30) and ``--clients`` (16).
"""

from __future__ import annotations

import argparse
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
SAMPLE = REPO / "data_prep" / "sample-faces"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--clients", type=int, default=16)
    args = parser.parse_args(argv)
    import httpx

    import featlab
    from featlab.core.workspace import Workspace
    from featlab.data.dataset import scan_images

    work = Path(tempfile.mkdtemp(prefix="featlab-bench-serve-"))
    exe = str(Path(sys.executable).parent / "featlab")
    try:
        subprocess.run([exe, "extract", "--data", str(SAMPLE), "--no-progress", "--workdir", str(work)], check=True,
                       capture_output=True)
        subprocess.run([exe, "fit-svm", "--workdir", str(work), "--name", "svm"], check=True, capture_output=True)
        images = sorted(str(p) for p in SAMPLE.rglob("*.jpg"))
        # featlab predict's batch path on the same images, embeddings not cached yet (a fresh features folder)
        fresh = Workspace(work / "fresh")
        detector = featlab.load(work / "models" / "svm", fresh)
        started = time.perf_counter()
        detector.score_paths(scan_images(SAMPLE))
        batch_rate = len(images) / (time.perf_counter() - started)

        port = _free_port()
        server = subprocess.Popen([exe, "serve", str(work / "models" / "svm"), "--port", str(port), "--workdir",
                                   str(work)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline or server.poll() is not None:
                raise SystemExit("bench-serve: the service did not start")
            time.sleep(0.2)
        payloads = [(Path(p).name, Path(p).read_bytes()) for p in images]
        latencies, errors, lock = [], [0], threading.Lock()
        stop_at = time.monotonic() + args.seconds

        def client(k: int) -> None:
            with httpx.Client(timeout=60) as session:
                i = k
                while time.monotonic() < stop_at:
                    name, data = payloads[i % len(payloads)]
                    i += args.clients
                    t0 = time.perf_counter()
                    try:
                        ok = session.post(f"{url}/v1/score", files=[("file", (name, data, "image/jpeg"))]).status_code == 200
                    except httpx.HTTPError:
                        ok = False
                    with lock:
                        latencies.append(time.perf_counter() - t0)
                        errors[0] += not ok

        started = time.perf_counter()
        threads = [threading.Thread(target=client, args=(k,)) for k in range(args.clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.perf_counter() - started
        metrics = httpx.get(f"{url}/metrics").text
        server.terminate()
        server.wait(timeout=30)
        rate = len(latencies) / wall
        batches = [line for line in metrics.splitlines() if line.startswith("featlab_batch_size_total")]
        sizes = {int(line.split('size="')[1].split('"')[0]): int(line.split()[-1]) for line in batches}
        mean_batch = sum(k * v for k, v in sizes.items()) / max(1, sum(sizes.values()))
        result = {"clients": args.clients, "seconds": round(wall, 1), "requests": len(latencies), "errors": errors[0],
                  "images_per_s": round(rate, 1), "predict_batch_images_per_s": round(batch_rate, 1),
                  "ratio": round(rate / batch_rate, 2), "p50_ms": round(float(np.percentile(latencies, 50)) * 1000, 1),
                  "p99_ms": round(float(np.percentile(latencies, 99)) * 1000, 1), "mean_batch": round(mean_batch, 2)}
        print(f"serve: {result['clients']} clients x {result['seconds']} s: {result['images_per_s']} img/s = "
              f"{result['ratio']} x featlab predict's batch rate ({result['predict_batch_images_per_s']} img/s); "
              f"p50 {result['p50_ms']} ms, p99 {result['p99_ms']} ms, errors {result['errors']}, "
              f"mean batch {result['mean_batch']}", flush=True)
        return result
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
