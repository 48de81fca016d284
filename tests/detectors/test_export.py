"""featlab export: the whole detector as one ONNX graph, equal to featlab's scores, loaded back like a model."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

import featlab
from featlab.core.errors import FeatlabError
from tests.conftest import REAL_SAMPLE, cli_ok


@pytest.fixture(scope="module")
def models(fitted, synth_root):
    if not (fitted / "models" / "cnn" / "meta.json").is_file():
        cli_ok("train-cnn", "--arch", "custom", "--data", synth_root, "--image-size", "32", "--epochs", "1",
               "--out", fitted / "models" / "cnn", "--workdir", fitted, "--no-progress")
    return fitted


@pytest.mark.parametrize("family", ["svm", "cnn"])
def test_exported_graph_equals_featlab_and_loads_like_a_model(models, synth_root, tmp_path, family):
    work = models
    out = tmp_path / f"{family}-exported.onnx"
    printed = cli_ok("export", family, "--out", out, "--workdir", work).output
    assert f"exported {family}" in printed and out.stat().st_size > 0
    exported, original = featlab.load(out, work), featlab.load(family, work)
    assert (exported.kind, exported.threshold, exported.score_kind) == ("onnx", original.threshold, original.score_kind)
    x = torch.randint(0, 256, (5, 3, original.prep.crop, original.prep.crop), dtype=torch.uint8)
    assert np.abs(exported.score(x) - original.score(x)).max() <= 1e-4
    for name, model in (("folder", family), ("file", out)):
        cli_ok("predict", model, synth_root / "test", "--out", tmp_path / f"{family}-{name}.csv", "--workdir", work)
    by_folder, by_file = (pd.read_csv(tmp_path / f"{family}-{n}.csv").set_index("path") for n in ("folder", "file"))
    assert np.abs(by_folder.score - by_file.score.loc[by_folder.index]).max() <= 1e-4
    assert (by_folder.label == by_file.label.loc[by_folder.index]).all()
    cli_ok("evaluate", out, "--no-plots", "--workdir", work)
    report = json.loads((work / "reports" / f"{family}-exported-test.json").read_text())
    assert report["model"]["kind"] == "onnx" and report["model"]["exported_from"]["sha256"] == original.meta["sha256"]


def test_the_default_opennsfw_svm_exports_on_real_faces(tmp_path):
    work = tmp_path / "work"
    cli_ok("extract", "--data", REAL_SAMPLE, "--no-progress", "--workdir", work)
    cli_ok("fit-svm", "--pca", "32", "--C", "1", "--workdir", work, "--name", "real")
    cli_ok("export", "real", "--out", tmp_path / "real.onnx", "--workdir", work)
    original, exported = featlab.load("real", work), featlab.load(tmp_path / "real.onnx", work)
    from featlab.data.dataset import load_rgb

    faces = sorted(REAL_SAMPLE.glob("test/*/*"))[:6]
    x = torch.stack([original.prep.to_uint8(load_rgb(p)) for p in faces])
    assert np.abs(exported.score(x) - original.score(x)).max() <= 1e-4  # the shipped extraction path (onnxruntime)


def test_what_cannot_be_exported_or_loaded_is_one_line(models, tmp_path, synth_root):
    from typer.testing import CliRunner

    from featlab.cli import app

    work = models
    cli_ok("fit-oneclass", "--pca", "4", "--workdir", work, "--name", "oc", "--force")
    refused = CliRunner().invoke(app, ["export", "oc", "--out", str(tmp_path / "oc.onnx"), "--workdir", str(work)])
    assert refused.exit_code == 1 and "has no differentiable form" in refused.output
    assert not (tmp_path / "oc.onnx").exists()
    (tmp_path / "junk.onnx").write_bytes(b"\x08\x07 not a graph")
    with pytest.raises(FeatlabError, match="is not an ONNX model"):
        featlab.load(tmp_path / "junk.onnx", work)
    import onnx

    foreign = onnx.helper.make_model(onnx.helper.make_graph(
        [onnx.helper.make_node("Identity", ["pixels"], ["score"])], "foreign",
        [onnx.helper.make_tensor_value_info("pixels", onnx.TensorProto.UINT8, [None, 3, 8, 8])],
        [onnx.helper.make_tensor_value_info("score", onnx.TensorProto.UINT8, [None, 3, 8, 8])]),
        opset_imports=[onnx.helper.make_opsetid("", 17)])
    (tmp_path / "foreign.onnx").write_bytes(foreign.SerializeToString())
    with pytest.raises(FeatlabError, match="is not a featlab export"):
        featlab.load(tmp_path / "foreign.onnx", work)


def test_int8_export_states_its_cost_and_still_scores(tmp_path):
    work = tmp_path / "work"
    cli_ok("extract", "--data", REAL_SAMPLE, "--no-progress", "--workdir", work)
    cli_ok("fit-svm", "--pca", "32", "--C", "1", "--workdir", work, "--name", "real")
    printed = cli_ok("export", "real", "--out", tmp_path / "int8.onnx", "--quantize", "int8", "--data", REAL_SAMPLE,
                     "--calibration-images", "32", "--workdir", work).output
    assert "int8 cost on" in printed and "vs fp32" in printed
    import onnx

    exported = featlab.load(tmp_path / "int8.onnx", work)
    graph = onnx.load(str(tmp_path / "int8.onnx"))
    cost = json.loads(next(p.value for p in graph.metadata_props if p.key == "featlab"))["quantization"]
    assert cost["calibration_images"] == 32 and cost["valid_roc_auc_int8"] is not None
    assert "cpu_features" in cost["measured_on"]  # its speed and cost depend on the CPU's int8 instructions
    ops = {node.op_type for node in graph.graph.node}
    assert "QuantizeLinear" in ops and "DequantizeLinear" in ops  # really quantised
    from onnx import numpy_helper

    weights = [numpy_helper.to_array(t) for t in graph.graph.initializer if t.data_type == onnx.TensorProto.INT8]
    # 7-bit weights: full-range ones (+-127) saturate the u8 x s8 kernels of CPUs without VNNI
    assert weights and max(int(np.abs(w).max()) for w in weights) <= 64
    assert "int8 - fp32" in printed
    original = featlab.load("real", work)
    from featlab.data.dataset import load_rgb

    faces = sorted(REAL_SAMPLE.glob("valid/*/*"))[:8]
    x = torch.stack([original.prep.to_uint8(load_rgb(p)) for p in faces])
    assert np.corrcoef(exported.score(x), original.score(x))[0, 1] > 0.9  # close to, not equal to, fp32
