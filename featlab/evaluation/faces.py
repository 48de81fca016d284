"""Faces at scoring time: which face stage a model scores through (``--faces model|detect|none|auto``), and
every face of every image scored (``featlab predict --faces detect``): one row per face, a verdict per image."""

from __future__ import annotations

import os

import numpy as np
import pandas as pd
import torch

from featlab import CLASS_NAMES
from featlab.core.errors import BadImageError, FeatlabError
from featlab.data.dataset import load_rgb, scan_images
from featlab.data.faces import FACE_MODES, FaceStage, choose_faces
from featlab.detectors.base import Detector

COLUMNS = ["path", "face", "box", "det_score", "score", "score_kind", "label", "image_score", "image_label", "status",
           "reason"]
SCORING_FACE_MODES = ("model",) + FACE_MODES


def faces_for(detector: Detector, mode: str = "model", manifest: pd.DataFrame | None = None, size: int | None = None,
              margin: float | None = None, allow_mismatch: bool = False) -> tuple[Detector, dict]:
    """``detector`` scoring through the face stage ``mode`` asks for (:func:`scoring_stage`), and the decision."""
    stage, decision = scoring_stage(detector, mode, manifest, size, margin, allow_mismatch)
    return (detector if mode == "model" else detector.with_faces(stage)), decision


def scoring_stage(detector: Detector, mode: str = "model", manifest: pd.DataFrame | None = None,
                  size: int | None = None, margin: float | None = None,
                  allow_mismatch: bool = False) -> tuple[FaceStage | None, dict]:
    """The face stage (None: whole images) ``detector`` scores through when ``mode`` is asked for, and the decision.

    ``model``: the stage the model was trained with (its preprocessing). ``detect`` / ``none``: that stage, or
    whole images; a model trained on aligned faces refuses whole images unless ``allow_mismatch`` (the preprocessing
    is part of the model). ``auto``: detect unless a sample of ``manifest`` is already face-aligned portraits.
    ``detect`` on a face model keeps the model's own size and margin unless ``size`` / ``margin`` are given.
    """
    if mode not in SCORING_FACE_MODES:
        raise FeatlabError(f"--faces must be one of {', '.join(SCORING_FACE_MODES)}, got {mode!r}")
    own = detector.faces
    if mode == "model":
        return own, {"mode": "model", "faces": "detect" if own is not None else "none"}
    if mode == "auto" and manifest is None:
        raise FeatlabError("--faces auto needs the images to decide on")
    default_size = own.size if own is not None else detector.prep.resize
    stage, decision = choose_faces(mode, manifest, size or default_size, 0.2 if margin is None else margin)
    if stage is not None and own is not None and size is None and margin is None:
        stage = own
    if stage is None and own is not None and not allow_mismatch:
        raise FeatlabError(f"{detector.name} was trained on aligned face crops (--faces detect): whole images are not "
                           "what it learned to score; leave --faces at model, or add --allow-mismatch to score whole "
                           "images anyway")
    return stage, decision


def predict_faces(detector: Detector, target: str | os.PathLike, stage: FaceStage | None = None) -> pd.DataFrame:
    """One row per detected face (box ``x0,y0,x1,y1``, detection score, the model's score and verdict on the aligned
    crop); each image's verdict is its most-fake face (``image_score``, ``image_label``). An image without a face
    gets one row with status ``no face`` and is not scored; an unreadable one, status ``quarantined``.

    ``stage``: how faces are found and aligned (default: the model's own stage, else featlab's defaults at the
    model's resize size)."""
    stage = stage or detector.faces or FaceStage(size=detector.prep.resize)
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
        faces = stage.faces(image)
        if not faces:
            rows.append({**base, "status": "no face",
                         "reason": f"no face found (MTCNN probability >= {stage.min_score:g})"})
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
