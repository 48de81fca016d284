"""What the real-face benchmarks share: find ``../shared/faces`` and build the combined dataset from it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SHARED = REPO.parent / "shared" / "faces"


def build_combined(shared: Path, work: Path, benchmark: str) -> Path:
    """``featlab data build`` of both Kaggle sets (seed 0, symlinks) into ``work/faces``; the combined dataset root.

    Exits with one line, measuring nothing, when the real faces are not there."""
    shared, work = Path(shared), Path(work)
    if not (shared / "140k").is_dir() or not (shared / "ciplab").is_dir():
        sys.exit(f"{benchmark}: real faces not found at {shared} (need 140k/ and ciplab/); nothing measured")
    featlab = str(Path(sys.executable).parent / "featlab")
    command = [featlab, "data", "build", "--faces140k", str(shared / "140k"), "--ciplab", str(shared / "ciplab"),
               "--out", str(work / "faces"), "--seed", "0", "--link"]
    print("$", " ".join(command), flush=True)
    subprocess.run(command, check=True)
    return work / "faces" / "combined-real-vs-fake"
