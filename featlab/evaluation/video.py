"""Score the faces of a video (``featlab video``): sample frames, detect and align faces, link them into tracks,
score every face, aggregate per track and per video.

Aggregation (the rule DFDC solutions and DeepfakeBench's video-level numbers use, made explicit): a frame's score
is its most-fake face; a track's score is the mean of its ``top_k`` highest face scores; the video's score is the
mean of its ``top_k`` highest frame scores. Averaging the top few, not all, keeps a manipulation that shows in part
of a clip visible, while one odd frame cannot decide alone (top_k >= 2).
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import numpy as np
import torch

from featlab import CLASS_NAMES
from featlab.data.faces import Face, FaceStage
from featlab.data.video import BadVideoError, sample_frames, video_info
from featlab.detectors.base import Detector

#: Boxes of consecutive sampled frames with at least this overlap (intersection over union) are one face.
TRACK_IOU = 0.3


def top_k_mean(values, k: int) -> float:
    """Mean of the ``k`` largest values (all of them when there are fewer)."""
    ordered = sorted((float(v) for v in values), reverse=True)
    return float(np.mean(ordered[:k])) if ordered else float("nan")


def iou(a, b) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


@dataclass
class VideoScore:
    """What :func:`score_video` found: per frame, per track, per video."""

    path: str
    status: str = "ok"  # ok, no face, quarantined
    reason: str = ""
    info: dict = field(default_factory=dict)
    frames: list[dict] = field(default_factory=list)  # {"frame", "time", "faces": [{"track", "box", "det_score", "score"}], "score"}
    tracks: list[dict] = field(default_factory=list)  # {"track", "frames", "first_time", "last_time", "score", "label"}
    score: float = float("nan")
    label: str = ""
    seconds: float = 0.0

    @property
    def sampled(self) -> int:
        return len(self.frames)


def affinity(a, b) -> float:
    """How likely two boxes of nearby sampled frames are one face: their IoU, or - for a face that moved more than
    its overlap shows at 1 frame/s - a score from the centre distance relative to the box size, when the sizes agree
    within a factor 1.5."""
    overlap = iou(a, b)
    wa, wb = a[2] - a[0], b[2] - b[0]
    if min(wa, wb) <= 0 or max(wa, wb) / min(wa, wb) > 1.5:
        return overlap
    distance = math.hypot((a[0] + a[2] - b[0] - b[2]) / 2, (a[1] + a[3] - b[1] - b[3]) / 2) / max(wa, wb)
    return max(overlap, TRACK_IOU * (1.0 - distance) / 0.5) if distance < 0.5 else overlap


def link_tracks(frames: list[list[Face]], min_affinity: float = TRACK_IOU, max_gap: int = 2) -> list[list[int]]:
    """Track number of each face of each sampled frame: a face joins the track whose last box (seen at most
    ``max_gap`` sampled frames ago) matches it best (:func:`affinity` at least ``min_affinity``); greedy, best
    matches first."""
    tracks: list[dict] = []  # {"box", "seen"}
    assigned = []
    for index, faces in enumerate(frames):
        pairs = sorted(((affinity(face.box, track["box"]), f, t) for f, face in enumerate(faces)
                        for t, track in enumerate(tracks) if index - track["seen"] <= max_gap), reverse=True)
        mine = [-1] * len(faces)
        taken = set()
        for overlap, f, t in pairs:
            if overlap < min_affinity or mine[f] >= 0 or t in taken:
                continue
            mine[f] = t
            taken.add(t)
        for f, face in enumerate(faces):
            if mine[f] < 0:
                tracks.append({"box": face.box, "seen": index})
                mine[f] = len(tracks) - 1
            tracks[mine[f]].update(box=faces[f].box, seen=index)
        assigned.append(mine)
    return assigned


def score_video(detector: Detector, path: str | os.PathLike, stage: FaceStage | None = None, fps: float = 1.0,
                max_frames: int = 64, top_k: int = 3, batch_size: int = 32, detect_side: int = 640,
                on_frame: Callable[[int], None] | None = None) -> VideoScore:
    """Sample ``path`` at ``fps`` (up to ``max_frames``), score every aligned face with ``detector``, aggregate
    (module docstring). ``stage`` defaults to the model's own face stage, else featlab's at the model's resize size;
    faces are detected on a copy of each frame whose longer side is ``detect_side`` (0: full size) and cut from the
    full frame.
    A video featlab cannot read is returned with status ``quarantined`` and the reason; one without a face in any
    sampled frame, status ``no face``. ``on_frame(n)`` is called after each sampled frame (progress)."""
    stage = replace(stage or detector.faces or FaceStage(size=detector.prep.resize), detect_side=detect_side)
    result = VideoScore(str(path))
    started = time.perf_counter()
    faces_per_frame: list[list[Face]] = []
    try:
        result.info = video_info(path)
        for number, t, image in sample_frames(path, fps, max_frames):
            faces_per_frame.append(stage.faces(image))
            result.frames.append({"frame": number, "time": round(t, 3), "faces": [], "score": None})
            if on_frame:
                on_frame(1)
    except BadVideoError as bad:
        result.status, result.reason, result.seconds = "quarantined", str(bad), time.perf_counter() - started
        return result
    crops = [face for faces in faces_per_frame for face in faces]
    if not crops:
        result.status, result.reason = "no face", f"no face in {result.sampled} sampled frames"
        result.seconds = time.perf_counter() - started
        return result
    scores = np.concatenate([detector.score(torch.stack([detector.prep.to_uint8(f.crop) for f in crops[i:i + batch_size]]))
                             for i in range(0, len(crops), batch_size)])
    tracks = link_tracks(faces_per_frame)
    by_track: dict[int, list[tuple[float, float]]] = {}
    position = 0
    for frame, faces, numbers in zip(result.frames, faces_per_frame, tracks):
        for face, track in zip(faces, numbers):
            score = float(scores[position])
            position += 1
            frame["faces"].append({"track": track, "box": [round(v, 1) for v in face.box],
                                   "det_score": round(face.score, 4), "score": score})
            by_track.setdefault(track, []).append((frame["time"], score))
        frame["score"] = max((f["score"] for f in frame["faces"]), default=None)
    for track, seen in sorted(by_track.items()):
        value = top_k_mean([s for _, s in seen], top_k)
        result.tracks.append({"track": track, "frames": len(seen), "first_time": seen[0][0], "last_time": seen[-1][0],
                              "score": value, "label": _label(detector, value)})
    result.score = top_k_mean([f["score"] for f in result.frames if f["score"] is not None], top_k)
    result.label = _label(detector, result.score)
    result.seconds = time.perf_counter() - started
    return result


def _label(detector: Detector, score: float) -> str:
    return "" if math.isnan(score) else CLASS_NAMES[int(score >= detector.threshold)]


def expected_frames(path: str | os.PathLike, fps: float, max_frames: int) -> int:
    """How many frames :func:`sample_frames` will take (for a progress bar's total); 0 when unknown."""
    try:
        duration = video_info(path).get("duration_s")
    except BadVideoError:
        return 0
    return min(max_frames, int(duration * fps) + 1) if duration else 0


def video_tables(results: list[VideoScore], detector: Detector, top_k: int):
    """(per-video rows, per-track rows, the JSON document with per-frame scores) for :func:`score_video` results."""
    import pandas as pd

    videos = pd.DataFrame([{"path": r.path, "status": r.status, "reason": r.reason, "sampled_frames": r.sampled,
                            "faces": sum(len(f["faces"]) for f in r.frames), "tracks": len(r.tracks), "score": r.score,
                            "score_kind": detector.score_kind, "label": r.label,
                            "frames_per_s": r.sampled / r.seconds if r.seconds else float("nan")} for r in results])
    tracks = pd.DataFrame([{"path": r.path, **t} for r in results for t in r.tracks],
                          columns=["path", "track", "frames", "first_time", "last_time", "score", "label"])
    document = {"model": detector.describe(), "threshold": detector.threshold, "score_kind": detector.score_kind,
                "aggregation": f"frame = most-fake face; track and video = mean of the top {top_k} scores",
                "videos": [{"path": r.path, "status": r.status, "reason": r.reason, "info": r.info, "score": r.score,
                            "label": r.label, "tracks": r.tracks, "frames": r.frames} for r in results]}
    return videos, tracks, document


__all__ = ["VideoScore", "score_video", "link_tracks", "top_k_mean", "video_tables", "expected_frames"]
