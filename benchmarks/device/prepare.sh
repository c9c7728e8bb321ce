#!/usr/bin/env bash
# Here, before a session that is lent a GPU machine (docs/development.md, "On a GPU"): what that machine lacks.
# It has python3 with CUDA torch, transformers, accelerate, safetensors, pyarrow, scipy, sklearn, matplotlib; it
# reaches no package registry, and ../shared does not travel. This writes (both ignored by git):
#   .whl/            wheels of the missing packages (NNI without its 57 MB web UI, which no pruner needs)
#   .device/bench/   the tokenizer and the SST-2 and SQuAD copies: benchmarks/gpu_cost.py, semi_structured.py
#   .device/suite/   the embedded model in fp16 (45 MB; cast back to fp32 on load) with RTE and part of SST-2:
#                    the quick start and tests/test_devices.py
# Each call carries .whl and one of the two folders (one call may carry 64 MiB): benchmarks/device/run.sh.
set -euo pipefail
cd "$(dirname "$0")/../.."
SHARED=${SHARED:-../shared}
PY=${PY:-.venv/bin/python}
mkdir -p .whl
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  --platform manylinux1_x86_64 --platform any -d .whl \
  nni==3.0 torch-pruning==1.6.1 datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19 tokenizers==0.23.3 \
  filelock==3.11.0 fsspec==2026.9.0 json-tricks==3.17.3 astor==0.8.1 prettytable==3.18.0 PythonWebHDFS==0.2.3 \
  responses==0.26.3 schema==0.7.8 typeguard==4.1.2 websockets==17.4 wcwidth==0.9.4 pytest-xdist==3.8.0 execnet==2.1.2
"$PY" - <<'PY'
import pathlib, zipfile
wheel = pathlib.Path(".whl/nni-3.0-py3-none-manylinux1_x86_64.whl")
slim = wheel.with_name("nni-3.0-py3-none-any.whl")
with zipfile.ZipFile(wheel) as src, zipfile.ZipFile(slim, "w", zipfile.ZIP_DEFLATED) as dst:
    for item in src.infolist():
        if item.filename.startswith("nni_node/"):
            continue
        data = src.read(item)
        if item.filename.endswith(".dist-info/RECORD"):
            data = b"".join(l for l in data.splitlines(True) if not l.startswith(b"nni_node/"))
        dst.writestr(item, data)
wheel.unlink()
PY
rm -rf .device && mkdir -p .device/bench/models/all-MiniLM-L6-v2 .device/bench/data/glue .device/bench/data/squad \
  .device/suite/models .device/suite/data/glue
for f in config.json special_tokens_map.json tokenizer.json tokenizer_config.json vocab.txt; do
  cp "$SHARED/models/all-MiniLM-L6-v2/$f" .device/bench/models/all-MiniLM-L6-v2/
done
cp -r "$SHARED/data/glue/sst2" .device/bench/data/glue/
cp "$SHARED/data/squad/validation.jsonl" .device/bench/data/squad/
cp -r .device/bench/models/all-MiniLM-L6-v2 .device/suite/models/
cp -r "$SHARED/data/glue/rte" .device/suite/data/glue/  # the suite call is near 64 MiB: SST-2's first 5,000
mkdir -p .device/suite/data/glue/sst2                   # training rows are enough for the quick start's 2,000
head -n 5000 "$SHARED/data/glue/sst2/train.jsonl" > .device/suite/data/glue/sst2/train.jsonl
cp "$SHARED/data/glue/sst2/validation.jsonl" .device/suite/data/glue/sst2/
"$PY" - "$SHARED" <<'PY'
import sys
from safetensors.torch import load_file, save_file
state = load_file(f"{sys.argv[1]}/models/all-MiniLM-L6-v2/model.safetensors")
save_file({k: v.half().contiguous() for k, v in state.items()}, ".device/suite/models/all-MiniLM-L6-v2/model.safetensors",
          metadata={"format": "pt"})
import json, pathlib  # transformers 5 loads in the checkpoint's dtype unless config.json names one: fp32 here
config = pathlib.Path(".device/suite/models/all-MiniLM-L6-v2/config.json")
config.write_text(json.dumps({**json.loads(config.read_text()), "dtype": "float32"}, indent=2) + "\n")
PY
du -sh .whl .device/bench .device/suite
