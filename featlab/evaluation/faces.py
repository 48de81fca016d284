"""Score every face of every image (``featlab predict --faces detect``): one row per face, an image verdict per image."""

from __future__ import annotations

import os

import numpy as np
import pandas as pd
import torch

from featlab import CLASS_NAMES
from featlab.core.errors import BadImageError
from featlab.data.dataset import load_rgb, scan_images
from featlab.data.faces import MIN_SCORE, detect_faces
from featlab.detectors.base import Detector

COLUMNS = ["path", "face", "box", "det_score", "score", "score_kind", "label", "image_score", "image_label", "status",
           "reason"]


def predict_faces(detector: Detector, target: str | os.PathLike, margin: float = 0.2, min_score: float = MIN_SCORE,
                  size: int | None = None) -> pd.DataFrame:
    """One row per detected face (box ``x0,y0,x1,y1``, detection score, the model's score and verdict on the aligned
    crop); each image's verdict is its most-fake face (``image_score``, ``image_label``). An image without a face
    gets one row with status ``no face`` and is not scored; an unreadable one, status ``quarantined``."""
    size = size or detector.prep.crop
    rows = []
    for item in scan_images(target).itertuples():
        base = {"path": item.path, "face": -1, "box": "", "det_score": np.nan, "score": np.nan, "score_kind": "",
                "label": "", "status": "quarantined", "reason": item.reason}
        if item.status != "ok":
            rows.append(base)
            continue
        try:
            image = load_rgb(item.path)
        except BadImageError as bad:
            rows.append({**base, "reason": str(bad)})
            continue
        faces = detect_faces(image, size=size, margin=margin, min_score=min_score)
        if not faces:
            rows.append({**base, "status": "no face", "reason": f"no face found (MTCNN probability >= {min_score:g})"})
            continue
        scores = detector.score(torch.stack([detector.prep.to_uint8(face.crop) for face in faces]))
        for k, (face, score) in enumerate(zip(faces, scores)):
            rows.append({**base, "face": k, "box": ",".join(f"{v:.0f}" for v in face.box), "det_score": face.score,
                         "score": float(score), "score_kind": detector.score_kind,
                         "label": CLASS_NAMES[int(score >= detector.threshold)], "status": "ok", "reason": ""})
    table = pd.DataFrame(rows)
    scored = table[table.status == "ok"]
    most_fake = scored.groupby("path").score.max() if len(scored) else pd.Series(dtype=float)
    table["image_score"] = table.path.map(most_fake)
    table["image_label"] = ["" if s != s else CLASS_NAMES[int(s >= detector.threshold)] for s in table.image_score]
    return table[COLUMNS]
