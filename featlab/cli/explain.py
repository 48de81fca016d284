"""``featlab explain`` and ``featlab attack``: why a detector decides, and how it breaks."""

from __future__ import annotations

from pathlib import Path

import typer

from featlab.cli.common import (
    ALLOW_MISMATCH_OPTION,
    FACE_MARGIN_OPTION,
    FACE_SIZE_OPTION,
    SCORING_FACES_OPTION,
    WORKDIR_OPTION,
    detector_faces,
    friendly,
    open_workspace,
)
from featlab.core.checks import check_device, existing_dir, existing_path

app = typer.Typer()  # its commands are merged into the featlab command (featlab.cli)


@app.command()
@friendly
def explain(
    model: str = typer.Argument(..., help="Model folder, a name under models/, or 'latest'."),
    target: Path = typer.Argument(..., help="An image file or a folder (any layout)."),
    out: Path = typer.Option(..., "--out", help="Folder for the overlay PNGs, explanations.csv and index.html."),
    method: str = typer.Option("auto", "--method", help="auto (CNN: gradcam, SVM: occlusion), gradcam, gradcam++, "
                               "occlusion or gradient."),
    patch: int = typer.Option(48, "--patch", min=1, help="Occlusion patch side, in input pixels."),
    stride: int = typer.Option(24, "--stride", min=1, help="Occlusion stride, in input pixels."),
    fill: str = typer.Option("mean", "--fill", help="Occlusion fill: mean (the image's mean colour) or blur."),
    device: str = typer.Option("auto", "--device"),
    trust_pickle: bool = typer.Option(False, "--trust-pickle", help="Allow a featlab 0.1 SVM folder (a pickle)."),
    faces: str = SCORING_FACES_OPTION,
    face_size: int | None = FACE_SIZE_OPTION,
    face_margin: float | None = FACE_MARGIN_OPTION,
    allow_mismatch: bool = ALLOW_MISMATCH_OPTION,
    workdir: Path | None = WORKDIR_OPTION,
) -> None:
    """Heatmaps of what made a model call each face fake, on the image, with an index HTML page.

    With a face stage (a model trained with --faces detect, or --faces detect here) the map is computed on the
    aligned largest face and drawn back, rotated and scaled, onto the original image.

    CNNs: Grad-CAM / Grad-CAM++; SVMs: occlusion sensitivity through the normal extraction
    path (its cost is printed first) or gradients through a differentiable copy of the pipeline.
    Unreadable files are listed, not fatal.
    """
    existing_path(target)
    check_device(device)
    from featlab.data.dataset import scan_images
    from featlab.detectors.base import load
    from featlab.evaluation.explain import explain_target, forward_passes, resolve_method

    ws = open_workspace(workdir)
    detector = detector_faces(load(model, ws, device=device, trust_pickle=trust_pickle), faces, target, face_size,
                              face_margin, allow_mismatch)
    scanned = scan_images(target)
    for row in scanned[scanned.status != "ok"].itertuples():
        typer.echo(f"skipped: {row.path}: {row.reason}")
    paths = list(scanned.path[scanned.status == "ok"])
    chosen = resolve_method(detector, method)
    typer.echo(f"explaining {len(paths)} image(s) with {chosen}: {forward_passes(detector, chosen, len(paths), patch, stride)}"
               f" forward passes of {detector.name}")
    index, explanations, seconds = explain_target(detector, paths, out, chosen, patch, stride, fill)
    for e in explanations:
        if e.heatmap is None:
            typer.echo(f"skipped: {e.path}: {e.reason}")
        else:
            typer.echo(f"{e.verdict:<5} {e.score:+.4f}  {e.path}")
    done = sum(e.heatmap is not None for e in explanations)
    typer.echo(f"{done} explained, {len(explanations) - done} skipped in {seconds:.1f} s; gallery: {index}")


@app.command()
@friendly
def attack(
    models: list[str] = typer.Argument(..., help="Model folders or names under models/ (SVM or CNN); with several, "
                                       "each one's adversarials are also scored by the others (transfer)."),
    data: Path = typer.Option(..., "--data", help="Dataset root."),
    method: str = typer.Option("pgd", "--attack", help="pgd or fgsm (torchattacks), L-inf, white-box."),
    eps: str = typer.Option("0,1/255,2/255,4/255,8/255", "--eps", help="Budgets, fractions of the pixel range."),
    steps: int = typer.Option(10, "--steps", min=1, help="PGD iterations."),
    restarts: int = typer.Option(1, "--restarts", min=1, help="PGD random restarts (the most successful is kept)."),
    n_images: int = typer.Option(200, "--n-images", min=2, help="Seeded, class-balanced subset of the split."),
    attack_reals: bool = typer.Option(False, "--attack-reals", help="Also push the reals towards 'fake'."),
    split: str = typer.Option("test", "--split"),
    seed: int = typer.Option(0, "--seed"),
    out: Path | None = typer.Option(None, "--out", help="Report folder (default <workdir>/reports/attack)."),
    device: str = typer.Option("auto", "--device"),
    workdir: Path | None = WORKDIR_OPTION,
) -> None:
    """Adversarial evaluation: ROC-AUC, accuracy and attack success rate per budget, in memory, after PNG and after
    JPEG q90; SVMs are attacked through a differentiable torch copy of the whole detector."""
    existing_dir(data)
    check_device(device)
    from featlab.detectors.base import load
    from featlab.evaluation.attack import AttackSettings, parse_eps, run_attack

    ws = open_workspace(workdir)
    settings = AttackSettings(attack=method, eps=parse_eps(eps), steps=steps, restarts=restarts, n_images=n_images,
                              attack_reals=attack_reals, split=split, seed=seed)
    table, written = run_attack([load(m, ws, device=device) for m in models], data, out or ws.reports / "attack",
                                settings, device=device, progress=typer.echo)
    typer.echo(f"written: {written['markdown']}, {written['html']}")
