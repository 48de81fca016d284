"""The ``featlab`` command line: a thin typer layer over the library API, one module per command group.

Errors the user can fix print one line (``featlab: error: ...``) and exit 1; usage errors
exit 2 (typer/click); tracebacks are only shown with ``--log-level debug``.
"""

from __future__ import annotations

import logging
import sys

import typer
from typer.core import TyperGroup

from featlab import __version__
from featlab.cli import analysis, data, evaluate, explain, features, fit, serve, video
from featlab.cli.common import bare_ray_means_local

_bare_ray_means_local = bare_ray_means_local  # the name featlab 0.2 tests import


class _Group(TyperGroup):
    def parse_args(self, ctx, args):
        return super().parse_args(ctx, bare_ray_means_local(list(args)))


app = typer.Typer(
    cls=_Group,
    name="featlab",
    help="Tell real face photos from DeepFake / GAN-made / edited ones: frozen CNN features + SVM, "
    "compared with fine-tuned CNN baselines.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"featlab {__version__}")
        raise typer.Exit()


@app.callback()
def main_options(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version."),
    log_level: str = typer.Option("info", "--log-level", help="debug, info, warning or error."),
) -> None:
    level = getattr(logging, log_level.upper(), None)
    if not isinstance(level, int):
        raise typer.BadParameter(f"unknown log level {log_level!r}", param_hint="--log-level")
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr, force=True)


app.add_typer(data.app, name="data")
# one module per command group (the order is the one `featlab --help` lists)
for _group in (features, fit, analysis, evaluate, video, explain, serve):
    app.registered_commands.extend(_group.app.registered_commands)


def main() -> None:
    app()
