#!/bin/bash
# CV of gates whose encoder trains (full fine-tuning, LoRA) on the lent H200 (issue 10 item 3:
# "fine-tuning or LoRA on a GPU where it pays"), in the folds of `bench_quality.py cv`, with the
# default gate's head (category input and bias, correctness heads, dropout 0.5, train+val refit).
#
# Carry a folder CARRY holding
#   whl/        hydra_core-1.3.8, omegaconf-2.3.1, antlr4_python3_runtime-4.9.3 wheels
#   minilm16/   all-MiniLM-L6-v2 saved as fp16 safetensors + its tokenizer (the gate loads it as fp32)
#   work/<table>/{outcomes/,embeddings.npy}   from `bench_quality.py import` and the frozen
#               encoder's cached embeddings (the kNN baseline and the seeded cache read them)
# and run `bash benchmarks/finetune_cv_device.sh CARRY` from the repository root with OUT set.
# Results: $OUT/cv.tgz (cv-<variant>.json/.npz per table; pair them with the frozen default's
# local run: `bench_quality.py compare`) and $OUT/logs.tgz.
set -o pipefail
C=${1:?carry folder}
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 OMP_NUM_THREADS=2
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site "$C"/whl/*.whl || exit 1
python3 -m pip install -q --no-index --no-deps --no-build-isolation --target /tmp/site . || exit 1
export PYTHONPATH=/tmp/site
ENC=$(realpath "$C/minilm16")
B="python3 benchmarks/bench_quality.py"
HEAD="gating.net.category=true gating.net.category_bias=true gating.net.category_dropout=0.1
  gating.net.correctness=true gating.net.correctness_weight=20 gating.loss.bce_weight=1
  gating.net.dropout=0.5 gating.net.max_length=256 gating.net.encoder=$ENC"
GPU="trainer.accelerator=gpu trainer.devices=1 trainer.precision=bf16-mixed"
FIT="trainer.max_epochs=${EPOCHS:-8} gating.batch_size=32"
# one learning rate for encoder and head (round 1), then the head at 1e-3 and the encoder at its
# own rate (gating.encoder_lr, round 2); VARIANTS="a b" runs only those
declare -A V=(
  [ft3e-5]="gating=minilm_finetune gating.optimizer.lr=3e-5"
  [ft1e-4]="gating=minilm_finetune gating.optimizer.lr=1e-4"
  [lora1e-3]="gating=minilm_lora gating.optimizer.lr=1e-3"
  [ft-enc2e-5]="gating=minilm_finetune gating.optimizer.lr=1e-3 gating.encoder_lr=2e-5"
  [ft-enc5e-5]="gating=minilm_finetune gating.optimizer.lr=1e-3 gating.encoder_lr=5e-5"
  [lora-enc3e-4]="gating=minilm_lora gating.optimizer.lr=1e-3 gating.encoder_lr=3e-4"
)
mkdir -p "$OUT/logs"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
for t in llmrouter routerbench; do
  $B seed-cache --work "$C/work" --table $t --cache /tmp/c gating.net.encoder="$ENC" || exit 1
done
for t in llmrouter routerbench; do for v in ${VARIANTS:-"${!V[@]}"}; do
  ( # shellcheck disable=SC2086
    $B cv --work "$C/work" --table $t --cache /tmp/c --candidates default --tag "$v" \
      $HEAD $GPU $FIT ${V[$v]} > "$OUT/logs/$t-$v.log" 2>&1
    grep -E "CV acc|baselines" "$OUT/logs/$t-$v.log" | sed "s/^/$t $v /" ) &
done; done
wait
(cd "$C/work" && tar czf "$OUT/cv.tgz" */cv-*.json */cv-*.npz)
(cd "$OUT" && tar czf logs.tgz logs && rm -rf logs)
