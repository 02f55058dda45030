#!/usr/bin/env bash
# Start a one-node Slurm cluster (slurmctld, slurmd, munge, slurmdbd on MariaDB) on loopback.
# Idempotent: daemons already running (by their saved PIDs) are left alone. Needs root and
# Debian/Ubuntu packages, installed here with apt-get if missing. Stop it with stop.sh.
#   profiles/ci-slurm/cluster/start.sh          # then: snakemake --profile profiles/ci-slurm
# Environment: LAPA_SLURM_STATE (state folder, default /var/tmp/lapa-slurm), LAPA_SLURM_CPUS (8),
# LAPA_SLURM_MEM_MB (64000).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
STATE="${LAPA_SLURM_STATE:-/var/tmp/lapa-slurm}"
CPUS="${LAPA_SLURM_CPUS:-8}"
MEM_MB="${LAPA_SLURM_MEM_MB:-64000}"
SOCK="$STATE/mysqlrun/mysqld.sock"

log() { echo "[slurm-start] $*"; }
die() { echo "[slurm-start] error: $*" >&2; exit 1; }
alive() { [[ -s "$1" ]] && kill -0 "$(cat "$1")" 2>/dev/null; }

[[ $EUID -eq 0 ]] || die "run as root (it installs packages and starts system daemons)"

missing=()
for bin in slurmctld:slurm-wlm slurmd:slurm-wlm slurmdbd:slurmdbd munged:munge mariadbd:mariadb-server sacct:slurm-wlm; do
    command -v "${bin%%:*}" >/dev/null 2>&1 || missing+=("${bin##*:}")
done
if ((${#missing[@]})); then
    log "installing ${missing[*]} (apt-get)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends slurm-wlm slurmdbd munge mariadb-server >/dev/null
fi

mkdir -p "$STATE"/{slurmctld,slurmd,mysql,mysqlrun} /etc/slurm
chmod 755 "$STATE"
chown mysql:mysql "$STATE/mysqlrun"

# munge: one key per machine
if [[ ! -s /etc/munge/munge.key ]]; then
    log "creating munge key"
    mungekey --create --keyfile=/etc/munge/munge.key 2>/dev/null || dd if=/dev/urandom of=/etc/munge/munge.key bs=1 count=1024 status=none
    chown munge:munge /etc/munge/munge.key
    chmod 400 /etc/munge/munge.key
fi
if ! alive "$STATE/munged.pid"; then
    mkdir -p /run/munge && chown munge:munge /run/munge
    log "starting munged"
    runuser -u munge -- munged --pid-file=/run/munge/munged.pid
    for _ in $(seq 50); do [[ -s /run/munge/munged.pid ]] && break; sleep 0.1; done
    cp /run/munge/munged.pid "$STATE/munged.pid"
fi
munge -n | unmunge >/dev/null || die "munge does not work (see /var/log/munge/munged.log)"

# MariaDB on a unix socket only, with its own data folder
if ! alive "$STATE/mysqlrun/mysqld.pid"; then
    if [[ ! -d "$STATE/mysql/mysql" ]]; then
        log "initialising MariaDB in $STATE/mysql"
        chown -R mysql:mysql "$STATE/mysql"
        mariadb-install-db --user=mysql --datadir="$STATE/mysql" --auth-root-authentication-method=socket >/dev/null
    fi
    log "starting mariadbd"
    mariadbd --user=mysql --datadir="$STATE/mysql" --skip-networking --socket="$SOCK" \
        --pid-file="$STATE/mysqlrun/mysqld.pid" --log-error="$STATE/mysqlrun/mysqld.log" >/dev/null 2>&1 &
    disown
    for _ in $(seq 100); do [[ -S "$SOCK" ]] && break; sleep 0.2; done
    [[ -S "$SOCK" ]] || die "MariaDB did not start (see $STATE/mysqlrun/mysqld.log)"
fi
DBPASS_FILE="$STATE/dbpass"
[[ -s "$DBPASS_FILE" ]] || { head -c 18 /dev/urandom | base64 | tr -d '/+=' > "$DBPASS_FILE"; chmod 600 "$DBPASS_FILE"; }
DBPASS="$(cat "$DBPASS_FILE")"
mariadb --socket="$SOCK" -u root <<SQL
CREATE DATABASE IF NOT EXISTS slurm_acct_db;
CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY '$DBPASS';
ALTER USER 'slurm'@'localhost' IDENTIFIED BY '$DBPASS';
GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost';
FLUSH PRIVILEGES;
SQL

# configuration (rewritten every time; the daemons read it at start)
sed -e "s|@STATE@|$STATE|g" -e "s|@CPUS@|$CPUS|g" -e "s|@MEM_MB@|$MEM_MB|g" \
    "$HERE/slurm.conf.in" > /etc/slurm/slurm.conf
sed -e "s|@STATE@|$STATE|g" -e "s|@DBPASS@|$DBPASS|g" "$HERE/slurmdbd.conf.in" > /etc/slurm/slurmdbd.conf
chmod 600 /etc/slurm/slurmdbd.conf
chmod 644 /etc/slurm/slurm.conf

if ! alive "$STATE/slurmdbd.pid"; then
    log "starting slurmdbd"
    MYSQL_UNIX_PORT="$SOCK" slurmdbd
    for _ in $(seq 100); do sacctmgr -n list cluster >/dev/null 2>&1 && break; sleep 0.2; done
    sacctmgr -n list cluster >/dev/null 2>&1 || die "slurmdbd does not answer (see $STATE/slurmdbd.log)"
fi
if ! alive "$STATE/slurmctld.pid"; then
    log "starting slurmctld"
    slurmctld
fi
if ! alive "$STATE/slurmd.pid"; then
    log "starting slurmd"
    slurmd -N localhost
fi
for _ in $(seq 150); do
    state="$(sinfo -h -n localhost -o %t 2>/dev/null || true)"
    [[ "$state" == idle* || "$state" == mix* || "$state" == alloc* ]] && break
    sleep 0.2
done
[[ "$state" == idle* || "$state" == mix* || "$state" == alloc* ]] ||
    die "node not ready (state '${state:-none}'; see $STATE/slurmctld.log and $STATE/slurmd.log)"
# an account for the current user, so jobs are accounted and sacct reports them
sacctmgr -i -Q add account lapa Cluster=lapaci Description=tests Organization=lapa >/dev/null 2>&1 || true
sacctmgr -i -Q add user root Account=lapa Cluster=lapaci >/dev/null 2>&1 || true
log "cluster up: $(sinfo -h -o '%P %D %t %c CPUs %m MB')"
