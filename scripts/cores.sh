# The machine's cores shared out among the processes of one topology on it (source it;
# bash only). Used by scripts/cluster for its nodes and by scripts/bench for every
# gateway and peer node it starts, so that both run nodes the same way.

# workers_per_node NODES: the cores divided by NODES, at least 1. Nodes on one machine
# share its cores; a runtime with more threads than it has cores only hands wake-ups
# between them (docs/benchmarks/notes.md: a reconnect storm through three nodes on two
# cores comes live in a median 1.16 s with one worker per node, 2.0 s with one per core).
workers_per_node() {
  local w=$(($(nproc) / $1))
  ((w >= 1)) || w=1
  echo "$w"
}
