"""Faces in the wild: MTCNN (facenet-pytorch, --no-deps) runs on our torch, finds pasted real faces, aligns them."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("facenet_pytorch", reason="facenet-pytorch 2.6 is not installed (make setup installs it --no-deps)")

from featlab.data.faces import TEMPLATE_112, align, detect_faces, similarity  # noqa: E402
from tests.conftest import REAL_SAMPLE, cli_ok  # noqa: E402


def _single_face_images(n: int) -> list[Image.Image]:
    """The first ``n`` real 140K faces of the shipped sample on which MTCNN finds exactly one face on its own."""
    found = []
    for path in sorted((REAL_SAMPLE / "test" / "real").iterdir()) + sorted((REAL_SAMPLE / "valid" / "real").iterdir()):
        image = Image.open(path).convert("RGB")
        if len(detect_faces(image)) == 1:
            found.append(image)
        if len(found) == n:
            return found
    pytest.fail(f"fewer than {n} single-face images in the sample")


def wild_photo(faces: list[Image.Image], seed: int = 0) -> tuple[Image.Image, list[tuple[int, int, int, int]]]:
    """Real faces pasted at different sizes and places on a 1024 px textured background, the last rotated by 20°."""
    rng = np.random.default_rng(seed)
    canvas = Image.fromarray((rng.normal(128, 30, (1024, 1024, 3)).clip(0, 255)).astype(np.uint8)).filter(
        __import__("PIL.ImageFilter", fromlist=["GaussianBlur"]).GaussianBlur(6))
    places = [(40, 60, 300), (560, 80, 380), (300, 560, 240)]
    rects = []
    for k, (face, (x, y, side)) in enumerate(zip(faces, places)):
        pasted = face.resize((side, side), Image.Resampling.BICUBIC)
        if k == len(faces) - 1:
            pasted = pasted.rotate(20, resample=Image.Resampling.BICUBIC, expand=False, fillcolor=(128, 128, 128))
        canvas.paste(pasted, (x, y))
        rects.append((x, y, x + side, y + side))
    return canvas, rects


def _inside(box, rect) -> tuple[bool, float]:
    x0, y0, x1, y1 = box
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    ix = max(0.0, min(x1, rect[2]) - max(x0, rect[0]))
    iy = max(0.0, min(y1, rect[3]) - max(y0, rect[1]))
    return rect[0] <= cx <= rect[2] and rect[1] <= cy <= rect[3], ix * iy / ((x1 - x0) * (y1 - y0))


def test_three_pasted_faces_are_found_where_they_were_pasted():
    photo, rects = wild_photo(_single_face_images(3))
    faces = detect_faces(photo)
    assert len(faces) == 3, [(f.box, f.score) for f in faces]
    for rect in rects:
        hits = [f for f in faces if _inside(f.box, rect)[0] and _inside(f.box, rect)[1] >= 0.7]
        assert len(hits) == 1, (rect, [f.box for f in faces])
    for face in faces:
        assert face.crop.size == (224, 224) and face.landmarks.shape == (5, 2)


def test_a_background_without_faces_has_none_and_alignment_is_deterministic():
    rng = np.random.default_rng(1)
    assert detect_faces(Image.fromarray(rng.integers(0, 255, (512, 512, 3), dtype=np.uint8))) == []
    face = _single_face_images(1)[0]
    first, again = detect_faces(face)[0], detect_faces(face)[0]
    assert np.array_equal(np.asarray(first.crop), np.asarray(again.crop))
    # the similarity transform puts the landmarks on the template (scaled into the crop with its margin)
    template = TEMPLATE_112 / 112 * 224 * 0.6 + 224 * 0.2
    mapped = (similarity(first.landmarks, template) @ np.c_[first.landmarks, np.ones(5)].T).T
    assert np.abs(mapped - template).max() < 8  # five points, four degrees of freedom: a small residual
    rotated = face.rotate(30, resample=Image.Resampling.BICUBIC)
    upright = align(rotated, detect_faces(rotated)[0].landmarks, 112, 0.0)
    assert upright.size == (112, 112)


def test_predict_faces_writes_a_row_per_face_and_says_no_face(fitted, tmp_path):
    import pandas as pd

    photo, _ = wild_photo(_single_face_images(3))
    folder = tmp_path / "wild"
    folder.mkdir()
    photo.save(folder / "group.jpg", quality=95)
    Image.fromarray(np.full((400, 600, 3), 90, np.uint8)).save(folder / "wall.png")
    (folder / "broken.jpg").write_bytes(b"nope")
    result = cli_ok("predict", "svm", folder, "--faces", "detect", "--out", tmp_path / "faces.csv", "--workdir", fitted)
    table = pd.read_csv(tmp_path / "faces.csv")
    group = table[table.path.str.endswith("group.jpg")]
    assert len(group) == 3 and (group.status == "ok").all() and group.face.tolist() == [0, 1, 2]
    assert group.image_score.nunique() == 1 and group.image_score.iloc[0] == group.score.max()
    assert table[table.path.str.endswith("wall.png")].status.tolist() == ["no face"]
    assert table[table.path.str.endswith("broken.jpg")].status.tolist() == ["quarantined"]
    assert "3 faces in 1 images" in result.output and "1 without a face" in result.output
