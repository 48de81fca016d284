"""Without labels: clustering scores, clustering of separable groups, the autoencoder, one-class detectors."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from featlab.analysis.clustering import cluster_scores, purity, run_clustering
from featlab.detectors.autoencoder import AETrainConfig, load_ae, train_ae
from featlab.detectors.oneclass import ONECLASS, build_oneclass
from tests.conftest import R18, cli_ok


def test_cluster_scores_match_hand_computed_values():
    truth, clusters = [0, 0, 0, 1, 1, 1], [0, 0, 1, 1, 1, 1]
    scores = cluster_scores(truth, clusters)
    # purity: cluster 0 holds {real: 2}, cluster 1 {real: 1, fake: 3} -> (2 + 3) / 6
    assert scores["purity"] == pytest.approx(5 / 6)
    # ARI: sum C(n_ij, 2) = 4, rows 6, columns 7, C(6, 2) = 15 -> (4 - 42/15) / (6.5 - 42/15)
    assert scores["ari"] == pytest.approx((4 - 42 / 15) / (6.5 - 42 / 15))
    # NMI (arithmetic): MI = 1/3 ln 2 + 1/6 ln 0.5 + 1/2 ln 1.5; H(truth) = ln 2; H(clusters) = H(1/3, 2/3)
    mi = np.log(2) / 3 + np.log(0.5) / 6 + np.log(1.5) / 2
    h_clusters = -(np.log(1 / 3) / 3 + 2 * np.log(2 / 3) / 3)
    assert scores["nmi"] == pytest.approx(mi / ((np.log(2) + h_clusters) / 2))
    assert purity([0, 1, 0, 1], [5, 5, 7, 7]) == 0.5  # cluster ids need not be 0..k


def test_two_well_separated_groups_are_found_by_every_method():
    rng = np.random.default_rng(0)
    X = np.vstack([rng.normal(0, 1, (150, 40)), rng.normal(0, 1, (150, 40)) + 4.0])
    y = np.repeat([0, 1], 150)
    table, kept = run_clustering({"blobs": X}, y, None, k="auto", seed=0, components=10)
    assert list(table.method) == ["kmeans", "gmm", "hdbscan"]
    assert (table.purity_label >= 0.95).all(), table
    assert table.loc[table.method == "kmeans", "k"].item() == 2  # the silhouette picks 2
    again, _ = run_clustering({"blobs": X}, y, None, k="auto", seed=0, components=10)
    assert again.drop(columns="seconds").equals(table.drop(columns="seconds"))  # seeded


@pytest.mark.parametrize("method", ONECLASS)
def test_one_class_scores_rank_an_obvious_outlier_set_above_the_training_class(method):
    rng = np.random.default_rng(1)
    reals = rng.normal(0, 1, (300, 20))
    pipeline = build_oneclass(method, pca=10, seed=0).fit(reals)
    inliers, outliers = rng.normal(0, 1, (100, 20)), rng.normal(0, 1, (100, 20)) + 5.0
    anomaly_in, anomaly_out = -pipeline.decision_function(inliers), -pipeline.decision_function(outliers)
    assert anomaly_out.min() > np.median(anomaly_in)
    assert (anomaly_out >= 0).mean() >= 0.95 and (anomaly_in < 0).mean() >= 0.8  # threshold 0 calls them fake


def test_autoencoder_loss_falls_and_resume_gives_the_same_weights(synth_root, tmp_path):
    config = AETrainConfig(image_size=32, latent_dim=16, epochs=3, batch_size=8, seed=0, device="cpu")
    whole = train_ae(config, synth_root, tmp_path / "whole", progress=False)
    history = pd.read_csv(whole / "history.csv")
    assert history.train_loss.iloc[-1] < history.train_loss.iloc[0]
    split = train_ae(config, synth_root, tmp_path / "split", progress=False, stop_after=1)
    assert not json.loads((split / "meta.json").read_text()).get("finished")
    train_ae(config, synth_root, split, resume=True, progress=False)
    a, b = torch.load(whole / "train" / "last.pt", weights_only=True), torch.load(split / "train" / "last.pt",
                                                                                    weights_only=True)
    for key, value in a["model"].items():
        assert torch.equal(value, b["model"][key]), key
    assert load_ae(whole)[2]["best_epoch"] == load_ae(split)[2]["best_epoch"]


def test_one_class_families_go_through_evaluate_robustness_and_compare(synth_root, tmp_path):
    work = tmp_path / "work"
    cli_ok("extract", "--data", synth_root, *R18, "--workdir", work)
    fitted = cli_ok("fit-oneclass", "--method", "ocsvm", "--pca", "8", "--workdir", work, "--name", "oc")
    assert "roc_auc" in fitted.output
    cli_ok("train-ae", "--data", synth_root, "--real-only", "--image-size", "32", "--epochs", "2", "--out",
           work / "models" / "ae", "--workdir", work, "--no-progress")
    for name, kind, score_kind in (("oc", "oneclass", "anomaly"), ("ae", "ae", "anomaly")):
        cli_ok("evaluate", work / "models" / name, "--no-plots", "--workdir", work)
        report = json.loads((work / "reports" / f"{name}-test.json").read_text())
        assert report["model"]["kind"] == kind and report["metrics"]["score_kind"] == score_kind
        assert 0.0 <= report["metrics"]["roc_auc"] <= 1.0 and report["data"]["n_images"] == 12
    cli_ok("robustness", work / "models" / "oc", work / "models" / "ae", "--data", synth_root, "--jpeg", "100,50",
           "--workdir", work)
    rows = json.loads((work / "reports" / "robustness" / "robustness.json").read_text())["rows"]
    assert {row["family"] for row in rows} == {"oneclass", "ae"} and len(rows) == 4
    cli_ok("compare", "--workdir", work)
    page = (work / "reports" / "comparison.html").read_text()
    assert "oc" in page and "ae" in page
    predicted = cli_ok("predict", work / "models" / "ae", synth_root / "test", "--workdir", work)
    assert "12 classified" in predicted.output


def test_cluster_command_scores_embeddings_and_latents(synth_root, tmp_path):
    work = tmp_path / "work"
    cli_ok("train-ae", "--data", synth_root, "--image-size", "32", "--epochs", "1", "--out", work / "models" / "ae",
           "--workdir", work, "--no-progress")
    result = cli_ok("cluster", "--data", synth_root, "--backbone", "resnet18", "--weights", "none", "--recipes", "pool;layer2",
                    "--ae", work / "models" / "ae", "--k", "2", "--map", "pca", "--split", "all", "--workdir", work)
    assert "RANDOM WEIGHTS" in result.output
    saved = json.loads((work / "reports" / "cluster" / "cluster.json").read_text())
    assert len(saved["rows"]) == 3 * 3 and saved["context"]["synthetic"] is True
    assert {row["features"].split(" ")[0] for row in saved["rows"]} == {"resnet18", "autoencoder"}
    assert all(0 <= row["purity_label"] <= 1 for row in saved["rows"])
    assert len(list((work / "reports" / "cluster").glob("map-*.png"))) == 3
