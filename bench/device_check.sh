#!/usr/bin/env bash
# The documented GPU check, as run on a lent device machine (an image with torch, transformers, peft,
# accelerate and pytest, but none of Parlour's other pins). Missing wheels travel in .whl/ (see
# requirements.txt for versions; `pip download --platform manylinux... -d .whl bitsandbytes pydantic ...`).
#
#   bash bench/device_check.sh [OUT-folder]
#
# 1. bench/device_check.py: bitsandbytes 8/4-bit, offload, samplers, batching, LoRA on CUDA + the table.
# 2. bench/training.py: LoRA training tokens/s on the wide model, bf16 and QLoRA (4-bit nf4), beside a bare loop.
# 3. The model-level test files, on CUDA this time (device_map auto puts the micro models on the GPU), and
#    the training tests that run the Trainer (loss, stop/resume equality) on the GPU.
set -uo pipefail
out=${1:-${OUT:-/tmp/device-out}}
mkdir -p "$out"
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site
fi
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$out/gpu.txt"
[ -f models/parlour-demo/config.json ] || python3 -m modules.demo_model 2>&1 | tail -1
python3 -m modules.demo_model --size wide --steps 0 --models-dir /tmp/models 2>&1 | tail -1
python3 bench/device_check.py --wide /tmp/models/parlour-wide 2>&1 | tee "$out/device_check.txt"
status=$?
timeout 300 python3 bench/training.py --model /tmp/models/parlour-wide --steps 30 2>&1 | tee "$out/training.txt" | tail -8
[ "${PIPESTATUS[0]}" -eq 0 ] || status=1
timeout 240 python3 -m pytest -q -p no:cacheprovider tests/unit/test_sampling.py tests/integration/test_samplers_model.py \
  tests/integration/test_batching.py tests/integration/test_pipeline.py tests/integration/test_model_loading.py \
  -k "not gguf and not llama_cpp" 2>&1 | tee "$out/pytest.txt" | tail -30
timeout 240 python3 -m pytest -q -p no:cacheprovider tests/integration/test_training.py \
  -k "loss_falls or stop_then_resume or crash" 2>&1 | tee "$out/pytest-training.txt" | tail -10
exit $status
