#!/usr/bin/env bash
# A real SLURM cluster and a real sshd, both on this one machine, for the tests of the launch scripts
# (tests/test_slurm.py starts it once for the module and stops it at the end).
#
#   bash tests/slurm/cluster.sh start [NODES]   # NODES: 1 or 2 (default 2); as root. Prints the settings file
#   bash tests/slurm/cluster.sh stop
#   source "$SMOLLM2_CLUSTER_DIR/cluster.env"   # then sinfo, sbatch, squeue and scontrol use this cluster
#
# start installs what is missing (Debian's slurmctld, slurmd, slurm-client, munge, openssh-server, pdsh),
# stops what an earlier start left running, wipes SMOLLM2_CLUSTER_DIR (default
# ${TMPDIR:-/tmp}/smollm2-test-cluster) and writes everything there: a munge key and its own munged
# socket, slurm.conf, one slurmd per node, sshd's keys and config. It returns once every node is idle.
#   SLURM   munged, slurmctld and one slurmd per node. The nodes are this machine under two names that
#           resolve (its hostname and localhost; the sbatch scripts rendezvous at the first node's name),
#           each offering CPUS_PER_NODE CPUs (below). No accounting daemon (slurmdbd needs a MySQL server):
#           `sacct` has nothing to read, so job history goes to a jobcomp/filetxt log, one line each time
#           a job ends, requeues included.
#   ssh     sshd on loopback only (127.0.0.1 and 127.0.0.2, the hosts "localhost" and "127.0.0.2"),
#           accepting one key made here. bin/ssh runs the real ssh client with the config for it (key,
#           port, known host key), as a user's ~/.ssh/config would: put bin/ first on PATH.
# Ports are free ones picked at start. Every daemon runs as root with a pid file here. stop cancels the
# cluster's jobs, kills what the daemons left running (the commands of ssh sessions; a job's slurmstepd
# and tasks, if its slurmd was killed under it), then ends the daemons by their pids: nothing else.
# start refuses a cluster whose owner (SMOLLM2_CLUSTER_OWNER, default the calling process) still runs.
# Logs: $SMOLLM2_CLUSTER_DIR/log/.
set -euo pipefail
PATH=$PATH:/usr/sbin:/sbin  # the daemons live there, and a plain user's PATH may not have it

dir=${SMOLLM2_CLUSTER_DIR:-${TMPDIR:-/tmp}/smollm2-test-cluster}
# What makes a requeue quick enough for tests: a requeued job waits cred_expire + 1 s before it may start
# again (the default is 121 s; 5 is the least slurmctld takes), and then for the scheduler's next look at
# the pending jobs, every sched_interval seconds (default 60).
CRED_EXPIRE=5
SCHED_INTERVAL=2
# CPUs each node offers, whatever this machine has (slurmd takes the configured count: config_overrides):
# the tests run a job that mostly waits (the time-limit chain) beside the others, and the 2-node jobs
# share the nodes with it. The tasks of all jobs share this machine's cores.
CPUS_PER_NODE=4
SSH_HOSTS=(localhost 127.0.0.2)
# The process the cluster is for (the test session; by hand, the shell that ran start): while it runs,
# another start refuses to take the cluster over.
owner=${SMOLLM2_CLUSTER_OWNER:-$PPID}

log() { echo "[cluster] $*" >&2; }
die() { echo "[cluster] error: $*" >&2; exit 1; }

install_missing() {
  local -A package_of=([slurmctld]=slurmctld [slurmd]=slurmd [sbatch]=slurm-client [munged]=munge
                       [sshd]=openssh-server [ssh-keygen]=openssh-client [pdsh]=pdsh)
  local command missing=()
  for command in "${!package_of[@]}"; do
    command -v "$command" >/dev/null || missing+=("${package_of[$command]}")
  done
  [ ${#missing[@]} -eq 0 ] && return
  command -v apt-get >/dev/null || die "missing ${missing[*]}, and no apt-get to install them with"
  log "installing ${missing[*]}"
  # The packages' own service start is refused in containers (and is not wanted): the daemons below
  # are started by hand, with their own files.
  if ! { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
           -o DPkg::Lock::Timeout=300 "${missing[@]}"; } >"${TMPDIR:-/tmp}/smollm2-cluster-apt.log" 2>&1; then
    tail -20 "${TMPDIR:-/tmp}/smollm2-cluster-apt.log" >&2
    die "apt-get install ${missing[*]} failed (log above)"
  fi
}

# The pid in PIDFILE if that process is alive and is one of ours (its command line names this folder:
# a pid file left by an earlier run may name a pid the system has since given to something else).
our_pid() {
  local pid
  pid=$(cat "$1" 2>/dev/null) || return 1
  [[ $pid =~ ^[0-9]+$ ]] && [ -r "/proc/$pid/cmdline" ] && tr '\0' ' ' <"/proc/$pid/cmdline" | grep -qF "$dir/" &&
    echo "$pid"
}

# Whether any PID still runs. A process that has exited counts as ended even while it waits as a zombie
# for its parent (some container inits never reap the daemons that they inherit).
any_running() {
  local pid line
  for pid in "$@"; do
    read -r line 2>/dev/null <"/proc/$pid/stat" || continue
    [[ ${line##*) } == Z* ]] || return 0
  done
  return 1
}

end_processes() {  # PID...: SIGTERM, then SIGKILL whatever still runs 10 s later
  [ $# -eq 0 ] && return
  kill -TERM "$@" 2>/dev/null || true
  local _
  for _ in $(seq 100); do
    any_running "$@" || return 0
    sleep 0.1
  done
  log "still running 10 s after SIGTERM, killing: $*"
  kill -KILL "$@" 2>/dev/null || true
}

# The processes that outlive their daemon: a job's slurmstepd (it holds a slurmd log of this folder open)
# and its tasks outlive a slurmd killed while the job runs, and the commands of an ssh session outlive
# sshd. Prints them and every process under them.
leftover_processes() {
  local sshd=$1 stat line pid fields all=()
  local -A children=()
  for stat in /proc/[0-9]*/stat; do
    read -r line 2>/dev/null <"$stat" || continue
    pid=${line%% *}
    read -r -a fields <<<"${line##*) }"  # state, ppid, ...: after the command name, which may hold spaces
    all+=("$pid")
    children[${fields[1]}]+=" $pid"
  done
  local queue=()
  # shellcheck disable=SC2206  # a space-separated list of pids
  [ -n "$sshd" ] && queue+=(${children[$sshd]:-})
  for pid in "${all[@]}"; do
    [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = slurmstepd ] || continue
    find "/proc/$pid/fd" -maxdepth 1 -lname "$dir/*" 2>/dev/null | grep -q . && queue+=("$pid")
  done
  while [ ${#queue[@]} -gt 0 ]; do
    pid=${queue[0]}
    queue=("${queue[@]:1}")
    echo "$pid"
    # shellcheck disable=SC2206
    queue+=(${children[$pid]:-})
  done
}

stop() {
  [ -d "$dir" ] || return 0
  if our_pid "$dir/run/slurmctld.pid" >/dev/null; then
    export SLURM_CONF=$dir/slurm.conf
    local jobs
    mapfile -t jobs < <(squeue -h -o %A 2>/dev/null)
    if [ ${#jobs[@]} -gt 0 ]; then
      log "cancelling jobs still in the queue: ${jobs[*]}"
      scancel "${jobs[@]}" 2>/dev/null || true
      local _
      for _ in $(seq 90); do  # KillWait (30 s) and the jobs' own exit
        [ -z "$(squeue -h -o %A 2>/dev/null)" ] && break
        sleep 0.5
      done
    fi
  fi
  local sshd leftovers pidfile pid daemons=()
  sshd=$(our_pid "$dir/run/sshd.pid") || sshd=
  mapfile -t leftovers < <(leftover_processes "$sshd")
  if [ ${#leftovers[@]} -gt 0 ]; then
    # Nothing graceful is left to wait for: their jobs are cancelled, or their ssh client is gone.
    log "killing what the daemons left running:"
    for pid in "${leftovers[@]}"; do
      echo "  $pid $(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | cut -c1-100)" >&2
    done
    kill -KILL "${leftovers[@]}" 2>/dev/null || true
  fi
  for pidfile in "$dir"/run/*.pid; do
    pid=$(our_pid "$pidfile") && daemons+=("$pid")
  done
  end_processes "${daemons[@]}"
  return 0
}

port_is_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# NUMBER free TCP ports, distinct, below Linux's ephemeral range (which starts at 32768).
free_ports() {
  local port=$(( 20000 + RANDOM % 10000 )) found=()
  while [ ${#found[@]} -lt "$1" ]; do
    port_is_free "$port" && found+=("$port")
    port=$(( port + 1 ))
  done
  echo "${found[@]}"
}

wait_until() {  # SECONDS WHAT COMMAND...: polls COMMAND every 0.2 s
  local seconds=$1 what=$2 _
  shift 2
  for _ in $(seq $(( seconds * 5 ))); do
    "$@" && return 0
    sleep 0.2
  done
  log "$what: not after $seconds s"
  return 1
}

show_logs() {
  local file
  for file in "$dir"/log/*; do
    echo "--- $file" >&2
    tail -15 "$file" >&2
  done
}

start_munge() {
  mkdir -p "$dir/munge"
  chmod 755 "$dir/munge"  # munged wants its socket's folder open to all
  dd if=/dev/urandom of="$dir/munge/munge.key" bs=1024 count=1 status=none
  chmod 400 "$dir/munge/munge.key"
  munged --socket="$dir/munge/munge.socket" --key-file="$dir/munge/munge.key" --pid-file="$dir/run/munged.pid" \
    --log-file="$dir/log/munged.log" --seed-file="$dir/munge/munged.seed" || { show_logs; die "munged did not start"; }
  # munged returns before its socket answers; slurmctld and slurmd fail their first authentication without it.
  wait_until 30 "munged answers" munge_answers || { show_logs; die "munged does not answer"; }
}

munge_answers() {
  munge -n -S "$dir/munge/munge.socket" 2>/dev/null | unmunge -S "$dir/munge/munge.socket" >/dev/null 2>&1
}

slurmctld_answers() {
  scontrol ping 2>/dev/null | grep -q "is UP"
}

write_slurm_conf() {  # NODES PORTS...
  local nodes=$1 host
  shift
  host=$(hostname -s)
  [ "$host" != localhost ] || die "this machine's hostname is localhost: the two nodes need two names"
  getent hosts "$host" >/dev/null || die "this machine's hostname $host does not resolve (/etc/hosts): the jobs rendezvous at it"
  local names=("$host" localhost)
  # This machine's memory as slurmd measures it: every node has all of it.
  local memory
  memory=$(slurmd -C | head -1 | grep -o 'RealMemory=[0-9]*')
  {
    echo "# Written by tests/slurm/cluster.sh: $nodes node(s), all of them this machine."
    echo "ClusterName=smollm2test"
    echo "SlurmctldHost=$host(127.0.0.1)"
    echo "SlurmctldPort=$1"
    echo "SlurmUser=root"
    echo "AuthType=auth/munge"
    echo "CredType=cred/munge"
    echo "AuthInfo=socket=$dir/munge/munge.socket,cred_expire=$CRED_EXPIRE"
    echo "StateSaveLocation=$dir/ctld"
    echo "SlurmdSpoolDir=$dir/slurmd/%n"
    echo "SlurmctldPidFile=$dir/run/slurmctld.pid"
    echo "SlurmdPidFile=$dir/run/slurmd-%n.pid"
    echo "SlurmctldLogFile=$dir/log/slurmctld.log"
    echo "SlurmdLogFile=$dir/log/slurmd-%n.log"
    # No cgroups here: processes are tracked through /proc, tasks are not bound to cores.
    echo "ProctrackType=proctrack/linuxproc"
    echo "TaskPlugin=task/none"
    echo "SelectType=select/cons_tres"
    echo "SelectTypeParameters=CR_Core"
    echo "MpiDefault=none"
    echo "JobCompType=jobcomp/filetxt"
    echo "JobCompLoc=$dir/jobcomp.log"
    echo "SlurmdParameters=config_overrides"
    echo "ReturnToService=2"
    echo "JobRequeue=1"
    echo "KillWait=30"
    echo "MinJobAge=3600"  # finished jobs stay visible to `scontrol show job` for the whole test session
    echo "SchedulerParameters=sched_interval=$SCHED_INTERVAL,bf_interval=$SCHED_INTERVAL"
    local i
    for (( i = 0; i < nodes; i++ )); do
      echo "NodeName=${names[i]} NodeHostname=$host NodeAddr=127.0.0.1 Port=${2:?} CPUs=$CPUS_PER_NODE CoresPerSocket=$CPUS_PER_NODE ThreadsPerCore=1 $memory State=UNKNOWN"
      shift
    done
    echo "PartitionName=test Nodes=ALL Default=YES MaxTime=INFINITE State=UP"
  } >"$dir/slurm.conf"
  echo "${names[@]:0:nodes}"
}

nodes_idle() {
  local states
  states=$(sinfo -h -N -o %t) && [ -n "$states" ] && ! grep -qv '^idle$' <<<"$states"
}

start_slurm() {  # NODES
  local nodes=$1 ports node_names name
  read -r -a ports <<<"$(free_ports $(( nodes + 1 )))"
  read -r -a node_names <<<"$(write_slurm_conf "$nodes" "${ports[@]}")"
  mkdir -p "$dir/ctld"
  export SLURM_CONF=$dir/slurm.conf
  slurmctld -f "$SLURM_CONF" || { show_logs; die "slurmctld did not start"; }
  # The nodes register with slurmctld when they start: it must be listening first.
  wait_until 60 "slurmctld answers" slurmctld_answers || { show_logs; die "slurmctld does not answer"; }
  for name in "${node_names[@]}"; do
    mkdir -p "$dir/slurmd/$name"
    slurmd -f "$SLURM_CONF" -N "$name" || { show_logs; die "slurmd $name did not start"; }
  done
  wait_until 60 "every node idle" nodes_idle || { sinfo -N >&2 || true; show_logs; die "the nodes did not come up"; }
  echo "${node_names[*]}"
}

start_sshd() {
  local ssh=$dir/ssh port
  port=$(free_ports 1)
  mkdir -p "$ssh" "$dir/bin"
  ssh-keygen -q -t ed25519 -N '' -C "smollm2 test sshd" -f "$ssh/host_key"
  ssh-keygen -q -t ed25519 -N '' -C "smollm2 test client" -f "$ssh/client_key"
  cp "$ssh/client_key.pub" "$ssh/authorized_keys"
  local host known=()
  for host in "${SSH_HOSTS[@]}"; do known+=("[$host]:$port"); done
  echo "$(IFS=,; echo "${known[*]}") $(cut -d' ' -f1,2 "$ssh/host_key.pub")" >"$ssh/known_hosts"
  cat >"$ssh/sshd_config" <<EOF
# Written by tests/slurm/cluster.sh: loopback only, this folder's key only.
Port $port
ListenAddress 127.0.0.1
ListenAddress 127.0.0.2
HostKey $ssh/host_key
PidFile $dir/run/sshd.pid
AuthorizedKeysFile $ssh/authorized_keys
PermitRootLogin prohibit-password
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
# The key files lie under ${TMPDIR:-/tmp}, which others may write to: sshd's ownership checks would refuse them.
StrictModes no
AllowTcpForwarding no
X11Forwarding no
# VERBOSE names the address each connection came in on: the tests see both hosts used.
LogLevel VERBOSE
EOF
  cat >"$ssh/ssh_config" <<EOF
# Written by tests/slurm/cluster.sh: what ~/.ssh/config says on a cluster with passwordless ssh.
Host ${SSH_HOSTS[*]}
  Port $port
  IdentityFile $ssh/client_key
  IdentitiesOnly yes
  UserKnownHostsFile $ssh/known_hosts
  GlobalKnownHostsFile /dev/null
  StrictHostKeyChecking yes
  BatchMode yes
  LogLevel ERROR
EOF
  printf '#!/bin/sh\nexec /usr/bin/ssh -F %s "$@"\n' "$ssh/ssh_config" >"$dir/bin/ssh"
  chmod 755 "$dir/bin/ssh"
  mkdir -p /run/sshd  # sshd's privilege-separation folder; the package makes it only when its service starts
  /usr/sbin/sshd -f "$ssh/sshd_config" -E "$dir/log/sshd.log" || { show_logs; die "sshd did not start"; }
  for host in "${SSH_HOSTS[@]}"; do
    wait_until 10 "ssh $host" "$dir/bin/ssh" "$host" true || { show_logs; die "ssh to $host failed"; }
  done
  echo "$port"
}

start() {
  local nodes=${1:-2}
  [[ $nodes =~ ^[12]$ ]] || die "NODES=$nodes: 1 or 2 (the nodes need names that resolve: this machine's hostname and localhost)"
  [[ $dir != *[[:space:]]* ]] || die "SMOLLM2_CLUSTER_DIR=$dir: no spaces (slurm.conf cannot quote paths)"
  [ "$(id -u)" = 0 ] || die "run as root: the daemons run as root (SlurmUser=root) and sshd needs it"
  local running_for
  if running_for=$(cat "$dir/owner" 2>/dev/null) && [ "$running_for" != "$owner" ] && [ -d "/proc/$running_for" ] &&
     our_pid "$dir/run/slurmctld.pid" >/dev/null; then
    die "the cluster in $dir is in use by pid $running_for ($(tr '\0' ' ' <"/proc/$running_for/cmdline" | cut -c1-80)):" \
        "wait for it to end, or run: bash ${BASH_SOURCE[0]} stop"
  fi
  install_missing
  stop
  rm -rf "$dir"
  mkdir -p "$dir/run" "$dir/log"
  echo "$owner" >"$dir/owner"
  start_munge
  local node_names ssh_port
  node_names=$(start_slurm "$nodes")
  ssh_port=$(start_sshd)
  {
    printf 'export %s=%q\n' SLURM_CONF "$dir/slurm.conf" \
      SMOLLM2_CLUSTER_NODES "$node_names" \
      SMOLLM2_CLUSTER_JOBCOMP "$dir/jobcomp.log" \
      SMOLLM2_CLUSTER_LOGS "$dir/log" \
      SMOLLM2_CLUSTER_SSH_BIN "$dir/bin" \
      SMOLLM2_CLUSTER_SSH_PORT "$ssh_port" \
      SMOLLM2_CLUSTER_SSH_HOSTS "${SSH_HOSTS[*]}"
  } >"$dir/cluster.env"
  log "up: nodes $node_names idle, sshd on ${SSH_HOSTS[*]} port $ssh_port"
  echo "$dir/cluster.env"
}

case ${1:-} in
  start) start "${2:-2}" ;;
  stop) stop ;;
  *) sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "${BASH_SOURCE[0]}" >&2; exit 2 ;;
esac
