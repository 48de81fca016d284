"""Do the heatmaps point at the edit? CIPLAB hit rate, and explain timings (writes docs/results-explain.md).

The CIPLAB fakes ("Real and Fake Face Detection") are portraits with a left eye, right eye, nose
and/or mouth pasted in by hand; the 4 digits of each file name flag which (``easy_1_1110``).
For every test fake of the combined build, the heatmap's peak is placed on the original image
(:attr:`featlab.evaluation.explain.Explanation.peak`) and checked against a fixed face layout of the aligned
300 px portraits. "chance" is the share of the model's view the edited boxes cover (what a
peak at a uniformly random place would score); "any part" counts a peak on any of the four
boxes, edited or not, as a control: a map that finds the face but not the edit scores high
there and no higher on the edited parts.

Needs the models of ``make bench-quality`` (bench-out/quality/featlab-work). Run alone:
``.venv/bin/python tests/benchmarks/bench_explain.py``.
"""

from __future__ import annotations

import re
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from featlab.core.versions import describe_hardware, hardware  # noqa: E402
from featlab.detectors.detector import load_detector  # noqa: E402
from featlab.evaluation.explain import explain_paths, write_gallery  # noqa: E402

WORK = REPO / "bench-out" / "quality" / "featlab-work"
DATA = REPO / "bench-out" / "quality" / "faces" / "combined-real-vs-fake"
OUT = REPO / "docs" / "results-explain.md"

#: Fixed layout of the aligned CIPLAB portraits, as fractions of the image (x0, y0, x1, y1), in the
#: order of the file-name flags. "left eye" is taken as the eye on the image's left.
REGIONS = {
    "left eye": (0.20, 0.36, 0.48, 0.58),
    "right eye": (0.52, 0.36, 0.80, 0.58),
    "nose": (0.38, 0.48, 0.62, 0.70),
    "mouth": (0.30, 0.66, 0.70, 0.86),
}
NAME = re.compile(r"(easy|mid|hard)_\d+_([01]{4})\.")


def edited_regions(path: str) -> list[str] | None:
    match = NAME.search(Path(path).name)
    if not match:
        return None
    return [region for region, flag in zip(REGIONS, match.group(2)) if flag == "1"]


def landmark_regions(path: str) -> dict | None:
    """The four part boxes of one portrait from its detected landmarks (MTCNN, featlab.data.faces), as fractions of
    the image like :data:`REGIONS`: each eye a box 0.5 x 0.35 inter-ocular distances around its landmark, the nose
    0.45 x 0.45 around its tip, the mouth the corners' span widened by 0.2 each side, 0.4 tall. None when no face is
    found (the fixed layout is used then)."""
    from PIL import Image

    from featlab.data.faces import FaceStage

    image = Image.open(path).convert("RGB")
    try:
        face = FaceStage(size=64).main_face(image)
    except Exception:  # noqa: BLE001 - no face: fall back to the fixed layout
        return None
    (lx, ly), (rx, ry), (nx, ny), (mlx, mly), (mrx, mry) = face.landmarks
    d = float(np.hypot(rx - lx, ry - ly))
    w, h = image.size

    def box(cx, cy, half_w, half_h):
        return ((cx - half_w) / w, (cy - half_h) / h, (cx + half_w) / w, (cy + half_h) / h)

    return {"left eye": box(lx, ly, 0.25 * d, 0.175 * d), "right eye": box(rx, ry, 0.25 * d, 0.175 * d),
            "nose": box(nx, ny, 0.225 * d, 0.225 * d),
            "mouth": box((mlx + mrx) / 2, (mly + mry) / 2, (mrx - mlx) / 2 + 0.2 * d, 0.2 * d)}


def _inside(x: float, y: float, box, size) -> bool:
    w, h = size
    return box[0] * w <= x <= box[2] * w and box[1] * h <= y <= box[3] * h


def _chance(regions: list[str], view, size, layout: dict | None = None) -> float:
    """Share of the view covered by the union of the regions (on a 1-px grid)."""
    w, h = size
    mask = np.zeros((h, w), bool)
    for name in regions:
        x0, y0, x1, y1 = (layout or REGIONS)[name]
        mask[int(y0 * h):int(y1 * h), int(x0 * w):int(x1 * w)] = True
    vx0, vy0, vx1, vy1 = (int(round(v)) for v in view)
    return float(mask[max(vy0, 0):vy1, max(vx0, 0):vx1].mean())


def score(explanations, fakes: pd.DataFrame, landmarks: bool = False) -> dict:
    """Hit rate, chance and the any-part control; ``landmarks``: part boxes from each image's detected landmarks
    (``fakes.layout``) instead of the fixed layout."""
    hits, any_part, chances = [], [], []
    for e, row in zip(explanations, fakes.itertuples()):
        layout = (row.layout if landmarks and row.layout else None) or REGIONS
        x, y = e.peak
        hits.append(any(_inside(x, y, layout[r], row.size) for r in row.regions))
        any_part.append(any(_inside(x, y, box, row.size) for box in layout.values()))
        chances.append(_chance(row.regions, e.box, row.size, layout))
    return {"hit_rate": float(np.mean(hits)), "any_part": float(np.mean(any_part)), "chance": float(np.mean(chances)),
            "n": len(hits)}


def main() -> None:
    from PIL import Image

    torch.set_num_threads(2)
    models = {"cnn": WORK / "models" / "bench-cnn-resnet50-opennsfw",
              "svm": next((WORK / "models").glob("bench-svm-resnet50-opennsfw-796b62629bf4"), None)}
    if not DATA.is_dir() or any(m is None or not m.is_dir() for m in models.values()):
        sys.exit("bench_explain: run `make bench-quality` first (it builds the data and the models this reads)")
    paths = sorted(str(p) for p in (DATA / "test" / "fake").glob("ciplab-*"))
    rows = [{"path": p, "regions": edited_regions(p), "size": Image.open(p).size, "layout": landmark_regions(p)}
            for p in paths]
    unusable = [r["path"] for r in rows if not r["regions"]]
    fakes = pd.DataFrame([r for r in rows if r["regions"]])
    print(f"{len(fakes)} CIPLAB test fakes with 4 flags ({len(unusable)} names without them left out)")
    runs = [("fine-tuned CNN", "cnn", "gradcam", {}), ("fine-tuned CNN", "cnn", "gradcam++", {}),
            ("fine-tuned CNN", "cnn", "occlusion", {}), ("SVM", "svm", "occlusion", {}),
            ("SVM", "svm", "gradient", {})]
    table = []
    for family, key, method, options in runs:
        detector = load_detector(models[key])
        start = time.perf_counter()
        explanations = explain_paths(detector, list(fakes.path), method, **options)
        seconds = time.perf_counter() - start
        result = score(explanations, fakes)
        by_landmarks = score(explanations, fakes, landmarks=True)
        table.append({"family": family, "model": models[key].name, "method": method, **result,
                      **{f"lm_{k}": v for k, v in by_landmarks.items()}, "seconds_per_image": seconds / len(fakes)})
        print(table[-1])
        if method in ("gradcam", "occlusion") and key == ("cnn" if method == "gradcam" else "svm"):
            write_gallery([("CIPLAB test fakes (edited parts in the caption)", explanations[:24],
                            [f" · edited: {', '.join(r)}" for r in fakes.regions[:24]])],
                          REPO / "bench-out" / "explain" / f"ciplab-{key}", f"CIPLAB fakes: {models[key].name}",
                          f"{method} heatmaps; peaks on the edited part are hits")
    # the timing target: a 32-image folder through the CNN
    cnn = load_detector(models["cnn"])
    folder = list(fakes.path[:32])
    start = time.perf_counter()
    explain_paths(cnn, folder, "gradcam")
    cnn_32 = time.perf_counter() - start
    start = time.perf_counter()
    explain_paths(load_detector(models["svm"]), folder, "occlusion")
    svm_32 = time.perf_counter() - start
    lines = [
        "# Do the heatmaps point at the edit? (CIPLAB test fakes)", "",
        f"Written by `tests/benchmarks/bench_explain.py` on {describe_hardware(hardware())}, "
        f"torch {torch.__version__}. Data: the {len(fakes)} CIPLAB fakes of the combined build's test split whose "
        f"names carry 4 edit flags ({len(unusable)} left out). Models: `make bench-quality`'s fine-tuned "
        "resnet50-opennsfw and default SVM (layer2+3 mean+std, native view: both see the central 224 px of the "
        "300 px portrait).", "",
        "A hit: the heatmap's peak lies in a box of an edited part (fixed layout, fractions of the portrait: "
        + "; ".join(f"{k} {v}" for k, v in REGIONS.items()) + "). Chance: the share of the view those boxes cover. "
        "Any part: the peak on any of the four boxes, edited or not (a control).", "",
        f"Landmark columns: the part boxes placed on each image's detected landmarks instead (MTCNN; eyes 0.5 x 0.35, "
        f"nose 0.45 x 0.45 inter-ocular distances, mouth the corners' span + 0.2 each side; "
        f"{int(fakes.layout.notna().sum())} of {len(fakes)} images had a face, the rest keep the fixed layout).", "",
        "| family | method | hit rate | chance | any part | hit rate (landmarks) | chance (landmarks) | "
        "any part (landmarks) | n | s / image |", "|---|---|---|---|---|---|---|---|---|---|",
        *[f"| {r['family']} | {r['method']} | {r['hit_rate']:.3f} | {r['chance']:.3f} | {r['any_part']:.3f} | "
          f"{r['lm_hit_rate']:.3f} | {r['lm_chance']:.3f} | {r['lm_any_part']:.3f} | {r['n']} "
          f"| {r['seconds_per_image']:.2f} |" for r in table], "",
        f"Timing, a 32-image folder: CNN Grad-CAM {cnn_32:.1f} s; SVM occlusion (48 px patches, stride 24, "
        f"82 forward passes per image) {svm_32:.1f} s.", "",
    ]
    OUT.write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
