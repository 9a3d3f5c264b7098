#!/usr/bin/env bash
# The recipe of the shipped default model (lmdm_engine/models/default): about 2 hours on a 2-core CPU.
# Renders the procedural corpus, trains the bidirectional outpainting baseline, fine-tunes it block-causally,
# post-trains it with ARC-Forcing, adds text prompts and jamming (a block-causal fine-tune on captions and stems,
# then ARC-Forcing again; docs/TRAINING.md), evaluates it, copies it into the package and exports it to ONNX
# (checked against torch). The drift benchmark behind the choices is scripts/train_arc_forcing.sh / docs/DRIFT.md.
# The text stage needs the text extra (pip install -e ".[train,text]").
set -euo pipefail
RUN=${RUN:-runs/default}
ARC=${ARC:-runs/arc/default}
lmdm corpus -o data/corpus --clips 2000 --seconds 4 --jobs 2
lmdm train --stage outpaint -o "$RUN/outpaint" --data data/corpus --steps 5000 --batch-size 16 --lr 5e-4 --max-minutes 22
lmdm train --stage lmdm -o "$RUN/lmdm" --init "$RUN/outpaint/model" --data data/corpus --steps 4000 --batch-size 8 --lr 3e-4 --max-minutes 26
lmdm train --stage arc-forcing -o "$ARC" --init "$RUN/lmdm/model" --data data/corpus --steps 250 --batch-size 8 \
  --lr 1e-5 --disc-lr 1e-4 --rollout-blocks 8 --ema-decay 0.99 --threads 1 --max-minutes 14
TEXT=${TEXT:-runs/text}
TEXT_ARC=${TEXT_ARC:-runs/arc/text}
lmdm train --stage lmdm -o "$TEXT" --init "$ARC/model" --data data/corpus --text-encoder all-MiniLM-L6-v2 \
  --accompaniment --style-dropout 0.5 --text-dropout 0.2 --jam-fraction 0.3 --steps 2500 --batch-size 8 --lr 2e-4 \
  --threads 1 --max-minutes 45
lmdm train --stage arc-forcing -o "$TEXT_ARC" --init "$TEXT/model" --data data/corpus --steps 250 --batch-size 8 \
  --lr 1e-5 --disc-lr 1e-4 --rollout-blocks 8 --ema-decay 0.99 --threads 1 --max-minutes 14
lmdm eval --model "$TEXT_ARC/model" --data data/corpus --clips 128 --blocks 2 --steps 2 -o "$TEXT_ARC/eval.json"
cp "$TEXT_ARC/model/config.json" "$TEXT_ARC/model/model.safetensors" lmdm_engine/models/default/
lmdm export lmdm_engine/models/default --verify
