"""``chainfl evaluate``: score a labelled CSV with a task's audited release (e.g. the held-out
``test.csv`` of ``chainfl data prepare``) and print the metrics at the release's threshold."""

from __future__ import annotations

import click

from chainfl.cli._columns import limit_options
from chainfl.cli._common import echo_json, json_option, resolve_rpc, resolve_store, rpc_option, store_option
from chainfl.cli.audit import registry_option, resolve_registry


@click.command("evaluate")
@click.option("--task", "task_id", type=int, required=True, help="Task whose release scores the rows.")
@click.option("--data", "data_path", type=click.Path(exists=True, dir_okay=False), required=True,
              help="A labelled CSV with the release's feature columns (e.g. test.csv of `chainfl data prepare`).")
@click.option("--label", default=None, help="Label column [the features.json's beside the CSV].")
@click.option("--from-block", type=int, default=0, show_default=True, help="First block of the task's events.")
@rpc_option
@store_option
@registry_option
@limit_options
@json_option
def evaluate_cmd(task_id, data_path, label, from_block, rpc, store, registry_address, max_rows, max_bytes, as_json):
    """Audit task TASK, then score DATA with its release at the release threshold: precision,
    recall, F1, ROC-AUC, PR-AUC. Refuses a release whose audit fails."""
    from chainfl.audit.detect import load_release
    from chainfl.chain import connect
    from chainfl.data.datasets import CsvLimits, load_csv
    from chainfl.data.prepare import read_plan
    from chainfl.learning.evaluate import metrics_from_scores, predict_scores
    from chainfl.storage import open_store

    with connect(resolve_rpc(rpc), must_exist=True) as chain:
        registry = resolve_registry(chain, registry_address)
        release, report = load_release(chain, registry, open_store(resolve_store(store)), task_id,
                                       from_block=from_block)
    plan = read_plan(data_path, label=label, features=list(release.feature_names))
    ds = load_csv(data_path, plan.label, list(release.feature_names), id_column=plan.id_column,
                  fill_missing=plan.fill, limits=CsvLimits.from_options(max_bytes, max_rows))
    import numpy as np

    from chainfl.learning.models import model_inputs

    X = np.nan_to_num(np.asarray(ds.X, dtype=np.float32))
    scores = predict_scores(release.model, release.state, model_inputs(release.model, release.scaler, X))
    m = metrics_from_scores(scores, ds.y, release.threshold)
    out = {"task_id": task_id, "release": release.describe(), "data": data_path, "rows": len(ds.y),
           "positives": int(ds.y.sum()), "audit_ok": report.ok, "metrics": m}
    if as_json:
        echo_json(out)
        return
    click.echo(f"task {task_id} release {release.cid} (threshold {release.threshold:.4f}; audit ok) on "
               f"{data_path}: {len(ds.y)} rows, {int(ds.y.sum())} positive")
    click.echo(f"F1 {m['f1']:.3f}  precision {m['precision']:.3f}  recall {m['recall']:.3f}  "
               f"ROC-AUC {m['roc_auc']:.3f}  PR-AUC {m['pr_auc']:.3f}")


commands = [evaluate_cmd]
