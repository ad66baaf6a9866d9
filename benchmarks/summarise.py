"""Regenerate ``benchmarks/README.md`` — the benchmarks index — from the results files.

Every number in the index is copied by this script from ``benchmarks/results/*.md`` (and the
``.json`` sidecars that :func:`benchmarks._common.write_results` writes), never typed by hand:
one line per question of issue 8 with the command that produces it and its headline figures,
then the headline tables copied verbatim. Results files written by other scripts are read as
markdown: their command line (``command:`` / ``Command:``), their date, and tables picked by
heading keywords.

Run (from the repository root) after any benchmark::

    python -m benchmarks.summarise            # writes benchmarks/README.md
    python -m benchmarks.summarise --check    # exit 1 if README.md is out of date
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path

if __package__ in (None, ""):                      # `python benchmarks/summarise.py`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

BENCH_DIR = Path(__file__).resolve().parent
RESULTS = BENCH_DIR / "results"


# --- reading results files -------------------------------------------------------------------

@dataclass
class MdTable:
    heading: str          # the nearest heading above the table ("" if none)
    text: str             # the table's lines, verbatim


def read_tables(md: str) -> list[MdTable]:
    """Every markdown table in ``md`` with the heading it sits under."""
    tables, heading, block = [], "", []
    for line in md.splitlines() + [""]:
        if line.lstrip().startswith("|"):
            block.append(line.rstrip())
            continue
        if block:
            if len(block) >= 2 and re.match(r"^\s*\|[\s:|-]+\|\s*$", block[1]):
                tables.append(MdTable(heading, "\n".join(block)))
            block = []
        m = re.match(r"^#{1,6}\s+(.*)$", line)
        if m:
            heading = m.group(1).strip()
    return tables


def read_command(md: str) -> str | None:
    """The command a results file says produced it (``command: `...` `` in any case/markup)."""
    m = re.search(r"command[^`\n]*`([^`]+)`", md, flags=re.IGNORECASE)
    return m.group(1).strip() if m else None


def read_date(md: str) -> str | None:
    m = re.search(r"date[^0-9\n]*([0-9]{4}-[0-9]{2}-[0-9]{2}[^\n]*)", md, flags=re.IGNORECASE)
    return m.group(1).strip() if m else None


@dataclass
class Result:
    name: str
    path: Path
    md: str | None
    meta: dict | None                  # the JSON sidecar, when the script used _common.write_results

    @property
    def exists(self) -> bool:
        return self.md is not None

    @property
    def command(self) -> str | None:
        if self.meta:
            return self.meta.get("command")
        return read_command(self.md) if self.md else None

    @property
    def date(self) -> str | None:
        if self.meta:
            return self.meta.get("date")
        return read_date(self.md) if self.md else None

    def tables(self, *keywords: str, first: int | None = None) -> list[MdTable]:
        """Tables whose heading contains any keyword (case-insensitive); all when none given."""
        found = read_tables(self.md or "")
        if keywords:
            found = [t for t in found if any(k.lower() in t.heading.lower() for k in keywords)]
        return found[:first] if first else found


def load(name: str, results_dir: Path = RESULTS) -> Result:
    md_path, json_path = results_dir / f"{name}.md", results_dir / f"{name}.json"
    md = md_path.read_text() if md_path.exists() else None
    meta = None
    if json_path.exists():
        try:
            meta = json.loads(json_path.read_text())
        except ValueError:
            meta = None
    return Result(name, md_path, md, meta)


# --- headline sentences from the JSON sidecars -------------------------------------------------

def _f(x, digits=2) -> str:
    return "–" if x is None else f"{x:.{digits}f}"


def flower_headline(r: Result) -> str:
    h = r.meta["headline"]
    parts = []
    for key in ("inprocess", "flower"):
        if key in h:
            parts.append(f"{'chainfl in-process' if key == 'inprocess' else 'Flower'} "
                         f"{_f(h[key]['median_round_s'], 3)} s/round (start-up {_f(h[key]['startup_s'], 1)} s, "
                         f"F1 {_f(h[key]['f1'], 3)})")
    for key, v in h.items():
        if key.startswith("chain "):
            ratio = f", {_f(v['ratio_to_flower'], 1)}× Flower" if v.get("ratio_to_flower") else ""
            parts.append(f"chainfl on chain ({key[6:]}) {_f(v['median_round_s'], 2)} s/round"
                         f"{ratio}, F1 {_f(v['f1'], 3)}")
    return (f"{h['nodes']} nodes × {h['rounds']} rounds: " + "; ".join(parts) + ".")


def gas_headline(r: Result) -> str | None:
    h = r.meta["headline"] if r.meta else {}
    if "gas_total" not in h:
        return None
    top = sorted(h["gas_by_op"].items(), key=lambda kv: -kv[1])[:3]
    return (f"whole {h['nodes']}-node × {h['rounds']}-round run ({h['gas_config']}): "
            f"{h['gas_total']:,} gas (largest: " + ", ".join(f"{k} {v:,}" for k, v in top) + ")")


def overhead_headline(r: Result) -> str:
    h = r.meta["headline"]
    parts = [f"{cfg}: {_f(v['s_per_round'])} s/round, {_f(v['chain_storage_pct'], 0)} % chain + storage "
             f"({_f(v['x_inprocess'], 0)}× in-process" + (f"; bottleneck: {v['bottleneck']}" if v.get("bottleneck") else "")
             + (f" — {', '.join(v['top_chain_calls'][:2])}" if v.get("bottleneck") == "chain" and v.get("top_chain_calls") else "")
             + ")" for cfg, v in h["configs"].items()]
    return (f"{h['nodes']} nodes, in-process {_f(h['inprocess_s_per_round'], 3)} s/round; "
            + "; ".join(parts) + ".")


def scale_headline(r: Result) -> str:
    h = r.meta["headline"]
    parts = []
    for system, sizes in h["by_system"].items():
        cells = ", ".join(f"{n}: {_f(v['s_per_round'])} s/round, {v['peak_rss_mib']:.0f} MiB, "
                          f"{v['tx_per_round']:.0f} tx" for n, v in sizes.items())
        parts.append(f"{system} — {cells}")
    return "; ".join(parts) + "."


# --- the index -------------------------------------------------------------------------------

@dataclass
class Question:
    number: str
    title: str
    sources: list[tuple[str, str]]          # (results name, default command if the file has none)


QUESTIONS = [
    Question("1", "Detection quality (centralised, local-only, chained, FedAvg, robust rules; IID / α 0.5 / α 0.1)",
             [("experiments", "python -m benchmarks.experiments"),
              ("experiments_iid", "python -m benchmarks.experiments --partition iid"),
              ("experiments_alpha01", "python -m benchmarks.experiments --alpha 0.1"),
              ("experiments_trees", "python -m benchmarks.experiments --sections trees")]),
    Question("2", "Robustness (attacks × defences × malicious fraction; screening precision/recall)",
             [("experiments_attacks", "python -m benchmarks.experiments --sections attacks"),
              ("experiments_attacks_more", "python -m benchmarks.experiments --sections attacks"),
              ("experiments_attacks_10pct", "python -m benchmarks.experiments --sections attacks --fraction 0.1"),
              ("experiments_attacks_30pct", "python -m benchmarks.experiments --sections attacks --fraction 0.3")]),
    Question("3", "Overhead of chain + IPFS per round, and side by side with Flower",
             [("overhead", "python -m benchmarks.overhead"),
              ("flower_compare", "python -m benchmarks.flower_compare")]),
    Question("4", "Gas of every registry operation and of a full 50-node × 20-round run",
             [("gas", "python benchmarks/gas.py"), ("flower_compare", "python -m benchmarks.flower_compare")]),
    Question("5", "Scale: 10 / 50 / 200 nodes (time per round, peak memory, transactions per round)",
             [("scale", "python -m benchmarks.scale"),
              ("simulate", "python -m benchmarks.simulate_throughput")]),
]
OTHERS = [("seed_scenario", "python -m benchmarks.seed_scenario", "The seed's scenario end to end"),
          ("audit_detect", "python -m benchmarks.audit_detect", "Audit and detection"),
          ("models_offline", "python -m benchmarks.models_offline", "Models offline: federated gbdt vs pooled trees, PLE-MLP"),
          ("gbdt_onchain", "python -m benchmarks.gbdt_onchain", "The default gbdt job on chain under label flippers"),
          ("gbdt_defence_default", "python -m benchmarks.gbdt_defence --partitions 0.5 iid 0.1 --name gbdt_defence_default",
           "The gbdt screen with the default job's trees and screen"),
          ("gbdt_defence_default_shares",
           "python -m benchmarks.gbdt_defence --shares-only --partitions 0.5 iid 0.1 --name gbdt_defence_default",
           "How much of each class the label flippers hold"),
          ("gbdt_defence", "python -m benchmarks.gbdt_defence --min-rows 0 16 --small-z 0 --trees 76",
           "The gbdt label-consistency screen under label flippers (76 trees, flat threshold vs min rows 16)"),
          ("gbdt_defence_allowance", "python -m benchmarks.gbdt_defence", "The gbdt screen's first sweep (allowance)"),
          ("gbdt_defence_min8", "python -m benchmarks.gbdt_defence", "The gbdt screen with min rows 8"),
          ("gbdt_defence_smallz2", "python -m benchmarks.gbdt_defence", "The gbdt screen's small-node test, z 2 and 2.5"),
          ("gbdt_defence_smallz", "python -m benchmarks.gbdt_defence", "The gbdt screen's small-node test, z 3"),
          ("default_run", "python -m benchmarks.default_run", "The default federated job on the real data"),
          ("early_stopping", "python -m benchmarks.early_stopping", "Early stopping on the nodes' validation reports"),
          ("early_stopping_gbdt", "python -m benchmarks.early_stopping --model gbdt --partition iid --fixed 0",
           "Early stopping on the default gbdt job"),
          ("protocol_attacks", "python -m benchmarks.protocol_attacks", "Protocol attackers on Anvil"),
          ("csv_memory", "python -m benchmarks.csv_memory", "Memory of node stats / load_csv / data prepare"),
          ("chained_newton", "python -m benchmarks.chained_newton", "Chained mode with the newton model"),
          ("peer_onchain", "python -m benchmarks.peer_onchain", "Peer validation on chain (federated mlp)"),
          ("peer_onchain_aucloss", "python -m benchmarks.peer_onchain --metric auc+loss --peer-only "
                                   "--name peer_onchain_aucloss", "Peer validation on chain with the auc+loss score"),
          ("gbdt_rounds", "python -m benchmarks.gbdt_rounds", "Trees for the default gbdt on the default job's split")]

#: which tables of a results file each question copies (heading keywords; empty = first table)
TABLE_PICKS = {
    ("1", "experiments"): ("NaN", "missingness flag", "chained"),
    ("1", "experiments_iid"): ("NaN", "chained", "attack"),
    ("1", "experiments_alpha01"): ("NaN", "chained", "attack"),
    ("1", "experiments_trees"): ("NaN",),
    ("2", "experiments_attacks"): ("attack", "screening"),
    ("2", "experiments_attacks_more"): ("attack", "screening"),
    ("2", "experiments_attacks_10pct"): ("attack", "screening"),
    ("2", "experiments_attacks_30pct"): ("attack", "screening"),
    ("3", "overhead"): ("per round",),
    ("3", "flower_compare"): ("side by side",),
    ("4", "gas"): (),
    ("4", "flower_compare"): ("gas of the whole",),
    ("5", "scale"): (),
    ("5", "simulate"): (),
}


def headline_for(q: Question, r: Result) -> str:
    if not r.exists:
        return "not produced yet"
    if r.meta:
        if r.name == "flower_compare":
            return (gas_headline(r) or "no on-chain run in the file") if q.number == "4" else flower_headline(r)
        if r.name == "overhead":
            return overhead_headline(r)
        if r.name == "scale":
            return scale_headline(r)
    return generic_headline(r, TABLE_PICKS.get((q.number, r.name), ()),
                            **DIGEST_SIZE.get((q.number, r.name), {}))


#: how much of a table the one-line headline copies (rows, value columns)
DIGEST_SIZE = {("4", "gas"): {"max_rows": 20, "max_cols": 1}}


def generic_headline(r: Result, picks=(), **size) -> str:
    """A results file's own summary paragraph (JSON sidecar), else its first picked table in one line."""
    if r.meta and r.meta.get("summary"):
        return " ".join(r.meta["summary"].split())
    tables = r.tables(*picks, first=1) or r.tables(first=1)
    return table_digest(tables[0], **size) if tables else "see the file"


def _cells(line: str) -> list[str]:
    return [c.strip() for c in line.strip().strip("|").split("|")]


def table_digest(t: MdTable, max_rows: int = 6, max_cols: int = 3) -> str:
    """A table squeezed into one line: ``heading — row: col value, col value; ...`` (copied cells)."""
    lines = t.text.splitlines()
    header = _cells(lines[0])
    rows = [_cells(x) for x in lines[2:2 + max_rows]]
    parts = []
    for row in rows:
        values = ", ".join(f"{h} {v}" for h, v in list(zip(header[1:], row[1:]))[:max_cols])
        parts.append(f"{row[0]}: {values}")
    more = " …" if len(lines) - 2 > max_rows else ""
    return f"{t.heading} — " + "; ".join(parts) + more


def render(results_dir: Path = RESULTS) -> str:
    cache: dict[str, Result] = {}

    def get(name: str) -> Result:
        if name not in cache:
            cache[name] = load(name, results_dir)
        return cache[name]

    out = ["# chainfl benchmarks", "",
           "One script per question of issue 8; each writes `results/<name>.md` recording the exact "
           "command, the date, the machine (cores, CPU, RAM) and the versions. Ratios are measured side "
           "by side in one run; per-round figures are medians of repeated rounds.", "",
           "**This file is generated** by `python -m benchmarks.summarise` from the results files — "
           "every number below is copied from them by the script. Do not edit it by hand.", "",
           "| # | question | command | results | headline |", "|---|---|---|---|---|"]
    for q in QUESTIONS:
        for name, default in q.sources:
            r = get(name)
            cmd = (r.command or default).replace("|", "\\|")
            link = f"[{name}.md](results/{name}.md)" if r.exists else f"{name}.md (missing)"
            out.append(f"| {q.number} | {q.title} | `{cmd}` | {link} | {headline_for(q, r).replace('|', '/')} |")
    for name, default, title in OTHERS:
        r = get(name)
        cmd = (r.command or default).replace("|", "\\|")
        link = f"[{name}.md](results/{name}.md)" if r.exists else f"{name}.md (missing)"
        out.append(f"| – | {title} | `{cmd}` | {link} | "
                   f"{generic_headline(r).replace('|', '/') if r.exists else 'not produced yet'} |")
    out += ["", "Shared helpers: `benchmarks/_common.py` (machine/versions/date, medians, timing proxies, "
            "the shared 50-node workload, the results writer). Smoke tests: "
            "`pytest tests/benchmarks/test_bench_smoke.py` runs each of these scripts at a tiny size.", ""]

    out += ["## Headline tables (copied from the results files)", ""]
    for q in QUESTIONS:
        out += [f"### {q.number}. {q.title}", ""]
        for name, default in q.sources:
            r = get(name)
            if not r.exists:
                out += [f"*{name}.md* not produced yet — run `{default}`.", ""]
                continue
            picks = TABLE_PICKS.get((q.number, name), ())
            tables = (r.tables(*picks) if picks else r.tables(first=1)) or r.tables(first=1)
            out += [f"From [{name}.md](results/{name}.md) ({r.date or 'undated'}):", ""]
            for t in tables[:3]:
                if t.heading:
                    out += [f"**{t.heading}**", ""]
                out += [t.text, ""]
    out += ["### Other benchmarks", ""]
    for name, default, title in OTHERS:
        r = get(name)
        if not r.exists:
            out += [f"*{name}.md* ({title}) not produced yet — run `{default}`.", ""]
            continue
        out += [f"{title}, from [{name}.md](results/{name}.md) ({r.date or 'undated'}):", ""]
        for t in r.tables(first=2):
            if t.heading:
                out += [f"**{t.heading}**", ""]
            out += [t.text, ""]
    return "\n".join(out).rstrip() + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--results-dir", default=str(RESULTS))
    ap.add_argument("--out", default=str(BENCH_DIR / "README.md"))
    ap.add_argument("--check", action="store_true", help="exit 1 if --out differs from what would be written")
    args = ap.parse_args(argv)
    text = render(Path(args.results_dir))
    out = Path(args.out)
    if args.check:
        current = out.read_text() if out.exists() else ""
        if current != text:
            print(f"{out} is out of date: run `python -m benchmarks.summarise`", file=sys.stderr)
            return 1
        return 0
    out.write_text(text)
    print(f"wrote {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
