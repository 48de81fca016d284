"""A saved model as a function of pixels: the common ground of ``explain`` and ``attack``.

Kept for featlab 0.2 callers: :func:`load_detector` is :func:`featlab.load` restricted to the kinds with a
differentiable form (SVM and CNN), and :class:`TorchPipeline` lives in :mod:`featlab.detectors.torchcopy`.
"""

from __future__ import annotations

import os

from featlab.core.errors import FeatlabError
from featlab.detectors.base import Detector, load
from featlab.detectors.torchcopy import TorchPipeline

__all__ = ["Detector", "TorchPipeline", "load_detector"]


def load_detector(folder: str | os.PathLike, device: str = "auto", trust_pickle: bool = False,
                  workdir: str | os.PathLike | None = None) -> Detector:
    """Load a verified model folder (SVM or CNN) as a :class:`Detector` (see :func:`featlab.load`)."""
    detector = load(folder, workdir, device=device, trust_pickle=trust_pickle)
    if detector.kind not in ("svm", "cnn"):
        raise FeatlabError(f"{folder}: a {detector.kind!r} model has no pixel-level detector")
    return detector
