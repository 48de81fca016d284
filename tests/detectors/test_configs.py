"""Config objects validate themselves, and the command line takes its defaults from them (one default each)."""

from __future__ import annotations

from dataclasses import fields

import click
import pytest
import typer

from featlab.core.errors import FeatlabError
from featlab.detectors.configs import AETrainConfig, Augment, SVMFitConfig, TrainConfig
from featlab.evaluation.estimators import CNNClassifier

#: CLI option -> config field, where the names differ.
RENAMED = {"c": "C", "jobs": None}
#: Deliberate differences, with the reason.
DIFFERENT = {("benchmark", "precision"): "a benchmark trains several models: bf16 autocast where the hardware has it"}


def _defaults(command: str) -> dict:
    from featlab.cli import app

    group = typer.main.get_command(app)
    ctx = click.Context(group)
    return {p.name: p.default for p in group.get_command(ctx, command).params
            if getattr(p, "param_type_name", "") == "option"}


def _as_cli(value):
    if isinstance(value, tuple):
        return ",".join(f"{v:g}" if isinstance(v, float) else str(v) for v in value)
    return value


@pytest.mark.parametrize("command,configs", [
    ("fit-svm", [SVMFitConfig()]),
    ("train-cnn", [TrainConfig(), Augment()]),
    ("train-ae", [AETrainConfig()]),
    ("benchmark", [SVMFitConfig(), TrainConfig()]),
])
def test_cli_defaults_are_the_config_defaults(command, configs):
    cli = _defaults(command)
    compared = 0
    for config in configs:
        for field in fields(config):
            option = next((o for o, f in RENAMED.items() if f == field.name), field.name)
            if option not in cli or field.name == "augment" and command == "train-cnn" or (command, option) in DIFFERENT:
                continue
            ours, theirs = _as_cli(getattr(config, field.name)), cli[option]
            if field.name == "pca":
                ours = str(ours)
            if field.name == "adv_eps":
                ours = f"{round(ours * 255)}/255"
            if field.name == "faces":  # the CLI names the mode, the config holds the stage it makes
                ours = "none" if ours is None else "detect"
            assert theirs == ours, f"{command} --{option.replace('_', '-')}: CLI {theirs!r} != config {ours!r}"
            compared += 1
    assert compared >= {"fit-svm": 9, "train-cnn": 25, "train-ae": 8, "benchmark": 7}[command]


def test_the_sklearn_cnn_wrapper_shares_the_training_defaults():
    wrapper, config = CNNClassifier(), TrainConfig()
    for name, value in wrapper.get_params().items():
        if name == "faces":  # the wrapper names the mode, the config holds the stage it makes
            assert value == "none" and config.faces is None
        elif hasattr(config, name):
            assert value == getattr(config, name), name


@pytest.mark.parametrize("make,message", [
    (lambda: SVMFitConfig(kernel="poly"), "kernel must be one of"),
    (lambda: SVMFitConfig(solver="sgd"), "solver must be one of"),
    (lambda: SVMFitConfig(pca=0.0), "pca takes"),
    (lambda: SVMFitConfig(pca=True), "pca takes"),
    (lambda: SVMFitConfig(C=(1.0, -2.0)), "C values must be positive"),
    (lambda: SVMFitConfig(C=()), "C: give at least one value"),
    (lambda: SVMFitConfig(gamma=("wide",)), "gamma values must be positive numbers or one of scale, auto"),
    (lambda: SVMFitConfig(class_weight="auto"), "class_weight must be"),
    (lambda: SVMFitConfig(augment="jpeg,crop"), "augment: unknown crop; choose from jpeg, blur"),
    (lambda: TrainConfig(arch="vgg"), "arch must be one of"),
    (lambda: TrainConfig(lr=0), "lr must be positive"),
    (lambda: TrainConfig(clip_grad=-1.0), "clip_grad must be positive"),
    (lambda: TrainConfig(adversarial="pgd", adv_eps=0.5 / 255), "adv_eps must be at least one grey level"),
    (lambda: Augment(crop_scale=1.5), "crop_scale must be in"),
    (lambda: AETrainConfig(image_size=40), "image_size must be a multiple of 16"),
    (lambda: AETrainConfig(latent_dim=1), "latent_dim must be at least 2"),
])
def test_configs_refuse_impossible_settings_naming_them(make, message):
    with pytest.raises(FeatlabError, match=message):
        make()


def test_configs_normalise_what_they_accept():
    config = SVMFitConfig(C=[1, 10], gamma=["scale", 0.5], pca=0.95)
    assert config.C == (1.0, 10.0) and config.gamma == ("scale", 0.5)
    assert config.recorded()["C"] == [1.0, 10.0]  # JSON lists in the model folder
    restored = TrainConfig(augment={"flip": False, "crop_scale": 1.0, "color_jitter": 0.0, "jpeg_prob": 0.0,
                                    "blur_prob": 0.0})
    assert restored.augment == Augment(flip=False, crop_scale=1.0, color_jitter=0.0)


def test_train_stages_leaves_only_the_last_stages_trainable():
    from featlab.detectors.cnn import _set_frozen, build_model

    model, _, _ = build_model("efficientnet-lite0", "none", head_layers="auto")
    _set_frozen(model, False, 1, "efficientnet-lite0")  # the last declared stage is blocks.6 (after blocks.4)
    trainable = {name for name, p in model.features.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith(("model.blocks.5", "model.blocks.6", "model.conv_head", "model.bn2"))
                             for n in trainable)
    assert any(n.startswith("model.blocks.5") for n in trainable)
    _set_frozen(model, True, 1, "efficientnet-lite0")
    assert not any(p.requires_grad for p in model.features.parameters())
    _set_frozen(model, False, 0, "efficientnet-lite0")
    assert all(p.requires_grad for p in model.features.parameters())
    with pytest.raises(FeatlabError, match="label_smoothing"):
        TrainConfig(label_smoothing=0.5)
