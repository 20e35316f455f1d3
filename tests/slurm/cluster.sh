#!/usr/bin/env bash
# A throwaway one-node SLURM cluster on this machine, a command run against it, then the cluster gone.
#   bash tests/slurm/cluster.sh [COMMAND ...]     (default: the tests marked `slurm`; `make test-slurm`)
# Installs Debian's munge, slurmctld, slurmd, slurmdbd and MariaDB's server when missing (needs root; the
# database is there because submitit reads job states with sacct, which needs accounting). Every daemon runs
# as root from a config written under a temporary directory, on free ports of 127.0.0.1, with its state,
# spool and logs there: nothing in /etc is touched. The daemons started here are stopped by PID, and jobs
# still queued are cancelled, whatever the outcome; the directory is removed unless the command failed.
set -euo pipefail
cd "$(dirname "$0")/../.."
((EUID == 0)) || { echo "cluster.sh: run it as root (it installs packages and runs the daemons as root)" >&2; exit 2; }
PY=${PY:-.venv/bin/python}
(($#)) || set -- "$PY" -m pytest -q -p no:xdist -m slurm tests

packages=(munge slurmctld slurmd slurm-client slurmdbd mariadb-server-core)
missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
    echo "cluster.sh: installing ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

T=$(mktemp -d /tmp/astro-slurm.XXXXXX)
chmod 755 "$T"   # munged wants its socket's directory searchable by all
pids=()
stop() {
    local rc=$?
    # this cluster's jobs only (never those of a cluster the caller's SLURM_CONF names): none may outlive slurmd
    if [[ ${SLURM_CONF-} == "$T/slurm.conf" ]] && scontrol ping >/dev/null 2>&1; then
        squeue --noheader --format=%A | xargs -r scancel || true
        for _ in {1..300}; do [[ -z $(squeue --noheader 2>/dev/null) ]] && break; sleep 0.2; done
    fi
    for ((i = ${#pids[@]} - 1; i >= 0; i--)); do   # the reverse of the start order
        kill "${pids[i]}" 2>/dev/null || continue
        for _ in {1..100}; do kill -0 "${pids[i]}" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "${pids[i]}" 2>/dev/null || true
        wait "${pids[i]}" 2>/dev/null || true
    done
    if ((rc)); then echo "cluster.sh: exit $rc; configs and daemon logs kept in $T" >&2; else rm -rf "$T"; fi
    exit "$rc"
}
trap stop EXIT
trap 'exit 130' INT TERM

wait_for() {   # wait_for WHAT COMMAND...: poll for up to 60 s
    local what=$1; shift
    for _ in {1..300}; do "$@" >/dev/null 2>&1 && return 0; sleep 0.2; done
    echo "cluster.sh: $what did not come up; logs in $T/log" >&2; tail -n 20 "$T"/log/* >&2; return 1
}

read -r CTLD_PORT SLURMD_PORT DBD_PORT < <("$PY" -c '
import socket
socks = [socket.socket() for _ in range(3)]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(*(s.getsockname()[1] for s in socks))')
NODE=$(hostname -s)
CPUS=$(env -u OMP_NUM_THREADS -u OMP_THREAD_LIMIT nproc)   # nproc alone obeys OMP_NUM_THREADS
MEM_MB=$(($(awk '/^MemTotal/ {print $2}' /proc/meminfo) / 1024 * 9 / 10))
mkdir -p "$T"/{log,state,spool,db,munge}
mungekey --create --keyfile="$T/munge/key"

cat > "$T/slurmdbd.conf" <<EOF
AuthType=auth/munge
AuthInfo=socket=$T/munge/socket
DbdHost=localhost
DbdPort=$DBD_PORT
SlurmUser=root
PidFile=$T/slurmdbd.pid
LogFile=$T/log/slurmdbd.log
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageLoc=slurm_acct_db
StorageUser=root
EOF
chmod 600 "$T/slurmdbd.conf"   # slurmdbd refuses a config others can read
cat > "$T/slurm.conf" <<EOF
ClusterName=astro-test
SlurmctldHost=$NODE(127.0.0.1)
SlurmctldPort=$CTLD_PORT
SlurmdPort=$SLURMD_PORT
SlurmUser=root
AuthType=auth/munge
AuthInfo=socket=$T/munge/socket
StateSaveLocation=$T/state
SlurmdSpoolDir=$T/spool
SlurmctldPidFile=$T/slurmctld.pid
SlurmdPidFile=$T/slurmd.pid
SlurmctldLogFile=$T/log/slurmctld.log
SlurmdLogFile=$T/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SwitchType=switch/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU_Memory
ReturnToService=2
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStoragePort=$DBD_PORT
AccountingStoragePass=$T/munge/socket
NodeName=$NODE NodeAddr=127.0.0.1 CPUs=$CPUS RealMemory=$MEM_MB State=UNKNOWN
PartitionName=debug Nodes=$NODE Default=YES MaxTime=INFINITE State=UP
EOF
# slurmdbd reads slurmdbd.conf beside $SLURM_CONF; MariaDB's client library finds its socket by MYSQL_UNIX_PORT
export SLURM_CONF=$T/slurm.conf MYSQL_UNIX_PORT=$T/db/socket

munged --foreground --socket="$T/munge/socket" --key-file="$T/munge/key" --pid-file="$T/munge/pid" \
    --seed-file="$T/munge/seed" --log-file="$T/log/munged.log" >/dev/null 2>&1 &
pids+=($!)
wait_for munged test -S "$T/munge/socket"
mariadbd --no-defaults --user=root --datadir="$T/db" --socket="$T/db/socket" --skip-networking --skip-grant-tables \
    --innodb-log-file-size=16M --pid-file="$T/db/pid" --log-error="$T/log/mariadb.log" >/dev/null 2>&1 &
pids+=($!)
wait_for MariaDB test -S "$T/db/socket"
slurmdbd -D >/dev/null 2>&1 &
pids+=($!)
wait_for slurmdbd grep -q "slurmdbd version .* started" "$T/log/slurmdbd.log"
slurmctld -D >/dev/null 2>&1 &
pids+=($!)
wait_for slurmctld scontrol ping
slurmd -D -N "$NODE" >/dev/null 2>&1 &
pids+=($!)
wait_for slurmd bash -c '[[ $(sinfo --noheader --format=%T) == idle ]]'
echo "cluster.sh: SLURM $(sinfo --version | cut -d' ' -f2) up: $(sinfo --noheader --format='%P %D node(s) %c CPUs %m MB %T')"

ASTRO_SLURM_REQUIRED=1 "$@"
