#!/usr/bin/env bash
# Stop the test cluster started by start.sh: only the daemons whose PIDs it saved, newest first.
set -uo pipefail
STATE="${LAPA_SLURM_STATE:-/var/tmp/lapa-slurm}"
for name in slurmd slurmctld slurmdbd mysqld munged; do
    pidfile="$STATE/$name.pid"
    [[ $name == mysqld ]] && pidfile="$STATE/mysqlrun/mysqld.pid"
    [[ -s "$pidfile" ]] || continue
    pid="$(cat "$pidfile")"
    if kill -0 "$pid" 2>/dev/null; then
        echo "[slurm-stop] stopping $name ($pid)"
        kill "$pid"
        for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -0 "$pid" 2>/dev/null && { echo "[slurm-stop] $name did not stop, killing"; kill -9 "$pid"; }
    fi
    rm -f "$pidfile"
done
