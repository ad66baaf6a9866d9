"""``chainfl data``: the real eth_fraud data, features read from a chain, node files from a CSV."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import click

from chainfl.cli._columns import FillType, limit_options, names
from chainfl.cli._common import echo_json, json_option, resolve_rpc, rpc_option
from chainfl.errors import ConfigError, DataError


@click.group("data")
def data_group() -> None:
    """Datasets: the real eth_fraud data, features read from a chain, per-node files."""


@data_group.command("features")
@rpc_option
@click.option("--from-block", type=int, default=None, help="First block [0, or where --state left off].")
@click.option("--to-block", type=int, default=None, help="Last block [latest].")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help="CSV to write.")
@click.option("--labels", type=click.Path(exists=True), default=None,
              help="A simulation directory or labels CSV (address,label): keep labelled accounts, add 'label'.")
@click.option("--state", "state_path", type=click.Path(dir_okay=False), default=None,
              help="JSON file to resume from (if it exists) and to save the extraction state to.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@json_option
def features_cmd(rpc, from_block, to_block, output, labels, state_path, quiet, as_json):
    """Compute per-account features (the eth_fraud names) from the chain's blocks and write a CSV."""
    from chainfl.chain import connect
    from chainfl.data.features import FeatureState, extract_features

    state = None
    if state_path and Path(state_path).exists():
        state = FeatureState.loads(Path(state_path).read_text())
    with connect(resolve_rpc(rpc)) as chain:
        result = extract_features(chain.w3, from_block if from_block is not None else (None if state else 0),
                                  to_block, state=state, progress=not quiet)
    if state_path:
        Path(state_path).write_text(result.state.dumps())
    wanted = _read_labels(labels) if labels else None
    ds = result.dataset(wanted)
    with open(output, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["address", *ds.feature_names] + (["label"] if wanted is not None else []))
        for address, row, label in zip(ds.ids, ds.X.tolist(), ds.y.tolist()):
            writer.writerow([address, *[repr(float(v)) for v in row]] + ([label] if wanted is not None else []))
    summary = {"accounts": len(ds), "features": len(ds.feature_names), "output": output,
               "next_block": result.state.next_block}
    if as_json:
        echo_json(summary)
    else:
        click.echo(f"{summary['accounts']} accounts x {summary['features']} features -> {output} "
                   f"(resume at block {summary['next_block']})")


@data_group.command("eth-fraud")
@click.option("--path", type=click.Path(exists=True), default=None,
              help="The dataset file or its directory [CHAINFL_DATA_DIR/eth_fraud].")
@click.option("--missing-flag", is_flag=True, help="Add the 'ERC20 block empty' indicator (leaks the label).")
@click.option("-o", "--output", type=click.Path(dir_okay=False), default=None,
              help="Write the cleaned data (Address, FLAG, the features) to this CSV.")
@json_option
def eth_fraud_cmd(path, missing_flag, output, as_json):
    """Load the real eth_fraud dataset and describe it (rows, positives, features); -o writes it cleaned."""
    from chainfl.data import load_eth_fraud, schema

    ds = load_eth_fraud(path, missing_flag=missing_flag)
    info = {"source": ds.source, "rows": len(ds), "positives": int(ds.y.sum()),
            "positive_rate": round(ds.positive_rate, 4), "features": ds.feature_names,
            "derived_from_chain": [n for n in ds.feature_names if n in schema.DERIVED_FROM_CHAIN]}
    if output:
        frame = ds.to_frame().rename(columns={"id": schema.ADDRESS, "label": schema.LABEL})
        frame = frame[[schema.ADDRESS, schema.LABEL, *ds.feature_names]]
        frame.to_csv(output, index=False, lineterminator="\n")      # float32 values, shortest exact repr
        info["output"] = output
    if as_json:
        echo_json(info)
        return
    click.echo(f"{info['rows']} accounts, {info['positives']} fraud ({info['positive_rate']:.1%}), "
               f"{len(ds.feature_names)} features ({len(info['derived_from_chain'])} derivable from chain data)")
    for name in ds.feature_names:
        mark = "*" if name in schema.DERIVED_FROM_CHAIN else " "
        click.echo(f" {mark} {name}: {schema.FEATURES.get(name, 'indicator')}")
    if output:
        click.echo(f"wrote {len(ds)} rows ({schema.ADDRESS}, {schema.LABEL}, {len(ds.feature_names)} features) "
                   f"to {output}")


@data_group.command("prepare")
@click.option("--data", "data_path", type=click.Path(exists=True, dir_okay=False), default=None,
              help="A labelled CSV (one row per account; needs --label).")
@click.option("--label", default=None, help="Label column of --data (0 normal, 1 anomalous).")
@click.option("--dataset", type=click.Choice(["eth_fraud"]), default=None,
              help="The real labelled dataset in CHAINFL_DATA_DIR instead of --data.")
@click.option("--nodes", type=int, default=5, show_default=True, help="Node files to write.")
@click.option("--partition", "partition_", type=click.Choice(["iid", "dirichlet", "column"]), default="iid",
              show_default=True,
              help="iid: stratified, every node gets both classes; dirichlet: label skew on purpose (--alpha); "
                   "column: sorted by --by and cut into contiguous slices.")
@click.option("--alpha", type=float, default=0.5, show_default=True, help="Dirichlet concentration (small = skewed).")
@click.option("--by", default=None, help="Column to sort and cut by (--partition column), e.g. a time or a region.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the test split and the partition.")
@click.option("--test-fraction", type=click.FloatRange(0, 1, max_open=True), default=0.2, show_default=True,
              help="Share of each class held out in test.csv; 0 = no test file.")
@click.option("--features", multiple=True, metavar="A,B,…",
              help="Exactly these feature columns (comma-separated, repeatable); a text column listed here is "
                   "encoded as the frequency of its value [numeric columns that are not id-like or constant].")
@click.option("--drop", multiple=True, metavar="A,B,…", help="Columns never to use (comma-separated, repeatable).")
@click.option("--fill", type=FillType(), default="0", show_default=True,
              help="Value for empty feature cells; 'none' makes a blank an error.")
@click.option("--id-column", default=None, help="Column of row ids [Address, else detected, else a new 'row'].")
@click.option("--chain-features", is_flag=True,
              help="Use exactly the features `chainfl data features` computes from a chain's blocks "
                   "(chainfl.data.schema.DERIVED_FROM_CHAIN), so that `chainfl detect` can score any chain "
                   "with the trained model.")
@click.option("-o", "--out", "out_dir", type=click.Path(file_okay=False), required=True,
              help="Directory for node1.csv … nodeN.csv, test.csv and features.json.")
@limit_options
@json_option
def prepare_cmd(data_path, label, dataset, nodes, partition_, alpha, by, seed, test_fraction, features, drop,
                fill, id_column, chain_features, out_dir, max_rows, max_bytes, as_json):
    """Split a labelled CSV (or the real dataset) into per-node CSV files, a held-out test.csv and
    the one feature list every node uses (features.json).

    Id-like columns (row numbers, indexes, addresses, hashes) and text columns are never features
    unless listed in --features; every dropped column is recorded with its reason. A column that
    separates the labels alone is reported (stderr and features.json). Deterministic for a --seed.
    """
    from chainfl.data.csvfile import PREPARE_LIMITS, CsvLimits
    from chainfl.data.prepare import PrepareConfig, prepare_csv, prepare_eth_fraud, write_prepared

    if bool(data_path) == bool(dataset):
        raise ConfigError("pass either --data CSV --label COLUMN or --dataset eth_fraud")
    if data_path and not label:
        raise ConfigError("--data CSV needs --label COLUMN (the 0/1 label column)")
    if chain_features:
        from chainfl.data.schema import DERIVED_FROM_CHAIN

        if features:
            raise ConfigError("pass either --features or --chain-features, not both")
        features = (",".join(DERIVED_FROM_CHAIN),)
    cfg = PrepareConfig(nodes=nodes, partition=partition_, alpha=alpha, by=by, seed=seed,
                        test_fraction=test_fraction, features=names(features), drop=names(drop) or (),
                        fill=fill, id_column=id_column)
    limits = CsvLimits.from_options(max_bytes, max_rows, default=PREPARE_LIMITS)
    prepared = prepare_csv(data_path, label, cfg, limits) if data_path else prepare_eth_fraud(cfg, limits=limits)
    written = write_prepared(prepared, out_dir)
    m = prepared.manifest
    for w in m.warnings:
        click.secho(f"warning: {w['message']}", fg="yellow", err=True)
    if as_json:
        echo_json({**m.to_dict(), "written": [str(p) for p in written]})
        return
    src = m.source
    dups = f", {src['duplicates_dropped']} repeated ids dropped" if src.get("duplicates_dropped") else ""
    click.echo(f"{src['rows_used']} rows ({src['positives']} positive{dups}) from {src['name']}")
    click.echo(f"features: {len(m.features)} (label {m.label!r}, ids {m.id_column!r}, empty cells -> "
               f"{'an error' if m.fill is None else format(m.fill, 'g')})")
    for d in m.dropped:
        click.echo(f"  not a feature: {d['column']!r}: {d['reason']}")
    p = m.partition
    click.echo(f"partition: {p['note']}")
    click.echo(f"{'node':>6} {'rows':>8} {'positives':>9} {'rate':>6}")
    for n in p["per_node"]:
        click.echo(f"{n['node']:>6} {n['rows']:>8} {n['positives']:>9} {n['positive_rate']:>6.3f}")
    if m.test:
        click.echo(f"test.csv: {m.test['rows']} rows ({m.test['positives']} positive)")
    click.echo(f"wrote {', '.join(p_.name for p_ in written)} to {out_dir}")


def _read_labels(path: str) -> dict[str, int]:
    p = Path(path)
    if p.is_dir():
        p = p / "labels.csv"
    if p.suffix == ".json":
        data = json.loads(p.read_text())
        return {k.lower(): int(v) for k, v in data.get("labels", data).items()}
    try:
        with open(p, newline="") as f:
            rows = list(csv.DictReader(f))
    except FileNotFoundError as e:
        raise DataError(f"labels file {p} does not exist", path=str(p)) from e
    if not rows or "address" not in rows[0] or "label" not in rows[0]:
        raise ConfigError(f"{p}: expected a CSV with columns address,label")
    return {r["address"].lower(): int(r["label"]) for r in rows}


commands = [data_group]
