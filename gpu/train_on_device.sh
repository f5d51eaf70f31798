#!/bin/bash
# One call on a lent GPU machine: train several U-Nets side by side within a time budget, bring back their best
# weights and logs (split into 15 MiB parts under $OUT), then check the GPU inference path with `bench`.
#
#   here:   .venv/bin/python gpu/pack_data.py ../shared/data/lgg-flair .gpu/data.tgz   (.gpu/ in .git/info/exclude)
#   device: bash gpu/train_on_device.sh gpu/runs/NAME.runs     (carry .gpu; timeout 600 s)
#   here:   cat OUT/results.tar.part* | tar x -C runs/gpu && python -m mriseg export --run runs/gpu/NAME ...
#
# A runs file holds one run per line: a name, then its `train` options. Every run gets COMMON_OPTIONS and a
# --minutes budget that ends training TRAIN_END seconds into the call; runs still going 25 s later are stopped
# (their best epoch so far is kept). Try it here first: DEVICE=cpu EXTRA="--max-patients 2 --steps-per-epoch 2".
set -u
runs_file=$1
export PYTHONUNBUFFERED=1 OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
OUT=${OUT:-/tmp/out}
TRAIN_END=${TRAIN_END:-465}
COMMON_OPTIONS=${COMMON_OPTIONS:---epochs 150 --augmentation strong --dice-per-slice --workers 2}
mkdir -p "$OUT" /tmp/runs
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 gpu/unpack_data.py .gpu/data.tgz /tmp/lgg || exit 1
budget=$(python3 -c "print(round(($TRAIN_END - $SECONDS - 5) / 60, 2))")
echo "t=$SECONDS s: $budget minutes for each run"
while read -r name options; do
  [ -z "$name" ] && continue
  # shellcheck disable=SC2086  # the options are words
  timeout $((TRAIN_END + 25 - SECONDS)) python3 -m mriseg train --data /tmp/lgg --out "/tmp/runs/$name" \
    $COMMON_OPTIONS $options --minutes "$budget" --device "${DEVICE:-cuda}" ${EXTRA:-} > "/tmp/runs/$name.log" 2>&1 &
done < "$runs_file"
wait
echo "t=$SECONDS s: training over"
(cd /tmp/runs && tar cf /tmp/results.tar --exclude=checkpoint --exclude=epochs ./*/ ./*.log)
split -b 15m -d /tmp/results.tar "$OUT/results.tar.part"
timeout 60 python3 -m mriseg bench --weights weights --slices 32 2>&1 | tail -3
for run in /tmp/runs/*/; do
  echo "$(basename "$run"): last epochs (epoch, loss, validation Dice mean, median, lr, s)"
  tail -n 2 "$run/training_log.csv"
done
