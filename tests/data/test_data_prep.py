"""data_prep on fixture trees shaped like both Kaggle downloads."""

from __future__ import annotations

import pandas as pd
import pytest
from PIL import Image
from typer.testing import CliRunner

from data_prep.build import build
from featlab.cli import app
from featlab.core.errors import FeatlabError
from featlab.data.dataset import scan_dataset


def _img(path, seed):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (16, 16), (seed % 256, (seed * 7) % 256, (seed * 13) % 256)).save(path, quality=100)


@pytest.fixture()
def kaggle(tmp_path):
    """140K: 4/2/2 per class per split; CIPLAB: 20 real + 10 fake, with one cross-dataset
    duplicate, one in-CIPLAB duplicate and one corrupt file."""
    seed = 0
    f140 = tmp_path / "dl140k"
    for split, n in (("train", 4), ("valid", 2), ("test", 2)):
        for cls in ("real", "fake"):
            for i in range(n):
                seed += 1
                _img(f140 / "real_vs_fake" / "real-vs-fake" / split / cls / f"{i:05d}.jpg", seed)
    cip = tmp_path / "dlciplab" / "real_and_fake_face"
    for folder, n in (("training_real", 20), ("training_fake", 10)):
        for i in range(n):
            seed += 1
            _img(cip / folder / f"{folder}_{i}.jpg", seed)
    # exact duplicate of a 140K test image, and a duplicate inside CIPLAB
    (cip / "training_real" / "dup_of_140k.jpg").write_bytes(
        (f140 / "real_vs_fake/real-vs-fake/test/real/00000.jpg").read_bytes()
    )
    (cip / "training_fake" / "dup_inside.jpg").write_bytes((cip / "training_fake/training_fake_0.jpg").read_bytes())
    (cip / "training_fake" / "broken.jpg").write_bytes(b"\xff\xd8\xff garbage")
    return f140, tmp_path / "dlciplab"


def test_build_counts_dedup_and_no_leak(kaggle, tmp_path):
    f140, cip = kaggle
    result = build(f140, cip, tmp_path / "out", seed=0)
    counts = result.summary["counts"]
    # CIPLAB real: 20 unique -> 14/3/3 ; CIPLAB fake: 10 unique -> 7/2/1 (round(1.5) = 2)
    assert counts == {
        "train": {"real": 4 + 14, "fake": 4 + 7},
        "valid": {"real": 2 + 3, "fake": 2 + 2},
        "test": {"real": 2 + 3, "fake": 2 + 1},
    }
    assert len(result.summary["duplicates_removed"]) == 2
    assert [q["source_path"].rsplit("/", 1)[-1] for q in result.summary["quarantined"]] == ["broken.jpg"]
    manifest = pd.read_csv(tmp_path / "out" / "manifest.csv")
    assert manifest.sha256.is_unique  # no image in two splits
    on_disk = scan_dataset(tmp_path / "out" / "combined-real-vs-fake")
    assert len(on_disk) == len(manifest) and (on_disk.status == "ok").all()
    assert on_disk.groupby("sha256").split.nunique().max() == 1


def test_build_is_idempotent_and_refuses_other_output(kaggle, tmp_path):
    f140, cip = kaggle
    first = build(f140, cip, tmp_path / "out", seed=0)
    stamp = (tmp_path / "out" / "manifest.csv").stat().st_mtime_ns
    second = build(f140, cip, tmp_path / "out", seed=0)
    assert first.written and not second.written
    assert (tmp_path / "out" / "manifest.csv").stat().st_mtime_ns == stamp
    with pytest.raises(FeatlabError, match="different dataset build; pass --force"):
        build(f140, cip, tmp_path / "out", seed=1)
    third = build(f140, cip, tmp_path / "out", seed=1, force=True, link=True)
    assert third.written
    assert not third.manifest.equals(first.manifest)


def test_seed_changes_assignment_deterministically(kaggle, tmp_path):
    f140, cip = kaggle
    a = build(f140, cip, tmp_path / "a", seed=3).manifest
    b = build(f140, cip, tmp_path / "b", seed=3).manifest
    assert a.equals(b)


def test_cli_data_build_and_bad_layout(kaggle, tmp_path):
    f140, cip = kaggle
    runner = CliRunner()
    ok = runner.invoke(app, ["data", "build", "--faces140k", str(f140), "--ciplab", str(cip), "--out", str(tmp_path / "o")])
    assert ok.exit_code == 0, ok.output
    assert "train  real=18" in ok.output and "duplicates removed: 2" in ok.output
    bad = runner.invoke(app, ["data", "build", "--faces140k", str(cip), "--ciplab", str(cip), "--out", str(tmp_path / "p")])
    assert bad.exit_code == 1
    assert "featlab: error:" in bad.output and "real_vs_fake/real-vs-fake" in bad.output
    ratios = runner.invoke(
        app, ["data", "build", "--faces140k", str(f140), "--ciplab", str(cip), "--out", str(tmp_path / "q"),
              "--ratios", "0.5,0.5,0.5"]
    )
    assert ratios.exit_code == 1 and "sum" in ratios.output
