#!/usr/bin/env bash
# On a lent GPU machine (device tool), after benchmarks/device/prepare.sh here. Two calls, one right after the other:
#   run(command="bash benchmarks/device/run.sh bench", carry=[".whl", ".device/bench"], timeout_s=420)
#   run(command="bash benchmarks/device/run.sh suite", carry=[".whl", ".device/suite"], timeout_s=540)
# bench: benchmarks/gpu_cost.py (bf16, bert-base shape) and benchmarks/semi_structured.py -> $OUT/*.json
# suite: the quick start in bf16 and tests/test_devices.py on CUDA -> $OUT/*.log (pytest-xdist is in .whl: the
# project's pytest options start workers)
set -uo pipefail
part=${1:?bench or suite}
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
  || exit 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TQDM_MININTERVAL=30
ln -sfn "$PWD/.device/$part" ../shared
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$OUT/gpu.txt"
python3 -c "import torch, transformers, nni; print('torch', torch.__version__, 'transformers', transformers.__version__, 'nni', nni.__version__)" | tee -a "$OUT/gpu.txt"
case $part in
  bench)
    timeout 240 python3 benchmarks/gpu_cost.py --precision bf16 --json "$OUT/gpu_cost.json" > "$OUT/gpu_cost.log" 2>&1
    echo "gpu_cost rc=$?"
    timeout 120 python3 benchmarks/semi_structured.py --json "$OUT/semi_structured.json" > "$OUT/semi_structured.log" 2>&1
    echo "semi_structured rc=$?" ;;
  suite)
    timeout 240 accelerate launch --num_processes 1 --num_machines 1 --mixed_precision bf16 --dynamo_backend no \
      examples/glue.py --config examples/configs/quickstart.yaml --output-root /tmp/runs > "$OUT/quickstart.log" 2>&1
    echo "quickstart rc=$?"; grep -a "IMP round\|sparsity.*accuracy\|metric" "$OUT/quickstart.log" | tail -8
    timeout 240 python3 -m pytest -q -p no:cacheprovider tests/test_devices.py tests/test_gpu_cost.py > "$OUT/pytest.log" 2>&1
    echo "pytest rc=$?"; tail -3 "$OUT/pytest.log" ;;
  *) echo "unknown part $part (bench or suite)"; exit 2 ;;
esac
