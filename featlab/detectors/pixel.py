"""The model kinds scored from pixels by one network whose output is the "fake" score (threshold 0): fine-tuned
CNNs and autoencoders. Here, above both, so that neither imports the other."""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pandas as pd

from featlab import CLASS_NAMES
from featlab.detectors.autoencoder import load_anomaly_scorer
from featlab.detectors.cnn import load_cnn, score_images
from featlab.detectors.modelfile import read_model_meta

#: Model kinds scored from pixels by one network whose output is the "fake" score (threshold 0).
PIXEL_KINDS = ("cnn", "ae")


def load_pixel_model(folder: str | os.PathLike, device: str = "auto"):
    """(network -> (N, 1) score, preprocessing, meta, device) of a CNN or autoencoder folder."""
    if read_model_meta(folder).get("kind") == "ae":
        return load_anomaly_scorer(folder, device)
    return load_cnn(folder, device)


def score_model_folder(model_folder, paths: list[str], batch_size: int = 32, device: str = "auto",
                       ray: str | None = None) -> tuple[np.ndarray, list[str], dict, float]:
    """(score per path, NaN where undecodable; reason per path; the folder's meta; seconds spent
    scoring, loading excluded) of a CNN or autoencoder folder, in fp32, here or on Ray Data
    (``ray``: see :mod:`featlab.features.distributed`)."""
    model, prep, meta, torch_device = load_pixel_model(model_folder, device)  # verified here before any Ray work
    started = time.perf_counter()
    if ray is None:
        scores, reasons = score_images(model, prep, paths, batch_size, torch_device, "fp32")
    else:
        from featlab.features.distributed import score_with_ray

        scores, reasons = score_with_ray(paths, load_pixel_model, str(Path(model_folder).resolve()), prep, ray,
                                         batch_size, want_cuda=torch_device.type == "cuda")
    return scores, reasons, meta, time.perf_counter() - started


def predict_cnn(model_folder, manifest: pd.DataFrame, batch_size: int = 32, device: str = "auto",
                ray: str | None = None) -> pd.DataFrame:
    usable = (manifest.status == "ok").to_numpy()
    scores = np.full(len(manifest), np.nan)
    reasons = list(manifest.reason.fillna("").astype(str))
    if usable.any():  # what the scan already quarantined (non-images, FIFOs, unreadable files) is never opened
        got, got_reasons, meta, _ = score_model_folder(model_folder, list(manifest.path[usable]), batch_size, device,
                                                       ray)
        scores[usable] = got
        for position, reason in zip(np.flatnonzero(usable), got_reasons):
            reasons[position] = reason
    else:
        meta = read_model_meta(model_folder)
    out = manifest[["path"]].copy()
    out["score"] = scores
    out["score_kind"] = ["" if r else ("logit" if meta["kind"] == "cnn" else "anomaly") for r in reasons]
    out["label"] = ["" if r else CLASS_NAMES[int(s >= 0)] for s, r in zip(scores, reasons)]
    out["status"] = ["quarantined" if r else "ok" for r in reasons]
    out["reason"] = reasons
    return out[["path", "score", "score_kind", "label", "status", "reason"]]
