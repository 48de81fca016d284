"""Bad input and interruption: one clear line, the right exit code, nothing computed lost.

One test per case of the hardening issue; each makes its own bad input.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from featlab.cli import app
from tests.conftest import R18, REAL_SAMPLE
from tests.conftest import cli_ok as ok

runner = CliRunner()


def run(*args):
    return runner.invoke(app, [str(a) for a in args])



def fails_cleanly(result, match: str, code: int = 1) -> None:
    """Exit ``code``, one ``featlab: error:`` line naming the problem, no exception escaping."""
    assert result.exit_code == code, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.output
    errors = [line for line in result.output.splitlines() if line.startswith("featlab: error:")]
    assert len(errors) == 1 and match in errors[0], result.output


# ------------------------------------------------------------------ unreadable and known-bad files


def _without_root_reads(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    """Run the CLI so that file permissions apply (root reads every file, whatever its mode)."""
    prefix = []
    if os.geteuid() == 0:
        setpriv = shutil.which("setpriv")
        if setpriv is None:
            pytest.skip("running as root without util-linux setpriv: cannot make a file unreadable to this process")
        prefix = [setpriv, "--bounding-set", "-dac_override,-dac_read_search"]
    return subprocess.run([*prefix, sys.executable, "-m", "featlab", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=300)


def test_unreadable_image_is_quarantined_by_check_extract_and_predict(synth_root, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(synth_root, data)
    secret = data / "train" / "fake" / "secret.jpg"
    shutil.copyfile(data / "train" / "fake" / sorted(os.listdir(data / "train" / "fake"))[0], secret)
    secret.chmod(0)
    work = tmp_path / "work"
    check = _without_root_reads(["data", "check", str(data)], tmp_path)
    assert check.returncode == 0 and "Traceback" not in check.stderr, check.stderr
    assert "secret.jpg" in check.stdout and "cannot read file" in check.stdout
    extract = _without_root_reads(["extract", "--data", str(data), *R18, "--workdir", str(work)], tmp_path)
    assert extract.returncode == 0 and "Traceback" not in extract.stderr, extract.stderr
    assert "skipped:" in extract.stdout and "secret.jpg: cannot read file: Permission denied" in extract.stdout
    fit = _without_root_reads(["fit-svm", "--pca", "4", "--C", "1", "--workdir", str(work), "--name", "m"], tmp_path)
    assert fit.returncode == 0, fit.stderr
    predict = _without_root_reads(["predict", "m", str(data / "train" / "fake"), "--workdir", str(work)], tmp_path)
    assert predict.returncode == 0 and "Traceback" not in predict.stderr, predict.stderr
    assert "skipped:" in predict.stdout and "secret.jpg" in predict.stdout


def test_predict_again_on_files_known_to_be_bad(fitted, tmp_path):
    folder = tmp_path / "bad"
    folder.mkdir()
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff nope")
    for attempt in range(2):  # the second time the file is already known to be undecodable
        result = run("predict", "svm", folder, "--workdir", fitted)
        assert "0 classified" in result.output and "1 skipped" in result.output, (attempt, result.output)
        fails_cleanly(result, "could be classified")  # nothing classified: exit 1
    single = run("predict", "svm", folder / "broken.jpg", "--workdir", fitted)
    assert "skipped:" in single.output and single.exit_code == 1


def test_extract_summary_does_not_count_failures_as_computed(synth_root, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(synth_root, data)
    for i in range(3):
        (data / "test" / "real" / f"broken{i}.jpg").write_bytes(b"\xff\xd8\xff" + bytes([i]) * 10)
    first = ok("extract", "--data", data, *R18, "--workdir", tmp_path / "w")
    usable = sum(1 for _ in synth_root.rglob("*.jpg"))
    assert f"computed {usable} " in first.output and "skipped 3" in first.output, first.output
    again = ok("extract", "--data", data, *R18, "--workdir", tmp_path / "w")
    assert "computed 0 " in again.output and f"already cached {usable}," in again.output and "skipped 3" in again.output


# ------------------------------------------------------------------ model folders that cannot lie


def _copy_model(fitted: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "copy"
    shutil.copytree(fitted / "models" / "svm", copy)
    return copy


def _edit_meta(folder: Path, edit) -> None:
    meta = json.loads((folder / "meta.json").read_text())
    edit(meta)
    (folder / "meta.json").write_text(json.dumps(meta))


def test_meta_json_not_json_or_missing_fields(fitted, tmp_path):
    copy = _copy_model(fitted, tmp_path)
    (copy / "meta.json").write_text("{not json")
    fails_cleanly(run("evaluate", copy, "--workdir", fitted), "is not valid JSON")
    copy = _copy_model(fitted, tmp_path / "b")
    _edit_meta(copy, lambda m: m.pop("sha256"))
    fails_cleanly(run("evaluate", copy, "--workdir", fitted), "lacks the field(s) sha256")
    copy = _copy_model(fitted, tmp_path / "c")
    _edit_meta(copy, lambda m: m.update(kind="cnn"))
    fails_cleanly(run("evaluate", copy, "--workdir", fitted), "")
    copy = _copy_model(fitted, tmp_path / "d")
    _edit_meta(copy, lambda m: m.update(kind="forest"))
    fails_cleanly(run("predict", copy, REAL_SAMPLE / "test" / "fake", "--workdir", fitted), "field 'kind' is 'forest'")


@pytest.mark.parametrize("field,value", [
    ("backbone", "resnet152"),
    ("seed", 7),
    ("best_params", {"clf__C": 100.0}),
    ("n_train", 99999),
    ("weights_info", {"source": "torchvision:IMAGENET1K_V1", "pretrained": True}),
])
def test_edited_meta_field_is_refused_naming_it(fitted, tmp_path, field, value):
    copy = _copy_model(fitted, tmp_path)
    _edit_meta(copy, lambda m: m.update({field: value}))
    fails_cleanly(run("evaluate", copy, "--workdir", fitted), f"field '{field}' differs from the copy sealed")


def test_artifact_outside_the_folder_is_refused(fitted, tmp_path):
    copy = _copy_model(fitted, tmp_path)
    other = tmp_path / "other"
    shutil.copytree(copy, other)
    _edit_meta(copy, lambda m: m.update(artifact="../other/model.skops"))
    fails_cleanly(run("evaluate", copy, "--workdir", fitted), "must name a file inside the folder")


def test_skops_model_loads_without_any_pickle(fitted, monkeypatch):
    import pickle

    import joblib

    from featlab.detectors.svm import load_svm

    def forbidden(*_args, **_kwargs):
        raise AssertionError("pickle used")

    monkeypatch.setattr(pickle, "load", forbidden)
    monkeypatch.setattr(pickle, "loads", forbidden)
    monkeypatch.setattr(joblib, "load", forbidden)
    model = load_svm(fitted / "models" / "svm")
    assert (fitted / "models" / "svm" / "model.skops").is_file()
    assert model.pipeline.named_steps["pca"].n_components_ == 8


def test_old_joblib_folder_needs_trust_pickle(fitted, tmp_path):
    import hashlib

    import joblib

    from featlab.detectors.svm import load_svm

    old = _copy_model(fitted, tmp_path)
    pipeline = load_svm(old).pipeline
    joblib.dump(pipeline, old / "model.joblib")
    (old / "model.skops").unlink()
    digest = hashlib.sha256((old / "model.joblib").read_bytes()).hexdigest()
    _edit_meta(old, lambda m: m.update(artifact="model.joblib", sha256=digest))
    fails_cleanly(run("evaluate", old, "--workdir", fitted, "--no-plots"), "is a pickle")
    trusted = ok("evaluate", old, "--workdir", fitted, "--no-plots", "--trust-pickle")
    assert "roc_auc" in trusted.output


def test_foreign_class_in_a_skops_file_is_refused(fitted, tmp_path):
    import hashlib

    import skops.io
    from sklearn.ensemble import RandomForestClassifier

    copy = _copy_model(fitted, tmp_path)
    (copy / "model.skops").write_bytes(skops.io.dumps({"pipeline": RandomForestClassifier(), "featlab_meta": "{}"}))
    digest = hashlib.sha256((copy / "model.skops").read_bytes()).hexdigest()
    _edit_meta(copy, lambda m: m.update(sha256=digest))
    fails_cleanly(run("evaluate", copy, "--workdir", fitted), "holds types featlab never writes")


# ------------------------------------------------------------------ work folder, settings, resume


def test_workdir_that_is_a_file_or_unwritable(synth_root, tmp_path):
    a_file = tmp_path / "file"
    a_file.write_text("x")
    fails_cleanly(run("extract", "--data", synth_root, *R18, "--workdir", a_file), "is a file, not a folder")
    fails_cleanly(run("fit-svm", "--workdir", a_file), "is a file, not a folder")
    fails_cleanly(run("extract", "--data", synth_root, *R18, "--workdir", "/proc/featlab-work"), "is not writable")


def test_bad_training_settings_and_resume_with_another_arch(synth_root, tmp_path):
    base = ["--data", synth_root, "--image-size", "32", "--workdir", tmp_path / "w", "--no-progress"]
    fails_cleanly(run("train-cnn", "--arch", "custom", "--lr=-1", *base), "lr must be positive")
    fails_cleanly(run("train-cnn", "--arch", "vgg", *base), "arch must be one of")
    from featlab.detectors.cnn import Augment, TrainConfig, train_cnn

    out = tmp_path / "run"
    config = TrainConfig(arch="custom", epochs=3, image_size=32, batch_size=16, augment=Augment(crop_scale=1.0))
    train_cnn(config, synth_root, out, progress=False, stop_after=1)
    fails_cleanly(run("train-cnn", "--arch", "resnet18", "--weights", "none", "--out", out, "--resume",
                      "--epochs", "3", *base), "run was started with other settings (arch: 'custom' -> 'resnet18'")


def test_interrupted_training_is_not_latest(synth_root, tmp_path):
    from featlab.detectors.cnn import Augment, TrainConfig, train_cnn

    work = tmp_path / "w"
    config = TrainConfig(arch="custom", epochs=2, image_size=32, batch_size=16, augment=Augment(crop_scale=1.0))
    train_cnn(config, synth_root, work / "models" / "done", progress=False)
    time.sleep(0.05)
    train_cnn(TrainConfig(**{**config.__dict__, "epochs": 3}), synth_root, work / "models" / "killed",
              progress=False, stop_after=1)
    assert (work / "models" / "killed" / "model.pt").is_file()
    result = ok("evaluate", "latest", "--workdir", work, "--no-plots")
    assert "model   done " in result.output


def test_two_concurrent_extracts_on_one_workdir_store_each_image_once(synth_root, tmp_path):
    import subprocess
    import sys

    from featlab.features.cache import EmbeddingCache

    work = tmp_path / "w"
    command = [sys.executable, "-m", "featlab", "extract", "--data", str(synth_root), *R18, "--workdir", str(work),
               "--batch-size", "4", "--shard-size", "8"]
    # small batches and shards: both processes commit many times while the other is running
    first, second = (subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
                     for _ in range(2))
    outputs = [p.communicate(timeout=300)[0] for p in (first, second)]
    assert first.returncode == 0 and second.returncode == 0, outputs
    cache = EmbeddingCache(next((work / "features").iterdir()))
    keys = [k for f in (cache.folder / "shards").glob("*.keys") for k in f.read_text().split()]
    assert len(keys) == len(set(keys)) == 56, "every image stored exactly once"
    assert len(list((cache.folder / "shards").glob("*.npy"))) == len(list((cache.folder / "shards").glob("*.keys")))
    again = ok("extract", "--data", synth_root, *R18, "--workdir", work)
    assert "computed 0 " in again.output


def test_written_files_follow_the_umask(fitted):
    mask = os.umask(0o022)
    os.umask(mask)
    expected = 0o666 & ~mask
    files = [*(fitted / "models" / "svm").iterdir(), *(fitted / "reports").glob("*.json"),
             *next((fitted / "features").iterdir()).glob("shards/*")]
    assert files
    for path in files:
        if path.is_file():
            assert stat.S_IMODE(path.stat().st_mode) == expected, path


def test_synth_refuses_a_folder_of_photos(tmp_path):
    photos = tmp_path / "photos"
    shutil.copytree(REAL_SAMPLE, photos)
    fails_cleanly(run("data", "synth", photos), "exists and is not empty")
    assert not any(photos.rglob("*SYNTHETIC*")) and "SYNTHETIC" not in (photos / "README.md").read_text()


def test_ctrl_c_during_extract_says_what_was_kept_and_resumes(tmp_path):
    from data_prep.synth import make_synthetic_dataset

    data = make_synthetic_dataset(tmp_path / "data", {"train": 150, "valid": 25, "test": 25}, size=64, seed=1)
    work = tmp_path / "w"
    args = [sys.executable, "-m", "featlab", "extract", "--data", str(data), "--workdir", str(work),
            "--backbone", "resnet50-opennsfw", "--engine", "torch", "--precision", "fp32", "--batch-size", "4",
            "--flip", "--shard-size", "8", "--no-progress"]
    # Ctrl-C as a terminal delivers it: the child must not inherit an ignored SIGINT from the test runner (a
    # process that starts with SIGINT ignored keeps ignoring it, and Python then installs no KeyboardInterrupt).
    process = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.time() + 120
    # Interrupt right after the first committed shard: mid-run by construction (8 of 400 images), not by a sleep
    # that a fast machine outruns.
    while time.time() < deadline and not list(work.glob("features/*/shards/*.keys")) and process.poll() is None:
        time.sleep(0.02)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr
    kept = sum(1 for keys in work.glob("features/*/shards/*.keys") for _ in keys.open())
    assert 8 <= kept < 400  # what was committed before the interrupt stays
    assert "Traceback" not in stderr and "featlab: interrupted" in stderr and "resume" in stderr
    again = subprocess.run(args, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr
    assert "images 400: computed" in again.stdout
