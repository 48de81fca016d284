"""--faces on the whole pipeline: the face stage is part of the preprocessing, so of every cache and model;
detections are cached by image content; auto decides on a sample; a face model refuses whole images unless told."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from PIL import Image

pytest.importorskip("facenet_pytorch", reason="facenet-pytorch 2.6 is not installed (make setup installs it --no-deps)")

from featlab.data import faces as faces_module  # noqa: E402
from featlab.data.faces import FaceStage, choose_faces, detections, is_face_aligned, use_cache  # noqa: E402
from featlab.features.specs import Preprocessing  # noqa: E402
from tests.conftest import R18, REAL_SAMPLE, cli_ok  # noqa: E402


def _off_centre(face: Image.Image, seed: int) -> Image.Image:
    """A real face, 160 px, pasted at a random corner of a 320 px noisy background: not a portrait any more."""
    rng = np.random.default_rng(seed)
    canvas = Image.fromarray(rng.normal(120, 25, (320, 320, 3)).clip(0, 255).astype(np.uint8))
    x, y = (int(v) for v in rng.choice([0, 160], 2))
    canvas.paste(face.resize((160, 160), Image.Resampling.BICUBIC), (x, y))
    return canvas


@pytest.fixture(scope="module")
def wild_root(tmp_path_factory):
    """A tiny split set of off-centre real 140K faces (train/valid/test x real/fake) and one faceless train image."""
    root = tmp_path_factory.mktemp("wildset") / "data"
    counts = {"train": 6, "valid": 3, "test": 3}
    seed = 0
    for split, n in counts.items():
        for label in ("real", "fake"):
            folder = root / split / label
            folder.mkdir(parents=True)
            for k, path in enumerate(sorted((REAL_SAMPLE / split / label).iterdir())[:n]):
                _off_centre(Image.open(path).convert("RGB"), seed).save(folder / f"{k}.png")
                seed += 1
    Image.fromarray(np.full((320, 320, 3), 100, np.uint8)).save(root / "train" / "real" / "wall.png")
    return root


def test_a_face_stage_travels_in_the_preprocessing_and_whole_images_keep_their_keys():
    whole = Preprocessing(resize=256, crop=224)
    assert "faces" not in whole.as_dict()  # caches and models made before faces existed keep their keys
    staged = whole.with_faces(FaceStage(size=256, margin=0.1))
    again = Preprocessing.from_dict(json.loads(json.dumps(staged.as_dict())))
    assert again == staged and again.faces.margin == 0.1
    with pytest.raises(Exception, match="face margin"):
        FaceStage(margin=0.6)


def test_detections_are_cached_by_image_content_on_disk(tmp_path, monkeypatch):
    image = Image.open(sorted((REAL_SAMPLE / "test" / "real").iterdir())[0]).convert("RGB")
    calls = []
    real = faces_module._detect_raw
    monkeypatch.setattr(faces_module, "_detect_raw", lambda *a: calls.append(1) or real(*a))
    monkeypatch.setattr(faces_module, "_MEMORY", type(faces_module._MEMORY)())
    use_cache(tmp_path / "faces")
    try:
        first = detections(image)
        faces_module._MEMORY.clear()  # a new process: only the disk remembers
        copy = Image.frombytes("RGB", image.size, image.tobytes())  # same pixels, another object
        assert detections(copy) == first and len(calls) == 1
        assert len(list((tmp_path / "faces").rglob("*.json"))) == 1
        stage = FaceStage(size=128)
        crops = [np.asarray(stage.main_face(image).crop) for _ in range(2)]
        assert np.array_equal(*crops) and crops[0].shape == (128, 128, 3) and len(calls) == 1
    finally:
        use_cache(None)


def test_auto_calls_portraits_aligned_and_off_centre_faces_not(wild_root):
    portraits = [Image.open(p).convert("RGB") for p in sorted((REAL_SAMPLE / "train" / "real").iterdir())[:10]]
    aligned, evidence = is_face_aligned(portraits)
    assert aligned and evidence["share"] >= 0.9
    from featlab.data.dataset import scan_dataset

    stage, decision = choose_faces("auto", scan_dataset(wild_root), 224)
    assert stage is not None and decision["faces"] == "detect" and decision["share"] < 0.9


def test_faces_detect_end_to_end_svm(wild_root, tmp_path):
    work = tmp_path / "work"
    result = cli_ok("extract", "--data", wild_root, *R18, "--faces", "detect", "--face-size", "96", "--workdir", work)
    assert "faces: found in 24 of 25 decodable images" in result.output
    assert "wall.png: no face found" in result.output
    assert len(list((work / "faces").rglob("*.json"))) == 25  # every decodable image's detections, kept
    cli_ok("fit-svm", "--pca", "4", "--C", "1", "--workdir", work, "--name", "svmface")
    meta = json.loads((work / "models" / "svmface" / "meta.json").read_text())
    assert meta["extraction"]["preprocessing"]["faces"]["size"] == 96
    report = json.loads((work / "reports" / "svmface-test.json").read_text())
    assert report["model"]["faces"]["size"] == 96
    # the preprocessing is part of the model: whole images are refused unless asked for
    from typer.testing import CliRunner

    from featlab.cli import app

    refused = CliRunner().invoke(app, ["evaluate", "svmface", "--faces", "none", "--workdir", str(work), "--no-plots"])
    assert refused.exit_code == 1 and "trained on aligned face crops" in refused.output
    cli_ok("evaluate", "svmface", "--faces", "none", "--allow-mismatch", "--workdir", work, "--no-plots")
    whole = json.loads((work / "reports" / "svmface+whole-test.json").read_text())
    assert whole["model"]["faces"] == "none" and whole["model"]["faces_override"] == "none"
    # predict with a face model scores every face, one row each
    out = tmp_path / "p.csv"
    cli_ok("predict", "svmface", wild_root / "test" / "real", "--out", out, "--workdir", work)
    table = pd.read_csv(out)
    assert (table.status == "ok").all() and table.box.str.count(",").eq(3).all()
    assert table.path.nunique() == 3 and (table.groupby("path").face.min() == 0).all()
    assert (table.groupby("path").image_score.first() == table.groupby("path").score.max()).all()


def test_faces_detect_trains_a_cnn_on_faces(wild_root, tmp_path):
    work = tmp_path / "work"
    cli_ok("train-cnn", "--arch", "custom", "--data", wild_root, "--image-size", "32", "--epochs", "1", "--faces",
           "detect", "--face-size", "64", "--out", work / "models" / "cnnface", "--workdir", work, "--no-progress")
    meta = json.loads((work / "models" / "cnnface" / "meta.json").read_text())
    assert meta["preprocessing"]["faces"]["size"] == 64 and meta["config"]["faces"]["size"] == 64
    from featlab import load

    detector = load(work / "models" / "cnnface", work)
    assert detector.prep.faces == FaceStage(size=64)
    whole = detector.with_faces(None)
    assert whole.prep.faces is None and whole.name == "cnnface+whole" and detector.prep.faces is not None


def test_deep_features_take_a_face_stage(wild_root):
    from featlab import DeepFeatures

    paths = sorted(str(p) for p in (wild_root / "train" / "real").iterdir())
    faces = [p for p in paths if not p.endswith("wall.png")]
    common = dict(backbone="resnet18", weights="none", precision="fp32", layers="pool")
    staged = DeepFeatures(faces="detect", **common).fit(faces)
    assert staged.faces_ is not None and staged.faces_.size == 256
    X = staged.transform(faces[:2])
    whole = DeepFeatures(**common).fit(faces).transform(faces[:2])
    assert X.shape == whole.shape and not np.allclose(X, whole)  # the crop, not the photo, was embedded
    with pytest.raises(ValueError, match="no face"):
        staged.transform([p for p in paths if p.endswith("wall.png")])
    assert DeepFeatures(faces="auto", **common).fit(faces).faces_ is not None  # off-centre faces: detect


def test_explain_maps_the_aligned_face_back_onto_the_photo(fitted, tmp_path):
    """A whole-image model explained through --faces detect: the map's footprint is the rotated face, not the photo."""
    from featlab import load
    from featlab.evaluation.explain import explain_paths, overlay

    face = Image.open(sorted((REAL_SAMPLE / "test" / "real").iterdir())[1]).convert("RGB").resize((200, 200))
    photo = Image.new("RGB", (600, 400), (90, 110, 130))
    photo.paste(face.rotate(15, resample=Image.Resampling.BICUBIC, fillcolor=(90, 110, 130)), (340, 120))
    photo.save(tmp_path / "photo.png")
    detector = load("svm", fitted).with_faces(FaceStage(size=128))
    (explained,) = explain_paths(detector, [str(tmp_path / "photo.png")], method="occlusion", patch=32, stride=32)
    assert explained.warp is not None and explained.heatmap is not None
    x0, y0, x1, y1 = explained.box
    assert 340 < (x0 + x1) / 2 < 540 and 120 < (y0 + y1) / 2 < 320  # the view lies on the pasted face
    assert (x1 - x0) * (y1 - y0) < 0.5 * 600 * 400  # the face and its margin, not the photo
    px, py = explained.peak
    assert x0 <= px <= x1 and y0 <= py <= y1
    # the crop's top corners map to a line tilted like the face (rotated 15 degrees counter-clockwise)
    (ax, ay), (bx, by) = explained.to_image(0, 0), explained.to_image(1, 0)
    assert np.degrees(np.arctan2(ay - by, bx - ax)) == pytest.approx(15, abs=6)
    shown = np.asarray(overlay(str(tmp_path / "photo.png"), explained, max_side=600)).astype(int)
    original = np.asarray(photo).astype(int)
    far = (slice(20, 80), slice(20, 200))  # far from the face: only dimmed, no heat
    assert np.allclose(shown[far], original[far] * 0.45, atol=3)
    inside = shown[int(py) - 2:int(py) + 2, int(px) - 2:int(px) + 2]
    assert not np.allclose(inside, original[int(py) - 2:int(py) + 2, int(px) - 2:int(px) + 2] * 0.45, atol=10)


def test_data_faces_writes_an_aligned_face_set(wild_root, tmp_path):
    out = tmp_path / "faces"
    result = cli_ok("data", "faces", wild_root, "--out", out, "--face-size", "64")
    assert "24 of 25 decodable images have a face" in result.output and "no face:" in result.output
    crops = sorted(out.rglob("*.png"))
    assert len(crops) == 24 and all(Image.open(p).size == (64, 64) for p in crops)
    assert {p.parent.parent.name for p in crops} == {"train", "valid", "test"}
    table = pd.read_csv(out / "faces.csv")
    assert table.set_index(table.source_path.str.rsplit("/", n=1).str[-1]).status["wall.png"] == "no face"
    before = {p: p.stat().st_mtime_ns for p in crops}
    cli_ok("data", "faces", wild_root, "--out", out, "--face-size", "64")  # a rerun keeps what was written
    assert {p: p.stat().st_mtime_ns for p in sorted(out.rglob("*.png"))} == before
    from featlab.data.dataset import scan_dataset

    assert len(scan_dataset(out)) == 24  # a dataset in featlab's layout
