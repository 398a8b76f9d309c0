#!/usr/bin/env bash
# The long soak of queryfs with qfs-exercise, for a human to run (as root,
# /dev/fuse needed): 10^6 data ops, 10^5 namespace ops against a kernel
# tmpfs, 10 minutes of 8 processes, then a clean unmount, fsck --verify and
# a re-check of every file after a remount. Prints figures; exit 0 only when
# every step passed.
#
#   tools/exercise/soak.sh [WORKDIR]          (default: a new directory under /tmp)
#
# Environment: SEED (default: from the clock), DATA_OPS (1000000),
# NS_OPS (100000), MULTI_SECONDS (600), PROCS (8), THREADS (2).
set -uo pipefail
cd "$(dirname "$0")/../.."
SEED=${SEED:-$(( $(date +%s%N) % 1000000000 ))}
DATA_OPS=${DATA_OPS:-1000000}
NS_OPS=${NS_OPS:-100000}
MULTI_SECONDS=${MULTI_SECONDS:-600}
PROCS=${PROCS:-8}
THREADS=${THREADS:-2}
WORK=${1:-$(mktemp -d /tmp/qfs-soak.XXXXXX)}
mkdir -p "$WORK"
echo "soak: seed $SEED, work directory $WORK"

(cargo build --release --bin queryfs && cargo build --release -p queryfs-tools --bin qfs-exercise) 2>&1 | tail -1
Q=$PWD/target/release/queryfs
X=$PWD/target/release/qfs-exercise
MNT=$WORK/mnt
STORE=$WORK/store
MPID=

mount_it() {
  setsid "$Q" --store "$STORE" mount "$MNT" --threads "$THREADS" >>"$WORK/mount.log" 2>&1 &
  MPID=$!
  for _ in $(seq 400); do
    grep -q " $MNT " /proc/self/mountinfo && return 0
    kill -0 $MPID 2>/dev/null || break
    sleep 0.05
  done
  echo "soak: the mount did not come up (see $WORK/mount.log)"; exit 2
}
unmount_it() {
  "$Q" umount "$MNT" || { umount -l "$MNT"; echo "soak: unclean unmount"; }
  wait $MPID; local rc=$?
  [ $rc -eq 0 ] || echo "soak: mount process exited with $rc"
  return $rc
}
cleanup() {
  grep -q " $MNT " /proc/self/mountinfo && umount -l "$MNT"
  grep -q " $WORK/ref " /proc/self/mountinfo && umount "$WORK/ref"
}
trap cleanup EXIT

mkdir -p "$MNT"
[ -e "$STORE/queryfs.db" ] || "$Q" --store "$STORE" init >/dev/null
FAILED=()
step() { # name, command...
  local name=$1; shift
  local t0=$(date +%s.%N)
  "$@" >"$WORK/$name.out" 2>"$WORK/$name.err"
  local rc=$?
  local dt=$(echo "$(date +%s.%N) - $t0" | bc)
  printf 'soak: %-10s rc=%d %8.1f s  %s\n' "$name" $rc "$dt" "$( (grep -a 'qfs-exercise' "$WORK/$name.out" || cat "$WORK/$name.out") | tail -1 | cut -c1-400)"
  if [ $rc -ne 0 ]; then
    FAILED+=("$name")
    grep -a 'FAIL\|replay:' "$WORK/$name.err" | head -20
    echo "soak: full report in $WORK/$name.err, log in $WORK/$name.log"
  fi
  return $rc
}

mount_it
# 1. data: 10^6 ops in four seeds of a quarter each.
Q4=$(( DATA_OPS / 4 ))
for i in 0 1 2 3; do
  s=$(( SEED + i ))
  mkdir -p "$MNT/data-$s"
  step "data-$i" "$X" data --seed $s --ops $Q4 --log "$WORK/data-$i.log" "$MNT/data-$s" || break
done
grep -q " $MNT " /proc/self/mountinfo || { echo "soak: the mount died"; tail -20 "$WORK/mount.log"; exit 1; }

# 2. namespace: against a kernel tmpfs.
mkdir -p "$WORK/ref" "$MNT/ns"
mount -t tmpfs -o size=1g qfs-soak-ref "$WORK/ref"
step ns "$X" ns --seed "$SEED" --ops "$NS_OPS" --log "$WORK/ns.log" --ref "$WORK/ref" "$MNT/ns"
umount "$WORK/ref"

# 3. multi-process, then unmount, fsck, remount and re-verify.
mkdir -p "$MNT/multi"
step multi "$X" multi --seed "$SEED" --procs "$PROCS" --seconds "$MULTI_SECONDS" \
  --manifest "$WORK/manifest.json" --log "$WORK/multi.log" "$MNT/multi"
unmount_it || FAILED+=(unmount)
step fsck "$Q" --store "$STORE" fsck --verify
mount_it
step verify "$X" verify --manifest "$WORK/manifest.json" "$MNT/multi"
unmount_it || FAILED+=(unmount2)

echo "soak: store: $("$Q" --store "$STORE" info --json 2>/dev/null | head -c 400)"
if grep -q panicked "$WORK/mount.log"; then
  FAILED+=(panic); grep -a -A2 panicked "$WORK/mount.log" | head -10
fi
if [ ${#FAILED[@]} -eq 0 ]; then
  echo "soak: PASS (seed $SEED)"; exit 0
else
  echo "soak: FAIL: ${FAILED[*]} (seed $SEED; outputs in $WORK)"; exit 1
fi
