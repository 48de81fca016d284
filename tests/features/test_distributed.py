"""featlab extract --ray: Ray Data into the same cache, killed and resumed, equal to a local run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from data_prep.synth import make_synthetic_dataset
from featlab.features.cache import EmbeddingCache
from tests.conftest import R18, cli_ok


def _embeddings(work):
    cache = EmbeddingCache(next((work / "features").iterdir()))
    keys = [k for f in (cache.folder / "shards").glob("*.keys") for k in f.read_text().split()]
    index = cache.index()
    return cache.get(list(index.sha256)), keys, index


@pytest.mark.slow
def test_ray_extraction_killed_midway_resumes_and_equals_a_local_run(tmp_path):
    ray = pytest.importorskip("ray", reason="Ray is not installed (pip install 'featlab[ray]'; make setup installs it)")
    data = make_synthetic_dataset(tmp_path / "data", {"train": 60, "valid": 20, "test": 20}, size=64, seed=5)
    local, distributed = tmp_path / "local", tmp_path / "ray"
    cli_ok("extract", "--data", data, *R18, "--layers", "pool", "--workdir", local)
    command = [sys.executable, "-m", "featlab", "extract", "--data", str(data), *R18, "--layers", "pool",
               "--workdir", str(distributed), "--ray", "local", "--shard-size", "16", "--batch-size", "8"]
    # a new session: the kill takes the driver and the local Ray cluster it started
    job = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and job.poll() is None:
        shards = list((distributed / "features").glob("*/shards/*.keys"))
        if shards:
            break
        time.sleep(0.2)
    assert shards, "the Ray job committed no shard in time"
    os.killpg(job.pid, signal.SIGKILL)
    job.wait(timeout=60)
    subprocess.run(["ray", "stop", "--force"], capture_output=True, timeout=120, env={**os.environ,
                   "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", "")})
    committed = len(list((distributed / "features").glob("*/shards/*.keys")))
    rerun = cli_ok("extract", "--data", data, *R18, "--layers", "pool", "--workdir", distributed, "--ray", "local",
                   "--shard-size", "16", "--batch-size", "8")
    assert "already cached" in rerun.output
    ray.shutdown()
    X_local, keys_local, index_local = _embeddings(local)
    X_ray, keys_ray, index_ray = _embeddings(distributed)
    assert len(keys_ray) == len(set(keys_ray)) == 200, "no duplicate and no missing row"
    assert committed >= 1 and list(index_ray.sha256) == list(index_local.sha256)
    np.testing.assert_allclose(X_ray, X_local, atol=1e-4)


def test_ray_missing_says_how_to_install(monkeypatch, synth_root, tmp_path):
    import builtins

    real_import = builtins.__import__

    def no_ray(name, *args, **kwargs):
        if name == "ray" or name.startswith("ray."):
            raise ImportError("no ray")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_ray)
    from typer.testing import CliRunner

    from featlab.cli import app

    result = CliRunner().invoke(app, ["extract", "--data", str(synth_root), *R18, "--workdir", str(tmp_path / "w"),
                                      "--ray", "local"])
    assert result.exit_code == 1
    assert result.output.strip().splitlines()[-1] == (
        "featlab: error: --ray needs Ray Data: pip install 'featlab[ray]' (or pip install 'ray[data]')")


@pytest.mark.slow
def test_predict_and_evaluate_on_ray_equal_a_local_run(synth_root, tmp_path):
    ray = pytest.importorskip("ray", reason="Ray is not installed (pip install 'featlab[ray]'; make setup installs it)")
    import json

    import pandas as pd

    from tests.conftest import train_svm_and_cnn

    work = train_svm_and_cnn(tmp_path / "work", synth_root, "svm", "1")
    bad = tmp_path / "folder"
    bad.mkdir()
    for k, image in enumerate(sorted((synth_root / "test").glob("*/*.*"))[:6]):
        (bad / f"{k}{image.suffix}").write_bytes(image.read_bytes())
    (bad / "broken.jpg").write_bytes(b"not an image")
    try:
        for model in ("svm", "cnn"):
            tables = {}
            for where, extra in (("local", []), ("ray", ["--ray", "local"])):
                cli_ok("predict", model, bad, "--out", tmp_path / f"{model}-{where}.csv", "--workdir", work, *extra)
                tables[where] = pd.read_csv(tmp_path / f"{model}-{where}.csv")
                report = cli_ok("evaluate", model, "--no-plots", "--workdir", work, *extra).output
                path = next(line for line in report.splitlines() if line.startswith("report: "))[8:]
                tables[f"{where}-report"] = json.loads(open(path).read())
            local, remote = tables["local"], tables["ray"]
            assert list(remote.status) == list(local.status) and (local.status != "ok").sum() == 1
            np.testing.assert_allclose(remote.score, local.score, atol=1e-4)  # NaN where quarantined, in both
            assert remote.label.fillna("").tolist() == local.label.fillna("").tolist()
            ours, theirs = tables["ray-report"]["metrics"], tables["local-report"]["metrics"]
            assert ours["roc_auc"] == pytest.approx(theirs["roc_auc"], abs=1e-6)
            assert ours["confusion_matrix"] == theirs["confusion_matrix"]
        assert "Ray Data (local)" in tables["ray-report"]["costs"]["inference_note"]
    finally:
        ray.shutdown()
