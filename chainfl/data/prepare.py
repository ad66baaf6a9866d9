"""From one labelled table to per-node CSV files, a held-out test file and ``features.json``.

:func:`prepare_frame` is pure (a frame of string cells in, frames and a :class:`Manifest` out);
:func:`prepare_csv` / :func:`prepare_eth_fraud` read the input, :func:`write_prepared` writes
``node1.csv … nodeN.csv``, ``test.csv`` and ``features.json``. In order:

1. **columns** (:mod:`chainfl.data.columns`): the features are the numeric columns that are not
   id-like and not constant over the file (or exactly ``features``), minus ``drop``; every other
   column is recorded with its reason. Text columns named in ``features`` are encoded as the
   **frequency** of their value among the training rows (0 for a value seen only in the test
   rows), written as ``"<column> (frequency)"``;
2. **ids**: the id column (``Address`` when present; else a text column of addresses or unique per
   row; else a new ``row`` column = the record's position in the input, from 1) is kept in every
   file; addresses are lower-cased; a repeated id keeps its **first** row, so a duplicate can
   never sit on both sides of a split;
3. **fill**: every empty cell of a feature becomes ``fill`` (default 0, the honest setting for the
   real data, whose 829 empty-ERC20 rows are all fraud); ``fill=None`` makes a blank an error;
4. **test split**: ``test_fraction`` of each class (seeded) goes to ``test.csv``;
5. **partition** of the other rows over ``nodes`` with :mod:`chainfl.data.partition`: ``iid``
   is stratified (each class dealt evenly, so every node holds both classes, or an error says
   how many nodes the data allows); ``dirichlet`` is label skew **on purpose** (the summary says
   which nodes hold one class); ``column`` sorts by ``by`` and cuts contiguous slices (node k
   holds the k-th range of that column, e.g. an era or a region code);
6. **leak check**: a feature that separates the labels alone (single-feature ROC-AUC >= 0.99 or
   <= 0.01) is reported in ``warnings``, naming ``--drop COLUMN``.

The same input and settings give the same bytes.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from chainfl.data import columns as cols
from chainfl.data.partition import partition as split_indices
from chainfl.data.csvfile import PREPARE_LIMITS, CsvLimits, parse_labels, parse_numbers, read_frame, record_line
from chainfl.errors import ConfigError, DataError

log = logging.getLogger(__name__)

FORMAT = "chainfl-features/1"
MANIFEST = "features.json"
PARTITIONS = ("iid", "dirichlet", "column")
FILL_RULE = ("every empty cell of a feature column becomes {fill} in the node and test files "
             "(numeric and encoded text columns alike)")


@dataclass(frozen=True)
class PrepareConfig:
    """How to cut one labelled table into node files (see the module docstring)."""

    nodes: int = 5                              # node files
    partition: str = "iid"                      # iid | dirichlet | column
    alpha: float = 0.5                          # dirichlet concentration (small = more skew)
    by: str | None = None                       # column to sort and cut by (partition="column")
    seed: int = 0                               # test split and partition
    test_fraction: float = 0.2                  # share of each class in test.csv (0 = no test file)
    features: tuple[str, ...] | None = None     # exactly these columns (None: the automatic choice)
    drop: tuple[str, ...] = ()                  # never these columns
    fill: float | None = 0.0                    # value for empty feature cells (None: blanks are errors)
    id_column: str | None = None                # the rows' ids (None: Address, else detected, else "row")

    def __post_init__(self):
        object.__setattr__(self, "drop", tuple(self.drop))
        if self.features is not None:
            object.__setattr__(self, "features", tuple(self.features))
        if self.partition not in PARTITIONS:
            raise ConfigError(f"unknown partition {self.partition!r}; use one of {', '.join(PARTITIONS)}")
        if not isinstance(self.nodes, (int, np.integer)) or self.nodes < 1:
            raise ConfigError(f"--nodes must be a positive integer, got {self.nodes!r}")
        if not 0 <= self.test_fraction < 1:
            raise ConfigError(f"--test-fraction must be in [0, 1), got {self.test_fraction!r}")
        if self.partition == "column" and not self.by:
            raise ConfigError("--partition column needs --by COLUMN (the column to sort and cut by)")
        if self.partition != "column" and self.by:
            raise ConfigError("--by COLUMN only applies to --partition column")
        if self.partition == "dirichlet" and not self.alpha > 0:
            raise ConfigError(f"--alpha must be > 0, got {self.alpha!r}")
        if self.fill is not None and not np.isfinite(self.fill):
            raise ConfigError(f"--fill must be a finite number or 'none', got {self.fill!r}")


@dataclass(frozen=True)
class Manifest:
    """``features.json``: the one feature list and how the files were made."""

    label: str
    features: tuple[str, ...]                   # feature columns of the node and test files, in order
    id_column: str
    fill: float | None
    fill_rule: str = ""
    dropped: tuple[dict, ...] = ()              # {"column", "reason"} for every other input column
    encodings: dict = field(default_factory=dict)   # text column -> {"encoding", "column", "values"}
    warnings: tuple[dict, ...] = ()             # {"column"?, "message", ...}
    partition: dict = field(default_factory=dict)
    test: dict | None = None
    source: dict = field(default_factory=dict)
    config: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        d = asdict(self)
        d = {"format": FORMAT, **d, "features": list(self.features), "dropped": list(self.dropped),
             "warnings": list(self.warnings)}
        return d

    @classmethod
    def from_dict(cls, d: dict, where: str = "features.json") -> "Manifest":
        if d.get("format") != FORMAT:
            raise DataError(f"{where} is not a `chainfl data prepare` feature list (format {d.get('format')!r}, "
                            f"expected {FORMAT!r}); pass --features instead, or re-run `chainfl data prepare`")
        try:
            return cls(label=str(d["label"]), features=tuple(str(f) for f in d["features"]),
                       id_column=str(d["id_column"]),
                       fill=None if d.get("fill") is None else float(d["fill"]), fill_rule=d.get("fill_rule", ""),
                       dropped=tuple(d.get("dropped", ())), encodings=dict(d.get("encodings", {})),
                       warnings=tuple(d.get("warnings", ())), partition=dict(d.get("partition", {})),
                       test=d.get("test"), source=dict(d.get("source", {})), config=dict(d.get("config", {})))
        except (KeyError, TypeError, ValueError) as e:
            raise DataError(f"{where} is malformed ({e!r}); re-run `chainfl data prepare`") from e

    @classmethod
    def load(cls, path: str | Path) -> "Manifest":
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError as e:
            raise DataError(f"{path}: no such file; pass the features.json that `chainfl data prepare` wrote",
                            path=str(path)) from e
        except ValueError as e:
            raise DataError(f"{path}: not JSON ({e}); pass the features.json that `chainfl data prepare` wrote",
                            path=str(path)) from e
        return cls.from_dict(data, str(path))

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2, sort_keys=False) + "\n")


@dataclass
class Prepared:
    """The output of :func:`prepare_frame`: one frame per node, the test frame, the manifest."""

    manifest: Manifest
    nodes: list[pd.DataFrame]          # columns: id, label, features
    test: pd.DataFrame | None


# --- the pure core -------------------------------------------------------------------------------

def prepare_frame(frame: pd.DataFrame, label: str, cfg: PrepareConfig, source: str = "input",
                  path: Path | None = None, source_info: dict | None = None) -> Prepared:
    """Cut ``frame`` (string cells, empty = NaN, indexed by record) as the module docstring says.
    ``path`` is only used to name lines in error messages."""
    path = Path(path) if path is not None else Path(source)
    frame = frame.copy()
    frame.columns = [str(c).strip() for c in frame.columns]
    if len(frame) == 0:
        raise DataError(f"{source}: the file has a header but no rows", path=str(path))
    if cfg.by is not None and cfg.by not in frame.columns:
        raise DataError(f"{source}: --by column {cfg.by!r} not found; columns are {list(frame.columns)}",
                        path=str(path), column=cfg.by)
    profiles = cols.profile_frame(frame)
    choice = cols.choose_features(profiles, label, features=cfg.features, drop=cfg.drop,
                                  id_column=cfg.id_column, fill=cfg.fill, drop_constant=True,
                                  allow_text=True, source=source)
    y_all = parse_labels(frame[label], path)

    # 2. ids, duplicates
    id_name, ids = _ids(frame, choice.id_column, profiles, path)
    keep = ~pd.Series(ids).duplicated(keep="first").to_numpy()
    duplicates = int((~keep).sum())
    conflicting = 0
    if duplicates:
        first_label = pd.Series(y_all[keep], index=ids[keep])
        conflicting = int(sum(first_label[i] != y for i, y in zip(ids[~keep], y_all[~keep])))
    frame, ids, y = frame[keep], ids[keep], y_all[keep]
    _both_classes(y, source, label)

    # 4. test split (before encoding: encodings are learnt on training rows only)
    train, test = _test_split(y, cfg.test_fraction, cfg.seed)

    # 1 + 3. feature matrix: numbers, encoded text, fill
    X, names, encodings = _features(frame, choice, train, cfg.fill, path)

    # 5. partition of the training rows
    order = _order(frame[cfg.by].iloc[train], path) if cfg.partition == "column" else None
    parts = _partition(y[train], cfg, order, source)

    # 6. leaks
    warnings = [w.to_dict() for w in cols.leak_warnings(X, y, names)]
    dropped = _dropped_with_leaks(choice, frame, y, path)

    def table(rows: np.ndarray) -> pd.DataFrame:
        out = pd.DataFrame(X[rows], columns=names)
        out.insert(0, label, y[rows])
        out.insert(0, id_name, ids[rows])
        return out

    node_rows = [train[p] for p in parts]
    per_node = [{"node": k + 1, "file": f"node{k + 1}.csv", "rows": int(len(r)), "positives": int(y[r].sum()),
                 "positive_rate": round(float(y[r].mean()), 4)} for k, r in enumerate(node_rows)]
    one_class = [n["node"] for n in per_node if n["positives"] in (0, n["rows"])]
    if one_class:
        warnings.append({"message": f"node(s) {one_class} hold one class only ({cfg.partition} partition); "
                                    f"`chainfl node stats` / `node run` refuse a one-class file: raise --alpha, "
                                    f"use fewer --nodes or --partition iid", "nodes": one_class})
    partition_info = {"scheme": cfg.partition, "nodes": cfg.nodes, "seed": cfg.seed,
                      "alpha": cfg.alpha if cfg.partition == "dirichlet" else None, "by": cfg.by,
                      "note": _partition_note(cfg, per_node), "per_node": per_node, "one_class_nodes": one_class}
    test_info = None
    if len(test):
        test_info = {"file": "test.csv", "fraction": cfg.test_fraction, "rows": int(len(test)),
                     "positives": int(y[test].sum())}
    info = dict(source_info or {})
    info.update({"name": source, "rows": int(len(y_all)), "duplicates_dropped": duplicates,
                 "duplicates_with_other_label": conflicting, "rows_used": int(len(y)),
                 "positives": int(y.sum())})
    manifest = Manifest(label=label, features=tuple(names), id_column=id_name, fill=cfg.fill,
                        fill_rule=FILL_RULE.format(fill="an error" if cfg.fill is None else f"{cfg.fill:g}"),
                        dropped=tuple(dropped), encodings=encodings, warnings=tuple(warnings),
                        partition=partition_info, test=test_info, source=info,
                        config={k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(cfg).items()})
    return Prepared(manifest, [table(r) for r in node_rows], table(test) if len(test) else None)


def _both_classes(y: np.ndarray, source: str, label: str) -> None:
    if len(np.unique(y)) < 2:
        raise DataError(f"{source}: column {label!r} holds only class {int(y[0])}; a detector needs "
                        f"examples of both 0 (normal) and 1 (anomalous)", column=label)


def _ids(frame: pd.DataFrame, id_column: str | None, profiles, path: Path) -> tuple[str, np.ndarray]:
    if id_column is None:
        name = next(n for n in ("row", "row_id", "chainfl_row") if n not in frame.columns)
        return name, np.asarray([str(r + 1) for r in range(len(frame))], dtype=object)
    cells = frame[id_column]
    if cells.isna().any():
        record = int(cells.index[int(np.flatnonzero(cells.isna().to_numpy())[0])])
        raise DataError(f"{path}: id column {id_column!r} line {record_line(path, record)} is empty; every row "
                        f"needs an id: fill it, or choose another column with --id-column",
                        path=str(path), column=id_column)
    values = cells.astype(str).str.strip()
    if profiles[id_column].address_like:
        values = values.str.lower()
    return id_column, values.to_numpy(dtype=object)


def _test_split(y: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded, stratified: ``round(fraction * n_c)`` rows of each class to the test side."""
    rng = np.random.default_rng([seed, 0x7E57])
    test = []
    for c in (0, 1):
        members = rng.permutation(np.flatnonzero(y == c))
        test.append(members[:int(round(len(members) * fraction))])
    mask = np.zeros(len(y), dtype=bool)
    mask[np.concatenate(test)] = True
    return np.flatnonzero(~mask), np.flatnonzero(mask)


def _features(frame, choice: cols.FeatureChoice, train: np.ndarray, fill, path: Path):
    names, columns, encodings = [], [], {}
    for name in choice.features:
        if name in choice.text_features:
            cells = frame[name]
            train_cells = cells.iloc[train].dropna()
            shares = (train_cells.value_counts() / max(1, len(train))).sort_index()
            values = cells.map(shares.to_dict()).astype(np.float64)
            values[cells.notna() & values.isna()] = 0.0            # seen in the test rows only
            if cells.isna().any():
                if fill is None:
                    parse_numbers(cells[cells.isna()], path, name, None)   # raises, naming the line
                values = values.fillna(float(fill))
            encoded = f"{name} (frequency)"
            encodings[name] = {"encoding": "frequency", "column": encoded,
                               "rule": "share of the training rows holding this value; 0 if none does",
                               "values": {str(k): float(v) for k, v in shares.items()}}
            names.append(encoded)
            columns.append(values.to_numpy(np.float64))
        else:
            names.append(name)
            columns.append(parse_numbers(frame[name], path, name, fill))
    X = np.column_stack(columns) if columns else np.empty((len(frame), 0))
    return X, names, encodings


def _order(cells: pd.Series, path: Path) -> np.ndarray:
    """A sort key per row from the ``--by`` column: numbers when every cell is one, else the
    text; blanks sort last."""
    numbers = pd.to_numeric(cells, errors="coerce")
    if (numbers.notna() | cells.isna()).all():
        return numbers.fillna(np.inf).to_numpy(np.float64)
    codes, _ = pd.factorize(cells.fillna("\uffff"), sort=True)
    return codes.astype(np.int64)


def _partition(y: np.ndarray, cfg: PrepareConfig, order, source: str) -> list[np.ndarray]:
    n = cfg.nodes
    if n > len(y):
        raise DataError(f"{source}: {n} nodes but only {len(y)} training rows; use --nodes {len(y)} or fewer")
    if cfg.partition == "dirichlet":
        return split_indices(y, n, "dirichlet", alpha=cfg.alpha, seed=cfg.seed)
    if cfg.partition == "column":
        return split_indices(y, n, "blocks", seed=cfg.seed, order=order)
    # iid, stratified: each class cut into n near-equal iid parts; class c's part k goes to node
    # (k + shift) mod n, the shift moving each class's larger parts to the nodes that are smaller
    smallest = min(int((y == c).sum()) for c in (0, 1))
    if smallest < n:
        cls = 0 if int((y == 0).sum()) == smallest else 1
        raise DataError(f"{source}: only {smallest} training rows of class {cls} for {n} nodes: an iid split "
                        f"gives every node both classes, which needs at least one row of each per node; use "
                        f"--nodes {smallest} or fewer (or a smaller --test-fraction)")
    nodes: list[list[np.ndarray]] = [[] for _ in range(n)]
    shift = 0
    for c in (0, 1):
        members = np.flatnonzero(y == c)
        pieces = split_indices(np.zeros(len(members)), n, "iid", seed=cfg.seed + c)
        for k, piece in enumerate(pieces):
            nodes[(k + shift) % n].append(members[piece])
        shift += len(members) % n
    return [np.sort(np.concatenate(p)) for p in nodes]


def _partition_note(cfg: PrepareConfig, per_node: list[dict]) -> str:
    rates = [n["positive_rate"] for n in per_node]
    span = f"positive rates {min(rates):.3f}..{max(rates):.3f}"
    if cfg.partition == "iid":
        return f"stratified iid: each class dealt evenly, every node holds both classes ({span})"
    if cfg.partition == "dirichlet":
        return (f"label skew on purpose: each class shared out by Dirichlet({cfg.alpha:g}) weights; "
                f"small alpha = more skew ({span})")
    return f"sorted by {cfg.by!r} and cut into {cfg.nodes} contiguous slices ({span})"


def _dropped_with_leaks(choice: cols.FeatureChoice, frame: pd.DataFrame, y: np.ndarray, path: Path) -> list[dict]:
    """The dropped columns; a numeric one that would separate the labels alone says so (e.g. the
    real data's row number ``Unnamed: 0``, whose file is sorted by label)."""
    out = []
    for column, reason in choice.dropped:
        values = pd.to_numeric(frame[column], errors="coerce")
        if values.notna().all():
            auc = cols.single_feature_auc(values.to_numpy(np.float64), y)
            if auc is not None and (auc >= cols.LEAK_AUC or auc <= 1 - cols.LEAK_AUC):
                reason += f"; alone it separates the labels (ROC-AUC {auc:.3f}), a leak if kept"
        out.append({"column": column, "reason": reason})
    return out


# --- I/O around it ----------------------------------------------------------------------------------

def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def prepare_csv(path: str | Path, label: str, cfg: PrepareConfig, limits: CsvLimits | None = None) -> Prepared:
    """Read a labelled CSV whole (within ``limits``, default :data:`PREPARE_LIMITS`) and
    :func:`prepare_frame` it."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: no such file", path=str(path))
    (limits if limits is not None else PREPARE_LIMITS).check(path)
    frame = read_frame(path)
    info = {"path": str(path), "sha256": _sha256(path), "bytes": path.stat().st_size}
    return prepare_frame(frame, label, cfg, source=str(path), path=path, source_info=info)


def prepare_eth_fraud(cfg: PrepareConfig, path: str | Path | None = None, limits: CsvLimits | None = None) -> Prepared:
    """The real dataset through the same rules (label ``FLAG``; its row number, ``Index`` and
    ``Address`` are id-like, the token-name columns text, 7 columns constant: 38 features, the
    same as :func:`chainfl.data.load_eth_fraud`)."""
    from chainfl.data.datasets import default_eth_fraud_path
    from chainfl.data import schema

    path = Path(path) if path is not None else default_eth_fraud_path()
    if path.is_dir():
        path = path / "transaction_dataset.csv"
    if not path.exists():
        raise DataError(f"eth_fraud dataset not found at {path}; set CHAINFL_DATA_DIR to the directory "
                        f"that holds eth_fraud/transaction_dataset.csv", path=str(path))
    return prepare_csv(path, schema.LABEL, cfg, limits)


def write_prepared(prepared: Prepared, out: str | Path) -> list[Path]:
    """Write the node files, ``test.csv`` and ``features.json`` into ``out``; returns the paths.
    Refuses to mix with node files of an earlier run that had more nodes."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    n = len(prepared.nodes)
    stale = [p.name for p in sorted(out.glob("node*.csv"))
             if p.stem[4:].isdigit() and int(p.stem[4:]) > n]
    if stale:
        raise ConfigError(f"{out} already holds {', '.join(stale)} from an earlier run with more nodes; "
                          f"remove them or write to another --out directory")
    written = []
    for k, node in enumerate(prepared.nodes):
        written.append(_write_csv(node, out / f"node{k + 1}.csv"))
    test = out / "test.csv"
    if prepared.test is not None:
        written.append(_write_csv(prepared.test, test))
    elif test.exists():
        test.unlink()                       # --test-fraction 0: no stale test file next to the list
    prepared.manifest.save(out / MANIFEST)
    written.append(out / MANIFEST)
    return written


def _write_csv(frame: pd.DataFrame, path: Path) -> Path:
    frame.to_csv(path, index=False, lineterminator="\n")     # float64 as the shortest exact repr
    return path


# --- reading node files with the recorded list ---------------------------------------------------

@dataclass(frozen=True)
class ReadPlan:
    """How to read one CSV: from ``--features``/``--drop``/``--fill``/``--label``, else the
    ``features.json`` next to it (or ``--features-file``), else the automatic choice."""

    label: str
    features: tuple[str, ...] | None        # None: automatic (chainfl.data.columns)
    drop: tuple[str, ...] = ()
    fill: float | None = None
    id_column: str | None = None
    manifest: str | None = None             # the features.json used, if any


def find_manifest(csv_path: str | Path) -> Path | None:
    """``features.json`` in the CSV's directory, if there is one."""
    candidate = Path(csv_path).parent / MANIFEST
    return candidate if candidate.is_file() else None


def read_plan(csv_path: str | Path, *, label: str | None = None, features: Sequence[str] | None = None,
              drop: Sequence[str] = (), fill: float | None = None, features_file: str | Path | None = None) -> ReadPlan:
    """Combine the options with a manifest (``features_file``, else one next to the CSV).

    ``features`` and ``features_file`` exclude each other; ``features`` replaces the list of a
    manifest that merely sits next to the CSV (its label, ids and fill still apply). A manifest's
    label must equal ``label`` when both are given; ``fill`` defaults to the manifest's. ``drop``
    applies to whichever list is used.
    """
    drop = tuple(d.strip() for d in drop)
    features = None if features is None else tuple(f.strip() for f in features)
    if features is not None and features_file is not None:
        raise ConfigError("use either --features or --features-file, not both")
    manifest, where = None, None
    if features_file is not None:
        where = Path(features_file)
        manifest = Manifest.load(where)
    elif (found := find_manifest(csv_path)) is not None:
        try:
            manifest, where = Manifest.load(found), found
        except DataError as e:
            log.warning("ignoring %s: %s", found, e)
    if manifest is None:
        if label is None:
            raise ConfigError(f"{csv_path}: which column is the label? pass --label COLUMN (or keep the "
                              f"features.json of `chainfl data prepare` next to the file)")
        return ReadPlan(label, features, drop, fill)
    if label is not None and label != manifest.label:
        raise ConfigError(f"--label {label!r} differs from the label {manifest.label!r} recorded in {where}; "
                          f"drop --label or pass another --features-file")
    fill = manifest.fill if fill is None else fill
    if features is not None:
        return ReadPlan(manifest.label, features, drop, fill, manifest.id_column, None)
    missing = [d for d in drop if d not in manifest.features]
    if missing:
        raise ConfigError(f"--drop {missing} names column(s) that are not in {where}'s feature list "
                          f"{list(manifest.features)}")
    return ReadPlan(manifest.label, manifest.features, drop, fill, manifest.id_column, str(where))
