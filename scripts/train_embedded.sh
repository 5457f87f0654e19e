#!/usr/bin/env bash
# Train the embedded default checkpoints (monet_interp/checkpoints/<name>/) on CPU: the 20M-token,
# balanced-recipe replacements of the committed 1M-token paper-recipe models.
#
#   scripts/train_embedded.sh                 # all four, sequentially: vd, dense, hd, top1
#   scripts/train_embedded.sh monet-vd-tiny   # one of them
#
# Needs a built corpus (monet-interp corpus build --out data/corpus). Each run
# writes $RUNS/<name>/ (final model, checkpoint/, history.jsonl, training_manifest.json) and is
# resumable: re-running the script continues an interrupted run from its last checkpoint, so a run
# can span several sessions (keep $RUNS outside a checkout that gets replaced).
# Environment: CORPUS (default data/corpus), RUNS (default runs/embedded), THREADS (default 1: on
# a 2-core machine two single-thread runs side by side beat one two-thread run), STEPS (default
# 4900: 4900 x 32 x 128 = 20.1M tokens), RECIPE (default balanced: the paper's objective plus
# loss-free balancing of the selection biases toward the absolute load k/E, u = 1e-2; "paper": the
# paper's objective alone, whose routing dies at this scale; see the README's routing recipes),
# INSTALL (default 1: copy each finished model into monet_interp/checkpoints/<name>/; 0: leave it in $RUNS).
set -euo pipefail
cd "$(dirname "$0")/.."
CORPUS=${CORPUS:-data/corpus}
RUNS=${RUNS:-runs/embedded}
THREADS=${THREADS:-1}
STEPS=${STEPS:-4900}
RECIPE=${RECIPE:-balanced}
INSTALL=${INSTALL:-1}
PYTHON=${PYTHON:-$([ -x .venv/bin/python ] && echo .venv/bin/python || echo python)}

if [ ! -f "$CORPUS/manifest.json" ]; then
  echo "no corpus at $CORPUS (build it: monet-interp corpus build --out $CORPUS)" >&2
  exit 1
fi

# Shared shape: d=192, 4 layers, 4 attention heads, vocab 4096 (tied), E=64 halves (4096 experts
# per routing group), 4 routing heads, moe_dim 8 (VD halves 4), top-k 4, 2 routing groups.
# Objective: the paper's L_LM + 1e-3 (L_unif + L_amb). "balanced" adds loss-free balancing of the
# routers' selection biases (bias += 1e-2 sign(k/E - load) after each step, used only to select
# experts, never in g) and nothing else.
# Labels are drawn with probability ~ train tokens^0.5 (small labels repeat at most ~2.3 epochs).
# Matmuls run under bf16 autocast (float32 weights, optimizer and routing math).
case "$RECIPE" in
  balanced) ROUTING=(--balance-rate 0.01 --balance-target absolute) ;;
  paper) ROUTING=() ;;
  *) echo "unknown RECIPE=$RECIPE (balanced or paper)" >&2; exit 2 ;;
esac
COMMON=(--corpus "$CORPUS" --steps "$STEPS" --batch-size 32 --seq-len 128 --lr 0.003 --warmup-steps 100
        --min-lr-ratio 0.1 --weight-decay 0.1 --grad-clip 1.0 --aux-weight 0.001 --label-power 0.5 --seed 0
        --d-model 192 --n-layers 4 --n-heads 4 --moe-experts 64 --moe-heads 4 --moe-dim 8 --moe-topk 4
        --moe-groups 2 --max-position-embeddings 1024 --precision bfloat16
        --eval-every 500 --eval-batches 1 --eval-batch-size 8 --test-windows 64 --health-batches 8
        --checkpoint-every 100 --threads "$THREADS" --resume)

declare -A KIND=([monet-vd-tiny]=vd [monet-hd-tiny]=hd [monet-top1-tiny]=top1 [dense-tiny]=dense)
NAMES=("$@")
[ ${#NAMES[@]} -eq 0 ] && NAMES=(monet-vd-tiny dense-tiny monet-hd-tiny monet-top1-tiny)

for name in "${NAMES[@]}"; do
  kind=${KIND[$name]:?unknown checkpoint name $name}
  echo "=== $name ($kind) $(date -u +%FT%TZ)"
  extra=()
  [ "$kind" != dense ] && extra=("${ROUTING[@]}")
  "$PYTHON" -m monet_interp.training --model "$kind" --out "$RUNS/$name" "${COMMON[@]}" "${extra[@]}"
  [ "$INSTALL" = 1 ] || continue
  dest=monet_interp/checkpoints/$name
  mkdir -p "$dest"
  for file in config.json model.safetensors tokenizer.json training_manifest.json; do
    cp "$RUNS/$name/$file" "$dest/$file.tmp" && mv "$dest/$file.tmp" "$dest/$file"
  done
  du -sh "$dest"
done
