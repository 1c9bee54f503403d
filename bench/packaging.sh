#!/usr/bin/env bash
# Packaging benchmarks, each side by side with its peer in the same run (hyperfine medians).
#
#   bench/packaging.sh [--quick] [SECTION ...]   (needs hyperfine, pigz, qemu-img)
#   SECTION: compress decompress ova split join rss (default: all)
#
# Files are generated under $BENCH_DIR (default /tmp/vhdkit-bench-pack, ~8 GiB free needed);
# hyperfine JSON/Markdown go to bench/results/packaging-*.  The machine is shared: read medians
# and the spread, not single runs.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
OUT="$ROOT/bench/results"
W="${BENCH_DIR:-/tmp/vhdkit-bench-pack}"
RUNS=5; BIG_RUNS=3; GIB1=1024; GIB2=2048; SPARSE=8G
if [[ "${1:-}" == "--quick" ]]; then RUNS=2; BIG_RUNS=2; GIB1=128; GIB2=256; SPARSE=1G; shift; fi
SECTIONS="${*:-compress decompress ova split join rss}"
want() { [[ " $SECTIONS " == *" $1 "* ]]; }
mkdir -p "$W" "$OUT"
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
VK="python -m vhdkit"
hf() { local name=$1; shift; hyperfine -N --style basic --export-json "$OUT/packaging-$name.json" \
        --export-markdown "$OUT/packaging-$name.md" "$@"; }

# ---- inputs: VHD-like data (half random, half zeros/text)
gen() {  # gen FILE MiB
  [[ -f "$1" && $(stat -c %s "$1") -eq $(( $2 << 20 )) ]] && return
  python - "$1" "$2" <<'PY'
import os, sys
path, mib = sys.argv[1], int(sys.argv[2])
rnd = os.urandom(64 << 20)  # a 64 MiB random pool: far beyond deflate's 32 KiB window
text = (b"The quick brown fox jumps over the lazy dog 0123456789\n" * 20000)[: 1 << 20]
with open(path, "wb") as f:
    for i in range(mib // 2):  # per 2 MiB: 1 MiB random, 512 KiB zeros, 512 KiB text
        off = (i * (1 << 20)) % (63 << 20)
        f.write(rnd[off: off + (1 << 20)]); f.write(bytes(512 << 10)); f.write(text[: 512 << 10])
PY
}
L1="$W/like-$GIB1.raw"; L2="$W/like-$GIB2.raw"; DYN="$W/dyn-$GIB2.vhd"
gen "$L1" $GIB1
gen "$L2" $GIB2
[[ -f "$DYN" ]] || qemu-img convert -f raw -O vpc "$L2" "$DYN"

if want compress; then
echo "== gzip compression, fastest level, ${GIB1} MiB (stdout to /dev/null: pure throughput)"
hf compress --runs $RUNS \
  -n "vhdkit compress --level 1" "$VK compress $L1 -o - --level 1" \
  -n "pigz -p 2 -1" "pigz -p 2 -1 -c $L1"
echo "== the same into a file (ours: temp + fsync + rename; peer: + sync FILE)"
hf compress-file --runs $RUNS \
  -n "vhdkit compress -o FILE" "$VK compress $L1 -o $W/ours.gz --level 1 --force" \
  -n "pigz -p 2 -1 > FILE; sync FILE" "sh -c 'pigz -p 2 -1 -c $L1 > $W/pigz.gz && sync $W/pigz.gz'"
python -m vhdkit compress "$L1" -o "$W/ours.gz" --level 1 --force
pigz -p 2 -1 -c "$L1" > "$W/pigz.gz"
gzip -t "$W/ours.gz"
echo "sizes: ours $(stat -c %s "$W/ours.gz")  pigz $(stat -c %s "$W/pigz.gz")  input $(stat -c %s "$L1")" \
  | tee "$OUT/packaging-sizes.txt"

fi
if want decompress; then
[[ -f "$W/ours.gz" ]] || python -m vhdkit compress "$L1" -o "$W/ours.gz" --level 1 --force
echo "== gzip decompression (stdout to /dev/null)"
hf decompress --runs $RUNS \
  -n "vhdkit decompress" "$VK decompress $W/ours.gz -o -" \
  -n "gzip -dc" "gzip -dc $W/ours.gz" \
  -n "pigz -dc" "pigz -dc $W/ours.gz"
$VK decompress "$W/ours.gz" -o "$W/d.raw" --force; cmp "$W/d.raw" "$L1"

fi
if want ova; then
echo "== ova pack of a ${GIB2} MiB dynamic VHD vs compressing it alone (both fsync)"
hf ova --runs $BIG_RUNS \
  -n "vhdkit ova pack" "$VK ova pack $DYN -o $W/dyn.ova --force" \
  -n "vhdkit compress" "$VK compress $DYN -o $W/dyn.vhd.gz --force" \
  -n "pigz -p 2 -1; sync" "sh -c 'pigz -p 2 -1 -c $DYN > $W/dyn.pigz.gz && sync $W/dyn.pigz.gz'"

fi
export VHDKIT_HOME="$W/home"
if want split; then
echo "== segments split / join of ${GIB2} MiB, 200M segments"
echo "   ours: md5 per segment + sha256 of the whole, each object fsynced; peers with and without that work"
rm -rf "$W/split" && mkdir -p "$W/split"
hf split --runs $BIG_RUNS --prepare "rm -rf $W/home $W/split" \
  -n "vhdkit segments split" "$VK segments split $L2 --name big --segment-size 200M --container c" \
  -n "split -b 200M" "sh -c 'mkdir -p $W/split && split -b 200M $L2 $W/split/seg-'" \
  -n "split + md5sum + sha256sum + sync" "sh -c 'mkdir -p $W/split && split -b 200M $L2 $W/split/seg- && md5sum $W/split/seg-* >/dev/null && sha256sum $L2 >/dev/null && sync $W/split/seg-*'"
fi
if want join; then
$VK segments split "$L2" --name big --segment-size 200M --container c >/dev/null
rm -rf "$W/split"; mkdir -p "$W/split" && split -b 200M "$L2" "$W/split/seg-"
hf join --runs $BIG_RUNS \
  -n "vhdkit segments join" "$VK segments join c big -o $W/joined.raw --force" \
  -n "cat" "sh -c 'cat $W/split/seg-* > $W/joined2.raw'" \
  -n "cat + md5sum + sha256sum + sync" "sh -c 'cat $W/split/seg-* > $W/joined2.raw && md5sum $W/split/seg-* >/dev/null && sha256sum $W/joined2.raw >/dev/null && sync $W/joined2.raw'"
cmp "$W/joined.raw" "$L2"

fi
if want rss; then
echo "== peak RSS on a $SPARSE sparse fixed VHD"
S="$W/sparse.vhd"; rm -f "$S"
qemu-img create -q -f vpc -o subformat=fixed "$S" $SPARSE
rss() { local label=$1; shift
  /usr/bin/time -f "%M" -o "$W/rss.txt" "$@" >/dev/null
  printf '%-28s %8d KiB\n' "$label" "$(tail -1 "$W/rss.txt")" | tee -a "$OUT/packaging-rss.txt"; }
: > "$OUT/packaging-rss.txt"
rm -rf "$W/home" "$W/unp" "$W/sparse.ova"
rss "compress" python -m vhdkit compress "$S" -o "$W/sparse.vhd.gz" --force
rss "decompress" python -m vhdkit decompress "$W/sparse.vhd.gz" -o "$W/sparse.back" --force
rss "ova pack" python -m vhdkit ova pack "$S" -o "$W/sparse.ova" --force
rss "ova verify" python -m vhdkit ova verify "$W/sparse.ova"
rss "ova unpack" python -m vhdkit ova unpack "$W/sparse.ova" -d "$W/unp"
rss "segments split (1G)" python -m vhdkit segments split "$S" --name sp --segment-size 1G --container c
rss "segments join" python -m vhdkit segments join c sp -o "$W/sparse.joined" --force
rss "pigz -p 2 -1 (peer)" pigz -p 2 -1 -k -f "$S"
rm -rf "$W/unp" "$W/sparse.back" "$W/sparse.joined" "$W/home" "$S.gz"
fi
echo "results in $OUT/packaging-*"
