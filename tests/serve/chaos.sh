#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# Fault injection on a live disaggregated cluster (the tiny preset, with a context of 2048 for
# long outputs): a router and 2 prefill + 2 decode daemons, each a process of this script's,
# with 100 ms heartbeats and a 1 s dead-after. The expected output of 16 prompts (greedy, and a
# few seeded samplings) comes from a fault-free pass through the cluster, itself checked against
# `baton run`. Then client loops send those prompts with `baton generate --json` (one of them
# interrupting its requests after a random time, or killing its client: they are cancelled)
# while a seeded fault loop kills a random daemon with SIGKILL and restarts it after a random
# pause, and now and then stops one with SIGSTOP for longer than the dead-after time before
# SIGCONT. Checked:
# - every request ends by itself (a client timeout or one past the hard limit is a hang);
# - each ends either finished with exactly the expected tokens and finish reason, cancelled
#   (only an interrupted one), or with an explicit error status (counted per status), and the
#   tokens it delivered before a cancel or an error are a prefix of the expected ones: never
#   wrong, duplicated or truncated tokens;
# - no daemon and not the router dies other than by the fault loop's hand;
# - once the faults stop and every daemon is back, a final batch of every prompt succeeds with
#   the expected tokens, and within a few seconds the router's /metrics shows no request queued,
#   assigning, running, cancelling or finishing, every accepted request accounted for
#   (completed, failed or cancelled), and every daemon's KV blocks all free again
#   (`baton status --json` and /metrics);
# - SIGTERM then stops the daemons and the router, each with exit status 0.
# BATON_CHAOS_MODE=pairs runs the same on two AcceLLM pairs (`baton-pair`, docs/pairs.md) instead:
# a killed owner's requests resume on their replicas, role switches and hand-offs go on under
# the faults, and at the end every replica's blocks must be free too. BATON_CHAOS_MODE=colocated
# runs it on 3 colocated daemons (both phases in one; a failover recomputes the prompt and the
# tokens delivered on another), and BATON_CHAOS_MODE=mixed on a prefill, a decode and a
# colocated daemon (the router places on the pair while it has both, else on the colocated one,
# so failovers cross from one kind to the other).
# BATON_CHAOS_ROUTER=1 adds router faults: about one fault in six SIGKILLs the router and starts
# a new one on the same endpoints after a pause; the clients' library sends its requests again
# with the tokens they have, which must then end as above (the router-side counts that span the
# whole run are not checked then: each router counts only its own requests).
# BATON_CHAOS_KV_MEM (default 8M: 1024 blocks, room for every request at once) sizes each
# daemon's KV pool; 2M (256 blocks, 4096 tokens, against up to 4 requests of up to 1,900) makes
# decoding sequences preempt one another (dropped and recomputed) under the faults.
# BATON_CHAOS_CANCELS=0 leaves out the interrupted and killed clients.
# BATON_CHAOS_SEED (default 1) seeds the fault schedule and the clients' choice of prompts;
# BATON_CHAOS_SECONDS (default 75) is how long the faults go on; BATON_CHAOS_LOGS=DIR keeps the
# logs and the requests' results there; BATON_CHAOS_LOG_LEVEL (default info) is the daemons'.
set -euo pipefail
BIN=${BATON_BINARY_DIR:?}/bin
SEED=${BATON_CHAOS_SEED:-1}
DURATION=${BATON_CHAOS_SECONDS:-75}
CLIENTS=4
HANG_S=45 # hard limit on one `baton generate`: the router must end every request before it
tmp=$(mktemp -d)
CLIENT_EP=ipc://$tmp/clients.sock
CLUSTER_EP=ipc://$tmp/cluster.sock
MODE=${BATON_CHAOS_MODE:-disagg}
ROUTER_FAULTS=${BATON_CHAOS_ROUTER:-0}
KV_MEM=${BATON_CHAOS_KV_MEM:-8M}
CANCELS=${BATON_CHAOS_CANCELS:-1}
case $MODE in
disagg) DAEMONS=(prefill-0 prefill-1 decode-0 decode-1) ;;
pairs) DAEMONS=(pair-0a pair-0b pair-1a pair-1b) ;;
colocated) DAEMONS=(colocated-0 colocated-1 colocated-2) ;;
mixed) DAEMONS=(prefill-0 decode-0 colocated-0) ;;
*)
    echo "BATON_CHAOS_MODE: disagg, pairs, colocated or mixed, not $MODE" >&2
    exit 2
    ;;
esac
declare -A pid=()
router=
loops=() # client loops and other background requests

cleanup() {
    local p
    if [ -n "${BATON_CHAOS_LOGS:-}" ]; then
        mkdir -p "$BATON_CHAOS_LOGS" || true
        cp -r "$tmp"/logs "$tmp"/chaos "$BATON_CHAOS_LOGS"/ 2>/dev/null || true
    fi
    touch "$tmp/stop" 2>/dev/null || true
    for p in "${loops[@]}"; do
        kill -TERM "$p" 2>/dev/null || true
    done
    for p in "${pid[@]}" ${router:+"$router"}; do
        kill -CONT "$p" 2>/dev/null || true
        kill -KILL "$p" 2>/dev/null || true
    done
    for p in "${loops[@]}" "${pid[@]}" ${router:+"$router"}; do
        wait "$p" 2>/dev/null || true
    done
    rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 1' INT TERM HUP

logs() {
    local f
    for f in "$tmp"/logs/*.log; do
        [ -e "$f" ] || continue
        echo "--- last lines of $(basename "$f")" >&2
        tail -n 25 "$f" >&2
    done
}
fail() {
    echo "FAIL: $*" >&2
    logs
    stacks
    exit 1
}
# With BATON_CHAOS_STACKS=1 (and gdb), the threads' stacks of every daemon still running, so
# that a daemon that stopped answering shows where it is.
stacks() {
    local d
    [ "${BATON_CHAOS_STACKS:-0}" = 1 ] && command -v gdb >/dev/null || return 0
    local k t0 t1
    for d in "${!pid[@]}"; do
        alive "${pid[$d]}" || continue
        t0=$(awk '{print $14 + $15}' "/proc/${pid[$d]}/stat")
        sleep 1
        t1=$(awk '{print $14 + $15}' "/proc/${pid[$d]}/stat")
        echo "--- stacks of $d (pid ${pid[$d]}; $((t1 - t0)) CPU ticks in the last second)" >&2
        for k in 1 2 3; do
            gdb -p "${pid[$d]}" -batch -ex 'thread apply all bt' 2>/dev/null |
                grep -E '^(Thread|#)' >&2 || true
        done
    done
}
alive() { # a process of ours that has not exited (a stopped one is alive; a zombie is not)
    local state
    state=$(cut -d' ' -f3 "/proc/$1/stat" 2>/dev/null) && [ "$state" != Z ]
}
msleep() { sleep "$(printf '%d.%03d' $(($1 / 1000)) $(($1 % 1000)))"; }

start_daemon() {
    local name=$1 extra=(--kv-peer-timeout-ms 1000 --kv-peer-wait-ms 2000)
    # A pair member names its partner (pair-0a <-> pair-0b); the a members start serving prefill.
    # A colocated daemon ships no KV.
    case $name in
    pair-*a) extra+=(--partner "${name%a}b" --serving prefill) ;;
    pair-*b) extra+=(--partner "${name%b}a" --serving decode) ;;
    colocated-*) extra=() ;;
    esac
    "$BIN/baton-${name%-*}" --router "$CLUSTER_EP" --id "$name" --model "$tmp/tiny.gguf" \
        --threads 1 --kv-mem "$KV_MEM" --heartbeat-ms 100 \
        --log-level "${BATON_CHAOS_LOG_LEVEL:-info}" "${extra[@]}" \
        >>"$tmp/logs/$name.log" 2>&1 &
    pid[$name]=$!
}

# Waits until the router reports every daemon alive, with all its KV blocks free and nothing
# queued or running when $1 is "idle".
wait_cluster() {
    local want=$1 i
    for i in $(seq 100); do
        if "$BIN/baton" status --router "$CLIENT_EP" --json --timeout-ms 2000 2>/dev/null |
            python3 -c '
import json, sys
s = json.load(sys.stdin)
ids = sorted(x["id"] for x in s["instances"] if x["alive"])
ok = s["ok"] and ids == sorted(sys.argv[2:])
if sys.argv[1] == "idle":
    ok = ok and s["queued"] == 0 and s["running"] == 0 and all(
        x["kv_free_blocks"] == x["kv_total_blocks"] and x["queue_len"] == 0 and x["running"] == 0
        for x in s["instances"])
sys.exit(not ok)' "$want" "${DAEMONS[@]}"; then
            return 0
        fi
        sleep 0.1
    done
    "$BIN/baton" status --router "$CLIENT_EP" --json >&2 || true
    return 1
}

metrics() {
    python3 -c '
import sys, urllib.request
print(urllib.request.urlopen("http://127.0.0.1:%s/metrics" % sys.argv[1], timeout=5).read().decode())' \
        "$mport"
}

# The prompts: temperature|n|ignore-eos|seed|text. Greedy ones, and a few seeded samplings
# (their draws depend only on the seed and the position, so a replay must give the same). Long
# outputs keep requests in flight (the model's context is 2048) so that faults land mid-stream;
# the longest prompt takes two prefill chunks (--max-batch-tokens 512).
long=$(printf 'the cat sat on the mat and looked at the dog %.0s' $(seq 14))
PROMPTS=(
    "0|1500|1|1|Once upon a time"
    "0|64|0|1|Hello"
    "0|1200|1|1|The quick brown fox jumps over the lazy dog."
    "0|300|0|1|In a hole in the ground there lived a hobbit. Not a nasty, dirty, wet hole."
    "0|1800|1|1|a b c d e f g h i j k l m n o p q r s t u v w x y z"
    "0|16|0|1|x"
    "0|900|1|1|It was the best of times, it was the worst of times, it was the age of wisdom, it was the age of foolishness, it was the epoch of belief"
    "0|90|0|1|Call me Ishmael."
    "0|1600|1|1|0123456789 0123456789 0123456789"
    "0|400|1|1|$long"
    "0|700|0|1|All happy families are alike; each unhappy family is unhappy in its own way."
    "0|1000|1|1|To be, or not to be, that is the question"
    "0.8|200|0|7|Once upon a time"
    "0.8|1400|1|11|The sea was calm and the sky was clear"
    "1.2|600|1|23|Question: what is the answer? Answer:"
    "0.5|1100|1|99|Far out in the uncharted backwaters of the unfashionable end of the western spiral arm"
)
NP=${#PROMPTS[@]}

# gen N OUT [CANCEL_MS [KILL]]: prompt N through the router; OUT.json (the result), OUT.err,
# OUT.meta ("N exit-status milliseconds cancel-ms killed"). With CANCEL_MS, the request is
# interrupted (SIGINT, Ctrl-C: `baton generate` cancels it) that long after it starts; with KILL
# 1 its client is SIGKILLed then instead (the router must notice the dead client and cancel).
# Runs under a hard time limit: exit status 124 or 137 is a hang (unless killed on purpose).
# Always run in the background (its own subshell): SIGTERM (the clean-up) kills the request's
# process group (timeout leads one) and waits for it.
gen() {
    local temp n eos seed text args t0 child='' rc=0 cancel=${3:-0} killed=${4:-0} timer='' sig
    IFS='|' read -r temp n eos seed text <<<"${PROMPTS[$1]}"
    args=(--router "$CLIENT_EP" --prompt "$text" -n "$n" --temp "$temp" --seed "$seed"
        --json --timeout-ms 20000)
    [ "$eos" = 1 ] && args+=(--ignore-eos)
    trap 'if [ -n "$child" ]; then
        kill -KILL -- -"$child" 2>/dev/null || kill -KILL "$child" 2>/dev/null
        wait "$child" 2>/dev/null || true
    fi
    exit 1' TERM
    t0=$(date +%s%N)
    timeout -k 5 "$HANG_S" "$BIN/baton" generate "${args[@]}" >"$2.json" 2>"$2.err" &
    child=$!
    if [ "$cancel" -gt 0 ]; then # to baton generate, timeout's child (timeout would pass a
        # SIGINT on twice)
        sig=INT
        [ "$killed" = 1 ] && sig=KILL
        { msleep "$cancel"; pkill -"$sig" -P "$child" 2>/dev/null; } &
        timer=$!
    fi
    wait "$child" || rc=$?
    [ -z "$timer" ] || { kill "$timer" 2>/dev/null; wait "$timer" 2>/dev/null; } || true
    echo "$1 $rc $((($(date +%s%N) - t0) / 1000000)) $cancel $killed" >"$2.meta"
}

# check EXPECTED_DIR RESULT_DIR MODE: every result in RESULT_DIR against the expected ids;
# MODE "chaos" allows explicit errors, "final" wants every request finished.
check() {
    python3 - "$@" <<'PY'
import collections, glob, json, os, sys
exp_dir, res_dir, mode = sys.argv[1:4]
expect = {}
for f in glob.glob(os.path.join(exp_dir, "*.json")):
    expect[int(os.path.basename(f)[:-5])] = json.load(open(f))
counts = collections.Counter()
bad = []
retries = 0
for meta in sorted(glob.glob(os.path.join(res_dir, "*.meta"))):
    base = meta[:-5]
    idx, rc, ms, cancel, killed = (int(x) for x in open(meta).read().split())
    err = open(base + ".err").read().strip()
    name = "%s (prompt %d, %d ms)" % (os.path.basename(base), idx, ms)
    if killed and rc == 137 and ms < 10000:  # its client killed on purpose, at cancel ms
        counts["client killed"] += 1
        continue
    if rc in (124, 137):
        bad.append("%s: hung (no end within the hard limit)" % name)
        counts["HANG"] += 1
        continue
    if cancel and rc == 130 and not os.path.getsize(base + ".json"):
        # SIGINT's default action: it came before `baton generate` set its handler, which
        # it does before it sends the request. Nothing was sent.
        counts["interrupted before sending"] += 1
        continue
    try:
        r = json.load(open(base + ".json"))
    except ValueError:  # the client gave up waiting ("timed out": a hang), or no connection
        bad.append("%s: exit %d without a result: %s" % (name, rc, err))
        counts["HANG" if "timed out" in err else "NO RESULT"] += 1
        continue
    e = expect[idx]
    retries += r["retries"]
    if r["status"] == 0 and r["finish_reason"] in ("LENGTH", "EOS", "STOP"):
        if rc != 0:  # its stderr says why (a sanitizer's report, in that build)
            bad.append("%s: finished but exit status %d; its stderr ends:\n%s"
                       % (name, rc, "\n".join(err.splitlines()[-40:])))
        if r["ids"] != e["ids"] or r["finish_reason"] != e["finish_reason"]:
            bad.append("%s: finished %s with %d tokens, expected %s with %d; first difference at %d"
                       % (name, r["finish_reason"], len(r["ids"]), e["finish_reason"],
                          len(e["ids"]),
                          next((i for i, (a, b) in enumerate(zip(r["ids"], e["ids"])) if a != b),
                               min(len(r["ids"]), len(e["ids"])))))
            counts["WRONG"] += 1
        else:
            counts["ok"] += 1
        if r["n_output_tokens"] != len(r["ids"]):
            bad.append("%s: n_output_tokens %d for %d ids" % (name, r["n_output_tokens"],
                                                              len(r["ids"])))
        continue
    # Interrupted: cancelled (exit status 1, status OK), with a prefix of the answer.
    if cancel and r["finish_reason"] == "CANCELLED" and r["status"] == 0 and rc == 1:
        if r["ids"] != e["ids"][:len(r["ids"])]:
            bad.append("%s: cancelled after %d tokens that are not a prefix of the expected ones"
                       % (name, len(r["ids"])))
        counts["cancelled"] += 1
        continue
    # An explicit error: it must say so, and what it delivered must be a prefix of the answer.
    key = "%s %d (%s)" % (r["finish_reason"], r["status"], r["error"])
    counts[key] += 1
    if mode != "chaos":
        bad.append("%s: %s" % (name, key))
    if rc == 0:
        bad.append("%s: %s but exit status 0" % (name, key))
    if r["status"] == 0 or r["finish_reason"] != "FAILED":
        bad.append("%s: %s, not FAILED with an error status (nothing was cancelled)"
                   % (name, key))
    if r["ids"] != e["ids"][:len(r["ids"])]:
        bad.append("%s: %s after %d tokens that are not a prefix of the expected ones"
                   % (name, key, len(r["ids"])))
total = sum(counts.values())
print("%s: %d requests: %s; %d failovers reported to clients"
      % (mode, total, ", ".join("%s %d" % kv for kv in sorted(counts.items())), retries))
# RESULT_DIR/sent: how many of its requests went out, at least and at most: an interrupt before
# the handler sent nothing; a client killed on purpose may have died before it sent.
sent_max = total - counts["interrupted before sending"]
with open(os.path.join(res_dir, "sent"), "w") as f:
    f.write("%d %d\n" % (sent_max - counts["client killed"], sent_max))
for b in bad[:40]:
    print("  " + b)
if not total:
    bad.append("no requests")
sys.exit(1 if bad else 0)
PY
}

mkdir -p "$tmp/logs" "$tmp/expect" "$tmp/chaos" "$tmp/final"
"$BIN/baton" model gen --preset tiny --ctx 2048 --out "$tmp/tiny.gguf" >/dev/null
mport=$(python3 "$(dirname "$0")/../support/free_ports.py")
start_router() {
    "$BIN/baton-router" --model "$tmp/tiny.gguf" --client-endpoint "$CLIENT_EP" \
        --cluster-endpoint "$CLUSTER_EP" --bind 127.0.0.1 --metrics-port "$mport" \
        --dead-after-ms 1000 --failover-timeout-ms 5000 --queue-timeout-ms 5000 \
        --log-level info >>"$tmp/logs/router.log" 2>&1 &
    router=$!
}
start_router
for d in "${DAEMONS[@]}"; do
    start_daemon "$d"
done
wait_cluster up || fail "the cluster did not come up"

# The expected answers: one fault-free pass, each text also as `baton run` makes it offline.
for i in $(seq 0 $((NP - 1))); do
    gen "$i" "$tmp/expect/$i" &
    loops=($!)
    wait "${loops[0]}"
    loops=()
    read -r _ rc _ <"$tmp/expect/$i.meta"
    [ "$rc" = 0 ] || fail "prompt $i failed without faults: $(cat "$tmp/expect/$i.err")"
    IFS='|' read -r temp n eos seed text <<<"${PROMPTS[$i]}"
    run=(--model "$tmp/tiny.gguf" --threads 1 --prompt "$text" -n "$n" --temp "$temp"
        --seed "$seed")
    [ "$eos" = 1 ] && run+=(--ignore-eos)
    "$BIN/baton" run "${run[@]}" >"$tmp/expect/$i.txt" 2>/dev/null
    # The text must be baton run's, whole: NUL bytes (a byte token 0x00) included.
    python3 -c '
import json, sys
r, run = json.load(open(sys.argv[1])), open(sys.argv[2], newline="").read()
t = r["text"]
sys.exit(not (r["status"] == 0 and r["ids"] and t == run))' \
        "$tmp/expect/$i.json" "$tmp/expect/$i.txt" ||
        fail "prompt $i: the cluster's answer is not baton run's"
done
echo "expected answers of $NP prompts computed"

# Client loops: prompts in a seeded order, one request at a time each, until told to stop. The
# last one interrupts each of its requests (Ctrl-C) 0.3 - 1 s after it starts, or kills its
# client then (one in four).
client_loop() {
    local c=$1 k=0 child= cancel=0 killed=0
    RANDOM=$((SEED * 1000 + c))
    trap 'if [ -n "$child" ]; then
        kill -TERM "$child" 2>/dev/null
        wait "$child" 2>/dev/null || true
    fi
    exit 0' TERM
    while [ ! -e "$tmp/stop" ]; do
        k=$((k + 1))
        if [ "$c" = "$CLIENTS" ] && [ "$CANCELS" = 1 ]; then
            cancel=$((300 + RANDOM % 700))
            killed=$((RANDOM % 4 == 0))
        fi
        gen $((RANDOM % NP)) "$tmp/chaos/$c-$k" "$cancel" "$killed" &
        child=$!
        wait "$child" || true
        child=
    done
}
for c in $(seq "$CLIENTS"); do
    client_loop "$c" &
    loops+=($!)
done

# The fault loop: at random intervals, SIGKILL a random daemon and restart it after a random
# pause; the third fault and about one in five after it SIGSTOP one for 2.5 s (the router's
# dead-after is 1 s) instead.
RANDOM=$SEED
kills=0
stops=0
router_kills=0
faults=0
end=$((SECONDS + DURATION))
while [ $SECONDS -lt $end ]; do
    msleep $((300 + RANDOM % 2200))
    for d in "${DAEMONS[@]}"; do
        alive "${pid[$d]}" || fail "$d died by itself"
    done
    alive "$router" || fail "the router died"
    d=${DAEMONS[$((RANDOM % ${#DAEMONS[@]}))]}
    faults=$((faults + 1))
    if [ "$ROUTER_FAULTS" = 1 ] && { [ $faults = 2 ] || [ $((RANDOM % 6)) = 0 ]; }; then
        pause=$((100 + RANDOM % 900))
        echo "fault $faults at ${SECONDS}s: SIGKILL the router, restart after $pause ms"
        kill -KILL "$router"
        wait "$router" 2>/dev/null || true
        msleep "$pause"
        start_router
        router_kills=$((router_kills + 1))
    elif [ $faults = 3 ] || [ $((RANDOM % 5)) = 0 ]; then
        echo "fault $faults at ${SECONDS}s: SIGSTOP $d for 2.5 s"
        kill -STOP "${pid[$d]}"
        sleep 2.5
        kill -CONT "${pid[$d]}"
        stops=$((stops + 1))
    else
        pause=$((100 + RANDOM % 2000))
        echo "fault $faults at ${SECONDS}s: SIGKILL $d, restart after $pause ms"
        kill -KILL "${pid[$d]}"
        wait "${pid[$d]}" 2>/dev/null || true
        msleep "$pause"
        start_daemon "$d"
        kills=$((kills + 1))
    fi
done
echo "faults done: $kills kills and restarts, $stops stops, $router_kills router restarts"
{ [ $kills -ge 1 ] && [ $stops -ge 1 ]; } || fail "the faults did not include a kill and a stop"
for d in "${DAEMONS[@]}"; do
    alive "${pid[$d]}" || fail "$d died by itself"
done
wait_cluster up || fail "the daemons did not all come back"
touch "$tmp/stop"
for p in "${loops[@]}"; do
    wait "$p" || fail "a client loop failed"
done
loops=()
check "$tmp/expect" "$tmp/chaos" chaos || fail "wrong, lost or hung requests under faults"

# All back: every prompt twice, 4 at a time, must finish with the expected tokens.
for k in 0 1; do
    for i in $(seq 0 $((NP - 1))); do
        gen "$i" "$tmp/final/$k-$i" &
        loops+=($!)
        if [ ${#loops[@]} = 4 ] || [ "$i" = $((NP - 1)) ]; then
            for p in "${loops[@]}"; do
                wait "$p"
            done
            loops=()
        fi
    done
done
check "$tmp/expect" "$tmp/final" final || fail "requests failed after the faults stopped"

# Nothing left behind: no request in flight at the router, every KV block free everywhere.
settled=
for _ in $(seq 150); do # 15 s: a cancelled receive waits out its quarantine (kvx's 3 s lease)
    m=$(metrics) || fail "no /metrics"
    if python3 -c '
import re, sys
m = {}
for line in sys.stdin.read().splitlines():
    if line and not line.startswith("#"):
        k, v = line.rsplit(" ", 1)
        m[k] = float(v)
states = [v for k, v in m.items() if k.startswith("baton_router_requests{state=")]
acc = m["baton_router_requests_total{outcome=\"accepted\"}"]
ended = sum(m["baton_router_requests_total{outcome=\"%s\"}" % o]
            for o in ("completed", "failed", "cancelled"))
inst = {}
for k, v in m.items():
    g = re.match(r"baton_instance_(kv_blocks_free|kv_blocks_total|up|running|queue_length)"
                 r"\{instance=\"([^\"]+)\"", k)
    if g:
        inst.setdefault(g.group(2), {})[g.group(1)] = v
ok = len(states) == 5 and not any(states) and acc == ended and sorted(inst) == sorted(sys.argv[1:])
ok = ok and all(x["up"] == 1 and x["kv_blocks_free"] == x["kv_blocks_total"] and
                not x["running"] and not x["queue_length"] for x in inst.values())
sys.exit(not ok)' "${DAEMONS[@]}" <<<"$m" && wait_cluster idle; then
        settled=1
        break
    fi
    sleep 0.1
done
if [ -z "$settled" ]; then
    grep -E '^baton_(router_requests|router_failovers|instance_(up|running|queue|kv))' <<<"$m" >&2
    "$BIN/baton" status --router "$CLIENT_EP" --json >&2 || true
    # The daemons' drains name the request ids they still wait for (after 2 s): the log tails
    # printed below then say which requests to look for.
    for d in "${DAEMONS[@]}"; do
        kill -TERM "${pid[$d]}" 2>/dev/null || true
    done
    sleep 3
    held_ids=$(grep -ho 'requests in flight (ids [0-9* ]*' "$tmp"/logs/*.log |
        grep -o '[0-9][0-9]*' | sort -u | head -n 8 || true)
    for id in $held_ids; do
        echo "--- what the logs say of req $id" >&2
        grep -h "req $id" "$tmp"/logs/*.log | sort | tail -n 40 >&2 || true
    done
    fail "requests or KV blocks still held after the faults stopped"
fi
grep -E '^baton_router_(requests_total|failovers_total)' <<<"$m"
# Every request a client sent reached the router (each check says how many went out, at
# least and at most: a client killed on purpose may have died before it sent; on a loaded
# machine its start can take longer than the 300 ms before the kill), and the faults did hit
# requests in flight.
sent=$(find "$tmp/expect" "$tmp/chaos" "$tmp/final" -name '*.meta' | wc -l)
read -r chaos_lo chaos_hi <"$tmp/chaos/sent"
read -r final_lo final_hi <"$tmp/final/sent"
n_expect=$(find "$tmp/expect" -name '*.meta' | wc -l)
[ "$router_kills" -gt 0 ] || python3 -c '
import sys
m = dict(l.rsplit(" ", 1) for l in sys.stdin.read().splitlines() if l and l[0] != "#")
n = float(m["baton_router_requests_total{outcome=\"accepted\"}"]) + float(
    m["baton_router_requests_total{outcome=\"refused\"}"])
lo, hi = int(sys.argv[1]), int(sys.argv[2])
print("requests the clients sent: %d - %d; the router counted %d" % (lo, hi, n))
sys.exit(not lo <= n <= hi or float(m["baton_router_failovers_total"]) < 1)' \
    $((n_expect + chaos_lo + final_lo)) $((n_expect + chaos_hi + final_hi)) <<<"$m" ||
    fail "$sent requests started, not all counted by the router, or no failover at all"
mid=$(grep -c 'failover .*, [1-9][0-9]* tokens delivered' "$tmp/logs/router.log" || true)
preempted=$(cat "$tmp"/logs/*.log | grep -c ': preempted (KV of' || true)
# The router's backstop: ABORTs of requests a daemon held that the router did not place there.
# The router names the first 8 per heartbeat and counts the rest in one line.
orphan_re='still holds it, but the router does not place it there|: [0-9]+ more requests it held ABORTed'
orphans=$(grep -oE "$orphan_re" "$tmp/logs/router.log" |
    awk '/more requests/ { n += $2; next } { n++ } END { print n + 0 }' || true)
echo "$sent requests; failovers after tokens were delivered (replayed mid-stream): $mid;" \
    "preemptions: $preempted; held requests the router had lost (ABORTed): $orphans"

# A clean stop: SIGTERM drains each daemon, then the router; all exit 0.
for d in "${DAEMONS[@]}"; do
    kill -TERM "${pid[$d]}"
done
for d in "${DAEMONS[@]}"; do
    rc=0
    wait "${pid[$d]}" || rc=$?
    unset "pid[$d]"
    [ $rc = 0 ] || fail "$d exited with status $rc on SIGTERM"
done
kill -TERM "$router"
rc=0
wait "$router" || rc=$?
router=
[ $rc = 0 ] || fail "the router exited with status $rc on SIGTERM"
echo "chaos: ok"
