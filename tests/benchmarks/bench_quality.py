"""``make bench-quality``: featlab's results on real faces, written to ``docs/results.md``.

Builds the combined dataset from ``../shared/faces`` (both Kaggle sets, seed 0) with
``featlab data build``, then runs ``featlab benchmark`` on it: the feature recipes compared on
valid, the default SVM and the CNN baselines on test, per source and per difficulty. The
page, its plots and ``benchmark.json`` are copied into ``docs/``. Run it alone (2 cores).
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
RECIPES = ";".join([
    "pool",                                  # the classic embedding: last stage, average pool, standard crop
    "layer3:avg+std:crop",
    "layer2,layer3:avg+std:crop",
    "layer2,layer3:avg+std:native:flip",
    "layer1,layer2,layer3:avg+std:native",
    "layer2,layer3:gem:native",
])


def run(*args: str) -> None:
    print("$", " ".join(args), flush=True)
    subprocess.run(args, check=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shared", default=str(REPO.parent / "shared" / "faces"))
    parser.add_argument("--work", default=str(REPO / "bench-out" / "quality"))
    parser.add_argument("--docs", default=str(REPO / "docs"))
    parser.add_argument("--archs", default="resnet50-opennsfw,custom:12")
    args = parser.parse_args(argv)
    shared, work, docs = Path(args.shared), Path(args.work), Path(args.docs)
    if not (shared / "140k").is_dir() or not (shared / "ciplab").is_dir():
        sys.exit(f"bench-quality: real faces not found at {shared} (need 140k/ and ciplab/); nothing measured")
    featlab = str(Path(sys.executable).parent / "featlab")
    started = time.perf_counter()
    run(featlab, "data", "build", "--faces140k", str(shared / "140k"), "--ciplab", str(shared / "ciplab"),
        "--out", str(work / "faces"), "--seed", "0", "--link")
    run(featlab, "benchmark", "--data", str(work / "faces" / "combined-real-vs-fake"), "--out", str(work / "report"),
        "--workdir", str(work / "featlab-work"), "--recipes", RECIPES, "--archs", args.archs, "--seed", "0",
        "--no-progress")
    docs.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(work / "report" / "results.md", docs / "results.md")
    shutil.copyfile(work / "report" / "benchmark.json", docs / "results-benchmark.json")
    if (docs / "plots").exists():
        shutil.rmtree(docs / "plots")
    shutil.copytree(work / "report" / "plots", docs / "plots")
    print(f"bench-quality: wrote {docs / 'results.md'} in {(time.perf_counter() - started) / 60:.1f} min")


if __name__ == "__main__":
    main()
