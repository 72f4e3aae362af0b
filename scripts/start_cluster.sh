#!/usr/bin/env bash
# Start (or join) the Ray cluster an rlvr recipe runs on, one call per node.
#
#   first node:   scripts/start_cluster.sh head
#   other nodes:  scripts/start_cluster.sh worker HEAD_IP
#   then, on the first node:
#                 RLVR_RAY_ADDRESS=auto rlvr train recipes/qwen2.5-math-7b/dcpo.yaml
#   stop:         scripts/start_cluster.sh stop          (on every node)
#
# Every node needs the same rlvr installation (the docker image, or pip install -e ".[gpu,deepspeed]") and
# the same path for the run directory if checkpoints are to be read back by another node (a shared file
# system). The GPUs, CPUs and memory of each node are detected by Ray; RLVR_RAY_PORT (default 6379) and
# RLVR_DASHBOARD_PORT (default 8265) change the ports. NCCL picks the network interface by itself; set
# NCCL_SOCKET_IFNAME (e.g. eth0) where a node has several and the wrong one is chosen.
set -euo pipefail

port=${RLVR_RAY_PORT:-6379}
dashboard=${RLVR_DASHBOARD_PORT:-8265}
role=${1:-}

case "$role" in
  head)
    ray start --head --port "$port" --dashboard-host 0.0.0.0 --dashboard-port "$dashboard"
    echo "Ray head on $(hostname -I | awk '{print $1}'):$port; join other nodes with:"
    echo "  scripts/start_cluster.sh worker $(hostname -I | awk '{print $1}')"
    ;;
  worker)
    head=${2:?usage: scripts/start_cluster.sh worker HEAD_IP}
    ray start --address "$head:$port"
    ;;
  stop)
    ray stop
    ;;
  status)
    ray status
    ;;
  *)
    echo "usage: scripts/start_cluster.sh head | worker HEAD_IP | stop | status" >&2
    exit 2
    ;;
esac
