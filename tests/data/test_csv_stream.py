"""Bounded-memory reading: streamed statistics equal in-memory ones bit for bit; caps checked first."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from chainfl.data import csvfile, datasets
from chainfl.data.csvfile import CsvLimits, exact_sum_parts
from chainfl.data.datasets import load_csv, read_labels, stream_feature_stats
from chainfl.data.scaling import FeatureStats
from chainfl.errors import DataError


def _csv(tmp_path, n=997, seed=0, name="node.csv", blanks=False):
    """Heavy-tailed values (1e-3 .. 1e12, signed), an id-like row number, an address, a text column."""
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame({
        "Unnamed: 0": np.arange(n),
        "Address": [f"0x{i:040x}" for i in range(n)],
        "amount": rng.lognormal(0, 6, n) * rng.choice([-1, 1], n),
        "count": rng.integers(0, 1000, n),
        "tiny": rng.random(n) * 1e-3,
        "token": rng.choice(["EOS", "OMG", "0"], n),
        "label": (rng.random(n) < 0.2).astype(int),
    })
    if blanks:
        frame.loc[rng.choice(n, 40, replace=False), "amount"] = np.nan
    path = tmp_path / name
    frame.to_csv(path, index=False)
    return path


@pytest.mark.parametrize("chunk_rows", [1, 7, 100, 5000])
@pytest.mark.parametrize("log", ["all", "none", ["amount"]])
def test_streamed_stats_equal_in_memory_stats_exactly(tmp_path, chunk_rows, log):
    path = _csv(tmp_path)
    ds = load_csv(path, "label")
    assert ds.feature_names == ["amount", "count", "tiny"]         # no row number, no address, no text
    rows = np.random.default_rng(1).random(len(ds)) < 0.8
    expected = FeatureStats.compute(ds.X[rows], ds.feature_names, log)
    streamed = stream_feature_stats(path, "label", rows, log=log, chunk_rows=chunk_rows)
    assert streamed.stats == expected                             # every float bit for bit
    assert streamed.rows == len(ds) and streamed.stats.count == int(rows.sum())
    assert [c for c, _ in streamed.choice.dropped] == ["Unnamed: 0", "Address", "token"]
    listed = stream_feature_stats(path, "label", rows, features=["tiny", "amount"], log=log if log != ["amount"]
                                  else ["amount"], chunk_rows=chunk_rows)
    assert listed.stats == FeatureStats.compute(ds.select(["tiny", "amount"]).X[rows], ["tiny", "amount"],
                                                log if log != ["amount"] else ["amount"])


def test_load_csv_gives_the_same_dataset_whatever_the_chunk_size(tmp_path):
    path = _csv(tmp_path, blanks=True)
    whole = load_csv(path, "label", fill_missing=0.0, chunk_rows=10**6)
    for size in (1, 13, 400):
        part = load_csv(path, "label", fill_missing=0.0, chunk_rows=size)
        assert part.feature_names == whole.feature_names == ["amount", "count", "tiny"]
        assert part.ids == whole.ids and part.ids[0] == f"0x{0:040x}"
        np.testing.assert_array_equal(part.X, whole.X)
        np.testing.assert_array_equal(part.y, whole.y)


def test_streamed_stats_with_fill_and_drop(tmp_path):
    path = _csv(tmp_path, blanks=True)
    with pytest.raises(DataError, match=r"column 'amount' line \d+ is empty; fill it, or pass --fill VALUE"):
        stream_feature_stats(path, "label", chunk_rows=50)
    ds = load_csv(path, "label", fill_missing=-1.0, drop=["count"])
    streamed = stream_feature_stats(path, "label", fill_missing=-1.0, drop=["count"], chunk_rows=50)
    assert ds.feature_names == ["amount", "tiny"]
    assert streamed.stats == FeatureStats.compute(ds.X, ds.feature_names)


def test_exact_parts_are_what_makes_chunked_sums_exact():
    values = [1e16, 1.0, -1e16, 1.0]
    naive = math.fsum([math.fsum(values[:2]), math.fsum(values[2:])])    # each chunk rounded first
    assert naive == 0.0 and math.fsum(values) == 2.0
    parts = exact_sum_parts(values[2:], exact_sum_parts(values[:2]))
    assert math.fsum(parts) == 2.0
    rng = np.random.default_rng(2)
    x = (rng.standard_normal(10_000) * 10.0 ** rng.integers(-8, 12, 10_000)).tolist()
    parts = []
    for start in range(0, len(x), 333):
        parts = exact_sum_parts(x[start:start + 333], parts)
    assert math.fsum(parts) == math.fsum(x)


def test_streamed_stats_read_the_file_in_chunks(tmp_path, monkeypatch):
    path = _csv(tmp_path, n=1000)
    sizes = []
    original = csvfile.iter_chunks

    def counting(*args, **kwargs):
        for start, chunk in original(*args, **kwargs):
            sizes.append(len(chunk))
            yield start, chunk

    monkeypatch.setattr(datasets, "iter_chunks", counting)
    stream_feature_stats(path, "label", chunk_rows=64)
    assert max(sizes) == 64 and sum(sizes) == 1000


@pytest.mark.parametrize("text, row, match, column", [
    ("a,label\n" + "1,0\n" * 30 + "x1,1\n", 32, "'x1' is not a number", "a"),
    ("a,label\n" + "1,0\n" * 30 + "\n\n2,7\n", 34, "must be 0 .* or 1", "label"),
    ('a,note,label\n1,"two\nlines",0\n' + "1,x,1\n" * 20 + ',x,1\n', 24, "empty; fill it", "a"),
    ("a,label\n" + "1,0\n" * 30 + "inf,1\n", 32, "not finite", "a"),
])
def test_streamed_errors_name_the_same_line_as_load_csv(tmp_path, text, row, match, column):
    path = tmp_path / "bad.csv"
    path.write_text(text)
    with pytest.raises(DataError, match=match) as loaded:
        load_csv(path, "label", features=["a"])
    with pytest.raises(DataError, match=match) as streamed:
        if column == "label":
            read_labels(path, "label", chunk_rows=4)
        else:
            stream_feature_stats(path, "label", features=["a"], chunk_rows=4)
    assert loaded.value.row == streamed.value.row == row
    assert loaded.value.column == streamed.value.column == column
    assert str(loaded.value) == str(streamed.value)


def test_read_labels_streams_int8_and_refuses_one_class(tmp_path):
    path = _csv(tmp_path, n=300)
    y = read_labels(path, "label", chunk_rows=16)
    assert y.dtype == np.int8 and np.array_equal(y, load_csv(path, "label").y)
    one = tmp_path / "one.csv"
    one.write_text("a,label\n1,1\n2,1\n")
    with pytest.raises(DataError, match="holds only class 1"):
        read_labels(one, "label")
    with pytest.raises(DataError, match="label column 'nope' not found"):
        read_labels(path, "nope")


def test_streaming_reports_non_utf8_by_line(tmp_path):
    path = tmp_path / "latin.csv"
    path.write_bytes(("a,label\n" + "1,0\n" * 5000 + "3,0 é\n").encode("latin-1"))
    with pytest.raises(DataError, match="line 5002 is not UTF-8") as e:
        read_labels(path, "label", chunk_rows=100)
    assert e.value.row == 5002


# --- caps -----------------------------------------------------------------------------------------

def test_limits_round_trip_and_options():
    limits = CsvLimits(max_bytes=1000, max_rows=None)
    assert CsvLimits.from_dict(limits.to_dict()) == limits
    assert CsvLimits().to_dict() == {"max_bytes": 1 << 30, "max_rows": 2_000_000}
    assert CsvLimits.from_options(None, None) == CsvLimits()
    assert CsvLimits.from_options(0, 5) == CsvLimits(None, 5)
    with pytest.raises(DataError, match="max_rows must be a positive integer or None"):
        CsvLimits(max_rows=0)
    with pytest.raises(DataError, match="unknown CSV limit"):
        CsvLimits.from_dict({"max_cells": 3})


def test_caps_are_checked_before_the_file_is_read(tmp_path, monkeypatch):
    path = _csv(tmp_path, n=50)
    size = path.stat().st_size

    def no_reading(*args, **kwargs):
        raise AssertionError("the file was read although it is over a cap")

    monkeypatch.setattr(datasets, "read_frame", no_reading)
    with pytest.raises(DataError, match=rf"{size:,} bytes .* is over the cap of {size - 1:,} bytes .*\(max_bytes\); "
                                        r"raise it with --max-bytes BYTES \(or CHAINFL_CSV_MAX_BYTES; 0 = no cap\)"):
        load_csv(path, "label", limits=CsvLimits(max_bytes=size - 1))
    with pytest.raises(DataError, match=r"more than 49 data rows, the cap .*\(max_rows\); raise it with "
                                        r"--max-rows N \(or CHAINFL_CSV_MAX_ROWS; 0 = no cap\)"):
        load_csv(path, "label", limits=CsvLimits(max_rows=49))


def test_row_cap_counts_records_not_lines(tmp_path):
    path = tmp_path / "multiline.csv"
    path.write_text("a,note,label\n" + "".join(f'{i},"two\nlines",{i % 2}\n' for i in range(10)))
    CsvLimits(max_rows=10).check(path)                    # 21 newlines but 10 records: within the cap
    with pytest.raises(DataError, match="more than 9 data rows"):
        CsvLimits(max_rows=9).check(path)
    assert len(load_csv(path, "label", limits=CsvLimits(max_rows=10))) == 10
