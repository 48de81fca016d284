"""``featlab extract --ray local`` against plain ``featlab extract`` on the same generated JPEGs.

On one 2-core machine Ray can only add overhead (cluster start, worker processes that import
torch, serialisation); this measures that overhead honestly. Both runs start from an empty cache,
in fresh processes, resnet18 fp32 with random weights (speed does not depend on the weights).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from bench_extract import make_jpegs  # noqa: E402


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=2000)
    opts = parser.parse_args(argv)
    try:
        import ray  # noqa: F401
    except ImportError:
        print("ray is not installed (pip install 'featlab[ray]'): --ray benchmark skipped")
        return {}
    with tempfile.TemporaryDirectory() as tmp:
        root = make_jpegs(Path(tmp) / "data", opts.images)
        times = {}
        for name, extra in (("plain", []), ("ray local", ["--ray", "local"])):
            started = time.perf_counter()
            subprocess.run([sys.executable, "-m", "featlab", "extract", "--data", str(root), "--workdir",
                            str(Path(tmp) / name.replace(" ", "-")), "--backbone", "resnet18", "--weights", "none",
                            "--precision", "fp32", "--layers", "pool", "--no-progress", *extra], check=True,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            times[name] = time.perf_counter() - started
        n = sum(1 for _ in root.rglob("*.jpg"))
        print(f"| images | plain extract | --ray local | ratio |\n|---|---|---|---|\n| {n} | {times['plain']:.1f} s "
              f"({n / times['plain']:.1f} img/s) | {times['ray local']:.1f} s ({n / times['ray local']:.1f} img/s) | "
              f"{times['plain'] / times['ray local']:.2f}x |", flush=True)
        return times


if __name__ == "__main__":
    main()
