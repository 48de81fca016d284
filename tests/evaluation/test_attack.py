"""Adversarial evaluation and training: the differentiable SVM copy, budgets, flips, resume, the CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from featlab.core.errors import FeatlabError
from featlab.data.dataset import load_rgb, scan_dataset
from featlab.detectors.adversarial import BinaryLogits, attack_batch, eps_levels, parse_eps
from featlab.detectors.classical import build_pipeline
from featlab.detectors.cnn import TrainConfig, train_cnn
from featlab.detectors.detector import TorchPipeline, load_detector
from featlab.features.runtime import PixelDetector
from tests.conftest import R18, cli_ok


@pytest.mark.parametrize("options", [
    {"kernel": "rbf"}, {"kernel": "linear"}, {"solver": "linear"}, {"solver": "nystroem", "nystroem_components": 50},
    {"kernel": "rbf", "probability": True}, {"kernel": "rbf", "pca": None},
])
def test_differentiable_copy_matches_scikit_learn(options):
    rng = np.random.default_rng(0)
    X = np.vstack([rng.normal(0, 1, (80, 30)), rng.normal(0.6, 1.3, (80, 30))])
    y = np.repeat([0, 1], 80)
    pipeline = build_pipeline(**{"pca": 10, **options}).fit(X, y)
    test = rng.normal(0.3, 1.2, (50, 30))
    expected = pipeline.predict_proba(test)[:, 1] if options.get("probability") else pipeline.decision_function(test)
    got = TorchPipeline(pipeline)(torch.as_tensor(test, dtype=torch.float32)).detach().numpy()
    np.testing.assert_allclose(got, expected, atol=1e-4)


def test_eps_parsing_and_levels():
    assert parse_eps("0, 1/255,4/255, 0.5") == [0.0, 1 / 255, 4 / 255, 0.5]
    assert [eps_levels(e) for e in (0, 1 / 255, 2.5 / 255, 8 / 255)] == [0, 1, 2, 8]
    with pytest.raises(FeatlabError, match="4/0"):
        parse_eps("4/0")


def _tiny_classifier():
    """A fixed linear 'detector' on 8x8 images: the score is the mean brightness minus 128."""
    network = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 1))
    with torch.no_grad():
        network[1].weight.fill_(1 / (3 * 64))
        network[1].bias.fill_(-128.0)
    return BinaryLogits(PixelDetector(type("P", (), {"normalize": staticmethod(lambda x: x)})(), [network])).eval()


def test_pgd_with_eps_zero_changes_nothing_and_budgets_hold_after_rounding():
    model = _tiny_classifier()
    images = torch.randint(0, 256, (6, 3, 8, 8), dtype=torch.uint8)
    labels = torch.tensor([0, 1, 0, 1, 0, 1])
    assert torch.equal(attack_batch(model, images, labels, 0.0), images)
    for eps in (1 / 255, 2.5 / 255, 8 / 255):
        for attack in ("pgd", "fgsm"):
            adv = attack_batch(model, images, labels, eps, attack, steps=4, restarts=2)
            assert adv.dtype == torch.uint8
            assert int((adv.int() - images.int()).abs().max()) <= eps_levels(eps)


def test_a_large_enough_budget_flips_a_known_image_and_a_small_one_does_not():
    model = _tiny_classifier()
    fake = torch.full((1, 3, 8, 8), 140, dtype=torch.uint8)  # score +12: called fake
    label = torch.tensor([1])
    assert model(fake.float() / 255)[0, 1] > 0
    small = attack_batch(model, fake, label, 4 / 255, "pgd", steps=5)
    assert model(small.float() / 255)[0, 1] > 0  # 4 levels cannot undo a 12-level margin
    large = attack_batch(model, fake, label, 16 / 255, "pgd", steps=5)
    assert model(large.float() / 255)[0, 1] < 0  # 16 levels can
    assert int((large.int() - fake.int()).abs().max()) <= 16


def test_adversarial_training_resumes_exactly(synth_root, tmp_path):
    config = TrainConfig(arch="custom", epochs=2, batch_size=8, image_size=32, adversarial="pgd", adv_eps=8 / 255,
                         adv_steps=2, device="cpu", seed=3)
    whole = train_cnn(config, synth_root, tmp_path / "whole", progress=False)
    part = train_cnn(config, synth_root, tmp_path / "part", progress=False, stop_after=1)
    train_cnn(config, synth_root, part, resume=True, progress=False)
    a = torch.load(whole / "train" / "last.pt", weights_only=True)["model"]
    b = torch.load(part / "train" / "last.pt", weights_only=True)["model"]
    for key in a:
        assert torch.equal(a[key], b[key]), key
    meta = json.loads((whole / "meta.json").read_text())
    assert meta["config"]["adversarial"] == "pgd" and meta["config"]["adv_steps"] == 2


def test_attack_cli_reports_budgets_png_jpeg_and_the_svm_copy_agrees_with_the_detector(synth_root, tmp_path):
    work = tmp_path / "work"
    cli_ok("extract", "--data", synth_root, *R18, "--workdir", work)
    cli_ok("fit-svm", "--pca", "8", "--C", "1", "--workdir", work, "--name", "svm")
    cli_ok("train-cnn", "--arch", "custom", "--data", synth_root, "--image-size", "32", "--epochs", "1", "--out",
           work / "models" / "cnn", "--workdir", work, "--no-progress")
    svm = load_detector(work / "models" / "svm")
    rows = scan_dataset(synth_root)
    images = torch.stack([svm.prep.to_uint8(load_rgb(p)) for p in rows.path[:6]])
    with torch.no_grad():
        copy = svm.differentiable()(images.float()).double().numpy()
    np.testing.assert_allclose(copy, svm.score(images), atol=1e-4)  # fp32 torch extraction on both paths
    result = cli_ok("attack", work / "models" / "svm", work / "models" / "cnn", "--data", synth_root, "--eps",
                    "0,2/255,16/255", "--steps", "3", "--n-images", "8", "--workdir", work)
    assert "transfer" in result.output  # the two models see different input sizes: said, not faked
    lines = [line for line in result.output.splitlines() if "ROC-AUC" in line or line.startswith("transfer")]
    assert lines and all("PGD L-inf" in line and "3 steps" in line for line in lines), result.output
    report = json.loads((work / "reports" / "attack" / "attack.json").read_text())
    assert report["n_images"] == 8 and report["settings"]["steps"] == 3
    own = [r for r in report["rows"] if r["scored_by"] == r["model"]]
    assert len(own) == 2 * 3 * 3  # models x budgets x (memory, PNG, JPEG)
    for r in own:
        assert r["linf_levels"] <= r["eps_levels"]
        if r["eps_levels"] == 0 and r["stage"] != "after JPEG q90":
            assert r["success_rate"] in (0.0, None)  # null (strict JSON) where no fake was caught to begin with
    memory = {(r["model"], r["eps_levels"]): r for r in own if r["stage"] == "in memory (uint8)"}
    png = {(r["model"], r["eps_levels"]): r for r in own if r["stage"] == "after PNG"}
    assert all(memory[k]["roc_auc"] == png[k]["roc_auc"] for k in memory)  # PNG is lossless
    assert memory[("svm", 16)]["roc_auc"] < memory[("svm", 0)]["roc_auc"]
    assert (work / "reports" / "attack" / "attack.html").read_text().count("<img") == 2
