#!/usr/bin/env bash
# Distributed evaluation through torchrun + PyTorch DDP (mmengine).
usage() {
  cat <<'USAGE'
Usage: bash tools/dist_test.sh CONFIG CHECKPOINT NUM_PROCS [test.py args...]

Runs NUM_PROCS processes of tools/test.py CONFIG CHECKPOINT --launcher pytorch on this machine
through torchrun (one per GPU; without a GPU they run on CPU with the gloo backend).
Env: NNODES (1), NODE_RANK (0), MASTER_ADDR (127.0.0.1), PORT (29500),
     PYTHON (default: the repo's .venv/bin/python if it exists, else python).
USAGE
}
set -euo pipefail
case "${1:-}" in -h|--help) usage; exit 0 ;; esac
if [ "$#" -lt 3 ]; then
  echo "dist_test.sh: error: expected CONFIG CHECKPOINT NUM_PROCS, got $# argument(s)" >&2
  usage | head -n 1 >&2
  echo "(bash $0 --help for details)" >&2
  exit 2
fi
if ! [[ "$3" =~ ^[1-9][0-9]*$ ]]; then
  echo "dist_test.sh: error: NUM_PROCS must be a positive integer (processes on this machine), got '$3'" >&2
  usage | head -n 1 >&2
  exit 2
fi
CONFIG=$1
CHECKPOINT=$2
GPUS=$3
shift 3
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
    "$DIR/test.py" "$CONFIG" "$CHECKPOINT" --launcher pytorch "$@"
