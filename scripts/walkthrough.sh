#!/usr/bin/env bash
# The README's multi-process walkthrough, run verbatim (CI runs it; the README quotes it).
#
# Five data holders each prepare their own CSV, compute signed statistics and run their own node
# process; a coordinator runs a federated task on Anvil with model weights in an IPFS daemon; an
# auditor audits it (HTML report); the release is evaluated on the held-out test.csv and then
# detects anomalies on a second chain (Ganache) with simulated, labelled activity. Finally
# The same holders then train a chained newton task (separate processes again). `chainfl run`
# trains both in one process on the same node files and settings: the federated F1s must agree
# within 2 points, the chained ones (the newton model is deterministic) within 0.005. Exits
# non-zero on any failure.
#
# Usage: scripts/walkthrough.sh            (set up first: scripts/setup.sh --test, for the node tools)
# Environment: WALKTHROUGH_DIR (work directory, default a fresh temporary one), ROUNDS,
#   ANVIL_PORT / GANACHE_PORT / IPFS_PORT (defaults 18546 / 18545 / 15002: away from a developer's own).
set -euo pipefail
cd "$(dirname "$0")/.."
W=${WALKTHROUGH_DIR:-$(mktemp -d /tmp/chainfl-walkthrough.XXXXXX)}
ROUNDS=${ROUNDS:-30}
ANVIL_PORT=${ANVIL_PORT:-18546}; GANACHE_PORT=${GANACHE_PORT:-18545}; IPFS_PORT=${IPFS_PORT:-15002}
export CHAINFL_HOME="$W/home"
chainfl() { .venv/bin/chainfl "$@"; }
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  chainfl chain down >/dev/null 2>&1 || true
  chainfl ipfs down >/dev/null 2>&1 || true
}
trap cleanup EXIT
echo "== walkthrough in $W"

# --8<-- [start:walkthrough]
# 1. Each data holder prepares its CSV (here: the real data split over 5 holders, label-skewed),
#    with the features a chain can give, so that the model can later score any chain.
chainfl data prepare --dataset eth_fraud --chain-features --nodes 5 --partition dirichlet --alpha 0.5 \
    -o "$W/nodes"

# 2. A local chain and an IPFS daemon (on a real network: your node's URL and an IPFS node).
chainfl chain up --node anvil --port "$ANVIL_PORT"
chainfl ipfs up --port "$IPFS_PORT"
export CHAINFL_RPC=http://127.0.0.1:$ANVIL_PORT CHAINFL_STORE=ipfs://127.0.0.1:$IPFS_PORT
chainfl deploy

# 3. Each holder computes aggregate statistics of its rows, signed with its key (only counts and
#    sums leave a node; the row count caps the samples it may claim).
for i in 1 2 3 4 5; do
  chainfl node stats --data "$W/nodes/node$i.csv" --account "$i" -o "$W/stats$i.json"
done

# 4. The coordinator creates the task and drives it (one line per round on stderr) ...
chainfl coordinator run --account 0 --mode federated --nodes 5 --rounds "$ROUNDS" \
    --stats "$W/stats1.json" --stats "$W/stats2.json" --stats "$W/stats3.json" \
    --stats "$W/stats4.json" --stats "$W/stats5.json" \
    --reports "$W/reports" --task-file "$W/task.json" --json > "$W/coordinator.json" 2> "$W/coordinator.log" &
coordinator=$!; pids+=("$coordinator")

# 5. ... and each holder runs its node process (it waits for the task to exist).
until [ -s "$W/task.json" ]; do sleep 1; kill -0 "$coordinator"; done
TASK=$(.venv/bin/python -c "import json,sys; print(json.load(open(sys.argv[1]))['task_id'])" "$W/task.json")
for i in 1 2 3 4 5; do
  chainfl node run --account "$i" --task "$TASK" --data "$W/nodes/node$i.csv" --reports "$W/reports" \
      > "$W/node$i.json" 2> "$W/node$i.log" &
  pids+=("$!")
done
wait "$coordinator"                     # the task is closed: its release is on chain

# 6. Anyone audits the task from the chain and the store (exit 1 on any violation).
chainfl audit --task "$TASK" --html "$W/audit.html"

# 7. The release on the held-out rows, at its threshold.
chainfl evaluate --task "$TASK" --data "$W/nodes/test.csv" --json > "$W/evaluate.json"

# 8. An analyst scores the accounts of another chain (Ganache, with simulated labelled activity).
chainfl chain up --node ganache --port "$GANACHE_PORT"
chainfl simulate --rpc "http://127.0.0.1:$GANACHE_PORT" --accounts 120 --seed 7 --out "$W/other-chain" --quiet
chainfl detect --task "$TASK" --scan-rpc "http://127.0.0.1:$GANACHE_PORT" --labels "$W/other-chain/labels.csv" \
    --budget 0.2 -o "$W/alerts.csv"

# 9. Chained mode: the same holders pass a newton model along (logistic regression on shared
#    bins, one Newton step per pass). --bins adds each holder's rows per grid cell to its signed
#    statistics; the bins are cut from their sum. Each node checks what it receives.
for i in 1 2 3 4 5; do
  chainfl node stats --data "$W/nodes/node$i.csv" --account "$i" --bins -o "$W/bins$i.json"
done
chainfl coordinator run --account 0 --mode chained --nodes 5 \
    --stats "$W/bins1.json" --stats "$W/bins2.json" --stats "$W/bins3.json" \
    --stats "$W/bins4.json" --stats "$W/bins5.json" \
    --reports "$W/chained-reports" --task-file "$W/chained-task.json" --json \
    > "$W/chained-coordinator.json" 2> "$W/chained-coordinator.log" &
coordinator=$!; pids+=("$coordinator")
until [ -s "$W/chained-task.json" ]; do sleep 1; kill -0 "$coordinator"; done
CHAINED=$(.venv/bin/python -c "import json,sys; print(json.load(open(sys.argv[1]))['task_id'])" "$W/chained-task.json")
for i in 1 2 3 4 5; do
  chainfl node run --account "$i" --task "$CHAINED" --data "$W/nodes/node$i.csv" \
      --reports "$W/chained-reports" > "$W/chained-node$i.json" 2> "$W/chained-node$i.log" &
  pids+=("$!")
done
wait "$coordinator"
chainfl audit --task "$CHAINED"
chainfl evaluate --task "$CHAINED" --data "$W/nodes/test.csv" --json > "$W/chained-evaluate.json"
# --8<-- [end:walkthrough]

for p in "${pids[@]}"; do
  [ "$p" = "$coordinator" ] || [ "$p" = "${pids[0]}" ] || wait "$p"     # the node processes (coordinators are done)
done
echo "== the same node files and settings in one process (chainfl run)"
chainfl run --data "$W/nodes" --mode federated --nodes 5 --rounds "$ROUNDS" --rpc eth-tester:// \
    --store "file://$W/run-store" --quiet --json > "$W/run.json"
chainfl run --data "$W/nodes" --mode chained --nodes 5 --rpc eth-tester:// \
    --store "file://$W/run-store" --quiet --json > "$W/chained-run.json"
.venv/bin/python - "$W" <<'PY'
import json, sys
from pathlib import Path
w = Path(sys.argv[1])
for mode, prefix, limit in (("federated", "", 0.02), ("chained newton", "chained-", 0.005)):
    multi = json.loads((w / f"{prefix}evaluate.json").read_text())["metrics"]["f1"]
    text = (w / f"{prefix}run.json").read_text()
    run = json.loads(text[text.index("{"):])
    single = run["test"]["f1"]
    print(f"{mode} F1 on test.csv: separate processes {multi:.3f}, chainfl run {single:.3f}")
    if abs(multi - single) > limit:
        sys.exit(f"the walkthrough's {mode} F1 {multi:.3f} is more than {limit} from chainfl run's {single:.3f}")
    if prefix and run["data"].get("model") != "newton":
        sys.exit(f"chainfl run --mode chained trained {run['data'].get('model')}, not newton")
PY
grep -q "round 1" "$W/coordinator.log" || { echo "the coordinator printed no per-round line" >&2; exit 1; }
[ -s "$W/audit.html" ] && [ -s "$W/alerts.csv" ]
echo "== walkthrough ok ($W)"
