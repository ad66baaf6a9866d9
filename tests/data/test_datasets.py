"""Loaders: the real eth_fraud file and users' CSVs (every documented error case)."""

from __future__ import annotations

import numpy as np
import pytest

from chainfl.data import Dataset, load_csv, load_eth_fraud, schema
from chainfl.errors import DataError


# --- real data ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def eth(real_data_dir):
    return load_eth_fraud(real_data_dir / "eth_fraud")


def test_eth_fraud_loads_with_documented_schema(eth):
    assert eth.X.dtype == np.float32 and eth.y.dtype == np.int64
    assert eth.X.shape == (9841 - 25, 38)                   # first of each duplicate kept
    assert len(set(eth.ids)) == len(eth.ids)
    assert int(eth.y.sum()) == 2179
    assert all(name in schema.FEATURES for name in eth.feature_names)
    assert not any(name.startswith(" ") or name.endswith(" ") for name in eth.feature_names)
    assert "ERC20 avg time between sent tnx" not in eth.feature_names      # constant, dropped
    assert schema.MISSING_FLAG not in eth.feature_names
    assert np.isfinite(eth.X).all()


def test_missing_flag_marks_exactly_the_empty_erc20_rows(real_data_dir, eth):
    flagged = load_eth_fraud(real_data_dir / "eth_fraud", missing_flag=True)
    assert flagged.feature_names[-1] == schema.MISSING_FLAG
    flag = flagged.X[:, -1]
    assert int(flag.sum()) == 829
    assert (flagged.y[flag == 1] == 1).all()                 # the artefact: all of them are fraud
    np.testing.assert_array_equal(flagged.X[:, :-1], eth.X)  # otherwise identical


def test_a_corrupt_cell_in_the_real_file_is_named_by_column_and_line(real_data_dir, tmp_path):
    source = (real_data_dir / "eth_fraud" / "transaction_dataset.csv").read_bytes().split(b"\r\n")
    header = [c.decode() for c in source[0].split(b",")]
    col = header.index(" Total ERC20 tnxs")
    cells = source[5].split(b",")              # line 6 of the file (header is line 1)
    cells[col] = b"abc"
    source[5] = b",".join(cells)
    copy = tmp_path / "transaction_dataset.csv"
    copy.write_bytes(b"\r\n".join(source))
    with pytest.raises(DataError, match=r"column 'Total ERC20 tnxs' line 6: 'abc' is not a number") as e:
        load_eth_fraud(copy)
    assert e.value.row == 6 and e.value.column == "Total ERC20 tnxs" and e.value.path == str(copy)


def test_default_path_comes_from_data_dir(real_data_dir, monkeypatch):
    monkeypatch.setenv("CHAINFL_DATA_DIR", str(real_data_dir))
    assert len(load_eth_fraud()) == 9816
    monkeypatch.setenv("CHAINFL_DATA_DIR", "/nonexistent")
    with pytest.raises(DataError, match="CHAINFL_DATA_DIR"):
        load_eth_fraud()


def test_centralised_baseline_reproduces_readme(eth):
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.metrics import f1_score
    from sklearn.model_selection import train_test_split

    Xtr, Xte, ytr, yte = train_test_split(eth.X, eth.y, test_size=0.2, stratify=eth.y, random_state=0)
    model = HistGradientBoostingClassifier(random_state=0).fit(Xtr, ytr)
    assert f1_score(yte, model.predict(Xte)) > 0.85


def test_dataset_subset_and_select(eth):
    sub = eth.subset([0, 5, 7]).select(["Sent tnx", "Received Tnx"])
    assert sub.X.shape == (3, 2) and sub.ids == [eth.ids[i] for i in (0, 5, 7)]
    np.testing.assert_array_equal(sub.X[:, 0], eth.X[[0, 5, 7], eth.feature_names.index("Sent tnx")])
    with pytest.raises(DataError, match="no feature"):
        eth.select(["nope"])


def test_dataset_rejects_mismatched_shapes():
    with pytest.raises(DataError):
        Dataset(np.zeros((3, 2)), np.zeros(2), ["a", "b"], ["x", "y", "z"], "t")


# --- users' CSV files --------------------------------------------------------------------------

def _write(tmp_path, text, name="d.csv", encoding="utf-8"):
    p = tmp_path / name
    p.write_bytes(text.encode(encoding) if isinstance(text, str) else text)
    return p


def test_load_csv_reads_numeric_columns_crlf_and_ids(tmp_path):
    p = _write(tmp_path, "Address,a, b ,label,note\r\n0xA,1,2.5,0,x\r\n0xB,3,4,1,y\r\n0xC,5,6,true,z\r\n")
    ds = load_csv(p, label="label")
    assert ds.feature_names == ["a", "b"]                    # 'note' is text, Address is the id
    assert ds.ids == ["0xA", "0xB", "0xC"]
    np.testing.assert_array_equal(ds.y, [0, 1, 1])
    np.testing.assert_allclose(ds.X, [[1, 2.5], [3, 4], [5, 6]])
    only_b = load_csv(p, label="label", features=["b"])
    assert only_b.feature_names == ["b"]


@pytest.mark.parametrize("text, column, row, match", [
    ("a,b\n1,0\n", "label", None, "label column 'label' not found"),
    ("a,label\n1,0\nx1,1\n", "a", 3, "'x1' is not a number"),
    ("a,label\n1,0\n2,2\n", "label", 3, "must be 0 .* or 1"),
    ("a,label\n1,1\n2,1\n", "label", None, "only class 1"),
    ("a,label\n1,0\n,1\n", "a", 3, "empty; fill it"),
    ("a,label\n1,0\n2,\n", "label", 3, "empty cell"),
    # the row is the line in the file, also after blank lines (which pandas skips) ...
    ("a,label\n1,0\n\n\n2,1\nx1,1\n", "a", 6, "'x1' is not a number"),
    ("a,label\n\n1,0\n\n2,7\n", "label", 5, "must be 0 .* or 1"),
    # ... and after a quoted cell that spans lines
    ('a,note,label\n1,"two\nlines",0\n,x,1\n', "a", 4, "empty; fill it"),
])
def test_load_csv_errors_name_file_column_and_row(tmp_path, text, column, row, match):
    p = _write(tmp_path, text)
    with pytest.raises(DataError, match=match) as info:
        load_csv(p, label="label", features=["a"] if "not found" not in match else None)
    assert info.value.path == str(p) and str(p) in str(info.value)
    assert info.value.column == column
    assert info.value.row == row


def test_load_csv_fill_missing(tmp_path):
    p = _write(tmp_path, "a,label\n1,0\n,1\n")
    np.testing.assert_array_equal(load_csv(p, "label", fill_missing=-1).X[:, 0], [1, -1])


def test_load_csv_empty_and_header_only(tmp_path):
    with pytest.raises(DataError, match="empty"):
        load_csv(_write(tmp_path, ""), "label")
    with pytest.raises(DataError, match="no rows"):
        load_csv(_write(tmp_path, "a,label\n", name="h.csv"), "label")


def test_load_csv_wrong_encoding_names_line(tmp_path):
    p = _write(tmp_path, "a,label\n1,0\n2,1\n3,0 é\n", encoding="latin-1")
    with pytest.raises(DataError, match="line 4 is not UTF-8") as info:
        load_csv(p, "label")
    assert info.value.row == 4


def test_load_csv_missing_file(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        load_csv(tmp_path / "absent.csv", "label")
