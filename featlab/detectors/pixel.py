"""The network of a CNN or autoencoder folder, for processes that load it by path (Ray Data actors)."""

from __future__ import annotations

import os

from featlab.detectors.autoencoder import load_anomaly_scorer
from featlab.detectors.cnn import load_cnn
from featlab.detectors.modelfile import read_model_meta

#: Model kinds scored from pixels by one network whose output is the "fake" score (threshold 0).
PIXEL_KINDS = ("cnn", "ae")


def load_pixel_model(folder: str | os.PathLike, device: str = "auto"):
    """(network -> (N, 1) score, preprocessing, meta, device) of a CNN or autoencoder folder."""
    meta = read_model_meta(folder)
    if meta.get("kind") == "ae":
        return load_anomaly_scorer(folder, device, meta)
    return load_cnn(folder, device, meta)
