"""``featlab extract`` and ``featlab backbones``: the feature stage."""

from __future__ import annotations

from pathlib import Path

import typer

from featlab.cli.common import (
    FACE_MARGIN_OPTION,
    FACE_SIZE_OPTION,
    FACES_OPTION,
    RAY_OPTION,
    WORKDIR_OPTION,
    echo_auto_faces,
    friendly,
    open_workspace,
)
from featlab.core.checks import check_device, check_precision, check_ray, existing_dir

app = typer.Typer()  # its commands are merged into the featlab command (featlab.cli)


@app.command()
@friendly
def extract(
    data: Path = typer.Option(..., "--data", help="Dataset root ({train,valid,test}/{real,fake}/)."),
    backbone: str = typer.Option(
        "auto", "--backbone", help="Registry name (see 'featlab backbones'); auto = resnet50 when its torchvision "
        "weights are on disk, else resnet50-opennsfw (offline)."
    ),
    weights: str = typer.Option("default", "--weights", help="default, a state_dict file, or none (random: tests only)."),
    device: str = typer.Option("auto", "--device", help="auto (cuda > cpu), cpu, cuda, cuda:N."),
    precision: str = typer.Option("auto", "--precision", help="auto, fp32, bf16, fp16 (CUDA)."),
    engine: str = typer.Option("auto", "--engine", help="auto, torch or onnxruntime (CPU, fp32; auto: the engine make bench measured faster for the backbone)."),
    batch_size: int = typer.Option(32, "--batch-size", min=1),
    shard_size: int = typer.Option(512, "--shard-size", min=1, help="Images per committed shard (the most a "
                                   "killed run can lose)."),
    ray: str | None = RAY_OPTION,
    workers: int | None = typer.Option(None, "--workers", min=0, help="Decoding processes (default: 0 on CPUs with <= 4 cores, up to 8 with CUDA)."),
    progress: bool = typer.Option(True, "--progress/--no-progress"),
    layers: str = typer.Option(
        "auto", "--layers", help="Comma-separated stages to pool (see 'featlab backbones'), 'pool' for the "
        "backbone's classic pooled embedding, or auto (the two middle stages: featlab's default)."),
    pooling: str | None = typer.Option(None, "--pooling", help="avg, avg+std (default) or gem."),
    view: str | None = typer.Option(None, "--view", help="native (default: centre crop of the image's own "
                                    "pixels, no resampling), crop (the weights' resize + crop) or full."),
    flip: bool | None = typer.Option(None, "--flip/--no-flip", help="Average with the mirrored image (2x cost)."),
    faces: str = FACES_OPTION,
    face_size: int | None = FACE_SIZE_OPTION,
    face_margin: float | None = FACE_MARGIN_OPTION,
    workdir: Path | None = WORKDIR_OPTION,
) -> None:
    """Run a pretrained backbone over every image of every split and cache the embeddings.

    Re-running computes only images whose content is not cached yet; a killed run resumes.
    """
    existing_dir(data)
    check_device(device), check_precision(precision), check_ray(ray)
    ws = open_workspace(workdir)
    from featlab.data.hashmemo import HASH_MEMO
    from featlab.features.backbones import get_spec, resolve_auto
    from featlab.features.extract import extract_dataset
    from featlab.features.recipe import parse_recipe

    name, reason = resolve_auto(backbone)
    if reason:
        typer.echo(f"backbone: {name} ({reason})")
    recipe = parse_recipe(get_spec(name), layers, pooling, view, flip)
    typer.echo(f"features: {recipe.describe()}")
    result = extract_dataset(
        data, ws.features, backbone=name, weights=weights, device=device, precision=precision, engine=engine,
        batch_size=batch_size, num_workers=workers, progress=progress, recipe=recipe, shard_size=shard_size,
        hash_memo=ws.features / HASH_MEMO, ray=ray, faces=faces, face_size=face_size,
        face_margin=0.2 if face_margin is None else face_margin,
    )
    if faces == "auto":
        echo_auto_faces(result.faces)
    meta = result.cache.meta
    usable = int((result.manifest.status == "ok").sum())
    typer.echo(f"backbone {name}, weights {meta['weights_info']['source']}, {result.device}, {result.precision}")
    if not meta["weights_info"]["pretrained"]:
        typer.echo("WARNING: random weights (--weights none): these features prove plumbing only")
    typer.echo(
        f"images {len(result.manifest)}: computed {result.computed} in {result.seconds:.1f} s "
        f"({result.images_per_second:.1f} img/s), already cached {usable - result.computed}, "
        f"skipped {len(result.quarantined)}"
    )
    for row in result.quarantined.itertuples():
        typer.echo(f"skipped: {row.path}: {row.reason}")
    if result.cache.meta["config"]["preprocessing"].get("faces"):
        faceless = int(result.manifest.reason.str.startswith("no face").sum())
        decodable = len(result.manifest) - len(result.quarantined) + faceless
        typer.echo(f"faces: found in {decodable - faceless} of {decodable} decodable images "
                   f"({(decodable - faceless) / max(1, decodable):.1%}); the {faceless} without one are skipped")
    typer.echo(f"features: {result.cache.folder}")


@app.command("backbones")
def list_backbones() -> None:
    """List the registered backbones with their embedding size and preprocessing."""
    from featlab.features.backbones import BACKBONES, torchvision_cache_file

    for spec in BACKBONES.values():
        p = spec.preprocessing
        cached = torchvision_cache_file(spec)
        where = "shipped (offline)" if cached is None else ("on disk" if cached.is_file() else "download needed")
        typer.echo(
            f"{spec.name:<18} dim={spec.embed_dim:<5} resize={p.resize}({p.resize_mode}) crop={p.crop} "
            f"{'BGR' if p.bgr else 'RGB'}  weights: {where}"
        )
        stages = ", ".join(f"{name}({channels})" for name, (_, channels) in spec.stages.items())
        typer.echo(f"{'':<18} stages: {stages}")
