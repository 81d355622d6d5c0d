#!/bin/bash
# all-mpnet-base-v2 vs all-MiniLM-L6-v2 for the gate, by 5-fold CV on train+val only
# (benchmarks/RESULTS.md, "A stronger encoder: all-mpnet-base-v2 (CV only)"), as it ran on the lent
# GPU host: embeddings on its GPU, then CV of both encoders on its 16 CPU cores (one thread a job).
#
# That host has no PyPI and takes at most 64 MiB a call, so earlier calls leave in folder C:
#   w.gz.*          the fp16 safetensors of all-mpnet-base-v2, gzipped and split (<= 55 MB a piece)
#   SHA256SUMS      sha256 of w.gz (the joined pieces) and of model16/model.safetensors
#   model16/        the model's config, tokenizer and sentence-transformers files (from the zip)
#   texts/<table>.json   each table's prompt texts in its imported order (a JSON list)
#   work/<table>/{outcomes/,embeddings.npy}   `bench_quality.py import` + MiniLM embeddings
#   repo/           this checkout's src conf pipelines export benchmarks pyproject.toml README.md
#   whl/            hydra_core-1.3.8, omegaconf-2.3.1, antlr4_python3_runtime-4.9.3 wheels
# and the last call runs `bash C/repo/benchmarks/mpnet_device.sh C [CANDIDATES...]` with OUT set.
# A later round of candidates carries workm/<table>/embeddings.npy (the joined mpnet embeddings)
# instead of w.gz.*, model16/ and texts/: then nothing is embedded.
# Back under $OUT: the mpnet embeddings (<table>.partK.npy), embed_report.json, cv.tgz
# (workm/ = mpnet, work/ = MiniLM: <table>/cv-<candidate>.{json,npz}) and logs.tgz.
set -o pipefail
C=${1:?carry folder}
shift
cd "$C" || exit 1
export OUT PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
t0=$(date +%s)
if [ -e w.gz.0 ]; then
  cat w.gz.* >w.gz && gunzip -c w.gz >model16/model.safetensors && sha256sum -c SHA256SUMS || exit 1
  echo "== weights joined and verified: $(($(date +%s) - t0)) s"
  python3 repo/benchmarks/mpnet_device_embed.py --model model16 --texts texts/llmrouter.json \
    texts/routerbench.json --out "$OUT" --device cuda --st-check 256 2>&1 | grep -v "Loading weights" || exit 1
  echo "== embedded: $(($(date +%s) - t0)) s"
fi  # else: a later round, workm/<table>/embeddings.npy carried (the first round's embeddings)
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site whl/*.whl || exit 1
python3 -m pip install -q --no-index --no-deps --no-build-isolation --target /tmp/site ./repo || exit 1
export PYTHONPATH=/tmp/site
B="python3 repo/benchmarks/bench_quality.py"
MP="--stub-encoder --stub-width 768 gating.net.max_length=384"
for t in llmrouter routerbench; do
  mkdir -p workm/$t && ln -sfn "$PWD/work/$t/outcomes" workm/$t/outcomes
  [ -e workm/$t/embeddings.npy ] || python3 -c "import sys; sys.path.insert(0, 'repo/benchmarks')
import numpy as np, pathlib; from mpnet_device_embed import join_parts
np.save('workm/$t/embeddings.npy', join_parts(pathlib.Path('$OUT'), '$t'))" || exit 1
  $B seed-cache --work work --table $t --cache /tmp/c --stub-encoder || exit 1
  $B seed-cache --work workm --table $t --cache /tmp/cm $MP || exit 1
done
CANDS=${*:-default cb+cor20-do0.5 cb+cor20-do0.3 text}
mkdir -p "$OUT/logs"
for w in work workm; do for t in llmrouter routerbench; do for c in $CANDS; do echo "$w $t $c"; done; done; done |
  xargs -P 16 -n 3 sh -c 'if [ $0 = workm ]; then ex="--cache /tmp/cm '"$MP"'"; else ex="--cache /tmp/c --stub-encoder"; fi
    python3 repo/benchmarks/bench_quality.py cv --work $0 --table $1 $ex --candidates $2 --tag $2 > "$OUT/logs/$0-$1-$2.log" 2>&1
    grep -E "CV acc|baselines" "$OUT/logs/$0-$1-$2.log" | sed "s/^/$0 $1 /"'
echo "== CV done: $(($(date +%s) - t0)) s"
tar czf "$OUT/cv.tgz" work/*/cv-*.json work/*/cv-*.npz workm/*/cv-*.json workm/*/cv-*.npz &&
  (cd "$OUT" && tar czf logs.tgz logs && rm -rf logs)
