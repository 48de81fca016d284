from __future__ import annotations

from pathlib import Path

import pytest

from data_prep.synth import make_synthetic_dataset

SHARED = Path(__file__).resolve().parents[1].parent / "shared"


@pytest.fixture(scope="session")
def synth_root(tmp_path_factory) -> Path:
    """A small SYNTHETIC dataset (64 px), shared read-only by the tests of a session."""
    return make_synthetic_dataset(
        tmp_path_factory.mktemp("synth") / "data", {"train": 16, "valid": 6, "test": 6}, size=64, seed=0
    )


@pytest.fixture()
def workdir(tmp_path) -> Path:
    return tmp_path / "work"


REPO = Path(__file__).resolve().parents[1]
#: The real 160-image sample the repo ships (140K Real and Fake Faces: FFHQ vs StyleGAN).
REAL_SAMPLE = REPO / "data_prep" / "sample-faces"

#: CLI arguments for a fast, random-weights extractor (plumbing tests only).
R18 = ["--backbone", "resnet18", "--weights", "none", "--precision", "fp32", "--no-progress"]


def cli_ok(*args):
    """Run the featlab CLI in-process and insist on success (the output is shown when it fails)."""
    from typer.testing import CliRunner

    from featlab.cli import app

    result = CliRunner().invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return result


def train_svm_and_cnn(work: Path, data: Path, svm_name: str, c_grid: str) -> Path:
    """A work folder with an SVM (random-weights resnet18 features) and a tiny custom CNN fitted on ``data``."""
    cli_ok("extract", "--data", data, *R18, "--workdir", work)
    cli_ok("fit-svm", "--pca", "8", "--C", c_grid, "--workdir", work, "--name", svm_name)
    cli_ok("train-cnn", "--arch", "custom", "--data", data, "--image-size", "32", "--epochs", "1",
           "--out", work / "models" / "cnn", "--workdir", work, "--no-progress")
    return work


@pytest.fixture(scope="module")
def fitted(synth_root, tmp_path_factory) -> Path:
    """A work folder with random-weights resnet18 features of the SYNTHETIC set and an SVM named ``svm``."""
    work = tmp_path_factory.mktemp("work")
    cli_ok("extract", "--data", synth_root, *R18, "--workdir", work)
    cli_ok("fit-svm", "--pca", "8", "--C", "1", "--workdir", work, "--name", "svm")
    return work
