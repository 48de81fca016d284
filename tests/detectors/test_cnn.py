"""CNN baselines: learning, exact resume, evaluate/predict/compare on tiny images (CPU)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from featlab.cli import app
from featlab.core.errors import FeatlabError
from featlab.detectors.cnn import Augment, CustomCNN, TrainConfig, train_cnn
from featlab.reports.report import compare_reports, load_reports

TINY = dict(arch="custom", epochs=3, batch_size=16, lr=3e-3, image_size=32, seed=0, patience=5,
            augment=Augment(crop_scale=1.0, color_jitter=0.0))


def test_custom_cnn_layers():
    model = CustomCNN()
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [c.out_channels for c in convs] == [32, 64, 128, 256]
    assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 1)


def test_loss_decreases_on_learnable_task(synth_root, tmp_path):
    folder = train_cnn(TrainConfig(**{**TINY, "epochs": 4}), synth_root, tmp_path / "m", progress=False)
    history = np.genfromtxt(folder / "history.csv", delimiter=",", names=True)
    assert history["train_loss"][-1] < history["train_loss"][0]
    assert (folder / "curves.png").stat().st_size > 1000
    meta = json.loads((folder / "meta.json").read_text())
    assert meta["kind"] == "cnn" and meta["best_valid_auc"] > 0.5


def test_resume_continues_from_saved_epoch_exactly(synth_root, tmp_path):
    full = train_cnn(TrainConfig(**TINY), synth_root, tmp_path / "full", progress=False)
    part = train_cnn(TrainConfig(**TINY), synth_root, tmp_path / "part", progress=False, stop_after=1)
    state = torch.load(part / "train" / "last.pt", weights_only=False)
    assert state["epoch"] == 0  # killed after the first epoch
    with pytest.raises(FeatlabError, match="already holds a training run"):
        train_cnn(TrainConfig(**TINY), synth_root, part, progress=False)
    train_cnn(TrainConfig(**TINY), synth_root, part, resume=True, progress=False)
    a = torch.load(full / "train" / "last.pt", weights_only=False)
    b = torch.load(part / "train" / "last.pt", weights_only=False)
    assert b["epoch"] == 2 and [h["epoch"] for h in b["history"]] == [1, 2, 3]
    for key in a["model"]:
        torch.testing.assert_close(a["model"][key], b["model"][key], rtol=1e-5, atol=1e-6)


def test_cli_train_evaluate_predict_compare(synth_root, tmp_path):
    runner = CliRunner()
    work = str(tmp_path / "w")
    base = ["--data", str(synth_root), "--workdir", work, "--image-size", "32", "--epochs", "2", "--batch-size", "16"]
    out = runner.invoke(app, ["train-cnn", "--arch", "custom", "--out", str(tmp_path / "w/models/cnn-custom"), *base])
    assert out.exit_code == 0, out.output
    assert "report (test)" in out.output
    r18 = runner.invoke(app, ["train-cnn", "--arch", "resnet18", "--weights", "none", "--freeze-epochs", "1",
                              "--out", str(tmp_path / "w/models/cnn-r18"), *base])
    assert r18.exit_code == 0, r18.output
    pred = runner.invoke(app, ["predict", "cnn-custom", str(synth_root / "test" / "real"), "--workdir", work])
    assert pred.exit_code == 0 and "6 classified" in pred.output
    ev = runner.invoke(app, ["evaluate", "cnn-r18", "--split", "valid", "--workdir", work, "--no-plots"])
    assert ev.exit_code == 0 and "split=valid" in ev.output
    cmp = runner.invoke(app, ["compare", "--workdir", work])
    assert cmp.exit_code == 0, cmp.output
    assert "| cnn-custom |" in cmp.output and "| cnn-r18 |" in cmp.output


def test_compare_rejects_mismatched_splits(synth_root, tmp_path):
    runner = CliRunner()
    work = tmp_path / "w"
    base = ["--data", str(synth_root), "--workdir", str(work), "--image-size", "32", "--epochs", "1"]
    assert runner.invoke(app, ["train-cnn", "--arch", "custom", "--out", str(work / "models/c"), *base]).exit_code == 0
    runner.invoke(app, ["evaluate", "c", "--split", "valid", "--workdir", str(work), "--no-plots"])
    reports = load_reports([work / "reports" / "c-test.json", work / "reports" / "c-valid.json"])
    with pytest.raises(FeatlabError, match="different evaluation data"):
        compare_reports(reports)
    cli = runner.invoke(app, ["compare", str(work / "reports/c-test.json"), str(work / "reports/c-valid.json")])
    assert cli.exit_code == 1 and "refusing to compare" in cli.output


def test_broken_training_image_is_left_out(synth_root, tmp_path):
    import shutil

    root = tmp_path / "data"
    shutil.copytree(synth_root, root)
    (root / "train" / "fake" / "broken.jpg").write_bytes(b"\xff\xd8\xff not a jpeg")
    folder = train_cnn(TrainConfig(**{**TINY, "epochs": 1}), root, tmp_path / "m", progress=False)
    meta = json.loads((folder / "meta.json").read_text())
    assert meta["n_train"] == 32  # 16 real + 16 fake, the broken file quarantined


def test_pretrained_recipe_learns_on_real_faces(tmp_path):
    """The default fine-tuning recipe (head-only epoch, per-tensor relative steps, warm-up, clipping)
    lowers the training loss of the real pretrained ResNet-50 on the shipped real faces."""
    from tests.conftest import REAL_SAMPLE

    config = TrainConfig(arch="resnet50-opennsfw", epochs=3, freeze_epochs=1, batch_size=20, lr=1e-3,
                         precision="auto", patience=5, seed=0)
    folder = train_cnn(config, REAL_SAMPLE, tmp_path / "m", progress=False)
    history = np.genfromtxt(folder / "history.csv", delimiter=",", names=True)
    assert len(history) == 3
    assert history["train_loss"][-1] < history["train_loss"][0] - 0.02, history["train_loss"]
    meta = json.loads((folder / "meta.json").read_text())
    assert meta["finished"] is True and meta["preprocessing"]["resize_mode"] == "none"


def test_depthwise_convolutions_train_in_float32_under_cpu_autocast():
    from featlab.detectors.cnn import fp32_depthwise_training

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(8, 8, 5, padding=2, groups=8, bias=False),  # depthwise
                                torch.nn.Conv2d(8, 4, 1), torch.nn.ReLU())
    reference = [m.__class__ for m in model]
    keys, x = list(model.state_dict()), torch.randn(2, 8, 12, 12)
    before = model(x).detach()
    assert fp32_depthwise_training(model) == 1 and fp32_depthwise_training(model) == 0  # once, only the depthwise
    assert model[0].__class__ is not reference[0] and isinstance(model[0], torch.nn.Conv2d)
    assert model[1].__class__ is reference[1] and list(model.state_dict()) == keys
    assert torch.equal(model(x), before)  # outside autocast: unchanged
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert model[0](x).dtype == torch.float32  # training: the depthwise conv (and its backward) in float32
        model[0].weight.requires_grad_(False)
        assert model[0](x).dtype == torch.bfloat16  # frozen, nothing to back-propagate: the bfloat16 forward
        model[0].weight.requires_grad_(True)
        model.eval()
        assert model[0](x).dtype == torch.bfloat16  # evaluation: the bfloat16 forward
    model.train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        model(x).sum().backward()
    grad = model[0].weight.grad.clone()
    model.zero_grad()
    model(x).sum().backward()  # float32 reference
    assert torch.allclose(grad, model[0].weight.grad, rtol=0.05, atol=0.05 * float(grad.abs().max()))
