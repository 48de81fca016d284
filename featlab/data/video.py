"""Videos (``.mp4``, ``.mov``, ``.webm``, ``.avi``, ``.mkv``) decoded with PyAV: frames sampled at a fixed rate.

A video that cannot be scored - corrupt, empty, audio only, frames larger than :data:`MAX_FRAME_PIXELS` - raises
:class:`BadVideoError` with one line saying why, before or while decoding; a folder of videos goes on without it.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

from PIL import Image

from featlab.core.errors import BadImageError, FeatlabError

VIDEO_EXTENSIONS = frozenset({".mp4", ".mov", ".webm", ".avi", ".mkv", ".m4v"})
#: Frames with more pixels than 4K UHD are refused: an 8K frame is 33 M pixels, and face detection on it would
#: take seconds per frame on a CPU (downscale such a video first).
MAX_FRAME_PIXELS = 3840 * 2160


class BadVideoError(BadImageError):
    """A video featlab cannot sample; the message says why in one line."""


def is_video(path: str | os.PathLike) -> bool:
    return Path(path).suffix.lower() in VIDEO_EXTENSIONS


def find_videos(target: str | os.PathLike) -> list[Path]:
    """The video files of ``target`` (one file, or a folder searched recursively), sorted."""
    target = Path(target)
    if target.is_file():
        return [target]
    if not target.is_dir():
        raise FeatlabError(f"{target}: no such file or folder")
    return sorted(p for p in target.rglob("*") if p.is_file() and is_video(p))


def _av():
    try:
        import av
    except ImportError:
        raise FeatlabError("videos need PyAV (pip install av; make setup installs it)") from None
    return av


def _why(error: Exception) -> str:
    """FFmpeg's reason without the file name (the caller prints that)."""
    return (getattr(error, "strerror", None) or str(error).splitlines()[0])[:160]


def video_info(path: str | os.PathLike) -> dict:
    """Duration (s), frame rate, size and frame count (as the container states them) of a video's first
    video stream; :class:`BadVideoError` when there is none or the file is not a video."""
    av = _av()
    path = Path(path)
    if path.stat().st_size == 0:
        raise BadVideoError("empty file (0 bytes)")
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                kinds = sorted({s.type for s in container.streams}) or ["no"]
                raise BadVideoError(f"no video stream ({', '.join(kinds)} streams only)")
            stream = container.streams.video[0]
            rate = float(stream.average_rate or stream.guessed_rate or 0) or None
            duration = (float(stream.duration * stream.time_base) if stream.duration and stream.time_base else
                        (container.duration / 1_000_000 if container.duration else None))
            return {"width": stream.codec_context.width, "height": stream.codec_context.height, "fps": rate,
                    "duration_s": duration, "frames": int(stream.frames or 0), "codec": stream.codec_context.name}
    except BadVideoError:
        raise
    except (av.FFmpegError, OSError, ValueError) as error:
        raise BadVideoError(f"not a readable video: {_why(error)}") from None


def sample_frames(path: str | os.PathLike, fps: float = 1.0, max_frames: int = 64,
                  max_pixels: int | None = None) -> Iterator[tuple[int, float, Image.Image]]:
    """(frame number in the file, time in seconds, RGB image) of the frames at ``fps`` per second - the first frame
    at or after each multiple of ``1 / fps`` - up to ``max_frames``. Decodes in order (no seeking, so every codec
    and a damaged index work); only sampled frames are converted to images."""
    if fps <= 0 or max_frames < 1:
        raise FeatlabError(f"fps must be positive and max_frames at least 1, got {fps}, {max_frames}")
    info = video_info(path)
    max_pixels = max_pixels or MAX_FRAME_PIXELS
    if info["width"] * info["height"] > max_pixels:
        raise BadVideoError(f"{info['width']}x{info['height']} frames exceed the {max_pixels:,}-pixel limit "
                            "(downscale the video first)")
    av = _av()
    step, next_time, taken = 1.0 / fps, 0.0, 0
    try:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            for number, frame in enumerate(container.decode(stream)):
                t = float(frame.time) if frame.time is not None else number / (info["fps"] or 25.0)
                if t + 1e-6 < next_time:
                    continue
                yield number, t, frame.to_image().convert("RGB")
                taken += 1
                if taken >= max_frames:
                    return
                next_time = (int(t / step + 1e-6) + 1) * step
    except (av.FFmpegError, OSError, ValueError) as error:
        if taken == 0:
            raise BadVideoError(f"cannot decode: {_why(error)}") from None
        return  # a damaged tail: the frames sampled so far stand
    if taken == 0:
        raise BadVideoError("no decodable frame")
