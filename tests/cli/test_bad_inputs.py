"""Bad inputs and attacks of the "security first" issue: one test per row.

Each asserts the exit code, a single ``featlab: error:`` line (no traceback) where the command must fail,
and, where something was computed before, that the work folder is unchanged (hashes before and after).
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import pickle
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from featlab.cli import _bare_ray_means_local
from tests.cli.test_hardening import _without_root_reads, fails_cleanly, run
from tests.conftest import R18, REAL_SAMPLE
from tests.conftest import cli_ok as ok


@pytest.fixture(scope="module")
def trained(synth_root, tmp_path_factory):
    """A work folder with features, an SVM ('svm') and a tiny CNN ('cnn'), and their test reports."""
    work = tmp_path_factory.mktemp("work")
    ok("extract", "--data", synth_root, *R18, "--workdir", work)
    ok("fit-svm", "--pca", "8", "--C", "1", "--workdir", work, "--name", "svm")
    ok("train-cnn", "--arch", "custom", "--data", synth_root, "--image-size", "32", "--epochs", "1",
       "--out", work / "models" / "cnn", "--workdir", work, "--no-progress")
    return work


def tree_digest(root: Path) -> dict[str, str]:
    """sha256 of every file under ``root`` but the lock file and the hash memo (bookkeeping: rebuilt at will)."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*"))
            if p.is_file() and p.name != ".lock" and "hash-memo" not in p.name}


def copy_work(trained: Path, tmp_path: Path) -> Path:
    work = tmp_path / "work"
    shutil.copytree(trained, work)
    return work


def _refit_meta(folder: Path) -> None:
    meta = json.loads((folder / "meta.json").read_text())
    artifact = folder / meta["artifact"]
    meta.update(sha256=hashlib.sha256(artifact.read_bytes()).hexdigest(), bytes=artifact.stat().st_size)
    (folder / "meta.json").write_text(json.dumps(meta))


class _Payload:
    """Pickles to a call of ``os.system``: what a hostile checkpoint would carry."""

    def __init__(self, sentinel: Path) -> None:
        self.sentinel = sentinel

    def __reduce__(self):
        return os.system, (f"touch {self.sentinel}",)


# ------------------------------------------------------------------ other loaders: torch files refuse pickles


def test_a_weights_file_with_a_pickled_payload_is_refused_and_never_runs(synth_root, tmp_path):
    sentinel = tmp_path / "pwned"
    weights = tmp_path / "evil.pth"
    import torch

    torch.save({"conv1.weight": torch.zeros(1), "x": _Payload(sentinel)}, weights)
    fails_cleanly(run("extract", "--data", synth_root, "--backbone", "resnet18", "--weights", weights,
                      "--workdir", tmp_path / "w", "--no-progress"), "featlab refuses pickles")
    assert not sentinel.exists()
    result = run("extract", "--data", synth_root, "--backbone", "resnet18", "--weights", weights,
                 "--workdir", tmp_path / "w", "--no-progress")
    assert "weights_only=False" not in result.output  # torch's advice to turn the check off is not repeated


def test_a_cnn_folder_with_a_pickled_payload_is_refused_and_never_runs(trained, tmp_path):
    sentinel = tmp_path / "pwned"
    folder = tmp_path / "cnn"
    shutil.copytree(trained / "models" / "cnn", folder)
    artifact = folder / json.loads((folder / "meta.json").read_text())["artifact"]
    import torch

    torch.save({"state_dict": {}, "featlab_meta": _Payload(sentinel)}, artifact)  # torch's own (zip) format
    _refit_meta(folder)
    fails_cleanly(run("predict", folder, REAL_SAMPLE / "test" / "real", "--workdir", trained), "refuses pickles")
    artifact.write_bytes(pickle.dumps(_Payload(sentinel)))  # a bare pickle
    _refit_meta(folder)
    fails_cleanly(run("predict", folder, REAL_SAMPLE / "test" / "real", "--workdir", trained), "not a torch file")
    assert not sentinel.exists()


# ------------------------------------------------------------------ high: silent loss and silent lies


def test_fit_svm_refuses_an_existing_name_unless_forced(trained, tmp_path):
    work = copy_work(trained, tmp_path)
    before = tree_digest(work)
    fails_cleanly(run("fit-svm", "--pca", "8", "--C", "1", "--workdir", work, "--name", "svm"), "already exists")
    assert tree_digest(work) == before
    replaced = ok("fit-svm", "--pca", "4", "--C", "1", "--workdir", work, "--name", "svm", "--force")
    assert "model:" in replaced.output
    assert json.loads((work / "models" / "svm" / "meta.json").read_text())["pca"]["components"] == 4


def test_a_full_disk_during_fit_svm_leaves_no_half_written_folder(trained, tmp_path, monkeypatch):
    import featlab.detectors.svm

    work = copy_work(trained, tmp_path)
    before = tree_digest(work)

    def full(*_args, **_kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(featlab.detectors.svm, "dumps_model", full)
    fails_cleanly(run("fit-svm", "--pca", "8", "--C", "1", "--workdir", work, "--name", "new"), "No space left")
    assert not (work / "models" / "new").exists()
    assert not [p for p in (work / "models").iterdir() if p.name.startswith(".")]  # no staging folder left
    assert tree_digest(work) == before


def _shards(work: Path) -> list[Path]:
    return sorted((work / "features").glob("*/shards/*.keys"))


@pytest.mark.parametrize("damage", ["truncated array", "a key line lost"])
def test_a_damaged_shard_is_quarantined_and_re_extracted(trained, synth_root, tmp_path, damage):
    work = copy_work(trained, tmp_path)
    keys = _shards(work)[0]
    n = len(keys.read_text().split())
    if damage == "truncated array":
        array = keys.with_suffix(".npy")
        array.write_bytes(array.read_bytes()[:-1000])
    else:
        keys.write_text("\n".join(keys.read_text().split()[1:]) + "\n")
    again = ok("extract", "--data", synth_root, *R18, "--workdir", work)
    assert f"computed {n}" in again.output, again.output  # the shard's images, and only them, extracted again
    assert (keys.parent / "damaged" / keys.name).exists()
    assert "is damaged" in again.output
    fit = ok("fit-svm", "--pca", "8", "--C", "1", "--workdir", work, "--name", "after-repair")
    assert "model:" in fit.output


def test_evaluate_in_a_fresh_workdir_extracts_what_the_svm_needs(trained, synth_root, tmp_path):
    fresh = tmp_path / "fresh"
    result = ok("evaluate", trained / "models" / "svm", "--data", synth_root, "--workdir", fresh, "--no-plots")
    assert "roc_auc" in result.output
    assert list((fresh / "features").glob("*/shards/*.keys"))


# ------------------------------------------------------------------ every error is one line


@pytest.mark.parametrize("command", ["extract", "fit-svm", "compare", "predict --out"])
def test_a_full_disk_is_one_line_and_loses_nothing(trained, synth_root, tmp_path, monkeypatch, command):
    import featlab.core.fileio

    work = copy_work(trained, tmp_path)
    real = featlab.core.fileio.atomic_write

    def full(path, write, mode="wb"):
        if "hash-memo" in str(path):
            return real(path, write, mode)
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    before = tree_digest(work)
    monkeypatch.setattr(featlab.core.fileio, "atomic_write", full)
    args = {"extract": ["extract", "--data", REAL_SAMPLE, *R18, "--workdir", work],
            "fit-svm": ["fit-svm", "--pca", "8", "--C", "1", "--workdir", work, "--name", "other"],
            "compare": ["compare", "--workdir", work],
            "predict --out": ["predict", work / "models" / "svm", synth_root / "test", "--workdir", work,
                              "--out", tmp_path / "out.csv"]}[command]
    fails_cleanly(run(*args), "No space left on device")
    after = tree_digest(work)
    assert {k: v for k, v in after.items() if k in before} == before  # nothing computed before was changed
    assert not (tmp_path / "out.csv").exists()


@pytest.mark.parametrize("option,value", [("--C", "nan"), ("--C", "inf"), ("--gamma", "nan"), ("--gamma", "-inf"),
                                          ("--pca", "nan")])
def test_non_finite_numbers_are_refused(trained, option, value):
    fails_cleanly(run("fit-svm", option, value, "--workdir", trained), "finite" if option != "--pca" else "pca")


@pytest.mark.parametrize("device", ["tpu", "meta", "mps", "cuda:x"])
def test_unknown_devices_are_refused(synth_root, tmp_path, device):
    fails_cleanly(run("extract", "--data", synth_root, *R18, "--device", device, "--workdir", tmp_path),
                  "is not supported")


def test_a_garbage_hash_memo_is_rebuilt_and_said(trained, synth_root, tmp_path):
    work = copy_work(trained, tmp_path)
    (work / "features" / "hash-memo.sqlite").write_bytes(b"this is not a database" * 100)
    result = ok("extract", "--data", synth_root, *R18, "--workdir", work)
    assert "computed 0" in result.output
    assert "rebuilt it" in result.output


def test_a_garbage_cache_meta_is_one_line(trained, synth_root, tmp_path):
    work = copy_work(trained, tmp_path)
    meta = next((work / "features").glob("*/meta.json"))
    meta.write_text("{not json")
    before = tree_digest(work)
    fails_cleanly(run("fit-svm", "--pca", "8", "--workdir", work, "--name", "x"), "is not readable JSON")
    fails_cleanly(run("extract", "--data", synth_root, *R18, "--workdir", work), "is not readable JSON")
    assert tree_digest(work) == before


def test_a_crafted_deeply_nested_meta_json_is_one_line(trained, tmp_path):
    folder = tmp_path / "svm"
    shutil.copytree(trained / "models" / "svm", folder)
    (folder / "meta.json").write_text("[" * 100_000 + "]" * 100_000)
    fails_cleanly(run("predict", folder, REAL_SAMPLE / "test" / "real", "--workdir", trained), "nested too deeply")


def test_ray_auto_without_a_cluster_names_what_it_tried(synth_root, tmp_path, monkeypatch):
    pytest.importorskip("ray")
    import featlab.features.distributed

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setattr(featlab.features.distributed, "running_cluster_address", lambda: None)
    fails_cleanly(run("extract", "--data", synth_root, *R18, "--ray", "auto", "--workdir", tmp_path),
                  "no running Ray cluster found")
    port = _free_port()
    fails_cleanly(run("extract", "--data", synth_root, *R18, "--ray", f"127.0.0.1:{port}", "--workdir", tmp_path),
                  f"cannot reach a Ray cluster at 127.0.0.1:{port}")
    fails_cleanly(run("extract", "--data", synth_root, *R18, "--ray", "head:port", "--workdir", tmp_path),
                  "expected local, auto or a cluster address")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.slow
def test_ray_auto_and_an_address_join_a_real_head_node_on_loopback(synth_root, tmp_path):
    pytest.importorskip("ray")
    ray_cli = Path(sys.executable).with_name("ray")
    if not ray_cli.exists():
        pytest.skip("the ray command is not installed beside this Python")
    port = _free_port()
    # token auth is Ray's business, not what this test checks (which address is joined): off for head and driver
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled"}
    env.pop("RAY_ADDRESS", None)
    started = subprocess.run([str(ray_cli), "start", "--head", "--node-ip-address", "127.0.0.1", "--port", str(port),
                              "--num-cpus", "2", "--include-dashboard", "false", "--disable-usage-stats"],
                             capture_output=True, text=True, timeout=180, env=env)
    try:
        assert started.returncode == 0, started.stdout + started.stderr
        for address in (f"127.0.0.1:{port}", "auto"):
            work = tmp_path / address.replace(":", "-")
            result = subprocess.run([sys.executable, "-m", "featlab", "extract", "--data", str(synth_root), *R18,
                                     "--ray", address, "--workdir", str(work)],
                                    capture_output=True, text=True, timeout=300, env=env)
            assert result.returncode == 0, result.stdout + result.stderr
            assert "Traceback" not in result.stderr
            assert "computed 56" in result.stdout, result.stdout
    finally:
        subprocess.run([str(ray_cli), "stop", "--force"], capture_output=True, timeout=120, env=env)


def test_a_read_only_workdir_does_not_block_commands_that_only_read(trained, tmp_path):
    work = copy_work(trained, tmp_path)
    for path in [work, *work.rglob("*")]:
        path.chmod(path.stat().st_mode & ~0o222)
    try:
        predicted = _without_root_reads(["predict", str(work / "models" / "cnn"), str(REAL_SAMPLE / "test" / "real"),
                                         "--workdir", str(work)], tmp_path)
        assert predicted.returncode == 0, predicted.stdout + predicted.stderr
        assert "15 classified" in predicted.stdout
        compared = _without_root_reads(["compare", "--workdir", str(work), "--out", str(tmp_path / "cmp")], tmp_path)
        assert compared.returncode == 0, compared.stdout + compared.stderr
        assert (tmp_path / "cmp" / "comparison.html").is_file()
        refused = _without_root_reads(["fit-svm", "--workdir", str(work), "--name", "x"], tmp_path)
        assert refused.returncode == 1 and "is not writable" in refused.stderr
    finally:
        for path in [work, *work.rglob("*")]:
            path.chmod(path.stat().st_mode | 0o200)


def _strict(text: str):
    def refuse(name):
        raise ValueError(f"non-standard JSON constant {name}")

    return json.loads(text, parse_constant=refuse)


def test_every_json_file_featlab_writes_is_strict(trained):
    written = [p for p in trained.rglob("*.json")]
    assert written
    for path in written:
        _strict(path.read_text())
    # an undefined figure (the selection score of a one-candidate grid) is null, and the report says why
    meta = _strict((trained / "models" / "svm" / "meta.json").read_text())
    assert meta["selection_score_balanced_accuracy"] is None  # --C 1: one candidate, nothing was searched
    report = _strict((trained / "reports" / "svm-test.json").read_text())
    assert report["model"]["params"]["selection_score_balanced_accuracy"] is None
    assert "not defined on this data" in report["nulls"]


# ------------------------------------------------------------------ smaller things users hit


def test_a_bare_ray_means_a_local_cluster():
    assert _bare_ray_means_local(["extract", "--ray", "--workdir", "W"]) == ["extract", "--ray", "local", "--workdir", "W"]
    assert _bare_ray_means_local(["extract", "--ray"]) == ["extract", "--ray", "local"]
    assert _bare_ray_means_local(["predict", "--ray", "auto", "m", "t"]) == ["predict", "--ray", "auto", "m", "t"]
    assert _bare_ray_means_local(["x", "--ray", "10.0.0.1:6379"]) == ["x", "--ray", "10.0.0.1:6379"]
    help_text = run("extract", "--help").output
    assert "featlab[ray]" in help_text


def test_fit_svm_says_its_parameters_in_words(trained, tmp_path):
    work = copy_work(trained, tmp_path)
    single = ok("fit-svm", "--pca", "8", "--C", "1", "--workdir", work, "--name", "one").output
    assert "C=1, gamma=scale" in single and "nan" not in single and "clf__" not in single
    grid = ok("fit-svm", "--pca", "8", "--C", "0.1,1", "--workdir", work, "--name", "two").output
    assert "(balanced accuracy 0." in grid or "(balanced accuracy 1." in grid


def test_predict_exits_1_when_nothing_could_be_classified(trained, tmp_path):
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8 not really a jpeg")
    result = run("predict", trained / "models" / "svm", broken, "--workdir", trained)
    fails_cleanly(result, "could be classified")
    assert "0 classified (0 fake), 1 skipped" in result.output


def test_a_folder_predict_lists_what_it_skipped(trained, tmp_path):
    folder = tmp_path / "mixed"
    folder.mkdir()
    shutil.copy(next((REAL_SAMPLE / "test" / "real").glob("*.jpg")), folder / "face.jpg")
    (folder / "photo.heic").write_bytes(b"\x00\x00\x00\x18ftypheic not decodable here")
    (folder / "notes.txt").write_text("hello")
    os.mkfifo(folder / "pipe")
    result = ok("predict", trained / "models" / "cnn", folder, "--workdir", trained)
    assert "1 classified" in result.output and "3 skipped" in result.output
    assert "photo.heic: not an image type" in result.output
    assert "pipe: not a regular file (a FIFO)" in result.output
    assert "notes.txt" in result.output


def test_train_cnn_without_progress_still_prints_each_epoch(synth_root, tmp_path):
    result = ok("train-cnn", "--arch", "custom", "--data", synth_root, "--image-size", "32", "--epochs", "2",
                "--out", tmp_path / "cnn", "--workdir", tmp_path / "w", "--no-progress", "--patience", "5")
    assert "epoch 1: train loss" in result.output and "epoch 2: train loss" in result.output


def test_train_cnn_defaults_to_an_arch_that_works_offline():
    from featlab.features.backbones import (
        BACKBONES,
        OFFLINE_DEFAULT,
        ONLINE_DEFAULT,
        resolve_auto,
        torchvision_cache_file,
    )

    help_text = run("train-cnn", "--help").output
    assert "auto" in help_text
    name, reason = resolve_auto("auto")
    cached = torchvision_cache_file(BACKBONES[ONLINE_DEFAULT])
    assert name == (ONLINE_DEFAULT if cached is not None and cached.is_file() else OFFLINE_DEFAULT) and reason


def test_a_typo_fails_before_torch_is_imported(tmp_path):
    probe = ("import sys\nfrom typer.testing import CliRunner\nfrom featlab.cli import app\n"
             "r = CliRunner().invoke(app, sys.argv[1:])\n"
             "print('exit', r.exit_code, 'torch' in sys.modules)\n")
    for args in (["extract", "--data", "/nonexistent"], ["train-cnn", "--data", "/nonexistent"],
                 ["fit-svm", "--C", "nan", "--workdir", str(tmp_path)],
                 ["extract", "--data", str(tmp_path), "--device", "tpu"]):
        out = subprocess.run([sys.executable, "-c", probe, *args], capture_output=True, text=True, timeout=120).stdout
        assert out.strip().endswith("exit 1 False"), (args, out)
