#!/usr/bin/env bash
# Instructions per message, counted by callgrind (exact, and the same on a loaded machine):
# each case runs N and 2N times in vmi-msgcost (two vmi instances driven by one thread), and
# (I(2N) - I(N)) / N is the cost of one message, set-up cancelled out. Both sides of the
# exchange are counted (send + receive + completion). TCP counts user space only.
# UCX, where its headers are installed, is driven the same way and counted in the same run.
# Usage: benches/instructions.sh [N]    (default 20000)
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-20000}
if ! command -v valgrind >/dev/null; then
  echo "instructions.sh: valgrind is missing; install it with: apt-get install -y valgrind" >&2
  exit 1
fi
cargo build --release --quiet -p vmi-benches --bin vmi-msgcost
bin=target/release/vmi-msgcost
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
count() { # case n -> total instructions
  valgrind --tool=callgrind --callgrind-out-file="$tmp/cg.out" "$bin" "$1" "$2" >/dev/null 2>"$tmp/vg.err" ||
    { cat "$tmp/vg.err" >&2; exit 1; }
  grep -m1 '^summary:' "$tmp/cg.out" | awk '{print $2}'
}
per() { # case unit-divisor label
  local a b
  a=$(count "$1" "$N")
  b=$(count "$1" $((2 * N)))
  printf '%-34s %8d instructions per %s\n' "$3" $(((b - a) / (N * $2))) "$4"
}
echo "vmi, 8-byte messages, N = $N and 2N, (I(2N) - I(N)) / N:"
per stream-shmem 1 "shmem streaming (send+recv+compl)" message
per pingpong-shmem 2 "shmem ping-pong" hop
per request-shmem 2 "shmem send/receive/reply" hop
per async-shmem 2 "shmem ping-pong, async facade" hop
per put-shmem 1 "shmem RDMA put, one-sided" put
per get-shmem 1 "shmem RDMA get, one-sided" get
per stream-tcp 1 "tcp streaming (user space)" message
per pingpong-tcp 2 "tcp ping-pong (user space)" hop
per request-tcp 2 "tcp send/receive/reply (user space)" hop
per put-tcp 1 "tcp RDMA put, as messages" put
per stream-loopback 1 "loopback streaming" message
l0=$(count filters-0 "$N"); l0b=$(count filters-0 $((2 * N)))
l3=$(count filters-3 "$N"); l3b=$(count filters-3 $((2 * N)))
# One decimal: the three filters' share divided by three is not a whole number.
printf '%-34s %8s instructions per filter per message\n' "pass-through filter (3 on loopback)" \
  "$(awk -v a=$((l3b - l3)) -v b=$((l0b - l0)) -v n="$N" 'BEGIN { printf "%.1f", (a - b) / n / 3 }')"
per idle 1 "empty poll" poll
per idle-shmem 1 "empty poll, one shmem connection" poll
per idle-tcp 1 "empty poll, one tcp connection" poll
# UCX driven the same way (benches/ucx/ucx-msgcost.c: two workers in one thread, each
# progressed once a turn), so its counts are exact too and compare row for row.
if [ -f /usr/include/ucp/api/ucp.h ] && command -v cc >/dev/null; then
  cc -O2 -o "$tmp/ucx-msgcost" benches/ucx/ucx-msgcost.c -lucp -lucs
  ucx_version=$(ucx_info -v 2>/dev/null | sed -n 's/^# Version //p' | head -1)
  echo "UCX ${ucx_version:-(version unknown)} over shared memory (UCX_TLS=sm), driven like vmi-msgcost (benches/ucx/ucx-msgcost.c):"
  ucount() { # case n -> total instructions (UCX_TLS from $tls)
    UCX_TLS=$tls valgrind --tool=callgrind --callgrind-out-file="$tmp/ucx.out" "$tmp/ucx-msgcost" "$1" "$2" \
      >/dev/null 2>"$tmp/vg.err" || { cat "$tmp/vg.err" >&2; exit 1; }
    grep -m1 '^summary:' "$tmp/ucx.out" | awk '{print $2}'
  }
  uper() { # case unit-divisor label unit
    local a b
    a=$(ucount "$1" "$N")
    b=$(ucount "$1" $((2 * N)))
    printf '%-34s %8d instructions per %s\n' "$3" $(((b - a) / (N * $2))) "$4"
  }
  tls=sm
  uper am-stream 1 "UCX active-message streaming" message
  uper tag-stream 1 "UCX tag streaming" message
  uper am-pingpong 2 "UCX active-message ping-pong" hop
  uper tag-pingpong 2 "UCX tag ping-pong" hop
  uper idle 1 "UCX empty progress, one endpoint" call
  echo "UCX over TCP (UCX_TLS=tcp), user space:"
  tls=tcp
  uper am-stream 1 "UCX tcp active-message streaming" message
  uper am-pingpong 2 "UCX tcp active-message ping-pong" hop
  uper tag-pingpong 2 "UCX tcp tag ping-pong" hop
else
  echo "UCX: not counted (needs its headers and a C compiler: apt-get install -y libucx-dev ucx-utils)"
fi
