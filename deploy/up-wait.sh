# SPDX-License-Identifier: MIT
# Sourced by the deploy scripts that start a cluster with `baton up ... >LOG &`.
#
# up_wait NAME PID LOG SECONDS: waits until LOG says the cluster serves; if baton up (PID) exits
# first or SECONDS pass, prints why, stops it and returns 1.
up_wait() {
    local name=$1 up=$2 log=$3 t=0
    until grep -q "serving on" "$log"; do
        if ! kill -0 "$up" 2>/dev/null || [ $t -ge $((2 * $4)) ]; then
            echo "$name: the cluster did not come up"
            tail -20 "$log"
            kill -INT "$up" 2>/dev/null
            wait "$up" 2>/dev/null
            return 1
        fi
        sleep 0.5
        t=$((t + 1))
    done
}
