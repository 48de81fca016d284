"""``featlab serve`` and ``featlab export``: detectors served over HTTP, or shipped as one ONNX file."""

from __future__ import annotations

import os
from pathlib import Path

import typer

from featlab.cli.common import WORKDIR_OPTION, friendly, open_workspace
from featlab.core.checks import check_device

app = typer.Typer()  # its commands are merged into the featlab command (featlab.cli)


@app.command()
@friendly
def serve(
    models: list[str] = typer.Argument(..., help="Model folders or names under models/; the first is the default."),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to bind (loopback by default)."),
    port: int = typer.Option(8000, "--port", min=1, max=65535),
    max_batch: int = typer.Option(32, "--max-batch", min=1, help="Images scored in one forward pass."),
    max_wait_ms: float = typer.Option(10.0, "--max-wait-ms", min=0.0, help="How long an image waits for others."),
    max_upload_mb: float = typer.Option(20.0, "--max-upload-mb", min=0.001, help="Bytes per request, in MB."),
    max_pixels: int = typer.Option(40_000_000, "--max-pixels", min=1, help="Pixels per image (decompression bombs)."),
    max_files: int = typer.Option(16, "--max-files", min=1, help="Files per request."),
    timeout_s: float = typer.Option(60.0, "--timeout", min=0.001, help="Seconds per request."),
    max_inflight: int = typer.Option(64, "--max-inflight", min=1, help="Requests at once (past it: 503)."),
    api_key: str | None = typer.Option(None, "--api-key", envvar="FEATLAB_API_KEY",
                                       help="Require this key (X-API-Key or Authorization: Bearer)."),
    device: str = typer.Option("auto", "--device"),
    workdir: Path | None = WORKDIR_OPTION,
) -> None:
    """Serve detectors over HTTP: POST /v1/score, GET /v1/models, /healthz, /metrics, and a page at /."""
    check_device(device)
    from featlab.detectors.base import load
    from featlab.service.app import ServiceSettings
    from featlab.service.app import serve as run_service

    settings = ServiceSettings(max_batch=max_batch, max_wait_ms=max_wait_ms,
                               max_upload_bytes=int(max_upload_mb * 2**20), max_pixels=max_pixels,
                               max_files=max_files, timeout_s=timeout_s, max_inflight=max_inflight, api_key=api_key)
    ws = open_workspace(workdir, writable=False)
    detectors = [load(m, ws, device=device) for m in models]
    typer.echo(f"featlab serve: {', '.join(d.name for d in detectors)} on http://{host}:{port}/"
               + (" (API key required)" if api_key else "") + f" [pid {os.getpid()}]")
    run_service(detectors, host, port, settings)


@app.command()
@friendly
def export(
    model: str = typer.Argument(..., help="Model folder or name under models/ (SVM or CNN)."),
    out: Path = typer.Option(..., "--out", help="The ONNX file to write."),
    fmt: str = typer.Option("onnx", "--format", help="onnx (the only format so far)."),
    quantize: str = typer.Option("", "--quantize", help="int8: static quantisation of the convolutions, calibrated "
                                 "on --data's train images; its cost on --data's valid split is printed and recorded."),
    data: Path | None = typer.Option(None, "--data", help="Dataset for --quantize (train: calibration; valid: cost)."),
    calibration_images: int = typer.Option(128, "--calibration-images", min=2),
    workdir: Path | None = WORKDIR_OPTION,
) -> None:
    """The whole detector as one ONNX graph, uint8 pixels in the model's view -> featlab score; threshold and
    preprocessing in its metadata. featlab predict / evaluate / serve take the file like a model folder."""
    if fmt != "onnx":
        raise typer.BadParameter("only onnx is supported", param_hint="--format")
    if quantize not in ("", "int8"):
        raise typer.BadParameter("only int8 is supported", param_hint="--quantize")
    if quantize and data is None:
        raise typer.BadParameter("int8 needs --data (calibration on its train split, cost on its valid split)",
                                 param_hint="--data")
    from featlab.detectors.base import load
    from featlab.detectors.export import export_onnx

    detector = load(model, open_workspace(workdir, writable=False))
    if quantize:
        import tempfile

        from featlab.detectors.export import quantize_int8

        with tempfile.TemporaryDirectory() as scratch:
            fp32 = export_onnx(detector, Path(scratch) / "fp32.onnx")
            cost = quantize_int8(detector, fp32, out, data, calibration_images)
        typer.echo(f"int8 cost on {cost['valid_images']} valid images: ROC-AUC {cost['valid_roc_auc_int8']:.4f} vs "
                   f"fp32 {cost['valid_roc_auc_fp32']:.4f} (int8 - fp32 {-cost['roc_auc_difference']:+.4f}); "
                   f"speed {cost['forward_speed_ratio']:.2f}x the fp32 graph's (forward pass; "
                   f"{cost['speed_ratio']:.2f}x with decoding)")
    path = export_onnx(detector, out) if not quantize else Path(out)
    typer.echo(f"exported {detector.name} ({detector.kind}, score {detector.score_kind}, fake at >= "
               f"{detector.threshold:g}) to {path} ({path.stat().st_size / 1e6:.1f} MB); input: uint8 "
               f"{detector.prep.crop}x{detector.prep.crop} RGB, " + (
                   "a centre crop of the image's own pixels (no resize)" if detector.prep.resize_mode == "none"
                   else f"resized to {detector.prep.resize} ({detector.prep.resize_mode}), then centre-cropped"))
