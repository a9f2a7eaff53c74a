#!/usr/bin/env bash
# Train the default model shipped in bitmamba_lsp/data/default (issue 5).
#
# Corpus: the running Python's standard library + the permissively licensed (MIT/BSD/Apache/PSF/...)
# packages installed next to it, de-duplicated and split by file (3% held out; see
# bitmamba_lsp/train/corpus.py). Tokenizer: byte-level BPE, 4096 ids, trained on the training split.
# Model: BitMamba-2, d_model 256, 4 layers, 8 heads, ternary QAT; ~4.9 MB model.bin.
# Budget: 2600 steps x 8 x 512 tokens (~10.6M tokens), at most 47 minutes of training on 2 cores
# (the LR schedule also anneals on time; the step budget binds on an unloaded machine).
#
# Reproduce (needs `pip install 'bitmamba-lsp[train]'`, i.e. torch==2.13.0):
#     nohup scripts/train_default_model.sh > runs/default/nohup.log 2>&1 &
#     tail -f runs/default/train.log
# Re-running resumes from runs/default/checkpoint.pt; pass --no-resume to start over. Every
# checkpoint (5 min) is exported to the output directory with "status": "partial" in model.json.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-.venv/bin/python}"
RUN_DIR="${RUN_DIR:-runs/default}"
OUT="${OUT:-bitmamba_lsp/data/default}"
mkdir -p "$RUN_DIR"

exec "$PYTHON" -m bitmamba_lsp.train train \
    --from-scratch --stdlib --site-packages \
    --out "$OUT" --run-dir "$RUN_DIR" \
    --vocab-size 4096 --d-model 256 --n-layers 4 --n-heads 8 \
    --seq-len 512 --batch-size 8 \
    --lr 3e-3 --min-lr-ratio 0.1 --warmup-steps 150 --weight-decay 0.05 --grad-clip 1.0 \
    --steps 2600 --minutes 47 --eval-every 200 --checkpoint-minutes 5 \
    --seed 0 --threads 2 \
    "$@"
