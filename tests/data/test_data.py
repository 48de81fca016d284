"""Manifest and robust decoding: each bad-input kind is generated here and checked."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from featlab.core.errors import BadImageError, FeatlabError
from featlab.data.dataset import load_rgb, scan_dataset, scan_images, summarize


def _jpeg(path, color=(200, 50, 50), size=(32, 24)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path, quality=95)
    return path


def _tree(root, n=3):
    for split in ("train", "valid", "test"):
        for cls in ("real", "fake"):
            for i in range(n):
                _jpeg(root / split / cls / f"{i}.jpg", color=(i * 40, 100, 200 if cls == "fake" else 10))
    return root


def test_manifest_of_generated_tree(tmp_path):
    root = _tree(tmp_path / "ds")
    manifest = scan_dataset(root)
    assert len(manifest) == 18
    assert set(manifest.split) == {"train", "valid", "test"}
    assert (manifest.status == "ok").all()
    assert dict(zip(manifest.label_name, manifest.label)) == {"real": 0, "fake": 1}
    assert manifest.sha256.str.len().eq(64).all()
    table = summarize(manifest)
    assert table.loc["train", "real"] == 3 and table.loc["test", "fake"] == 3


def test_unsplit_layout(tmp_path):
    for cls in ("real", "fake"):
        _jpeg(tmp_path / "flat" / cls / "a.jpg")
    manifest = scan_dataset(tmp_path / "flat")
    assert set(manifest.split) == {"all"} and len(manifest) == 2


@pytest.mark.parametrize(
    "layout, message",
    [
        ({"train/real/a.jpg"}, "missing class folder(s) fake"),
        ({"train/real/a.jpg", "train/fake/notes.txt"}, "fake: class folder holds no images"),
        ({"images/a.jpg"}, "expected {train,valid,test}"),
    ],
)
def test_wrong_layouts_name_the_folder(tmp_path, layout, message):
    for rel in layout:
        target = tmp_path / "ds" / rel
        if rel.endswith(".jpg"):
            _jpeg(target)
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text("x")
    with pytest.raises(FeatlabError, match=message.replace("{", r"\{").replace("(", r"\(").replace(")", r"\)")):
        scan_dataset(tmp_path / "ds")


def test_missing_root(tmp_path):
    with pytest.raises(FeatlabError, match="dataset folder not found"):
        scan_dataset(tmp_path / "nope")


# ----------------------------------------------------------------- bad inputs


def test_zero_byte(tmp_path):
    (tmp_path / "z.jpg").write_bytes(b"")
    with pytest.raises(BadImageError, match="empty file"):
        load_rgb(tmp_path / "z.jpg")


def test_truncated_jpeg(tmp_path):
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(buf, "JPEG")
    (tmp_path / "t.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    with pytest.raises(BadImageError, match="corrupt or truncated"):
        load_rgb(tmp_path / "t.jpg")


def test_non_image(tmp_path):
    (tmp_path / "n.jpg").write_text("this is not a picture")
    with pytest.raises(BadImageError, match="not an image"):
        load_rgb(tmp_path / "n.jpg")


def test_decompression_bomb(tmp_path):
    Image.new("1", (3000, 2000)).save(tmp_path / "big.png")
    with pytest.raises(BadImageError, match="decompression bomb"):
        load_rgb(tmp_path / "big.png", max_pixels=5_000_000)
    assert load_rgb(tmp_path / "big.png").size == (3000, 2000)  # under the default limit


def test_cmyk_converts_to_rgb(tmp_path):
    Image.new("CMYK", (8, 8), (0, 255, 255, 0)).save(tmp_path / "c.jpg")  # pure red in CMYK
    image = load_rgb(tmp_path / "c.jpg")
    r, g, b = image.getpixel((4, 4))
    assert image.mode == "RGB" and r > 200 and g < 60 and b < 60


def test_rgba_composited_on_white(tmp_path):
    Image.new("RGBA", (8, 8), (255, 0, 0, 0)).save(tmp_path / "a.png")  # fully transparent red
    assert load_rgb(tmp_path / "a.png").getpixel((0, 0)) == (255, 255, 255)


def test_palette_with_transparency(tmp_path):
    image = Image.new("P", (8, 8), 1)
    image.putpalette([0, 0, 0, 0, 255, 0] + [0] * 762)
    image.save(tmp_path / "p.png", transparency=0)
    assert load_rgb(tmp_path / "p.png").getpixel((0, 0)) == (0, 255, 0)


def test_16bit_gray_rescaled_not_clipped(tmp_path):
    array = np.full((8, 8), 32768, dtype=np.uint16)  # mid-gray in 16 bits
    Image.fromarray(array).save(tmp_path / "g16.png")
    r, g, b = load_rgb(tmp_path / "g16.png").getpixel((0, 0))
    assert r == g == b and 126 <= r <= 129


def test_grayscale(tmp_path):
    Image.new("L", (8, 8), 77).save(tmp_path / "g.jpg", quality=100)
    image = load_rgb(tmp_path / "g.jpg")
    assert image.mode == "RGB" and abs(image.getpixel((0, 0))[0] - 77) <= 1


def test_exif_rotation_applied(tmp_path):
    image = Image.new("RGB", (40, 20), (0, 0, 255))
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
    image.save(tmp_path / "r.jpg", exif=exif.tobytes())
    assert load_rgb(tmp_path / "r.jpg").size == (20, 40)


def test_scan_quarantines_instead_of_crashing(tmp_path):
    root = _tree(tmp_path / "ds", n=2)
    (root / "train" / "fake" / "empty.jpg").write_bytes(b"")
    (root / "train" / "real" / "text.jpg").write_text("nope")
    (root / "valid" / "real" / "notes.txt").write_text("hello")
    manifest = scan_dataset(root)
    bad = manifest[manifest.status == "quarantined"]
    bad = bad.set_index(bad.path.map(lambda p: p.rsplit("/", 1)[-1]))
    assert set(bad.index) == {"empty.jpg", "text.jpg", "notes.txt"}
    assert "empty file" in bad.loc["empty.jpg", "reason"]
    assert "not an image file extension" in bad.loc["notes.txt", "reason"]
    assert (manifest.status == "ok").sum() == 12
    assert summarize(manifest).loc["train", "quarantined"] == 2


def test_scan_images_for_prediction(tmp_path):
    _jpeg(tmp_path / "x" / "deep" / "a.jpg")
    (tmp_path / "x" / "readme.md").write_text("skip me")
    manifest = scan_images(tmp_path / "x")
    ok = manifest[manifest.status == "ok"]
    assert len(ok) == 1 and ok.label.iloc[0] == -1
    skipped = manifest[manifest.status != "ok"]  # listed with its reason, never read
    assert list(skipped.path.map(lambda p: p.rsplit("/", 1)[-1])) == ["readme.md"]
    assert "not an image type featlab decodes (.md" in skipped.reason.iloc[0]
    with pytest.raises(FeatlabError, match="no image files"):
        scan_images(_empty(tmp_path))


def _empty(tmp_path):
    (tmp_path / "empty").mkdir()
    return tmp_path / "empty"


def test_shipped_real_sample_is_valid_real_and_matches_its_provenance():
    import pandas as pd

    from featlab.core.fileio import sha256_file
    from featlab.reports.report import is_synthetic
    from tests.conftest import REAL_SAMPLE

    manifest = scan_dataset(REAL_SAMPLE)
    assert (manifest.status == "ok").all() and len(manifest) == 160
    counts = summarize(manifest)
    assert counts.loc["train", "real"] == counts.loc["train", "fake"] == 50
    assert counts.loc["test", "real"] == counts.loc["valid", "fake"] == 15
    assert not is_synthetic(REAL_SAMPLE)
    provenance = pd.read_csv(REAL_SAMPLE / "provenance.csv", dtype=str)
    assert len(provenance) == 160 and set(provenance["transform"]) == {"original bytes"}
    by_name = {(p.split("/")[-3], p.split("/")[-2], p.split("/")[-1]): h for p, h in zip(provenance.file, provenance.sha256)}
    for path in manifest.path:
        parts = tuple(path.split("/")[-3:])
        assert sha256_file(path) == by_name[parts]
    notice = (REAL_SAMPLE / "NOTICE.md").read_text()
    assert "CC BY-NC-SA 4.0" in notice and "CC BY-NC 4.0" in notice
