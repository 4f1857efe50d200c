#!/usr/bin/env bash
# The prepared GPU run of issue 5, for a session that is lent a device machine (run from the repo root there):
#   the bundled model and a random-weight BERT-base, each through `longdoc bench --device cuda` (engine-only
#   ceiling over a budget sweep in bfloat16, the real service at concurrency 1/4/16/64, batching off, fairness).
# Here first: fetch the wheels named in benchmarks/device-requirements.txt into .whl/ (ignored by git), then
#   run(command="bash benchmarks/device_check.sh", carry=[".whl"], timeout_s=560)
# Reports and JSON land in $OUT; copy them to docs/benchmarks-gpu*.md and benchmarks/results/ afterwards.
set -euo pipefail
out=${OUT:-benchmarks/results}
if compgen -G ".whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu.txt"
python3 -c "import torch; assert torch.cuda.is_available(), 'torch sees no GPU'; print(torch.__version__)"
timeout 260 python3 -m app.cli bench --device cuda --no-int8 --results-dir "$out" --report "$out/benchmarks-gpu.md"
timeout 260 python3 -m app.cli bench --device cuda --no-int8 --random-bert-base --results-dir "$out" \
  --report "$out/benchmarks-gpu-bert-base.md"
