#!/bin/bash
# The CV and check-preserving runs of benchmarks/RESULTS.md "Routing quality (development
# protocol)", as they ran on the lent GPU host's 16 CPU cores (one thread per candidate).
#
# That host has no encoder weights and no PyPI: carry a folder CARRY holding
#   repo/      this checkout's src conf pipelines export benchmarks pyproject.toml README.md
#   whl/       hydra_core-1.3.8, omegaconf-2.3.1, antlr4_python3_runtime-4.9.3 wheels
#   work/<table>/{outcomes/,embeddings.npy}   from `bench_quality.py import` and
#              `bench_quality.py export-embeddings` on a machine with the encoder
# and run `bash CARRY/repo/benchmarks/bench_quality_device.sh CARRY [CANDIDATES...]` with OUT set.
# The gate then uses a stand-in encoder of MiniLM's width and reads the real embeddings from the
# seeded cache (bench_quality.py seed-cache): a frozen gate never runs its encoder on cached prompts.
# Without CANDIDATES it runs every candidate of bench_quality.CANDIDATES; PRESERVING="table:candidate
# ..." (default "llmrouter:default routerbench:default") lists the check-preserving runs.
set -o pipefail
C=${1:?carry folder}
shift
cd "$C" || exit 1
export PYTHONUNBUFFERED=1 OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site whl/*.whl || exit 1
python3 -m pip install -q --no-index --no-deps --no-build-isolation --target /tmp/site ./repo || exit 1
export PYTHONPATH=/tmp/site
B="python3 repo/benchmarks/bench_quality.py"
for t in llmrouter routerbench; do $B seed-cache --work work --table $t --cache /tmp/c --stub-encoder || exit 1; done
CANDS=${*:-$(python3 -c "import sys; sys.path.insert(0,'repo/benchmarks'); import bench_quality as b; print(' '.join(b.CANDIDATES))")}
mkdir -p "$OUT/logs"
for t in llmrouter routerbench; do for c in $CANDS; do echo "$t $c"; done; done |
  xargs -P 16 -n 2 sh -c 'python3 repo/benchmarks/bench_quality.py cv --work work --table $0 --cache /tmp/c --stub-encoder --candidates $1 --tag $1 > "$OUT/logs/$0-$1.log" 2>&1; grep -E "CV acc|baselines" "$OUT/logs/$0-$1.log" | sed "s/^/$0 /"'
STUB=/tmp/c/stub-encoder-384
for tc in ${PRESERVING:-llmrouter:default routerbench:default}; do
  t=${tc%%:*} c=${tc#*:}
  ov=$(python3 -c "import sys; sys.path.insert(0,'repo/benchmarks'); import bench_quality as b; print(' '.join(b.CANDIDATES['$c']))")
  (python3 -m moe2.cli check-preserving paths.artifacts=work/$t paths.cache=/tmp/c gating.net.encoder=$STUB \
    preserving.m=10 preserving.out="$OUT/logs/pres-$t-$c.json" $ov gating.fit_on=train+val > "$OUT/logs/pres-$t-$c.log" 2>&1
   echo "== check-preserving $t $c"; grep -E "acc gap mean|time:" "$OUT/logs/pres-$t-$c.log") &
done
wait
(cd work && tar czf "$OUT/cv.tgz" */cv-*.json) && (cd "$OUT" && tar czf logs.tgz logs && rm -rf logs)
