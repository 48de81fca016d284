"""The CUDA branch: its choices are checked here without a GPU; where one exists, its numbers too."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from featlab.cli import app
from featlab.core.errors import FeatlabError
from featlab.features.distributed import _actor_plan
from featlab.features.runtime import default_workers, resolve_device, resolve_precision
from tests.conftest import R18

has_cuda = torch.cuda.is_available()


def test_asking_for_cuda_without_a_gpu_is_one_clear_line(synth_root, tmp_path):
    if has_cuda:
        pytest.skip("this machine has CUDA")
    result = CliRunner().invoke(app, ["extract", "--data", str(synth_root), *R18, "--device", "cuda",
                                      "--workdir", str(tmp_path / "w")])
    assert result.exit_code == 1
    assert result.output.strip().splitlines()[-1] == "featlab: error: device cuda: CUDA is not available on this machine"


@pytest.mark.parametrize("bf16", [True, False])
def test_with_a_gpu_auto_picks_cuda_a_half_precision_and_decoding_workers(monkeypatch, bf16):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: bf16)
    device = resolve_device("auto")
    assert device.type == "cuda"
    assert resolve_precision("auto", device) == ("bf16" if bf16 else "fp16")
    assert resolve_precision("fp32", device) == "fp32"
    assert default_workers(device) >= 1  # decoding leaves the process: the GPU waits for nothing
    with pytest.raises(FeatlabError, match="fp16 is for CUDA"):
        resolve_precision("fp16", torch.device("cpu"))


@pytest.mark.parametrize("native", [True, False])
def test_cpu_precision_auto_picks_bf16_only_where_it_is_native_and_asking_for_emulated_bf16_warns(
        monkeypatch, caplog, native):
    import featlab.features.runtime as runtime

    monkeypatch.setattr(runtime, "cpu_supports_bf16", lambda: native)
    cpu = torch.device("cpu")
    assert resolve_precision("auto", cpu) == ("bf16" if native else "fp32")
    with caplog.at_level("WARNING", logger="featlab.features.runtime"):
        assert resolve_precision("bf16", cpu) == "bf16"  # asked for: kept, but said to be slow where emulated
    assert ("emulated" in caplog.text) is (not native)


class _Cluster:
    def __init__(self, resources: dict) -> None:
        self.resources = resources

    def cluster_resources(self) -> dict:
        return self.resources


def test_ray_runs_one_actor_per_gpu_and_one_per_two_cores_otherwise():
    assert _actor_plan(_Cluster({"GPU": 2, "CPU": 16}), want_cuda=True) == ("cuda", 2, 1)
    assert _actor_plan(_Cluster({"GPU": 2, "CPU": 16}), want_cuda=False) == ("cpu", 8, 1)
    assert _actor_plan(_Cluster({"CPU": 16}), want_cuda=True) == ("cpu", 8, 1)
    assert _actor_plan(_Cluster({"CPU": 2}), want_cuda=False) == ("cpu", 1, 1)


@pytest.mark.skipif(not has_cuda, reason="no CUDA device here: the GPU numbers are checked where one exists")
def test_cuda_extraction_equals_the_cpu_within_precision(synth_root, tmp_path):
    from featlab.features.cache import EmbeddingCache
    from tests.conftest import cli_ok

    runs = {}
    for device, precision in (("cpu", "fp32"), ("cuda", "fp32"), ("cuda", "bf16")):
        work = tmp_path / f"{device}-{precision}"
        cli_ok("extract", "--data", synth_root, "--backbone", "resnet18", "--weights", "none", "--no-progress",
               "--layers", "pool", "--device", device, "--precision", precision, "--workdir", work)
        cache = EmbeddingCache(next((work / "features").iterdir()))
        runs[device, precision] = cache.get(list(cache.index().sha256))
    reference = runs["cpu", "fp32"]
    np.testing.assert_allclose(runs["cuda", "fp32"], reference, rtol=1e-3, atol=1e-3)
    assert np.corrcoef(runs["cuda", "bf16"].ravel(), reference.ravel())[0, 1] > 0.99
