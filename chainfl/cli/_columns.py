"""Options of every command that reads a labelled CSV: which columns, blanks, size caps."""

from __future__ import annotations

import click

features_option = click.option(
    "--features", "features", multiple=True, metavar="A,B,…",
    help="Feature columns, comma-separated (repeatable) [the features.json next to the CSV, else the "
         "numeric columns that are not id-like].")
drop_option = click.option(
    "--drop", "drop", multiple=True, metavar="A,B,…",
    help="Columns never to use as features, comma-separated (repeatable).")
features_file_option = click.option(
    "--features-file", type=click.Path(exists=True, dir_okay=False), default=None,
    help="features.json from `chainfl data prepare` [the one next to the CSV, if any].")
fill_option = click.option(
    "--fill", "fill", type=float, default=None,
    help="Value for empty feature cells [the features.json's; else a blank is an error].")
max_rows_option = click.option(
    "--max-rows", type=click.IntRange(min=0), default=None, envvar="CHAINFL_CSV_MAX_ROWS", show_envvar=True,
    help="Cap on data rows of a CSV read into memory; 0 = no cap [2000000].")
max_bytes_option = click.option(
    "--max-bytes", type=click.IntRange(min=0), default=None, envvar="CHAINFL_CSV_MAX_BYTES", show_envvar=True,
    help="Cap on the size of a CSV read into memory, bytes; 0 = no cap [1073741824 = 1 GiB; "
         "data prepare: 536870912 = 512 MiB].")


def names(values) -> tuple[str, ...] | None:
    """``("a,b", "c")`` -> ``("a", "b", "c")``; nothing given -> None."""
    out = tuple(n.strip() for v in values or () for n in v.split(",") if n.strip())
    return out or None


def column_options(f):
    """--features, --drop, --features-file, --fill."""
    for opt in reversed([features_option, drop_option, features_file_option, fill_option]):
        f = opt(f)
    return f


def limit_options(f):
    """--max-rows, --max-bytes."""
    return max_rows_option(max_bytes_option(f))


class FillType(click.ParamType):
    """A number, or ``none`` (blanks are errors)."""

    name = "VALUE|none"

    def convert(self, value, param, ctx):
        if value is None or isinstance(value, float):
            return value
        if str(value).strip().lower() == "none":
            return None
        try:
            return float(value)
        except ValueError:
            self.fail(f"{value!r} is neither a number nor 'none'", param, ctx)
