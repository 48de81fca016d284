"""``featlab data``: assemble, check and generate datasets."""

from __future__ import annotations

from pathlib import Path

import typer

from featlab.cli.common import FACE_MARGIN_OPTION, FACE_SIZE_OPTION, echo_auto_faces, friendly
from featlab.core.checks import existing_dir

app = typer.Typer(help="Dataset tools: assemble, check and generate datasets.", no_args_is_help=True)


@app.command("check")
@friendly
def data_check(
    root: Path = typer.Argument(..., help="Dataset root: {train,valid,test}/{real,fake}/ or {real,fake}/."),
    out: Path | None = typer.Option(None, "--out", help="Write the manifest CSV here."),
) -> None:
    """Decode every image, print counts per split x class and list quarantined files."""
    existing_dir(root)
    from featlab.data.dataset import scan_dataset, summarize

    manifest = scan_dataset(root, check_images=True)
    typer.echo(summarize(manifest).to_string())
    for row in manifest[manifest.status != "ok"].itertuples():
        typer.echo(f"quarantined: {row.path}: {row.reason}")
    if out:
        manifest.to_csv(out, index=False)
        typer.echo(f"manifest: {out}")


@app.command("build")
@friendly
def data_build(
    faces140k: Path = typer.Option(..., "--faces140k", help="'140K Real and Fake Faces' download folder."),
    ciplab: Path = typer.Option(..., "--ciplab", help="'Real and Fake Face Detection' download folder."),
    out: Path = typer.Option(..., "--out", help="Output folder (the write-up's combined-real-and-fake-faces)."),
    seed: int = typer.Option(0, "--seed", help="Seed for spreading the second dataset over the splits."),
    ratios: str = typer.Option("0.7,0.15,0.15", "--ratios", help="train,valid,test fractions for that dataset."),
    link: bool = typer.Option(False, "--link", help="Hard-link instead of copying (same filesystem)."),
    force: bool = typer.Option(False, "--force", help="Replace a different existing build."),
    faces: str = typer.Option("none", "--faces", help="detect: also write the aligned largest face of every image "
                              "to OUT/combined-real-vs-fake-faces (see featlab data faces); auto: only when the "
                              "images are not face-aligned portraits already; none: no."),
    face_size: int | None = FACE_SIZE_OPTION,
    face_margin: float | None = FACE_MARGIN_OPTION,
) -> None:
    """Merge both Kaggle datasets into OUT/combined-real-vs-fake/{train,valid,test}/{real,fake}."""
    from data_prep.build import build

    try:
        parsed = tuple(float(r) for r in ratios.split(","))
    except ValueError:
        raise typer.BadParameter(f"expected three numbers like 0.7,0.15,0.15, got {ratios!r}") from None
    result = build(faces140k, ciplab, out, seed=seed, ratios=parsed, link=link, force=force)
    summary = result.summary
    state = "written" if result.written else "already up to date (nothing copied)"
    typer.echo(f"{result.out}: {state}")
    for split, counts in summary["counts"].items():
        typer.echo(f"  {split:<6} real={counts['real']:<7} fake={counts['fake']}")
    typer.echo(
        f"  duplicates removed: {len(summary['duplicates_removed'])}, quarantined: {len(summary['quarantined'])}"
    )
    if faces != "none":
        from data_prep.build import COMBINED

        _write_faces(result.out / COMBINED, result.out / f"{COMBINED}-faces", faces, face_size, face_margin)


def _write_faces(root: Path, out: Path, mode: str, size: int | None, margin: float | None) -> None:
    from featlab.data.dataset import scan_dataset
    from featlab.data.faces import align_dataset, choose_faces

    stage, decision = choose_faces(mode, scan_dataset(root, check_images=False), size or 256,
                                   0.2 if margin is None else margin)
    if mode == "auto":
        echo_auto_faces(decision)
    if stage is None:
        typer.echo(f"faces: {root} is already face-aligned portraits; no face set written")
        return
    table = align_dataset(root, out, stage, progress=True)
    found = table[table.status == "ok"]
    decodable = table[table.status != "quarantined"]
    typer.echo(f"faces: {len(found)} of {len(decodable)} decodable images have a face "
               f"({len(found) / max(1, len(decodable)):.1%}); aligned crops ({stage.size} px, margin {stage.margin:g}) "
               f"in {out}, every image listed in {out / 'faces.csv'}")
    for row in table[table.status != "ok"].head(20).itertuples():
        typer.echo(f"{row.status}: {row.source_path}: {row.reason}")


@app.command("faces")
@friendly
def data_faces(
    root: Path = typer.Argument(..., help="Dataset root: {train,valid,test}/{real,fake}/ or {real,fake}/."),
    out: Path = typer.Option(..., "--out", help="Folder for the aligned face set (same layout)."),
    faces: str = typer.Option("detect", "--faces", help="detect, or auto (nothing written when the set is already "
                              "face-aligned portraits)."),
    face_size: int | None = FACE_SIZE_OPTION,
    face_margin: float | None = FACE_MARGIN_OPTION,
) -> None:
    """Write the aligned largest face of every image (PNG, same layout) and faces.csv: a face dataset for any tool.

    featlab's own commands do not need it (extract / train-cnn --faces detect align on the fly, with cached
    detections); a killed run resumes."""
    existing_dir(root)
    if faces not in ("detect", "auto"):
        raise typer.BadParameter("detect or auto", param_hint="--faces")
    from featlab.data.faces import use_cache

    use_cache(None)
    _write_faces(root, out, faces, face_size, face_margin)


@app.command("synth")
@friendly
def data_synth(
    out: Path = typer.Argument(..., help="Folder to create."),
    train: int = typer.Option(40, help="Images per class in train."),
    valid: int = typer.Option(12, help="Images per class in valid."),
    test: int = typer.Option(12, help="Images per class in test."),
    size: int = typer.Option(64, help="Image side in pixels."),
    seed: int = typer.Option(0, help="Generator seed."),
) -> None:
    """Generate a SYNTHETIC (not real faces) dataset in the featlab layout, for first runs and tests."""
    from data_prep.synth import SYNTHETIC_TAG, make_synthetic_dataset

    make_synthetic_dataset(out, {"train": train, "valid": valid, "test": test}, size=size, seed=seed)
    typer.echo(f"{out}: {SYNTHETIC_TAG}")
