"""Under attack on the real faces: ROC-AUC vs eps for the SVM, a fine-tuned CNN and an adversarially trained CNN.

Writes docs/results-attack.md. Needs `make bench-quality` (data, the default SVM, the fine-tuned
resnet50-opennsfw). Trains two custom CNNs (128 px, same recipe and epochs; one with PGD adversarial
training) so that the clean-vs-robust comparison is like for like. Run alone:
``.venv/bin/python tests/benchmarks/bench_attack.py [--n-images 200] [--steps 5]``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from featlab.core.versions import describe_hardware, hardware  # noqa: E402
from featlab.detectors.cnn import TrainConfig, train_cnn  # noqa: E402
from featlab.evaluation.attack import AttackSettings, run_attack  # noqa: E402

QUALITY = REPO / "bench-out" / "quality"
DATA = QUALITY / "faces" / "combined-real-vs-fake"
MODELS = QUALITY / "featlab-work" / "models"
OUT = REPO / "docs" / "results-attack.md"


def _train(name: str, adversarial: str, epochs: int) -> tuple[Path, float]:
    folder = MODELS / name
    meta = folder / "meta.json"
    started = time.perf_counter()
    if not (meta.is_file() and json.loads(meta.read_text()).get("finished")):
        config = TrainConfig(arch="custom", epochs=epochs, adversarial=adversarial, adv_eps=4 / 255, adv_steps=3)
        train_cnn(config, DATA, folder, resume=(folder / "train" / "last.pt").is_file(), progress=True)
    return folder, json.loads(meta.read_text()).get("train_seconds", time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n-images", type=int, default=200)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=8)
    args = parser.parse_args()
    torch.set_num_threads(2)
    svm, cnn = MODELS / "bench-svm-resnet50-opennsfw-796b62629bf4", MODELS / "bench-cnn-resnet50-opennsfw"
    if not DATA.is_dir() or not svm.is_dir() or not cnn.is_dir():
        sys.exit("bench_attack: run `make bench-quality` first (it builds the data and the models this reads)")
    custom, custom_s = _train("bench-cnn-custom-clean", "", args.epochs)
    robust, robust_s = _train("bench-cnn-custom-pgd", "pgd", args.epochs)
    settings = AttackSettings(n_images=args.n_images, steps=args.steps)
    started = time.perf_counter()
    table, written = run_attack([svm, cnn], DATA, QUALITY / "attack-pretrained", settings)
    pretrained_s = time.perf_counter() - started
    started = time.perf_counter()
    table2, _ = run_attack([custom, robust], DATA, QUALITY / "attack-custom", settings)
    custom_attack_s = time.perf_counter() - started
    rows = [*table.to_dict(orient="records"), *table2.to_dict(orient="records")]
    names = {svm.name: "SVM (resnet50-opennsfw layer2+3, PCA 256, RBF)", cnn.name: "fine-tuned resnet50-opennsfw",
             custom.name: f"custom CNN, {args.epochs} epochs", robust.name: f"custom CNN + PGD-3 training (4/255), "
             f"{args.epochs} epochs"}
    budgets = sorted({r["eps_levels"] for r in rows})

    def cell(model, eps, stage, key="roc_auc", scorer=None):
        found = [r for r in rows if r["model"] == model and r["eps_levels"] == eps and r["stage"] == stage
                 and r["scored_by"] == (scorer or model)]
        return f"{found[0][key]:.3f}" if found and found[0][key] == found[0][key] else "n/a"

    lines = [
        "# Under attack: white-box L-inf PGD on the real faces", "",
        f"Written by `tests/benchmarks/bench_attack.py` on {describe_hardware(hardware())}, "
        f"torch {torch.__version__}, torchattacks. Data: a seeded class-balanced subset of {args.n_images} images of "
        "the combined build's test split; only the fakes are attacked (a forger hides a fake). PGD, "
        f"{args.steps} steps, step 2.5·eps/steps, random start, 1 restart; images rounded to uint8 within the "
        "budget. The SVM is attacked through its differentiable torch copy and scored by the real detector "
        "(onnxruntime features).", "",
        "## ROC-AUC vs eps (/255), image kept in memory (= after PNG, lossless)", "",
        "| model | " + " | ".join(str(b) for b in budgets) + " | train s |", "|---|" + "---|" * (len(budgets) + 1),
    ]
    seconds = {svm.name: json.loads((svm / "meta.json").read_text())["train_seconds"],
               cnn.name: json.loads((cnn / "meta.json").read_text())["train_seconds"], custom.name: custom_s,
               robust.name: robust_s}
    for model, label in names.items():
        lines.append(f"| {label} | " + " | ".join(cell(model, b, "in memory (uint8)") for b in budgets)
                     + f" | {seconds[model]:.0f} |")
    lines += ["", "## Attack success rate (caught fakes turned 'real'): in memory / after JPEG q90", "",
              "n/a: the model catches no fake at its own threshold on this subset, so there is nothing to turn.", "",
              "| model | " + " | ".join(str(b) for b in budgets if b) + " |", "|---|" + "---|" * (len(budgets) - 1)]
    for model, label in names.items():
        lines.append(f"| {label} | " + " | ".join(
            f"{cell(model, b, 'in memory (uint8)', 'success_rate')} / {cell(model, b, 'after JPEG q90', 'success_rate')}"
            for b in budgets if b) + " |")
    lines += ["", "## Transfer: adversarials crafted on one model, ROC-AUC when scored by the other", "",
              "| crafted on -> scored by | " + " | ".join(str(b) for b in budgets) + " |",
              "|---|" + "---|" * len(budgets)]
    for a, b in ((svm.name, cnn.name), (cnn.name, svm.name), (custom.name, robust.name), (robust.name, custom.name)):
        lines.append(f"| {names[a]} -> {names[b]} | " + " | ".join(cell(a, e, "transfer (uint8)", scorer=b)
                                                                  for e in budgets) + " |")
    lines += ["", f"Attack time: pretrained pair {pretrained_s:.0f} s, custom pair {custom_attack_s:.0f} s "
              f"(all budgets, {args.n_images // 2} fakes each).", ""]
    OUT.write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
