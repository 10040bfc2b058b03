#!/usr/bin/env bash
# Instructions per message, counted by callgrind (exact, and the same on a loaded machine):
# each case runs N and 2N times in vmi-msgcost (two vmi instances driven by one thread), and
# (I(2N) - I(N)) / N is the cost of one message, set-up cancelled out. Both sides of the
# exchange are counted (send + receive + completion). TCP counts user space only.
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
printf '%-34s %8d instructions per filter per message\n' "pass-through filter (3 on loopback)" \
  $(((((l3b - l3) - (l0b - l0)) / N) / 3))
per idle 1 "empty poll" poll
per idle-shmem 1 "empty poll, one shmem connection" poll
per idle-tcp 1 "empty poll, one tcp connection" poll
if command -v ucx_perftest >/dev/null; then
  echo "UCX (ucx_perftest -t tag_bw, UCX_TLS=sm, 8 B), both processes under callgrind:"
  ucx() { # n -> total instructions of server + client
    local port=$((20000 + RANDOM % 20000))
    UCX_TLS=sm valgrind --tool=callgrind --callgrind-out-file="$tmp/srv.out" \
      ucx_perftest -p "$port" >/dev/null 2>&1 &
    local srv=$!
    sleep 2
    UCX_TLS=sm valgrind --tool=callgrind --callgrind-out-file="$tmp/cli.out" \
      ucx_perftest -p "$port" -t tag_bw -s 8 -n "$1" -w 0 localhost >/dev/null 2>&1 || true
    wait "$srv" || true
    echo $(($(grep -m1 '^summary:' "$tmp/srv.out" | awk '{print $2}') + $(grep -m1 '^summary:' "$tmp/cli.out" | awk '{print $2}')))
  }
  u1=$(ucx "$N"); u2=$(ucx $((2 * N)))
  printf '%-34s %8d instructions per message\n' "UCX sm streaming (send+recv)" $(((u2 - u1) / N))
else
  echo "UCX: ucx_perftest is not installed (apt-get install -y ucx-utils); skipped"
fi
