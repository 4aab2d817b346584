#!/usr/bin/env bash
# Start a real single-node SLURM cluster on this machine (Debian's slurm-wlm and munge, as root), for
# `make test-slurm`. Idempotent: does nothing when the node already answers. Two fake GPUs
# (gres files /dev/null and /dev/zero) let GPU resource requests be submitted and scheduled.
#   tests/slurm/cluster.sh          start (installing the packages if they are missing)
#   tests/slurm/cluster.sh stop     stop the daemons
set -euo pipefail

host=$(hostname)
conf=/etc/slurm/slurm.conf

if [[ ${1:-} == stop ]]; then
    pkill -x slurmd || true
    pkill -x slurmctld || true
    exit 0
fi

if [[ $(id -u) -ne 0 ]]; then
    echo "cluster.sh: needs root (to install and start slurm-wlm and munge)" >&2
    exit 1
fi

if sinfo -h -o %T 2>/dev/null | grep -qx idle; then
    echo "cluster.sh: SLURM already running on $host"
    exit 0
fi

if ! command -v slurmctld >/dev/null || ! command -v munged >/dev/null; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -q slurm-wlm munge >/dev/null 2>&1 \
        || { apt-get update -q >/dev/null && apt-get install -y -q slurm-wlm munge >/dev/null; }
fi

cpus=$(nproc)
mem=$(($(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 - 1024))
mkdir -p /etc/slurm /var/spool/slurmctld /var/spool/slurmd /var/log/slurm /run/munge
cat >"$conf" <<EOF
# written by lrmerge tests/slurm/cluster.sh
ClusterName=lrmerge-test
SlurmctldHost=$host
SlurmUser=root
AuthType=auth/munge
# A requeued job waits cred_expire + 1 s before it starts again (default 120 s): 10 keeps the
# requeue check of make test-slurm short.
AuthInfo=cred_expire=10
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
GresTypes=gpu
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
ReturnToService=2
MinJobAge=7200
NodeName=$host CPUs=$cpus RealMemory=$mem Gres=gpu:2 State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP
EOF
cat >/etc/slurm/gres.conf <<EOF
NodeName=$host Name=gpu File=/dev/null
NodeName=$host Name=gpu File=/dev/zero
EOF

if [[ ! -s /etc/munge/munge.key ]]; then
    dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
fi
chown munge:munge /etc/munge/munge.key /run/munge
chmod 400 /etc/munge/munge.key
pgrep -x munged >/dev/null || su -s /bin/sh munge -c /usr/sbin/munged

pkill -x slurmd || true
pkill -x slurmctld || true
sleep 1
slurmctld -c  # -c: a clean state, no jobs left from an earlier cluster
slurmd
for _ in $(seq 60); do
    if sinfo -h -o %T 2>/dev/null | grep -qx idle; then
        sinfo
        exit 0
    fi
    sleep 1
done
echo "cluster.sh: the node did not become idle; logs in /var/log/slurm" >&2
sinfo -R >&2 || true
exit 1
