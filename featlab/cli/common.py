"""What every featlab command shares: the one-line error wrapper, common options, the work folder."""

from __future__ import annotations

import errno
import functools
import logging
from pathlib import Path

import click
import typer

from featlab.core.errors import FeatlabError
from featlab.core.workspace import WORKDIR_ENV, Workspace

log = logging.getLogger("featlab")


def bare_ray_means_local(args: list[str]) -> list[str]:
    """``--ray`` with no value means a local cluster: the next word is its value only when it is one
    (local, auto or HOST:PORT), so ``--ray --workdir W`` and a trailing ``--ray`` both work."""
    out = []
    for i, arg in enumerate(args):
        out.append(arg)
        if arg == "--ray":
            following = args[i + 1] if i + 1 < len(args) else None
            if following is None or not (following in ("local", "auto") or ":" in following):
                out.append("local")
    return out


RAY_OPTION = typer.Option(None, "--ray", help="Run on Ray Data: 'local' (a local cluster; also a bare --ray), 'auto' "
                         "(the running cluster) or a cluster address HOST:PORT; needs pip install 'featlab\\[ray]'.")


WORKDIR_OPTION = typer.Option(
    None,
    "--workdir",
    envvar=WORKDIR_ENV,
    help="Work folder for features/, models/ and reports/ (default ./featlab-work or $FEATLAB_WORKDIR).",
)


def friendly(command):
    """Turn FeatlabError into one line on stderr and exit code 1."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except FeatlabError as error:
            if log.isEnabledFor(logging.DEBUG):
                log.exception("failed")
            typer.echo(f"featlab: error: {error}", err=True)
            raise typer.Exit(1) from None
        except OSError as error:  # disk full, read-only folder, permissions: say which file and why
            if log.isEnabledFor(logging.DEBUG):
                log.exception("failed")
            where = f": {error.filename}" if error.filename else ""
            hint = {errno.ENOSPC: "; free some space and run the same command again: everything already "
                                  "committed is kept", errno.EROFS: "; choose a writable --workdir / --out",
                    errno.EACCES: "; check the permissions"}.get(error.errno, "")
            typer.echo(f"featlab: error: {error.strerror or error}{where}{hint}", err=True)
            raise typer.Exit(1) from None
        except (click.exceptions.ClickException, click.exceptions.Exit, click.exceptions.Abort, SystemExit):
            raise  # usage errors (exit 2) and deliberate exits
        except KeyboardInterrupt:
            typer.echo(
                "\nfeatlab: interrupted. Everything already committed is kept: extracted embeddings (saved shard by "
                "shard), finished models, and the last completed training epoch; run the same command again to "
                "resume (train-cnn: add --resume).", err=True,
            )
            raise typer.Exit(130) from None
        except Exception as error:  # noqa: BLE001 - a bug must still end in one line, not a traceback
            log.debug("internal error", exc_info=True)
            first = (str(error).strip().splitlines() or [""])[0][:200]
            typer.echo(f"featlab: error: internal error ({type(error).__name__}: {first}); rerun with "
                       "--log-level debug for the traceback and report it", err=True)
            raise typer.Exit(1) from None

    return wrapper


def open_workspace(workdir: Path | None, writable: bool = True) -> Workspace:
    """The work folder, checked writable before any long work starts (``writable=False``: commands that only
    read it, which then work on a read-only work folder too)."""
    from featlab.data.faces import use_cache

    ws = Workspace.resolve(workdir)
    ws = ws.ensure_writable() if writable else ws
    use_cache(ws.faces if writable else None)  # face detections are kept with the rest of the work
    return ws


FACES_OPTION = typer.Option("none", "--faces", help="none: whole images; detect: the aligned main face of each "
                            "image (MTCNN), an image without one is quarantined; auto: detect unless a sample of the "
                            "dataset is already face-aligned portraits (the decision is printed and recorded).")
FACE_SIZE_OPTION = typer.Option(None, "--face-size", min=32, help="Side of the aligned face crop in pixels (default: "
                                "the backbone's resize size, so its centre crop keeps the face).")
FACE_MARGIN_OPTION = typer.Option(None, "--face-margin", min=0.0, max=0.49, help="Context around the face template, "
                                  "as a share of the crop on each side (default 0.2, or the model's own).")


def choose_face_stage(mode: str, data: Path, size: int, margin: float):
    """The face stage ``--faces MODE`` means for the dataset at ``data``; ``auto``'s decision is printed."""
    from featlab.data.dataset import scan_dataset
    from featlab.data.faces import choose_faces

    if mode == "none":
        return None
    stage, decision = choose_faces(mode, scan_dataset(data, check_images=False), size, margin)
    if mode == "auto":
        echo_auto_faces(decision)
    return stage


def echo_auto_faces(decision: dict) -> None:
    typer.echo(f"faces auto: {decision['faces']} ({decision['one_centred_face']}/{decision['sampled']} sampled train "
               f"images are one centred face; {decision['rule']})")


SCORING_FACES_OPTION = typer.Option("model", "--faces", help="model: as the model was trained (whole images, or the "
                                    "aligned main face); detect: score aligned faces; none: whole images; auto: "
                                    "detect unless the images are already face-aligned portraits.")
ALLOW_MISMATCH_OPTION = typer.Option(False, "--allow-mismatch", help="Let a model trained on aligned faces score "
                                     "whole images (--faces none).")


def detector_faces(detector, mode: str, target: Path | None, size: int | None, margin: float | None,
                   allow_mismatch: bool):
    """``detector`` through the face stage ``--faces`` asks for (:func:`featlab.evaluation.faces.faces_for`);
    ``auto`` decides on the images under ``target`` (default: the model's training data)."""
    from featlab.evaluation.faces import faces_for

    manifest = None
    if mode == "auto":
        from featlab.data.dataset import scan_images

        where = target or (Path(detector.trained_on) if detector.trained_on else None)
        if where is None:
            raise FeatlabError("--faces auto: name the images (--data) to decide on")
        manifest = scan_images(where)
    twin, decision = faces_for(detector, mode, manifest, size, margin, allow_mismatch)
    if mode == "auto":
        echo_auto_faces(decision)
    return twin
