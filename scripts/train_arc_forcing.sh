#!/usr/bin/env bash
# ARC-Forcing post-training of the block-causal model (docs/TRAINING.md, "ARC-Forcing"), then the drift benchmark
# of the post-trained model against its parent (docs/TRAINING.md). INIT is the model to post-train: by default the
# shipped one (lmdm_engine/models/default); runs/default/lmdm/model after scripts/train_default_model.sh.
# Resumable like every `lmdm train` stage: run it again to continue from the last checkpoint (every 200 steps).
set -euo pipefail
DATA=${DATA:-data/corpus6k}
INIT=${INIT:-lmdm_engine/models/default}
RUN=${RUN:-runs/arc/default}
[ -f "$DATA/corpus.json" ] || lmdm corpus -o "$DATA" --clips 6000 --seconds 4 --jobs 2
nice -n 19 lmdm train --stage arc-forcing -o "$RUN" --init "$INIT" --data "$DATA" \
  --steps 250 --batch-size 8 --lr 1e-5 --disc-lr 1e-4 --rollout-blocks 8 --ema-decay 0.99 --threads 1 --max-minutes 30
nice -n 19 python benchmarks/bench_drift.py --outpaint '' --lmdm "$INIT" --arc "$RUN/model" --data "$DATA" \
  --steps 2 --contexts 16 --markdown
