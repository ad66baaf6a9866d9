"""The ``chainfl`` command line: one module per noun in this package.

Each module ``chainfl/cli/<noun>.py`` exposes ``commands``: a list of click commands or groups,
added to the top-level group here. Commands stay thin: parse, call the library, print.
Library errors (:class:`chainfl.errors.ChainflError`) become a clean message and exit code 1.
"""

from __future__ import annotations

import importlib
import logging
import pkgutil
import sys

import click

from chainfl import __version__
from chainfl.errors import ChainflError


class _Group(click.Group):
    """Adds the noun modules' commands lazily and turns ChainflError into a clean exit."""

    def _load(self) -> None:
        if getattr(self, "_loaded", False):
            return
        self._loaded = True
        for info in pkgutil.iter_modules(__path__):
            if info.name.startswith("_"):
                continue
            module = importlib.import_module(f"{__name__}.{info.name}")
            for command in getattr(module, "commands", []):
                self.add_command(command)

    def list_commands(self, ctx):
        self._load()
        return super().list_commands(ctx)

    def get_command(self, ctx, name):
        self._load()
        return super().get_command(ctx, name)

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except ChainflError as e:
            click.secho(f"Error: {e}", fg="red", err=True)
            ctx.exit(1)
        except OSError as e:      # a file chainfl had to read or write: name it, not a traceback
            from chainfl import config

            where = f" {e.filename}" if getattr(e, "filename", None) else ""
            click.secho(f"Error: cannot use{where}: {e.strerror or e}. Check that the path exists and is writable "
                        f"(CHAINFL_HOME is {config.home_dir()}).", fg="red", err=True)
            ctx.exit(1)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="chainfl")
@click.option("-v", "--verbose", count=True, help="More log output on stderr (-vv for debug).")
def main(verbose: int) -> None:
    """chainfl: train blockchain-anomaly detectors across data holders, with an Ethereum
    registry as the audit trail and IPFS for model weights."""
    level = logging.WARNING - 10 * min(verbose, 2)
    logging.basicConfig(level=level, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
