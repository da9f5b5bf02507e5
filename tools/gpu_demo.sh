#!/usr/bin/env bash
# The demo model's GPU check, one call of at most ~8 minutes on one GPU (issue #11):
#   1. training throughput (audio-s/s) of 15x5 and small, bf16, batch 32, beside the CPU figures in docs/runs/;
#   2. the `small` demo model trained from scratch with --amp (bf16) on a few hours of Opus, for TRAIN_SECONDS.
# Prepare here, then send the pack (~34 MiB) and the wheels the GPU machine lacks along with the working tree:
#   python tools/make_gpu_pack.py                                    # data/gpu-pack: ~2.5 h of train, all of valid
#   pip download --no-deps --only-binary=:all: --python-version 3.12 --platform manylinux_2_28_x86_64 \
#       --platform manylinux2014_x86_64 -d .whl soundfile==0.13.1 soxr cffi pycparser
#   (device) bash tools/gpu_demo.sh      with data/gpu-pack and .whl carried
# Results go to $OUT (the device tool's folder) or runs/gpu-demo: throughput.txt, train.log, metrics.jsonl, best.pt.
# On a machine without a GPU, DEVICE=cpu WORKERS=1 TRAIN_SECONDS=60 runs the same steps (a check of the script).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-runs/gpu-demo}
DEVICE=${DEVICE:-cuda}
PACK=${PACK:-data/gpu-pack}
TRAIN_SECONDS=${TRAIN_SECONDS:-330}  # SIGTERM then: the trainer saves last.pt and stops cleanly
EPOCHS=${EPOCHS:-40}                 # the cosine schedule's length; ~5 s an epoch expected at ~3000 audio-s/s
WORKERS=${WORKERS:-$(($(nproc) - 2))}
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1
mkdir -p "$OUT"
[ -f "$PACK/train/manifest.jsonl" ] || { echo "gpu_demo: no $PACK/train/manifest.jsonl: run tools/make_gpu_pack.py" >&2; exit 2; }

if ! $PY -c "import soundfile, soxr" 2> /dev/null; then  # the GPU image lacks them: wheels carried in .whl
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
    export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || true
  $PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'cpus', torch.get_num_threads())"
} | tee "$OUT/machine.txt"

echo "== throughput: 15x5 and small, batch 32, amp ($DEVICE)"
$PY bench/train_throughput.py --device "$DEVICE" --amp --presets 15x5 small --batch_size 32 --steps "${BENCH_STEPS:-20}" \
    --manifest "$PACK/train/manifest.jsonl" --cache_dir '' 2>&1 | tee "$OUT/throughput.txt"

echo "== training small from scratch, amp, $TRAIN_SECONDS s at most ($WORKERS loader processes)"
RUN=runs/gpu-demo-train
rm -rf "$RUN"
status=0
timeout -s TERM "$TRAIN_SECONDS" $PY train.py --device "$DEVICE" --amp --model small --normalize per_feature \
    --train_manifest "$PACK/train/manifest.jsonl" --valid_manifest "$PACK/valid/manifest.jsonl" \
    --batch_size 32 --max_epochs "$EPOCHS" --lr 2e-3 --warmup_steps 300 --weight_decay 1e-3 \
    --speed_perturb 0.9 1.0 1.1 --rect_masks 2 --rect_freq 25 --rect_time 40 \
    --noise_prob 0.3 --snr_db 0 30 --silence_prob 0.2 --join_prob 0.2 \
    --num_workers "$WORKERS" --cache_dir /tmp/gpu-demo-cache --no_progress --out_dir "$RUN" \
    > "$OUT/train.log" 2>&1 || status=$?
tail -n 25 "$OUT/train.log"
cp "$RUN/metrics.jsonl" "$OUT/"
[ -f "$RUN/best.pt" ] && cp "$RUN/best.pt" "$OUT/"
# the last validation of each epoch, and the mean training rate, in one line each
$PY - "$OUT/metrics.jsonl" <<'EOF'
import json, sys
rows = [json.loads(line) for line in open(sys.argv[1])]
for r in rows:
    if "valid_cer" in r:
        print(f"epoch {r['epoch'] + 1:3d}  step {r['step']:6d}  valid CER {100 * r['valid_cer']:5.2f}%  WER {100 * r['valid_wer']:5.2f}%")
rates = [r["audio_s_per_s"] for r in rows if "audio_s_per_s" in r]
if rates:
    print(f"training rate: {sum(rates) / len(rates):.0f} audio-s/s on average, {len(rates)} readings")
EOF
[ "$status" = 0 ] || [ "$status" = 124 ] || { echo "gpu_demo: train.py failed ($status)" >&2; exit "$status"; }
