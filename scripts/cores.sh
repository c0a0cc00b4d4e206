# The machine's cores shared out among the nodes of one topology on it (source it; bash
# only). Used by scripts/cluster for its nodes, and by scripts/bench for its ssegate and
# nchan nodes, so that both run nodes the same way.

# machine_cores: the cores this shell may use: the online CPUs of its affinity mask, at
# most a cgroup v2 CPU quota (cpu.max) rounded up, at least 1. (What a node's runtime
# counts by itself too: Rust's available_parallelism reads the same two.)
machine_cores() {
  local n quota period
  n=$(nproc 2>/dev/null || getconf _NPROCESSORS_ONLN 2>/dev/null || echo 1)
  if [ -r /sys/fs/cgroup/cpu.max ] && read -r quota period </sys/fs/cgroup/cpu.max &&
    [[ $quota =~ ^[0-9]+$ && $period =~ ^[0-9]+$ ]] && ((period > 0)); then
    quota=$(((quota + period - 1) / period))
    ((quota >= n)) || n=$quota
  fi
  ((n >= 1)) || n=1
  echo "$n"
}

# workers_per_node NODES: the cores divided by NODES, at least 1. Nodes on one machine
# share its cores, and three nodes with a runtime thread per core each put six threads
# on two cores: in the reconnect storm through three nodes, one worker per node brought
# 10,000 resumes live in about half the time (docs/benchmarks/notes.md). It is not a win
# everywhere: a saturated two-node throughput run with the load generator on the same
# two cores got more through with two workers per node (the same notes, stop 39).
workers_per_node() {
  local w
  w=$(($(machine_cores) / $1))
  ((w >= 1)) || w=1
  echo "$w"
}
