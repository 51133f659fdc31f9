#!/usr/bin/env bash
# GPU check (bench/gpu_check.py): tokens/s, MFU and peak memory of our finetune step's trainer on a Phi-3-mini-shaped
# model with random weights, LoRA and QLoRA, 1 and 2 GPUs; no network needed.
#   bash bench/gpu_check.sh                # a GPU machine: under 8 minutes, results in outputs/gpu_check/
#   bash bench/gpu_check.sh --tiny         # any CPU, tiny model: checks the whole path in about a minute
#   bash bench/gpu_check.sh --help         # every option
# PYTHON=/path/to/python picks the interpreter (default: .venv/bin/python if present, else python3).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
python=${PYTHON:-}
if [[ -z $python ]]; then
  if [[ -x .venv/bin/python ]]; then python=.venv/bin/python; else python=python3; fi
fi
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
# Stay under 8 minutes: no configuration starts after --budget-seconds (420 s); SIGINT at 470 s stops every rank.
# A module from the repository root: it imports bench.bench_finetune, pipelines and tests.helpers from there.
exec timeout --signal=INT --kill-after=20 470 "$python" -m bench.gpu_check "$@"
