#!/usr/bin/env bash
# Interleaved A/B of the HTTP, subscription and cluster benches: the commit
# BASE (built in a temporary worktree) against this checkout, run
# alternately so both sides see the same machine noise.
#
#   benches/ab.sh BASE_REV [ROUNDS]     # output in ./ab-out/<bench>-<side>-<round>.out
set -euo pipefail
base_rev=${1:?usage: benches/ab.sh BASE_REV [ROUNDS]}
rounds=${2:-2}
here=$(cd "$(dirname "$0")/.." && pwd)
base=$(mktemp -d /tmp/patina-ab-base-XXXX)
out=$here/ab-out
mkdir -p "$out"
git -C "$here" worktree add --detach "$base" "$base_rev" >/dev/null
trap 'git -C "$here" worktree remove --force "$base"' EXIT
benches=(http_load sub_latency cluster)
for dir in "$base" "$here"; do
  (cd "$dir" && cargo bench --no-run "${benches[@]/#/--bench=}" >/dev/null 2>&1)
done
exe() { ls -t "$1"/target/release/deps/"$2"-* | grep -E "/$2-[0-9a-f]+$" | head -1; }
for round in $(seq "$rounds"); do
  for bench in "${benches[@]}"; do
    for side in base new; do
      dir=$here; [ "$side" = base ] && dir=$base
      echo "round $round: $bench ($side)"
      (cd "$dir" && "$(exe "$dir" "$bench")" --bench >"$out/$bench-$side-$round.out" 2>&1)
    done
  done
done
