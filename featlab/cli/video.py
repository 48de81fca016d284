"""``featlab video``: score the faces of video files (PyAV), per video, per face track and per frame."""

from __future__ import annotations

from pathlib import Path

import typer

from featlab.cli.common import (
    ALLOW_MISMATCH_OPTION,
    FACE_MARGIN_OPTION,
    FACE_SIZE_OPTION,
    WORKDIR_OPTION,
    detector_faces,
    friendly,
    open_workspace,
)
from featlab.core.checks import check_device, existing_path
from featlab.core.errors import FeatlabError

app = typer.Typer()  # its commands are merged into the featlab command (featlab.cli)


@app.command()
@friendly
def video(
    model: str = typer.Argument(..., help="Model folder, a name under models/, or 'latest'."),
    target: Path = typer.Argument(..., help="A video file (.mp4 .mov .webm .avi .mkv) or a folder searched for them."),
    out: Path | None = typer.Option(None, "--out", help="Folder for videos.csv, tracks.csv and frames.json "
                                    "(default reports/video-MODEL)."),
    fps: float = typer.Option(1.0, "--fps", min=0.01, help="Frames sampled per second of video."),
    max_frames: int = typer.Option(64, "--max-frames", min=1, help="At most this many sampled frames per video."),
    top_k: int = typer.Option(3, "--top-k", min=1, help="Track and video score: mean of the k most-fake scores."),
    face_size: int | None = FACE_SIZE_OPTION,
    face_margin: float | None = FACE_MARGIN_OPTION,
    allow_mismatch: bool = ALLOW_MISMATCH_OPTION,
    device: str = typer.Option("auto", "--device"),
    progress: bool = typer.Option(True, "--progress/--no-progress"),
    workdir: Path | None = WORKDIR_OPTION,
) -> None:
    """Sample frames, find and align every face, link faces into tracks, score each face; a video's score is the
    mean of its top-k frame scores (a frame: its most-fake face), a track's the mean of its top-k face scores.

    A video that cannot be read (corrupt, empty, audio only, frames over 4K) is listed with its reason and the
    others go on; exits 1 when no video could be scored."""
    existing_path(target)
    check_device(device)
    from tqdm.auto import tqdm

    from featlab.core.fileio import atomic_write_json, atomic_write_text
    from featlab.data.video import find_videos
    from featlab.detectors.base import load
    from featlab.evaluation.video import expected_frames, score_video, video_tables

    ws = open_workspace(workdir, writable=False)
    videos = find_videos(target)
    if not videos:
        raise FeatlabError(f"no video file (.mp4 .mov .webm .avi .mkv .m4v) in {target}")
    detector = detector_faces(load(model, ws, device=device), "detect", None, face_size, face_margin, allow_mismatch)
    total = sum(expected_frames(v, fps, max_frames) for v in videos)
    results = []
    with tqdm(total=total or None, unit="frame", desc="sampled frames", disable=not progress) as bar:
        for path in videos:
            results.append(score_video(detector, path, fps=fps, max_frames=max_frames, top_k=top_k,
                                       on_frame=bar.update))
    table, tracks, document = video_tables(results, detector, top_k)
    folder = out or ws.reports / f"video-{detector.name}"
    atomic_write_text(folder / "videos.csv", table.to_csv(index=False))
    atomic_write_text(folder / "tracks.csv", tracks.to_csv(index=False))
    atomic_write_json(folder / "frames.json", document)
    for r in results:
        if r.status == "ok":
            typer.echo(f"{r.label:<5} {r.score:+.4f}  {r.path}: {len(r.tracks)} face track(s) in {r.sampled} sampled "
                       f"frames ({r.sampled / r.seconds:.1f} frames/s)")
        else:
            typer.echo(f"{'no face' if r.status == 'no face' else 'skipped'}: {r.path}: {r.reason}")
    scored = [r for r in results if r.status == "ok"]
    typer.echo(f"{len(scored)} of {len(results)} videos scored ({sum(r.label == 'fake' for r in scored)} fake); "
               f"written to {folder}")
    if not scored:
        raise FeatlabError(f"no video in {target} could be scored")
