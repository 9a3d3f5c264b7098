#!/usr/bin/env bash
# The recipe of the shipped default model (lmdm_engine/models/default): about an hour on a 2-core CPU.
# Renders the procedural corpus, trains the bidirectional outpainting baseline, fine-tunes it block-causally,
# evaluates it, and copies the model into the package.
set -euo pipefail
RUN=${RUN:-runs/default}
lmdm corpus -o data/corpus --clips 2000 --seconds 4 --jobs 2
lmdm train --stage outpaint -o "$RUN/outpaint" --data data/corpus --steps 5000 --batch-size 16 --lr 5e-4 --max-minutes 22
lmdm train --stage lmdm -o "$RUN/lmdm" --init "$RUN/outpaint/model" --data data/corpus --steps 4000 --batch-size 8 --lr 3e-4 --max-minutes 26
lmdm eval --model "$RUN/lmdm/model" --data data/corpus --clips 128 --blocks 2 --steps 3 -o "$RUN/eval.json"
