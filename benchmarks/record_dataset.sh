#!/usr/bin/env bash
# Regenerates the shipped recorded dataset twin/data/recorded/<name>/ (docs/twin.md, "Recorded transitions"):
# ten 60 s dm-demo runs on windows of the shipped sample trace, several policies, some with
# --explore 0.2. Trace windows [start, start + 60·speed) s (60 s of wall time):
#   train: 0, 40, 80, 125 (speed 0.5); 0-45, 10-55, 75-120 (speed 0.75: more load,
#   longer queues)
#   validation: 160   test: 195
# (windows whose replay peaks under the testbed's 2000 packets/s; training windows never overlap the
# validation or test ones).
# Seeds follow the project's split (train 0-99, validation 100-199, test >= 200).
# Needs root (Mininet). Each run holds /tmp/mininet.lock. An existing recording is never overwritten:
# remove twin/data/recorded/<name> first to record it again.
#   sudo benchmarks/record_dataset.sh [NAME ...]     (default: all ten)
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
py="${PYTHON:-$repo/.venv/bin/python}"
[ -x "$py" ] || py=python3
out="$repo/twin/data/recorded"

# name                     start policy         explore stabilizer seed speed
runs="
w000-deepmigration-x02     0   deepmigration  0.2 off 1   0.5
w040-ofm                   40  ofm            0   off 2   0.5
w080-pairwise-x02          80  pairwise       0.2 off 3   0.5
w125-deepmigration         125 deepmigration  0   on  4   0.5
w160-size-greedy-x02       160 size-greedy    0.2 off 100 0.5
w195-deepmigration-x02     195 deepmigration  0.2 off 200 0.5
w075-deepmigration-s075-x02 75 deepmigration 0.2 off 5   0.75
w010-ofm-s075-x02          10  ofm            0.2 off 6   0.75
w000-size-greedy-s075-x02  0   size-greedy    0.2 off 7   0.75
w075-pairwise-s075-x02     75  pairwise       0.2 off 8   0.75
"

wanted=" $* "
failed=0
while read -r name start policy explore stabilizer seed speed; do
  [ -n "$name" ] || continue
  if [ $# -gt 0 ] && [[ "$wanted" != *" $name "* ]]; then continue; fi
  echo "== $name: --start $start --speed $speed --policy $policy --explore $explore --stabilizer $stabilizer --seed $seed"
  if (cd "$repo" && flock /tmp/mininet.lock env PYTHONPATH="$repo" "$py" -m controller_app.demo \
      --duration 60 --start "$start" --speed "$speed" --policy "$policy" --explore "$explore" --stabilizer "$stabilizer" \
      --seed "$seed" --record "$out/$name" --json "/tmp/record_dataset_$name.json" > "/tmp/record_dataset_$name.log"); then
    tail -n 4 "/tmp/record_dataset_$name.log"
  else
    echo "FAILED: $name (see /tmp/record_dataset_$name.log)"; failed=1
  fi
done <<< "$runs"
du -sh "$out"
exit "$failed"
