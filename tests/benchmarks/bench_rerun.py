"""A cached rerun of ``featlab extract`` over many small files: with the hash memo it hashes nothing.

Generates N small PNG files (32x32; 2,000 distinct images repeated, so the cold run computes only
2,000 embeddings but hashes every file), runs ``featlab extract`` cold, then again (the cached
rerun: target under 10 s for 100,000 files), then again with the memo deleted (what a rerun cost
before the memo: every file re-hashed). resnet18 with random weights: the speed of the rerun does
not depend on the weights.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image


def make_files(root: Path, n: int, distinct: int = 2000, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    blobs = []
    for _ in range(distinct):
        buffer = __import__("io").BytesIO()
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(buffer, format="PNG")
        blobs.append(buffer.getvalue())
    for i in range(n):
        split = ("train", "valid", "test")[i % 3]
        label = ("real", "fake")[(i // 3) % 2]
        folder = root / split / label
        if i < 6:
            folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{i:06d}.png").write_bytes(blobs[i % distinct])


def run(args: list[str]) -> float:
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "featlab", "extract", *args], check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - started


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--files", type=int, default=100_000)
    opts = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        root, work = Path(tmp) / "data", Path(tmp) / "work"
        started = time.perf_counter()
        make_files(root, opts.files)
        print(f"generated {opts.files} files in {time.perf_counter() - started:.1f} s", flush=True)
        args = ["--data", str(root), "--workdir", str(work), "--backbone", "resnet18", "--weights", "none",
                "--layers", "pool", "--no-progress"]
        cold = run(args)
        cached = run(args)
        shutil.copy(work / "features" / "hash-memo.sqlite", Path(tmp) / "memo.bak")
        os.remove(work / "features" / "hash-memo.sqlite")
        no_memo = run(args)
        print(f"| files | cold extract | cached rerun (memo) | cached rerun without memo (before) | target |\n"
              f"|---|---|---|---|---|\n| {opts.files} | {cold:.1f} s | **{cached:.1f} s** | {no_memo:.1f} s "
              f"| < 10 s |", flush=True)


if __name__ == "__main__":
    main()
