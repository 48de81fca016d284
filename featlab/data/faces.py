"""Faces in the wild: find every face of an image (MTCNN) and align it to a fixed template.

The detector is facenet-pytorch 2.6's MTCNN (P-, R- and O-net; MIT), whose weights ship inside the wheel, so it
works offline. The package pins old torch / numpy, so ``make setup`` installs it with ``--no-deps``;
``tests/data/test_faces.py`` checks that it runs on featlab's torch. Per face: box, detection score, 5 landmarks
(eyes, nose, mouth corners), and a crop aligned by the similarity transform (rotation, uniform scale, shift;
Umeyama's least squares) that maps the landmarks onto the ArcFace template, with ``margin`` of context on each
side, ``size`` pixels square.

:class:`FaceStage` is the stage as part of a model's preprocessing (``Preprocessing.faces``): it turns one image
into the aligned crop of its main face (the largest), or refuses the image ("no face"). Detections are cached by
(sha256 of the decoded pixels, detector settings): in memory, and on disk in the folder :func:`use_cache` names
(the CLI uses ``WORKDIR/faces``), so a rerun, another backbone or another command never detects an image twice.
Crops are not stored: they are a deterministic warp of the image by the cached landmarks (about a millisecond).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import OrderedDict
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image

from featlab.core.errors import BadImageError, FeatlabError
from featlab.core.fileio import atomic_write_text

#: ArcFace's 5-point template in a 112 px square: left eye, right eye, nose, left and right mouth corners.
TEMPLATE_112 = np.array([[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655],
                         [70.7299, 92.2041]])
MIN_SCORE = 0.9  # MTCNN probability below which a detection is not reported as a face
DETECTOR = "mtcnn (facenet-pytorch 2.6.0, bundled weights)"
FACE_MODES = ("none", "detect", "auto")
#: Where detections are kept on disk (set by :func:`use_cache`; the CLI points it at WORKDIR/faces). An
#: environment variable, so DataLoader worker processes see it too.
CACHE_ENV = "FEATLAB_FACE_CACHE"


@dataclass
class Face:
    """One detected face."""

    box: tuple[float, float, float, float]  # x0, y0, x1, y1 in the image's pixels
    score: float  # the detector's probability
    landmarks: np.ndarray  # (5, 2): eyes, nose, mouth corners
    crop: Image.Image  # aligned, size x size
    to_crop: np.ndarray  # (2, 3): the similarity transform from image pixels to crop pixels

    @property
    def area(self) -> float:
        return max(0.0, self.box[2] - self.box[0]) * max(0.0, self.box[3] - self.box[1])


@lru_cache(maxsize=2)
def _mtcnn(device: str = "cpu", min_face: int = 20):
    try:
        from facenet_pytorch import MTCNN
    except ImportError:
        raise FeatlabError("face detection needs facenet-pytorch 2.6 (make setup installs it: pip install --no-deps "
                           "facenet-pytorch==2.6.0)") from None
    return MTCNN(keep_all=True, device=device, post_process=False, min_face_size=min_face)


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


def crop_transform(landmarks: np.ndarray, size: int, margin: float) -> np.ndarray:
    """The 2x3 map from image pixels to the aligned crop's pixels for a face with these ``landmarks``."""
    template = TEMPLATE_112 / 112.0 * size * (1 - 2 * margin) + size * margin
    return similarity(np.asarray(landmarks, float), template)


def align(image: Image.Image, landmarks: np.ndarray, size: int, margin: float) -> Image.Image:
    """The face whose ``landmarks`` are given, warped onto the template: ``size`` px square, ``margin`` of it on each
    side left for context (bicubic)."""
    forward = np.vstack([crop_transform(landmarks, size, margin), [0.0, 0.0, 1.0]])
    inverse = np.linalg.inv(forward)[:2]  # PIL maps output pixels back to input pixels
    return image.transform((size, size), Image.Transform.AFFINE, tuple(inverse.reshape(-1)), Image.Resampling.BICUBIC)


# ------------------------------------------------------------------ detections, cached

_MEMORY: OrderedDict[str, list[dict]] = OrderedDict()
_MEMORY_SIZE = 4096


def use_cache(folder: str | os.PathLike | None) -> None:
    """Keep detections on disk in ``folder`` (None: in memory only) for this process and its workers."""
    if folder is None:
        os.environ.pop(CACHE_ENV, None)
    else:
        os.environ[CACHE_ENV] = str(Path(folder).resolve())


def pixel_hash(image: Image.Image) -> str:
    """sha256 of the decoded RGB pixels and the size: the same picture in another file format hashes the same."""
    digest = hashlib.sha256(f"{image.width}x{image.height}:".encode())
    digest.update(image.tobytes())
    return digest.hexdigest()


def _detect_raw(image: Image.Image, min_face: int, device: str, detect_side: int = 0) -> list[dict]:
    scale = 1.0
    if detect_side and max(image.size) > detect_side:  # detect on a smaller copy; boxes and landmarks scaled back
        scale = max(image.size) / detect_side
        image = image.resize((round(image.width / scale), round(image.height / scale)), Image.Resampling.BILINEAR)
    boxes, scores, landmarks = _mtcnn(device, min_face).detect(image, landmarks=True)
    if boxes is None:
        return []
    return [{"box": [float(v) * scale for v in box], "score": float(score),
             "landmarks": (np.asarray(points, float) * scale).tolist()}
            for box, score, points in zip(boxes, scores, landmarks)]


def detections(image: Image.Image, min_face: int = 20, device: str = "cpu", detect_side: int = 0) -> list[dict]:
    """Every MTCNN detection of ``image`` (any probability), from the cache when this picture was seen before.
    ``detect_side``: detect on a copy whose longer side is at most this (0: full size), for large video frames."""
    key = f"{pixel_hash(image)}-mtcnn-min{min_face}" + (f"-side{detect_side}" if detect_side else "")
    folder = os.environ.get(CACHE_ENV)
    path = Path(folder) / key[:2] / f"{key}.json" if folder else None
    found = _MEMORY.get(key)
    if found is not None:
        _MEMORY.move_to_end(key)
    elif path is not None and path.is_file():
        try:
            found = json.loads(path.read_text())["faces"]
        except (OSError, ValueError, KeyError, TypeError):
            found = None  # a damaged entry is detected again and rewritten
    if found is None:
        found = _detect_raw(image, min_face, device, detect_side)
    if path is not None and not path.is_file():
        try:
            atomic_write_text(path, json.dumps({"detector": DETECTOR, "faces": found}))
        except OSError:
            pass  # a read-only cache only costs time
    _MEMORY[key] = found
    if len(_MEMORY) > _MEMORY_SIZE:
        _MEMORY.popitem(last=False)
    return found


def detect_faces(image: Image.Image, size: int = 224, margin: float = 0.2, min_score: float = MIN_SCORE,
                 device: str = "cpu", min_face: int = 20, detect_side: int = 0) -> list[Face]:
    """Every face of ``image`` (RGB) with its aligned crop (cut from the full-size image), most confident first."""
    if not 0 <= margin < 0.5:
        raise FeatlabError(f"face margin must be in [0, 0.5), got {margin}")
    faces = []
    for found in detections(image, min_face, device, detect_side):
        if found["score"] < min_score:
            continue
        points = np.asarray(found["landmarks"], float)
        faces.append(Face(tuple(found["box"]), found["score"], points, align(image, points, size, margin),
                          crop_transform(points, size, margin)))
    return sorted(faces, key=lambda face: -face.score)


# ------------------------------------------------------------------ the stage in a preprocessing


@dataclass(frozen=True)
class FaceStage:
    """Detect and align the main face before the backbone's own resize / crop (``--faces detect``).

    Parameters
    ----------
    size : side of the aligned crop in pixels (``--face-size``); featlab's default is the backbone's resize size, so
        the backbone's centre crop keeps the face and most of the margin.
    margin : share of the crop left as context on each side of the template (``--face-margin``).
    min_score : MTCNN probability from which a detection counts as a face.
    min_face : smallest face MTCNN looks for, in pixels (of the detection copy, see ``detect_side``).
    detect_side : detect on a copy whose longer side is at most this many pixels (0: the image itself); boxes and
        landmarks are scaled back and the crop is cut from the full-size image. Video frames use 640.
    """

    size: int = 256
    margin: float = 0.2
    min_score: float = MIN_SCORE
    min_face: int = 20
    detector: str = DETECTOR
    detect_side: int = 0

    def __post_init__(self) -> None:
        if not 32 <= self.size <= 2048:
            raise FeatlabError(f"face size must be 32-2048 pixels, got {self.size}")
        if not 0 <= self.margin < 0.5:
            raise FeatlabError(f"face margin must be in [0, 0.5), got {self.margin}")
        if not 0 < self.min_score <= 1:
            raise FeatlabError(f"face min score must be in (0, 1], got {self.min_score}")

    def faces(self, image: Image.Image, device: str = "cpu") -> list[Face]:
        """Every face of ``image`` at this stage's settings, most confident first."""
        return detect_faces(image, self.size, self.margin, self.min_score, device, self.min_face, self.detect_side)

    def main_face(self, image: Image.Image, device: str = "cpu") -> Face:
        """The largest face (a portrait's subject), or :class:`BadImageError` ("no face") when there is none."""
        faces = self.faces(image, device)
        if not faces:
            raise BadImageError(f"no face found (MTCNN probability >= {self.min_score:g})")
        return max(faces, key=lambda face: face.area)

    def as_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, recorded: dict | None) -> FaceStage | None:
        if not recorded:
            return None
        known = {k: recorded[k] for k in ("size", "margin", "min_score", "min_face", "detector", "detect_side")
                 if k in recorded}
        return cls(**known)


def is_face_aligned(images: list[Image.Image], min_share: float = 0.9, min_area: float = 0.15,
                    max_offset: float = 0.2) -> tuple[bool, dict]:
    """How ``--faces auto`` decides: a dataset is already face-aligned when at least ``min_share`` of a sample
    of its images hold exactly one face that covers at least ``min_area`` of the image with its box centre within
    ``max_offset`` (of the image side) of the image centre - a portrait set like the two Kaggle ones. Returns the
    decision and its evidence (recorded in caches and models)."""
    centred = 0
    for image in images:
        faces = detect_faces(image, size=64, margin=0.0)
        if len(faces) != 1:
            continue
        x0, y0, x1, y1 = faces[0].box
        w, h = image.size
        area = faces[0].area / (w * h)
        offset = max(abs((x0 + x1) / 2 - w / 2) / w, abs((y0 + y1) / 2 - h / 2) / h)
        centred += area >= min_area and offset <= max_offset
    share = centred / max(1, len(images))
    evidence = {"sampled": len(images), "one_centred_face": centred, "share": round(share, 3),
                "rule": f"aligned when >= {min_share:.0%} of sampled images hold exactly one face covering >= "
                        f"{min_area:.0%} of the image, centred within {max_offset:.0%}"}
    return share >= min_share, evidence


def choose_faces(mode: str, manifest, size: int, margin: float = 0.2, sample: int = 48,
                 seed: int = 0) -> tuple[FaceStage | None, dict]:
    """The face stage ``--faces MODE`` asks for on a dataset (``manifest``: path / split / status columns) and what
    was decided: ``none`` -> None, ``detect`` -> a :class:`FaceStage`, ``auto`` -> :func:`is_face_aligned` on up to
    ``sample`` usable images (train split first; a fixed seed) decides."""
    if mode not in FACE_MODES:
        raise FeatlabError(f"--faces must be one of {', '.join(FACE_MODES)}, got {mode!r}")
    stage = FaceStage(size=size, margin=margin)
    if mode == "none":
        return None, {"mode": "none", "faces": "none"}
    if mode == "detect":
        return stage, {"mode": "detect", "faces": "detect"}
    from featlab.data.dataset import load_rgb

    usable = manifest[manifest.status == "ok"]
    if "split" in usable and (usable.split == "train").any():
        usable = usable[usable.split == "train"]
    picked = usable.sample(min(sample, len(usable)), random_state=seed) if len(usable) else usable
    images = []
    for path in picked.path:
        try:
            images.append(load_rgb(path))
        except BadImageError:
            continue
    aligned, evidence = is_face_aligned(images)
    decision = {"mode": "auto", "faces": "none" if aligned else "detect", **evidence}
    return (None if aligned else stage), decision


def quarantine_faceless(manifest, stage: FaceStage | None, splits: tuple[str, ...] | None = None):
    """``manifest`` with every usable image (of ``splits``; None: all) in which ``stage`` finds no face marked
    quarantined, reason "no face ..." - so training never sees a whole image where it expects a face."""
    if stage is None:
        return manifest
    from featlab.data.dataset import load_rgb

    manifest = manifest.copy()
    todo = manifest.status == "ok"
    if splits is not None:
        todo &= manifest.split.isin(splits)
    for i in manifest.index[todo]:
        try:
            stage.main_face(load_rgb(manifest.at[i, "path"]))
        except BadImageError as why:
            manifest.loc[i, ["status", "reason"]] = ["quarantined", str(why)]
    return manifest


def align_dataset(root: str | os.PathLike, out: str | os.PathLike, stage: FaceStage, progress: bool = False):
    """Write the aligned largest face of every image of the dataset at ``root`` to ``out`` in the same layout
    (``{split}/{label}/NAME.png``: lossless, so no new compression traces), for tools outside featlab.

    ``out/faces.csv`` lists every image (source, crop, faces found, box, detection score, status); an image without
    a face (or unreadable) gets no crop, status ``no face`` / ``quarantined``. ``out/manifest.csv`` carries each
    crop's ``source`` over from a ``featlab data build`` manifest, so reports still break results down per
    source. Crops already written are kept (a killed run resumes); each is written atomically."""
    import pandas as pd
    from tqdm.auto import tqdm

    from featlab.core.fileio import atomic_write
    from featlab.data.dataset import load_rgb, scan_dataset
    from featlab.data.groups import find_groups

    root, out = Path(root), Path(out)
    if out.resolve() == root.resolve() or root.resolve() in out.resolve().parents:
        raise FeatlabError(f"--out {out} must lie outside the dataset {root}")
    manifest = scan_dataset(root, check_images=False)
    groups = find_groups(root)
    rows = []
    for item in tqdm(list(manifest.itertuples()), desc="faces", unit="img", disable=not progress):
        split_dir = "" if item.split == "all" else item.split
        target = out / split_dir / item.label_name / f"{Path(item.path).stem}.png"
        row = {"source_path": item.path, "path": str(target.relative_to(out)), "split": item.split,
               "label_name": item.label_name, "faces": 0, "box": "", "det_score": float("nan"),
               "status": "quarantined", "reason": item.reason,
               "source": next((g.split("=", 1)[1] for g in groups.get(str(Path(item.path).resolve()), [])
                               if g.startswith("source=")), "")}
        if item.status == "ok":
            try:
                image = load_rgb(item.path)
                found = stage.faces(image)
                if not found:
                    raise BadImageError(f"no face found (MTCNN probability >= {stage.min_score:g})")
                face = max(found, key=lambda f: f.area)
                if not target.is_file():
                    atomic_write(target, lambda handle, crop=face.crop: crop.save(handle, format="PNG"))
                row.update(faces=len(found), box=",".join(f"{v:.0f}" for v in face.box), det_score=face.score,
                           status="ok", reason="")
            except BadImageError as why:
                row.update(status="no face" if str(why).startswith("no face") else "quarantined", reason=str(why))
        rows.append(row)
    table = pd.DataFrame(rows)
    atomic_write(out / "faces.csv", lambda handle: handle.write(table.to_csv(index=False).encode()))
    kept = table[table.status == "ok"][["path", "source", "label_name"]]
    atomic_write(out / "manifest.csv", lambda handle: handle.write(kept.to_csv(index=False).encode()))
    return table
