#!/usr/bin/env bash
# The whole PromptPose pipeline on a CPU with no downloads (README's demo):
#   1. generate a synthetic AP-10K (600 train / 100 val images, AP-10K's json format),
#   2. train a small PromptPose (same structure as the paper's, narrow and shallow) from
#      random initialisation: there are no CLIP weights here, so this shows the machinery,
#      not the benefit of language pre-training,
#   3. evaluate the last epoch (final.pt) with the flip test: AP, PCK, pixel error, figures.
# Everything lands in demo_output/. PYTHON overrides the interpreter (default: .venv's).
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-.venv/bin/python}
command -v "$PY" >/dev/null || PY=python3
"$PY" -c "import torch, torchvision, cv2, pycocotools, ftfy, regex, tqdm" 2>/dev/null || {
    echo "demo.sh: $PY lacks the requirements; set up first:" >&2
    echo "  python3 -m venv .venv && .venv/bin/pip install -r requirements.txt" >&2
    exit 1
}
OUT=demo_output
start=$(date +%s)

rm -rf "$OUT/run"   # a fresh run each time (train.py never overwrites one)
"$PY" synthetic.py --out "$OUT/data" --train 600 --val 100 --seed 0
"$PY" train.py \
    --train-ann "$OUT/data/annotations/ap10k-train-split1.json" \
    --val-ann "$OUT/data/annotations/ap10k-val-split1.json" \
    --images "$OUT/data/data" --output-dir "$OUT/run" \
    --backbone clip-rn50 --method promptpose --small --random-init --input-size 128 \
    --epochs 24 --batch-size 32 --workers 2 --lr 2e-3 --warmup-iters 20 --lr-steps 20 \
    --eval-interval 4
"$PY" evaluate.py "$OUT/run/final.pt" --workers 2 --vis 4 --output-dir "$OUT/run/eval"
echo "demo finished in $(( $(date +%s) - start )) s; figures in $OUT/run/eval/vis," \
     "training curves in $OUT/run/curves.png"
