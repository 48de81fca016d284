"""Faces in the wild: find every face of an image (MTCNN) and align it to a fixed template.

The detector is facenet-pytorch 2.6's MTCNN (P-, R- and O-net; MIT), whose weights ship inside the wheel, so it
works offline. The package pins old torch / numpy, so ``make setup`` installs it with ``--no-deps``;
``tests/data/test_faces.py`` checks that it runs on featlab's torch. Per face: box, detection score, 5 landmarks
(eyes, nose, mouth corners), and a crop aligned by the similarity transform (rotation, uniform scale, shift;
Umeyama's least squares) that maps the landmarks onto the ArcFace template, with ``margin`` of context on each
side, ``size`` pixels square.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from PIL import Image

from featlab.core.errors import FeatlabError

#: ArcFace's 5-point template in a 112 px square: left eye, right eye, nose, left and right mouth corners.
TEMPLATE_112 = np.array([[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655],
                         [70.7299, 92.2041]])
MIN_SCORE = 0.9  # MTCNN probability below which a detection is not reported as a face


@dataclass
class Face:
    """One detected face."""

    box: tuple[float, float, float, float]  # x0, y0, x1, y1 in the image's pixels
    score: float  # the detector's probability
    landmarks: np.ndarray  # (5, 2): eyes, nose, mouth corners
    crop: Image.Image  # aligned, size x size


@lru_cache(maxsize=2)
def _mtcnn(device: str = "cpu"):
    try:
        from facenet_pytorch import MTCNN
    except ImportError:
        raise FeatlabError("face detection needs facenet-pytorch 2.6 (make setup installs it: pip install --no-deps "
                           "facenet-pytorch==2.6.0)") from None
    return MTCNN(keep_all=True, device=device, post_process=False)


def similarity(source: np.ndarray, target: np.ndarray) -> np.ndarray:
    """The 2x3 similarity transform (rotation, uniform scale, translation) taking ``source`` points closest to
    ``target`` in least squares (Umeyama 1991)."""
    mu_s, mu_t = source.mean(0), target.mean(0)
    s, t = source - mu_s, target - mu_t
    u, sigma, vt = np.linalg.svd(t.T @ s / len(source))
    d = np.diag([1.0, np.sign(np.linalg.det(u @ vt))])
    rotation = u @ d @ vt
    scale = np.trace(np.diag(sigma) @ d) / s.var(0).sum()
    return np.hstack([scale * rotation, (mu_t - scale * rotation @ mu_s)[:, None]])


def align(image: Image.Image, landmarks: np.ndarray, size: int, margin: float) -> Image.Image:
    """The face whose ``landmarks`` are given, warped onto the template: ``size`` px square, ``margin`` of it on each
    side left for context (bicubic)."""
    template = TEMPLATE_112 / 112.0 * size * (1 - 2 * margin) + size * margin
    forward = np.vstack([similarity(np.asarray(landmarks, float), template), [0.0, 0.0, 1.0]])
    inverse = np.linalg.inv(forward)[:2]  # PIL maps output pixels back to input pixels
    return image.transform((size, size), Image.Transform.AFFINE, tuple(inverse.reshape(-1)), Image.Resampling.BICUBIC)


def detect_faces(image: Image.Image, size: int = 224, margin: float = 0.2, min_score: float = MIN_SCORE,
                 device: str = "cpu") -> list[Face]:
    """Every face of ``image`` (RGB) with its aligned crop, most confident first."""
    if not 0 <= margin < 0.5:
        raise FeatlabError(f"face margin must be in [0, 0.5), got {margin}")
    boxes, scores, landmarks = _mtcnn(device).detect(image, landmarks=True)
    if boxes is None:
        return []
    faces = [Face(tuple(float(v) for v in box), float(score), np.asarray(points, float),
                  align(image, points, size, margin))
             for box, score, points in zip(boxes, scores, landmarks) if score >= min_score]
    return sorted(faces, key=lambda face: -face.score)
