"""``make bench``: every benchmark, printing figures (nothing here is asserted).

Environment: FEATLAB_BENCH_QUICK=1 runs small sizes (a smoke run of the benchmark code).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import bench_extract  # noqa: E402
import bench_ray  # noqa: E402
import bench_rerun  # noqa: E402
import bench_serve  # noqa: E402
import bench_svm  # noqa: E402

if __name__ == "__main__":
    quick = os.environ.get("FEATLAB_BENCH_QUICK") == "1"
    print("== extraction (images/s)", flush=True)
    bench_extract.main(["--images", "200", "--models", "resnet18", "--naive-images", "20"] if quick else [])
    print("== cached rerun over many small files (hash memo)", flush=True)
    bench_rerun.main(["--files", "3000"] if quick else [])
    print("== --ray local vs plain extraction (one machine: Ray's overhead)", flush=True)
    bench_ray.main(["--images", "200"] if quick else [])
    print("== SVM on synthetic embeddings (dim 2048, PCA 256)", flush=True)
    bench_svm.main(["--sizes", "2000", "--stream", "20000", "--max-memory", "2GB"] if quick else [])
    print("== featlab serve: 16 clients on loopback vs featlab predict's batch rate", flush=True)
    bench_serve.main(["--seconds", "5", "--clients", "4"] if quick else [])
