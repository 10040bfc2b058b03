#!/usr/bin/env bash
# Multi-rail bandwidth: two network namespaces joined by two veth pairs, each shaped to
# RATE (default 1gbit) in both directions by tc (tbf), and 1 MiB messages streamed with
# vmi-perf over one rail (tcp_a alone) and over both rails (specfiles/tcp-rails.xml).
# Needs root (ip netns, tc). Usage: benches/rails.sh [RATE] [MESSAGES]
set -euo pipefail
cd "$(dirname "$0")/.."
RATE=${1:-1gbit}
MESSAGES=${2:-400}
if [ "$(id -u)" != 0 ]; then
  echo "rails.sh: needs root for network namespaces and tc" >&2
  exit 1
fi
cargo build --release --quiet -p vmi-tools -p vmi-tcp
A=vmirails-a-$$
B=vmirails-b-$$
one=$(mktemp --suffix=.xml)
cleanup() {
  ip netns del "$A" 2>/dev/null || true
  ip netns del "$B" 2>/dev/null || true
  rm -f "$one"
}
trap cleanup EXIT
ip netns add "$A"
ip netns add "$B"
for i in 1 2; do
  ip link add "vra$i-$$" netns "$A" type veth peer name "vrb$i-$$" netns "$B"
  ip -n "$A" addr add "10.77.$i.1/24" dev "vra$i-$$"
  ip -n "$B" addr add "10.77.$i.2/24" dev "vrb$i-$$"
  for ns_dev in "$A vra$i-$$" "$B vrb$i-$$"; do
    set -- $ns_dev
    ip -n "$1" link set "$2" up
    ip netns exec "$1" tc qdisc add dev "$2" root tbf rate "$RATE" burst 512kb latency 20ms
  done
done
ip -n "$A" link set lo up
ip -n "$B" link set lo up
cat > "$one" <<XML
<vmi><device name="tcp_a" type="tcp"/>
<chain name="send"><use device="tcp_a"/></chain><chain name="receive"><use device="tcp_a"/></chain></vmi>
XML
run() {
  local label=$1 spec=$2 second=()
  if [ "$spec" != "$one" ]; then second=(VMI_TCP_B_LISTEN_ADDR=10.77.2.2); fi
  ip netns exec "$B" env VMI_TCP_A_LISTEN_ADDR=10.77.1.2 "${second[@]}" \
    target/release/vmi-perf server --spec "$spec" --clients 1 --timeout 300 rails-srv >/dev/null &
  local server=$!
  sleep 0.5
  local out
  if [ "$spec" != "$one" ]; then second=(VMI_TCP_B_LISTEN_ADDR=10.77.2.1); fi
  out=$(ip netns exec "$A" env VMI_TCP_A_LISTEN_ADDR=10.77.1.1 "${second[@]}" \
    target/release/vmi-perf client --spec "$spec" --sizes 1m --test bandwidth \
    --messages "$MESSAGES" --csv rails-cli rails-srv 10.77.1.2)
  wait "$server" || true
  # CSV: the bandwidth columns are MB/s (10^6 B/s) and MiB/s.
  echo "$out" | tail -n 1 | awk -F, -v l="$label" '{ printf "%s  %8.1f MB/s\n", l, $11 }'
}
echo "two veth pairs shaped to $RATE each; $MESSAGES messages of 1 MiB"
run "one rail " "$one"
run "two rails" specfiles/tcp-rails.xml
