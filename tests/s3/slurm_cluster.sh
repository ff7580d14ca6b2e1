#!/usr/bin/env bash
# Starts a single-node Slurm cluster in DIR (Debian's slurm-wlm: munged, slurmctld, slurmd as
# root, no systemd, no cgroups: proctrack/linuxproc, task/none), for the optional test that
# submits examples/slurm/project-array.sh with sbatch (scripts/test-s3.sh; ISOCLIP_TEST_SLURM=0 skips it).
#
#   tests/s3/slurm_cluster.sh DIR      # prints SLURM_CONF=DIR/slurm.conf once the node is idle
#
# Everything (key, sockets, state, logs, pid files) lives in DIR; the daemons' pids are in
# DIR/pids, for the caller to kill. Needs: apt-get install slurmctld slurmd slurm-client munge.
set -euo pipefail
DIR=$(realpath "$1")
mkdir -p "$DIR/state" "$DIR/spool" "$DIR/munge"
chmod 700 "$DIR/munge"
: >"$DIR/pids"

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# munge: a key and a socket of our own (the packaged daemon is not started).
dd if=/dev/urandom of="$DIR/munge/munge.key" bs=1 count=1024 status=none
chmod 400 "$DIR/munge/munge.key"
munged --force --key-file="$DIR/munge/munge.key" --socket="$DIR/munge/munge.socket" \
  --pid-file="$DIR/munge/munged.pid" --log-file="$DIR/munge/munged.log" \
  --seed-file="$DIR/munge/munged.seed"
for _ in $(seq 100); do
  [ -s "$DIR/munge/munged.pid" ] && break
  sleep 0.1
done
cat "$DIR/munge/munged.pid" >>"$DIR/pids"

NODE=$(hostname -s)
CPUS=$(nproc)
cat >"$DIR/slurm.conf" <<CONF
ClusterName=isoclip-test
SlurmctldHost=$NODE(127.0.0.1)
SlurmUser=root
SlurmdUser=root
SlurmctldPort=$(free_port)
SlurmdPort=$(free_port)
AuthType=auth/munge
AuthInfo=socket=$DIR/munge/munge.socket
CredType=cred/munge
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/slurmctld.pid
SlurmdPidFile=$DIR/slurmd.pid
SlurmctldLogFile=$DIR/slurmctld.log
SlurmdLogFile=$DIR/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/backfill
MpiDefault=none
ReturnToService=2
SlurmdTimeout=30
InactiveLimit=0
KillWait=5
NodeName=$NODE NodeAddr=127.0.0.1 CPUs=$CPUS RealMemory=1024 State=UNKNOWN
PartitionName=test Nodes=$NODE Default=YES MaxTime=INFINITE State=UP OverSubscribe=FORCE:4
CONF
export SLURM_CONF=$DIR/slurm.conf

slurmctld -f "$SLURM_CONF" -i
slurmd -f "$SLURM_CONF"
for _ in $(seq 300); do
  [ -s "$DIR/slurmctld.pid" ] && [ -s "$DIR/slurmd.pid" ] && break
  sleep 0.1
done
cat "$DIR/slurmctld.pid" "$DIR/slurmd.pid" >>"$DIR/pids"
for _ in $(seq 300); do
  if sinfo -h -o '%T' 2>/dev/null | grep -qx idle; then
    echo "SLURM_CONF=$SLURM_CONF"
    exit 0
  fi
  sleep 0.2
done
echo "the Slurm node did not become idle within 60 s; logs in $DIR" >&2
sinfo >&2 || true
tail -20 "$DIR/slurmctld.log" "$DIR/slurmd.log" >&2 || true
exit 1
