#!/usr/bin/env bash
# The GPU check in one go (CUDA tests, bench of every model, memory growth); see scripts/gpu_check.py.
# Stops starting new runs after 8 minutes so the whole check fits a 9-minute device slot.
set -euo pipefail
cd "$(dirname "$0")/.."
exec timeout 540 python scripts/gpu_check.py --budget 420 "$@"
