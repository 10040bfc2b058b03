#!/usr/bin/env bash
# The vmi demo: builds everything, then runs vmirecv and vmisend over a shipped specfile.
#   examples/demo.sh                          # TCP
#   examples/demo.sh specfiles/tcp-skeleton.xml   # TCP with the skeleton filter on both chains
set -euo pipefail
cd "$(dirname "$0")/.."
spec="${1:-specfiles/tcp.xml}"
[ -f "$spec" ] || { echo "demo: no specfile '$spec' (see specfiles/)" >&2; exit 2; }

echo "demo: building (cargo build --release --workspace)"
cargo build --release --workspace --quiet

export VMI_SPECFILE="$spec"
bin=target/release
log=$(mktemp)
recv_pid=""
cleanup() {
  [ -n "$recv_pid" ] && kill "$recv_pid" 2>/dev/null || true
  rm -f "$log"
}
trap cleanup EXIT

echo "demo: VMI_SPECFILE=$spec"
echo "demo: \$ vmirecv recvkey --verify --messages 3"
"$bin/vmirecv" recvkey --verify --messages 3 --timeout 30 >"$log" 2>&1 &
recv_pid=$!
for _ in $(seq 100); do
  grep -q "waiting for connections" "$log" && break
  kill -0 "$recv_pid" 2>/dev/null || { cat "$log"; exit 1; }
  sleep 0.05
done

echo "demo: \$ vmisend sendkey recvkey localhost --pattern --size 1m --fragments 16 --count 3"
"$bin/vmisend" sendkey recvkey localhost --pattern --size 1m --fragments 16 --count 3 --cookie "hello from vmisend"
status=0
wait "$recv_pid" || status=$?
recv_pid=""
echo "demo: vmirecv said:"
sed 's/^/  /' "$log"
exit "$status"
