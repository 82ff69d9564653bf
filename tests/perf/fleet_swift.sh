#!/bin/sh
# A light stand-in for `swift sft` on a simulated fleet host: it writes FLEET_STEPS
# progress lines to <output_dir>/logging.jsonl, FLEET_STEP_SECONDS apart, then swift's
# summary line, and exits 0. A shell costs a fleet host far less than a Python trainer.
out=""
previous=""
for argument in "$@"; do
    if [ "$previous" = "--output_dir" ]; then out="$argument"; fi
    previous="$argument"
done
[ -n "$out" ] || { echo "no --output_dir" >&2; exit 2; }
mkdir -p "$out"
steps=${FLEET_STEPS:-3}
pause=${FLEET_STEP_SECONDS:-0.5}
step=1
while [ "$step" -le "$steps" ]; do
    sleep "$pause"
    echo "{\"loss\": 1.0, \"learning_rate\": 0.0001, \"epoch\": 1.0, \"global_step/max_steps\": \"$step/$steps\", \"elapsed_time\": \"1s\", \"remaining_time\": \"1s\", \"train_speed(s/it)\": $pause}" >> "$out/logging.jsonl"
    step=$((step + 1))
done
echo "{\"train_runtime\": 1.0, \"train_loss\": 1.0, \"epoch\": 1.0, \"global_step/max_steps\": \"$steps/$steps\", \"elapsed_time\": \"1s\", \"remaining_time\": \"0s\", \"train_speed(s/it)\": $pause}" >> "$out/logging.jsonl"
echo "[INFO:swift] last_model_checkpoint: None" >&2
exit 0
