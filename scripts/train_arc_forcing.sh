#!/usr/bin/env bash
# ARC-Forcing post-training of the block-causal model (docs/TRAINING.md, "ARC-Forcing"), then the drift benchmark
# (docs/DRIFT.md). Needs runs/default/lmdm/model (scripts/train_default_model.sh).
# The run recorded in the docs stopped at step 114 of 250 on its 14-minute limit (a 2-core CPU shared with other
# jobs); a faster or idler machine gets further through the same schedule.
set -euo pipefail
RUN=${RUN:-runs/arc/default}
nice -n 19 lmdm train --stage arc-forcing -o "$RUN" --init runs/default/lmdm/model --data data/corpus \
  --steps 250 --batch-size 8 --lr 1e-5 --disc-lr 1e-4 --rollout-blocks 8 --ema-decay 0.99 --threads 1 --max-minutes 14
nice -n 19 python benchmarks/bench_drift.py --arc "$RUN/model" --markdown --plot docs/drift.png --json docs/drift.json
