#!/usr/bin/env bash
# A receiver that falls behind holds bounded memory: streams 10,000,000 8-byte messages with a
# window far larger than the process's send limit (the sender floods as fast as the transport
# lets it) and reports the receiving server's maximum RSS (/usr/bin/time -f %M), over shared
# memory and over TCP. Usage: benches/memory.sh [MESSAGES]
set -euo pipefail
cd "$(dirname "$0")/.."
MESSAGES=${1:-10000000}
# The devices are plugins the specfiles load: built with the tool, so none is stale.
cargo build --release --quiet -p vmi-tools -p vmi-shmem -p vmi-tcp
if [ ! -x /usr/bin/time ]; then
  echo "memory.sh: /usr/bin/time is missing; install it with: apt-get install -y time" >&2
  exit 1
fi
for spec in specfiles/shmem.xml specfiles/tcp.xml; do
  skey="mem-srv-$$-$RANDOM"
  ckey="mem-cli-$$-$RANDOM"
  rss=$(mktemp)
  /usr/bin/time -f %M -o "$rss" target/release/vmi-perf server --spec "$spec" --clients 1 --timeout 600 "$skey" >/dev/null &
  server=$!
  sleep 0.5
  start=$(date +%s.%N)
  target/release/vmi-perf client --spec "$spec" --sizes 8 --test bandwidth \
    --messages "$MESSAGES" --window 1000000 "$ckey" "$skey" localhost >/dev/null
  end=$(date +%s.%N)
  wait "$server"
  printf '%-22s %d messages in %5.1f s, receiver max RSS %6.1f MiB\n' "$spec" "$MESSAGES" \
    "$(echo "$end - $start" | bc)" "$(echo "$(cat "$rss") / 1024" | bc -l)"
  rm -f "$rss"
done
