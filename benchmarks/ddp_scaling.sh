# Issue 7: gate fine-tuning with DDP on 1 vs 2 GPUs (same global batch, seed). Run on a 2-GPU host
# from the repo root with .whl/ (hydra/omegaconf wheels) and .gpu_gate/ (fp16 MiniLM + outcome
# tables) carried beside it; logs and metrics land in $OUT.
set -u
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 MOE2_CACHE=/tmp/cache
python3 -m pip install -q --no-deps --no-build-isolation --no-index -e . 2>&1 | tail -2
python3 - <<'PY'
from safetensors.torch import load_file, save_file
sd = load_file('.gpu_gate/minilm/model.fp16.safetensors')
save_file({k: v.float().contiguous() for k, v in sd.items()}, '.gpu_gate/minilm/model.safetensors', metadata={'format': 'pt'})
PY
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
env | grep -E "NCCL_NVLS|MULTICAST|NVSHMEM_DISABLE" 
C="gating=minilm_finetune paths.artifacts=$PWD/.gpu_gate/llmr gating.net.encoder=$PWD/.gpu_gate/minilm logger=csv trainer.max_epochs=5 trainer.enable_progress_bar=false seed=0 gating.patience=100"
for run in "g1:trainer=ddp trainer.devices=1 gating.batch_size=64" "g2:trainer=ddp trainer.devices=2 gating.batch_size=32"; do
  name=${run%%:*}; ov=${run#*:}
  echo "=== $name: python3 -m moe2.cli train $C $ov"
  /usr/bin/time -v python3 -m moe2.cli train $C $ov paths.gating=/tmp/g_$name > $OUT/train_$name.log 2>&1
  grep -E "gate written|done in|Elapsed|Maximum resident|Error|error" $OUT/train_$name.log | tail -6
  cp /tmp/g_$name/metrics.json $OUT/metrics_$name.json 2>/dev/null
  python3 -c "import json; m=json.load(open('/tmp/g_$name/metrics.json')); print({k: m[k] for k in ['val/router_acc','val/best_single_insample_acc','val/knn_acc','val/oracle_acc','test/router_acc','best_epoch']}); print(m['timing'])"
done
