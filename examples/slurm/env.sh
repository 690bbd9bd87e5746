# Shared environment of the stage launchers (sourced by stage*.sbatch inside the allocation).
#
# How a multi-node run starts: sbatch reserves 64 nodes x 8 GPUs; `srun` (in the stage script)
# starts one task per GPU (--ntasks-per-node=8). Lightning's SLURMEnvironment sees SLURM_NTASKS and
# reads its rank from SLURM_PROCID, its GPU from SLURM_LOCALID, its node from SLURM_NODEID and the
# rendezvous host from SLURM_NODELIST (first node), so no torchrun / launcher is needed. The Trainer
# must agree with the allocation: --trainer.num_nodes=$SLURM_NNODES --trainer.devices=8.

set -euo pipefail

# Rendezvous port. Lightning's default is 15000 + the last 4 digits of the job id; set it here so
# that it is visible in the log, and override MASTER_PORT before sbatch if that port is taken.
export MASTER_PORT="${MASTER_PORT:-$((15000 + SLURM_JOB_ID % 10000))}"

# Slurm >= 22.05: srun no longer inherits --cpus-per-task from sbatch; without this, each task is
# pinned to one core and the 8 dataloader workers share it.
export SRUN_CPUS_PER_TASK="${SLURM_CPUS_PER_TASK:-16}"

# NCCL hints. The right interface / HCA names are cluster specific: ask your admins or read
# `ibstat` / `ip link`. Wrong values hang the first collective, so leave them unset if unsure.
export NCCL_DEBUG="${NCCL_DEBUG:-WARN}"              # INFO once, to check rings/trees use InfiniBand
export TORCH_NCCL_ASYNC_ERROR_HANDLING=1             # a dead rank aborts the job instead of hanging it
# export NCCL_SOCKET_IFNAME=ib0                      # bootstrap interface (not docker0 / lo)
# export NCCL_IB_HCA=mlx5                            # InfiniBand adapters to use
# export NCCL_IB_TIMEOUT=22                          # tolerate fabric hiccups on long runs

export OMP_NUM_THREADS=1                # dataloader workers are processes; keep BLAS single-threaded
export TOKENIZERS_PARALLELISM=false
export HF_HUB_OFFLINE=1                 # offline by design: components are local directories

# Resume. On SIGUSR1 (sbatch --signal=SIGUSR1@90, sent to every task) Lightning's auto-requeue
# writes <default_root_dir>/hpc_ckpt_<n>.ckpt on all ranks and runs `scontrol requeue`; when the job
# starts again with no --ckpt_path, Lightning loads the newest hpc_ckpt by itself. After a crash or
# a manual resubmit there is no hpc checkpoint, so we fall back to ModelCheckpoint's last.ckpt
# (--ckpt_path=last; on the very first run Lightning warns that there is none and starts fresh).
resume_args() {  # usage: RESUME=($(resume_args RUN_DIR))
    if compgen -G "$1/hpc_ckpt_*.ckpt" > /dev/null; then
        echo ""
    else
        echo "--ckpt_path=last"
    fi
}

# Refuse to start a stage from an unfinished previous stage (StageOutput writes this marker last).
require_stage_output() {
    if [[ ! -f "$1/stage_complete.json" ]]; then
        echo "error: $1 is not a finished stage output (no stage_complete.json)" >&2
        exit 1
    fi
}
