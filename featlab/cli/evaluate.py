"""``featlab evaluate``, ``predict``, ``compare``, ``robustness``, ``benchmark``: use detectors, compare them."""

from __future__ import annotations

from pathlib import Path

import typer

from featlab.cli.common import (
    ALLOW_MISMATCH_OPTION,
    FACE_MARGIN_OPTION,
    FACE_SIZE_OPTION,
    RAY_OPTION,
    SCORING_FACES_OPTION,
    WORKDIR_OPTION,
    detector_faces,
    friendly,
    open_workspace,
)
from featlab.core.checks import check_device, check_precision, check_ray, existing_dir, existing_path
from featlab.core.errors import FeatlabError
from featlab.detectors.configs import SVMFitConfig, TrainConfig, grid_text

app = typer.Typer()  # its commands are merged into the featlab command (featlab.cli)
SVM, CNN = SVMFitConfig(), TrainConfig()  # option defaults, one per setting (tests/detectors/test_configs.py)


@app.command()
@friendly
def evaluate(
    models: list[str] | None = typer.Argument(None, help="Model folders, names under models/, or 'latest' (default)."),
    split: str = typer.Option("test", "--split", help="Split to score (an unsplit {real,fake}/ folder: all)."),
    plots: bool = typer.Option(True, "--plots/--no-plots", help="ROC, PR, confusion and PCA scatter PNGs."),
    data: list[Path] | None = typer.Option(
        None, "--data", help="Dataset root to score (default: the model's own). Repeat it, or name several "
        "models, for a cross-dataset matrix (markdown, HTML, heatmap)."),
    groups: Path | None = typer.Option(None, "--groups", help="CSV path,group for per-group rows (own data)."),
    out: Path | None = typer.Option(None, "--out", help="Folder for the matrix (default reports/matrix)."),
    explain: int = typer.Option(0, "--explain", min=0, help="Add a gallery of the N most confident true positives, "
                                "false positives and false negatives with heatmaps (<report>-gallery/index.html)."),
    explain_method: str = typer.Option("auto", "--explain-method", help="Heatmap method (see featlab explain)."),
    device: str = typer.Option("auto", "--device"),
    trust_pickle: bool = typer.Option(False, "--trust-pickle", help="Allow a featlab 0.1 SVM folder (model.joblib: "
                                      "a pickle, which runs code when loaded). Only for folders you made."),
    ray: str | None = RAY_OPTION,
    faces: str = SCORING_FACES_OPTION,
    face_size: int | None = FACE_SIZE_OPTION,
    face_margin: float | None = FACE_MARGIN_OPTION,
    allow_mismatch: bool = ALLOW_MISMATCH_OPTION,
    workdir: Path | None = WORKDIR_OPTION,
) -> None:
    """Evaluate saved models (SVM or CNN) on a split of any dataset: JSON report, terminal table and plots.

    An SVM's missing embeddings are extracted into its own feature cache (shared images cost
    nothing) without touching the index of the data it was trained on.
    """
    for root in data or []:
        existing_dir(root)
    check_device(device), check_ray(ray)
    from featlab.detectors.base import load
    from featlab.evaluation.evaluate import evaluate_matrix, evaluate_model
    from featlab.reports.report import print_metrics

    ws = open_workspace(workdir)
    roots = list(data or [])
    if len(models or []) > 1 and not roots:
        raise typer.BadParameter("a matrix needs --data for every test set", param_hint="--data")
    folders = [detector_faces(load(m, ws, device=device, trust_pickle=trust_pickle), faces,
                              roots[0] if roots else None, face_size, face_margin, allow_mismatch)
               for m in (models or ["latest"])]
    if len(folders) > 1 or len(roots) > 1:
        table, written = evaluate_matrix(folders, roots, ws, split=split, out=out, device=device,
                                         trust_pickle=trust_pickle, ray=ray)
        typer.echo(written["markdown"].read_text())
        typer.echo(f"written: {written['markdown']}, {written['html']}, {written['png']}")
        return
    report, path = evaluate_model(folders[0], ws, split=split, plots=plots, data_root=str(roots[0]) if roots else None,
                                  device=device, trust_pickle=trust_pickle, groups_csv=str(groups) if groups else None,
                                  explain=explain, explain_method=explain_method, ray=ray)
    typer.echo(print_metrics(report))
    typer.echo(f"report: {path}")
    if report.get("gallery"):
        typer.echo(f"gallery: {report['gallery']}")


@app.command()
@friendly
def predict(
    model: str = typer.Argument(..., help="Model folder, a name under models/, or 'latest'."),
    target: Path = typer.Argument(..., help="An image file or a folder (any layout)."),
    out: Path | None = typer.Option(None, "--out", help="Write path,score,label CSV here."),
    batch_size: int = typer.Option(32, "--batch-size", min=1),
    device: str = typer.Option("auto", "--device"),
    trust_pickle: bool = typer.Option(False, "--trust-pickle", help="Allow a featlab 0.1 SVM folder (a pickle)."),
    ray: str | None = RAY_OPTION,
    faces: str = typer.Option("model", "--faces", help="model: as the model was trained; detect: find every face "
                              "(MTCNN), align it, score it: one row per face, the image's verdict is its most-fake "
                              "face, an image without a face says so; none: score each image whole; auto: detect "
                              "unless the images are face-aligned portraits. A face model always scores faces."),
    face_size: int | None = FACE_SIZE_OPTION,
    face_margin: float | None = FACE_MARGIN_OPTION,
    allow_mismatch: bool = ALLOW_MISMATCH_OPTION,
    workdir: Path | None = WORKDIR_OPTION,
) -> None:
    """Classify images with a saved model; unreadable files are listed, not fatal.

    Exits 1 when nothing could be classified. A CNN needs no writable work folder (an SVM caches its
    embeddings there)."""
    existing_path(target)
    check_device(device), check_ray(ray)
    from featlab.detectors.base import load
    from featlab.evaluation.evaluate import predict_paths

    ws = open_workspace(workdir, writable=False)
    detector = detector_faces(load(model, ws, device=device, trust_pickle=trust_pickle), faces, target, face_size,
                              face_margin, allow_mismatch)
    per_face = detector.faces is not None
    if per_face:
        from featlab.evaluation.faces import predict_faces

        table = predict_faces(detector, target)
    else:
        if detector.writes_to_workspace:
            ws.ensure_writable()
        table = predict_paths(detector, target, ws, batch_size=batch_size, device=device, trust_pickle=trust_pickle,
                              ray=ray)
    if out:
        from featlab.core.fileio import atomic_write_text

        atomic_write_text(out, table.to_csv(index=False))
    ok = table[table.status == "ok"]
    if per_face:
        for row in ok.head(20 if out else len(ok)).itertuples():
            typer.echo(f"{row.label:<5} {row.score:+.4f}  {row.path} face {row.face} at {row.box} "
                       f"(detector {row.det_score:.2f})")
        for row in table[table.status != "ok"].itertuples():
            typer.echo(f"{'no face' if row.status == 'no face' else 'skipped'}: {row.path}: {row.reason}")
        images = table.drop_duplicates("path")
        typer.echo(f"{len(ok)} faces in {ok.path.nunique()} images ({(images.image_label == 'fake').sum()} images "
                   f"called fake by their most-fake face), {(images.status == 'no face').sum()} without a face, "
                   f"{(images.status == 'quarantined').sum()} skipped" + (f"; written to {out}" if out else ""))
        if ok.empty:
            raise FeatlabError(f"no face in {target} could be scored")
        return
    for row in ok.head(20 if out else len(ok)).itertuples():
        typer.echo(f"{row.label:<5} {row.score:+.4f}  {row.path}")
    for row in table[table.status != "ok"].itertuples():
        typer.echo(f"skipped: {row.path}: {row.reason}")
    typer.echo(f"{len(ok)} classified ({(ok.label == 'fake').sum()} fake), {len(table) - len(ok)} skipped"
               + (f"; written to {out}" if out else ""))
    if ok.empty:
        raise FeatlabError(f"no image in {target} could be classified ({len(table)} skipped)")


@app.command()
@friendly
def compare(
    reports: list[Path] | None = typer.Argument(None, help="Report JSON files (default: every test report)."),
    out: Path | None = typer.Option(None, "--out", help="Folder for comparison.md/.html (default reports/)."),
    figures: str = typer.Option("", "--figures", help="Also save the page's figures as svg and/or pdf "
                                "(comma-separated) under OUT/figures/, for papers."),
    workdir: Path | None = WORKDIR_OPTION,
) -> None:
    """Put every model's test report side by side (markdown here, HTML with plots in --out)."""
    from featlab.reports.report import load_reports, write_comparison

    ws = open_workspace(workdir, writable=out is None)
    paths = list(reports or sorted(ws.reports.glob("*-test.json")))
    if not paths:
        raise FeatlabError(f"no reports given and none in {ws.reports}; run featlab fit-svm / evaluate first")
    loaded = load_reports(paths)
    formats = tuple(f.strip() for f in figures.split(",") if f.strip())
    md, page, markdown = write_comparison(loaded, out or ws.reports, figure_formats=formats)
    from featlab.reports.page import summary_lines
    from featlab.reports.report import compare_reports

    for line in summary_lines(loaded, compare_reports(loaded)):
        typer.echo(line)
    typer.echo(markdown)
    typer.echo(f"written: {md}, {page}")


@app.command()
@friendly
def robustness(
    models: list[str] = typer.Argument(..., help="Model folders or names under models/ (SVM and CNN alike)."),
    data: Path = typer.Option(..., "--data", help="Dataset root; its --split is perturbed and scored."),
    split: str = typer.Option("test", "--split"),
    jpeg: str | None = typer.Option(None, "--jpeg", help="JPEG qualities, e.g. 100,90,70,50,30."),
    blur: str | None = typer.Option(None, "--blur", help="Gaussian sigmas in pixels, e.g. 0,1,2,3,4."),
    resize: str | None = typer.Option(None, "--resize", help="Down-then-up factors, e.g. 1,0.75,0.5."),
    noise: str | None = typer.Option(None, "--noise", help="Gaussian noise std on 0-1 pixels, e.g. 0,0.01,0.03."),
    seed: int = typer.Option(0, "--seed", help="Seed mixed into the per-image noise."),
    out: Path | None = typer.Option(None, "--out", help="Output folder (default reports/robustness)."),
    device: str = typer.Option("auto", "--device"),
    trust_pickle: bool = typer.Option(False, "--trust-pickle"),
    workdir: Path | None = WORKDIR_OPTION,
) -> None:
    """Score models on perturbed copies of a split (JPEG, blur, resize, noise): tables and curves."""
    existing_dir(data)
    check_device(device)
    from featlab.data.perturb import parse_levels
    from featlab.detectors.base import load
    from featlab.evaluation.robustness import run_robustness

    sweeps = {kind: parse_levels(kind, text, seed) for kind, text in
              (("jpeg", jpeg), ("blur", blur), ("resize", resize), ("noise", noise)) if text}
    if not sweeps:
        raise typer.BadParameter("give at least one of --jpeg, --blur, --resize, --noise")
    import time as _time

    ws = open_workspace(workdir)
    folders = [load(m, ws, device=device, trust_pickle=trust_pickle) for m in models]
    target = out or ws.reports / "robustness"
    started = _time.perf_counter()
    table = run_robustness(folders, data, sweeps, ws, split=split, out=target, device=device,
                           trust_pickle=trust_pickle)
    typer.echo((target / "robustness.md").read_text())
    typer.echo(f"written: {target} ({len(table)} rows) in {_time.perf_counter() - started:.1f} s")


@app.command()
@friendly
def benchmark(
    data: Path = typer.Option(..., "--data", help="Dataset root ({train,valid,test}/{real,fake}/)."),
    out: Path | None = typer.Option(None, "--out", help="Report folder (default <workdir>/benchmark)."),
    backbones: str = typer.Option("auto", "--backbones", help="Comma-separated backbones for the SVM family."),
    recipes: str = typer.Option(
        "", "--recipes", help="Feature recipes to compare on valid, ';'-separated, each "
        "layers[:pooling[:view[:flip]]], e.g. 'pool;layer3:avg+std;layer2,layer3:avg+std:native:flip'."),
    archs: str = typer.Option("resnet50-opennsfw", "--archs", help="Comma-separated CNN archs ('' for none)."),
    pca: str = typer.Option(str(SVM.pca), "--pca"),
    c: str = typer.Option(grid_text(SVM.C), "--C"),
    epochs: int = typer.Option(CNN.epochs, "--epochs", min=1),
    freeze_epochs: int = typer.Option(CNN.freeze_epochs, "--freeze-epochs", min=0),
    lr: float = typer.Option(CNN.lr, "--lr", min=0.0),
    batch_size: int = typer.Option(CNN.batch_size, "--batch-size", min=1),
    image_size: int | None = typer.Option(CNN.image_size, "--image-size"),
    precision: str = typer.Option("auto", "--precision", help="CNN training precision: auto (bf16 autocast where the "
                                   "hardware has it: a benchmark trains several models), fp32, bf16, fp16."),
    seed: int = typer.Option(0, "--seed"),
    explain: int = typer.Option(0, "--explain", min=0, help="Heatmap gallery of the N most confident hits and errors "
                                "per model, linked from comparison.html."),
    progress: bool = typer.Option(True, "--progress/--no-progress"),
    workdir: Path | None = WORKDIR_OPTION,
) -> None:
    """Run the whole comparison (extract -> fit-svm -> train-cnn -> evaluate -> compare) into one report folder."""
    existing_dir(data)
    check_precision(precision)
    from featlab.detectors.classical import parse_grid, parse_pca
    from featlab.evaluation.benchmark import BenchmarkSettings, run_benchmark
    from featlab.features.backbones import get_spec, resolve_auto
    from featlab.features.recipe import parse_recipe_list

    ws = open_workspace(workdir)
    names = [b.strip() for b in backbones.split(",") if b.strip()]
    if not names:
        raise typer.BadParameter("name at least one backbone", param_hint="--backbones")
    first = get_spec(resolve_auto(names[0])[0])
    settings = BenchmarkSettings(
        backbones=names, recipes=[r.as_dict() for r in parse_recipe_list(first, recipes)],
        archs=[a.strip() for a in archs.split(",") if a.strip()], pca=parse_pca(pca), C=parse_grid(c, "C"),
        epochs=epochs, freeze_epochs=freeze_epochs, lr=lr, batch_size=batch_size, image_size=image_size,
        precision=precision, seed=seed, explain=explain,
    )
    summary = run_benchmark(data, out or ws.root / "benchmark", ws, settings, progress=progress, echo=typer.echo)
    typer.echo(f"written: {Path(summary['comparison']['html']).parent} (results.md, comparison.html, benchmark.json) "
               f"in {summary['wall_seconds'] / 60:.1f} min")
