"""Peak memory and time of ``chainfl node stats`` on large CSV files, before and after streaming.

Measures, writing ``benchmarks/results/csv_memory.md`` (+ ``.json``):

1. a node file like the ones users hold: the real data cleaned as ``chainfl data eth-fraud -o``
   writes it (``Address``, ``FLAG``, 38 numeric features), its rows repeated until the file
   reaches each size of ``--sizes`` (default 64 MiB, 256 MiB, 2 GiB); built in a temporary
   directory that is deleted afterwards;
2. ``chainfl node stats --data BIG --label FLAG -o stats.json`` of this checkout ("after": the
   file is streamed in chunks) and of ``--before`` (default: the commit before streaming, exported
   with ``git archive`` into the temporary directory: the whole file is read into memory), each in
   its own process; peak resident memory from ``wait4`` (the child's own ``ru_maxrss``), wall time;
   both must write the same statistics, bit for bit;
3. the training path, ``load_csv`` (the whole file in memory, which :class:`CsvLimits` caps), of
   both versions at the sizes up to ``--load-max`` (default 256 MiB): the bytes of memory per byte
   of file behind the default 1 GiB cap.

"Before" runs only while the machine has room for it (``MemAvailable`` > 6x the file + 2 GiB);
a skipped run says so in the table. Run from the repository root:
``python -m benchmarks.csv_memory`` (``--quick`` for a smoke run at 8 MiB).
"""

from __future__ import annotations

import argparse
import io
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

from benchmarks._common import Table, log, write_results
from chainfl.config import REPO_ROOT

MIB = 1 << 20
#: The last commit whose `node stats` read the whole CSV into memory (`load_csv`).
BEFORE = "cfc968c"

_STATS = "from chainfl.cli import main; main()"
_LOAD = """
import sys, chainfl
from chainfl.data import datasets
kwargs = {"limits": datasets.CsvLimits(None, None)} if hasattr(datasets, "CsvLimits") else {}
ds = datasets.load_csv(sys.argv[1], "FLAG", **kwargs)
print(len(ds), chainfl.__file__)
"""


def _node_file(path: Path, size: int, body: bytes, header: bytes) -> int:
    """Write ``header`` then ``body`` repeated until ``size`` bytes, each copy's addresses made
    new (their first 8 hex digits = the copy's number); returns the data rows."""
    lines = body.rstrip(b"\n").split(b"\n")
    rows = 0
    with open(path, "wb") as f:
        f.write(header)
        written, copy = len(header), 0
        while written < size:
            prefix = b"0x%08x" % copy
            block = b"\n".join(prefix + line[10:] for line in lines) + b"\n"
            f.write(block)
            written += len(block)
            rows += len(lines)
            copy += 1
    return rows


def _cleaned_real_data() -> tuple[bytes, bytes]:
    from chainfl.data import load_eth_fraud, schema

    ds = load_eth_fraud()
    frame = ds.to_frame().rename(columns={"id": schema.ADDRESS, "label": schema.LABEL})
    frame = frame[[schema.ADDRESS, schema.LABEL, *ds.feature_names]]
    text = frame.to_csv(index=False, lineterminator="\n").encode()
    header, _, body = text.partition(b"\n")
    return header + b"\n", body


def _export(commit: str, into: Path) -> Path:
    """``chainfl/`` of ``commit`` (via git archive) under ``into``; nothing in the checkout changes."""
    blob = subprocess.run(["git", "archive", "--format=tar", commit, "chainfl"], cwd=REPO_ROOT,
                          capture_output=True, check=True).stdout
    with tarfile.open(fileobj=io.BytesIO(blob)) as tar:
        tar.extractall(into, filter="data")
    return into


def _run(args: list[str], pythonpath: Path, cwd: Path) -> dict:
    """Run ``python -c <args>`` in its own process; peak RSS (MiB) of that process and wall time."""
    env = dict(os.environ, PYTHONPATH=str(pythonpath), OMP_NUM_THREADS="1")
    t = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-c", *args], cwd=cwd, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    out = proc.stdout.read()
    err = proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    seconds = time.perf_counter() - t
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(args[:3])} failed ({proc.returncode}): {err.decode()[-2000:]}")
    return {"seconds": round(seconds, 1), "peak_rss_mib": round(usage.ru_maxrss / 1024, 1),
            "stdout": out.decode().strip(), "stderr": err.decode().strip()}


def _available_mib() -> float:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) / 1024
    return float("inf")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", default="64,256,1024,2048", help="File sizes, MiB, comma-separated.")
    p.add_argument("--before", default=BEFORE, help="Commit of the in-memory version.")
    p.add_argument("--before-max", type=int, default=256,
                   help="Largest size (MiB) to run the in-memory version on (~12x the file in memory).")
    p.add_argument("--load-max", type=int, default=1024, help="Largest size (MiB) for load_csv (after).")
    p.add_argument("--quick", action="store_true", help="One 8 MiB file (smoke run).")
    p.add_argument("--results-dir", default=None)
    args = p.parse_args(argv)
    sizes = [8] if args.quick else [int(s) for s in args.sizes.split(",")]
    from chainfl.data.csvfile import PREPARE_LIMITS

    header, body = _cleaned_real_data()
    tmp = Path(tempfile.mkdtemp(prefix="chainfl-csv-memory-"))
    stats_rows, load_rows, prepare_rows, raw = [], [], [], []
    try:
        roots = {"before": _export(args.before, tmp / "before"), "after": REPO_ROOT}
        for size_mib in sizes:
            path = tmp / f"node-{size_mib}MiB.csv"
            n_rows = _node_file(path, size_mib * MIB, body, header)
            size = path.stat().st_size
            mib = round(size / MIB)
            log(f"{path.name}: {size / MIB:.0f} MiB, {n_rows:,} rows")

            def measure(kind, version, argv, table):
                if version == "before" and (size_mib > args.before_max or _available_mib() < 13 * mib + 2048):
                    log(f"  {kind} {version}: skipped")
                    table.append([mib, n_rows, version, None, None, None, f"not run (> {args.before_max} MiB)"])
                    return None
                r = _run(argv, roots[version], tmp)
                log(f"  {kind} {version}: {r['seconds']} s, peak {r['peak_rss_mib']} MiB")
                table.append([mib, n_rows, version, r["seconds"], r["peak_rss_mib"],
                              round(r["peak_rss_mib"] * MIB / size, 2), ""])
                raw.append({"size_bytes": size, "rows": n_rows, "version": version, "command": kind, **r})
                return r

            written = {}
            for version in ("before", "after"):
                out = tmp / f"stats-{version}.json"
                if measure("node stats", version, [_STATS, "node", "stats", "--data", str(path), "--label", "FLAG",
                                                    "-o", str(out)], stats_rows):
                    written[version] = out.read_bytes()
                    out.unlink()
            if len(written) == 2:
                same = written["before"] == written["after"]
                stats_rows[-1][-1] = stats_rows[-2][-1] = "same statistics" if same else "STATISTICS DIFFER"
                if not same:
                    raise AssertionError(f"{path.name}: before and after wrote different statistics")
            for version in ("before", "after"):
                if size_mib <= (args.before_max if version == "before" else args.load_max):
                    r = measure("load_csv", version, [_LOAD, str(path)], load_rows)
                    if r is not None:
                        assert r["stdout"].split()[1].startswith(str(roots[version])), r["stdout"]  # right checkout
            if size <= PREPARE_LIMITS.max_bytes:
                measure("data prepare", "after", [_STATS, "data", "prepare", "--data", str(path), "--label", "FLAG",
                                                  "-o", str(tmp / "prepared")], prepare_rows)
                shutil.rmtree(tmp / "prepared", ignore_errors=True)
            path.unlink()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    after = [r for r in stats_rows if r[2] == "after"]
    before = [r for r in stats_rows if r[2] == "before" and r[4] is not None]
    headline = {"largest_file_mib": after[-1][0], "after_peak_rss_mib": after[-1][4], "after_seconds": after[-1][3]}
    if before:
        headline.update({"before_file_mib": before[-1][0], "before_peak_rss_mib": before[-1][4],
                         "before_seconds": before[-1][3]})
    headers = ["file MiB", "rows", "version", "seconds", "peak RSS MiB", "peak RSS / file size", "note"]
    tables = [
        Table("`chainfl node stats --data BIG --label FLAG -o stats.json`", headers, stats_rows,
              digits=2, note=f"before = commit {args.before} (the whole file read into memory); after = this checkout "
                   f"(streamed in chunks). Each run is its own process; peak RSS from wait4. "
                   f"`same statistics`: both wrote identical stats.json bytes."),
        Table("`load_csv(BIG, 'FLAG')` (training data, loaded whole; what CsvLimits caps at 1 GiB)", headers,
              load_rows, digits=2),
        Table("`chainfl data prepare --data BIG --label FLAG -o DIR` (5 iid nodes + test.csv; capped at 512 MiB)",
              headers, prepare_rows, digits=2),
    ]
    notes = ["The file is the real eth_fraud data cleaned as `chainfl data eth-fraud -o` writes it "
             "(Address, FLAG, 38 features), its 9,816 rows repeated with new addresses; built in a temporary "
             "directory and deleted.",
             "`node stats` reads the file twice (labels, then features): the validation rows, which the "
             "statistics leave out, are drawn per class over the whole label column.",
             f"The in-memory version ran up to {args.before_max} MiB only: at ~12x the file it would need "
             f"~24 GiB for 2 GiB, more than this shared machine has free."]
    write_results("csv_memory", "CSV size and memory: `node stats` streamed, `load_csv` chunked and capped", tables,
                  headline=headline, notes=notes, results_dir=args.results_dir,
                  extra={"runs": raw, "sizes_mib": sizes, "before": args.before})


if __name__ == "__main__":
    main()
