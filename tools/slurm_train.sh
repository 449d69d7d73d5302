#!/usr/bin/env bash
# Training on a Slurm cluster: one task per GPU, mmengine reads the Slurm environment.
usage() {
  cat <<'USAGE'
Usage: GPUS=16 bash tools/slurm_train.sh PARTITION JOB_NAME CONFIG WORK_DIR [train.py args...]

Starts GPUS tasks of tools/train.py CONFIG --work-dir WORK_DIR --launcher slurm with srun.
Env: GPUS (8), GPUS_PER_NODE (8), CPUS_PER_TASK (5), SRUN_ARGS (extra srun options),
     PYTHON (default: the repo's .venv/bin/python if it exists, else python).
USAGE
}
set -euo pipefail
case "${1:-}" in -h|--help) usage; exit 0 ;; esac
if [ "$#" -lt 4 ]; then
  echo "slurm_train.sh: error: expected PARTITION JOB_NAME CONFIG WORK_DIR, got $# argument(s)" >&2
  usage | head -n 1 >&2
  echo "(bash $0 --help for details)" >&2
  exit 2
fi
if ! command -v srun >/dev/null 2>&1; then
  echo "slurm_train.sh: error: srun not found: run this on a Slurm login node (or use tools/dist_train.sh on one machine)" >&2
  exit 1
fi
PARTITION=$1
JOB_NAME=$2
CONFIG=$3
WORK_DIR=$4
shift 4
GPUS=${GPUS:-8}
GPUS_PER_NODE=${GPUS_PER_NODE:-8}
CPUS_PER_TASK=${CPUS_PER_TASK:-5}
SRUN_ARGS=${SRUN_ARGS:-""}
DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
if [ -z "${PYTHON:-}" ]; then
  if [ -x "$DIR/../.venv/bin/python" ]; then PYTHON="$DIR/../.venv/bin/python"; else PYTHON=python; fi
fi
PYTHONPATH="$DIR/..:${PYTHONPATH:-}" \
srun -p "$PARTITION" --job-name="$JOB_NAME" --gres=gpu:"$GPUS_PER_NODE" \
    --ntasks="$GPUS" --ntasks-per-node="$GPUS_PER_NODE" --cpus-per-task="$CPUS_PER_TASK" \
    --kill-on-bad-exit=1 $SRUN_ARGS \
    "$PYTHON" -u "$DIR/train.py" "$CONFIG" --work-dir="$WORK_DIR" --launcher=slurm "$@"
