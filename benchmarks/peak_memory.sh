#!/usr/bin/env bash
# Runs a command and prints the machine's peak memory in use above the level before it
# started (every process the command spawns counts: Ray's raylet, GCS and node actors).
# Usage: benchmarks/peak_memory.sh COMMAND...
set -u
used() { free -m | awk '/^Mem:/ {print $3}'; }
base=$(used); peak=$base
"$@" & pid=$!
while kill -0 "$pid" 2>/dev/null; do
  now=$(used); [ "$now" -gt "$peak" ] && peak=$now
  sleep 1
done
wait "$pid"; rc=$?
echo "peak memory above baseline: $((peak - base)) MiB (baseline ${base} MiB)" >&2
exit $rc
