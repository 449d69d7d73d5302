#!/usr/bin/env bash
# Multi-process / multi-machine training through torchrun + PyTorch DDP (mmengine).
usage() {
  cat <<'USAGE'
Usage: bash tools/dist_train.sh CONFIG NUM_PROCS [train.py args...]

Runs NUM_PROCS processes of tools/train.py CONFIG --launcher pytorch on this machine through
torchrun (one per GPU; without a GPU they train on CPU with the gloo backend).
Multi-machine: NNODES=2 NODE_RANK=0|1 MASTER_ADDR=host PORT=29500 bash tools/dist_train.sh ...
Env: NNODES (1), NODE_RANK (0), MASTER_ADDR (127.0.0.1), PORT (29500),
     PYTHON (default: the repo's .venv/bin/python if it exists, else python).
USAGE
}
set -euo pipefail
case "${1:-}" in -h|--help) usage; exit 0 ;; esac
if [ "$#" -lt 2 ]; then
  echo "dist_train.sh: error: expected CONFIG NUM_PROCS, got $# argument(s)" >&2
  usage | head -n 1 >&2
  echo "(bash $0 --help for details)" >&2
  exit 2
fi
if ! [[ "$2" =~ ^[1-9][0-9]*$ ]]; then
  echo "dist_train.sh: error: NUM_PROCS must be a positive integer (processes on this machine), got '$2'" >&2
  usage | head -n 1 >&2
  exit 2
fi
CONFIG=$1
GPUS=$2
shift 2
NNODES=${NNODES:-1}
NODE_RANK=${NODE_RANK:-0}
PORT=${PORT:-29500}
MASTER_ADDR=${MASTER_ADDR:-"127.0.0.1"}
DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
if [ -z "${PYTHON:-}" ]; then
  if [ -x "$DIR/../.venv/bin/python" ]; then PYTHON="$DIR/../.venv/bin/python"; else PYTHON=python; fi
fi
PYTHONPATH="$DIR/..:${PYTHONPATH:-}" \
"$PYTHON" -m torch.distributed.run \
    --nnodes="$NNODES" --node_rank="$NODE_RANK" --master_addr="$MASTER_ADDR" \
    --nproc_per_node="$GPUS" --master_port="$PORT" \
    "$DIR/train.py" "$CONFIG" --launcher pytorch "$@"
