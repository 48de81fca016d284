"""``featlab serve``: detectors loaded once, scored over HTTP."""

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
