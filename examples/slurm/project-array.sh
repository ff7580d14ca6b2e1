#!/usr/bin/env bash
#SBATCH --job-name=isoclip-project
#SBATCH --array=0-2
#SBATCH --cpus-per-task=8
#SBATCH --mem=16G
#SBATCH --time=12:00:00
#SBATCH --requeue
#SBATCH --output=isoclip-project-%A_%a.log
#
# Projects a gallery of .npy shards in a bucket with IsoCLIP, one Slurm array task per worker:
#
#   sbatch examples/slurm/project-array.sh
#   sbatch --array=0-99%20 examples/slurm/project-array.sh     # 100 workers, 20 at a time
#
# Task I of an array of N takes shards k (of the sorted listing) with k mod N = I: isoclip reads
# SLURM_ARRAY_TASK_ID, SLURM_ARRAY_TASK_MIN and SLURM_ARRAY_TASK_COUNT itself, so the worker
# count is the --array range and nothing else needs changing. Any task may be killed, requeued
# or rerun at any time: it skips the shards whose completion record (OUTPUT/_isoclip/records/)
# matches and redoes the rest, with byte-identical results. When the array is done,
#
#   isoclip status --output "$OUTPUT"      # exit 0: every shard done; 3: some missing or stale
#
# Credentials and endpoint come from the standard environment (AWS_ACCESS_KEY_ID,
# AWS_SECRET_ACCESS_KEY, AWS_REGION, AWS_ENDPOINT_URL for S3-compatible stores, or an instance
# role); sbatch passes the submitting shell's environment to the tasks.
set -euo pipefail

# ---- names: change these (or set them in the environment before sbatch) ----
: "${PROJECTOR:=s3://my-bucket/projectors/vit-b-16.isoclip.safetensors}"
: "${GALLERY:=s3://my-bucket/laion/img_emb/}"
: "${OUTPUT:=s3://my-bucket/laion/img_emb_isoclip/}"
: "${ISOCLIP:=isoclip}"
# ------------------------------------------------------------------------------

# As many compute threads as the task was given CPUs (else isoclip uses every core it sees).
THREADS=()
if [ -n "${SLURM_CPUS_PER_TASK:-}" ]; then
  THREADS=(--threads "$SLURM_CPUS_PER_TASK")
fi
echo "isoclip task ${SLURM_ARRAY_TASK_ID:-?} of array job ${SLURM_ARRAY_JOB_ID:-?} on $(hostname)" >&2
exec "$ISOCLIP" project \
  --projector "$PROJECTOR" \
  --input "$GALLERY" \
  --output "$OUTPUT" \
  "${THREADS[@]}" \
  --quiet
