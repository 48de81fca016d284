"""featlab video: frames sampled with PyAV, faces linked into tracks, the video's score is the stated aggregation of
its frame scores; broken videos are one line each and the folder goes on."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from PIL import Image, ImageFilter

av = pytest.importorskip("av", reason="PyAV is not installed (make setup installs it)")
pytest.importorskip("facenet_pytorch", reason="facenet-pytorch 2.6 is not installed (make setup installs it --no-deps)")

from featlab.data.video import BadVideoError, sample_frames  # noqa: E402
from featlab.evaluation.video import link_tracks, top_k_mean  # noqa: E402
from tests.conftest import REAL_SAMPLE, cli_ok  # noqa: E402


def write_video(path, frames, fps=5):
    container = av.open(str(path), "w")
    stream = container.add_stream("libx264", rate=fps)
    stream.pix_fmt = "yuv420p"
    stream.width, stream.height = frames[0].size
    for image in frames:
        for packet in stream.encode(av.VideoFrame.from_image(image)):
            container.mux(packet)
    for packet in stream.encode():
        container.mux(packet)
    container.close()
    return path


def two_face_clip(path, seconds=3, fps=5):
    """Two real 140K faces side by side on a soft background, drifting right: two tracks."""
    faces = [Image.open(p).convert("RGB").resize((150, 150)) for p in sorted((REAL_SAMPLE / "test" / "real").iterdir())[1:3]]
    rng = np.random.default_rng(0)
    background = Image.fromarray(rng.normal(120, 30, (320, 640, 3)).clip(0, 255).astype(np.uint8)).filter(
        ImageFilter.GaussianBlur(8))
    frames = []
    for k in range(seconds * fps):
        frame = background.copy()
        frame.paste(faces[0], (20 + 3 * k, 80))
        frame.paste(faces[1], (380 + 3 * k, 80))
        frames.append(frame)
    return write_video(path, frames, fps)


def test_frames_are_sampled_at_the_asked_rate(tmp_path):
    clip = two_face_clip(tmp_path / "c.mp4", seconds=3, fps=5)
    taken = list(sample_frames(clip, fps=2, max_frames=100))
    assert [round(t, 2) for _, t, _ in taken] == [0.0, 0.6, 1.0, 1.6, 2.0, 2.6]
    assert [n for n, _, _ in taken] == [0, 3, 5, 8, 10, 13] and taken[0][2].size == (640, 320)
    assert len(list(sample_frames(clip, fps=5, max_frames=4))) == 4
    with pytest.raises(BadVideoError, match="pixel limit"):
        list(sample_frames(clip, max_pixels=320 * 200))


def test_top_k_and_track_linking():
    assert top_k_mean([0.1, 0.9, 0.5, 0.7], 2) == pytest.approx(0.8) and top_k_mean([0.3], 3) == 0.3

    class F:  # a face is a box here
        def __init__(self, *box):
            self.box = box

    frames = [[F(0, 0, 10, 10), F(50, 50, 60, 60)], [F(52, 51, 62, 61), F(2, 1, 12, 11)], [], [F(4, 2, 14, 12)]]
    assert link_tracks(frames) == [[0, 1], [1, 0], [], [0]]
    assert link_tracks(frames, max_gap=1)[3] == [2]  # seen too long ago: a new track


def test_video_command_writes_tracks_and_aggregates_its_frame_scores(fitted, tmp_path):
    folder = tmp_path / "clips"
    folder.mkdir()
    two_face_clip(folder / "two.mp4")
    (folder / "empty.mp4").write_bytes(b"")
    (folder / "junk.mov").write_bytes(b"\x00\x00\x00\x18ftypqt  " + bytes(range(256)) * 8)
    audio = av.open(str(folder / "sound.mp4"), "w")
    stream = audio.add_stream("aac", rate=16000)
    frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
    frame.sample_rate = 16000
    for packet in list(stream.encode(frame)) + list(stream.encode()):
        audio.mux(packet)
    audio.close()
    write_video(folder / "wall.mp4",
                [Image.fromarray(np.full((240, 320, 3), 90, np.uint8))] * 10, fps=5)
    out = tmp_path / "out"
    result = cli_ok("video", "svm", folder, "--fps", "2", "--top-k", "2", "--out", out, "--workdir", fitted,
                    "--no-progress")
    videos = pd.read_csv(out / "videos.csv").set_index("path")
    by_name = {p.rsplit("/", 1)[-1]: row for p, row in videos.iterrows()}
    assert by_name["two.mp4"].status == "ok" and by_name["two.mp4"].tracks == 2 and by_name["two.mp4"].sampled_frames == 6
    assert by_name["empty.mp4"].status == "quarantined" and "empty" in by_name["empty.mp4"].reason
    assert by_name["junk.mov"].status == "quarantined" and "not a readable video" in by_name["junk.mov"].reason
    assert by_name["sound.mp4"].status == "quarantined" and "no video stream" in by_name["sound.mp4"].reason
    assert by_name["wall.mp4"].status == "no face"
    assert "1 of 5 videos scored" in result.output
    document = json.loads((out / "frames.json").read_text())
    two = next(v for v in document["videos"] if v["path"].endswith("two.mp4"))
    frame_scores = [max(f["score"] for f in frame["faces"]) for frame in two["frames"]]
    assert all(len(frame["faces"]) == 2 for frame in two["frames"])
    assert two["score"] == pytest.approx(top_k_mean(frame_scores, 2))
    tracks = pd.read_csv(out / "tracks.csv")
    assert sorted(tracks.frames) == [6, 6]
    for track in (0, 1):
        own = [f["score"] for frame in two["frames"] for f in frame["faces"] if f["track"] == track]
        assert tracks.set_index("track").score[track] == pytest.approx(top_k_mean(own, 2))
    # every sampled frame's two faces sit in the left and the right half: one track each
    sides = {f["track"]: f["box"][0] < 320 for frame in two["frames"] for f in frame["faces"]}
    assert sorted(sides.values()) == [False, True]
