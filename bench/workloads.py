"""The workloads of issue #9 and their peers.

Each function builds its inputs (cached) and returns the contenders; the first
variant is vhdkit.  Workloads whose vhdkit command does not exist yet are listed
as "feature not available", never timed.  Sizes derive from ``ctx.size`` (the
``--size``, 2 GiB by default) so the issue targets are measured at their stated
sizes by default: convert/chain/OVA/segments at S, gzip at S/2 (1 GiB).
"""
from __future__ import annotations

import filecmp
import json
import os
import shutil
import subprocess
import tarfile
from pathlib import Path
from typing import List, Optional

from shared import file_digest

from .gen import MiB, ChainSpec, DiskSpec
from .runner import Cmd, Variant
from .suite import Ctx, Workload, workload

QEMU = "qemu-img"
SEG = "200M"


def half(ctx: Ctx, size: Optional[int] = None) -> DiskSpec:
    """Issue 3's input: half the 2 MiB blocks random data, half zero."""
    return DiskSpec(size or ctx.size, random=0.5, text=0.0, seed=1)


def mixed(ctx: Ctx, size: Optional[int] = None) -> DiskSpec:
    """Half allocated: a quarter random, a quarter text-like, half zero (compressible)."""
    return DiskSpec(size or ctx.size, random=0.25, text=0.25, seed=2)


def chain3(ctx: Ctx, size: Optional[int] = None, alloc: float = 0.2) -> ChainSpec:
    """Issue 4's chain: depth 3, each layer ~20% of its blocks allocated at random."""
    return ChainSpec(size or ctx.size, allocs=(alloc,) * 3, seed=3)


def large_sparse(ctx: Ctx) -> DiskSpec:
    """1 TiB virtual, 1% allocated (1 GiB in --quick); data areas are file holes."""
    return DiskSpec((1 << 30) if ctx.quick else (1 << 40), random=0.01, seed=4, hollow=True)


# -- verification (run once, after the warm-up; never timed) ------------------------------

def qemu_same(fmt_a: str, a, fmt_b: str, b) -> Optional[str]:
    r = subprocess.run([QEMU, "compare", "-q", "-f", fmt_a, "-F", fmt_b, str(a), str(b)],
                       capture_output=True, text=True)
    return None if r.returncode == 0 else f"qemu-img compare {a} {b}: {r.stdout.strip()} {r.stderr.strip()}".strip()


def same_file(a, b) -> Optional[str]:
    return None if filecmp.cmp(a, b, shallow=False) else f"{b} differs from {a}"


def synced(*paths) -> Cmd:
    """``sync FILE...`` (fsync of each file): the peer's half of a durable write,
    for pairs where vhdkit fsyncs its output (temp + fsync + rename)."""
    return Cmd(["sync", *map(str, paths)])


def bash(script: str, **kw) -> Cmd:
    """A peer that needs bash (``tee >(sha256sum)``: hash on the way, as vhdkit does)."""
    return Cmd(["bash", "-c", script], **kw)


def ok_run(argv: list[str], what: str) -> Optional[str]:
    r = subprocess.run(argv, capture_output=True, text=True)
    return None if r.returncode == 0 else f"{what}: {r.stderr.strip()[-300:]}"


# -- baseline -----------------------------------------------------------------------------

def _startup(ctx: Ctx, argv: list, peers: list) -> Workload:
    """``vhdkit ARGV`` against each ``(name, PEER ARGV)`` and the bare interpreter."""
    return Workload([
        Variant("vhdkit", [Cmd([*ctx.vk_script(), *argv])], ours=True),
        *[Variant(name, [Cmd(peer)], tools=[peer[0]]) for name, peer in peers],
        Variant("python -c pass", [Cmd([ctx.py, "-c", "pass"])], floor=True),
    ], basis=None, params={"virtual_size": 8 << 20},
        notes=["vhdkit runs as the installed `vhdkit` script (its interpreter, the project venv's), as a user "
               "runs it; `python -c pass` is that interpreter alone (a floor: no work)."])


STARTUP_TARGET = "≤ 40 ms and ≤ 2.5 × python -c pass"

#: the format commands' start-up rows: (command, how many times it names the
#: small VHD, its native peer's name and argv before the same image arguments)
_FORMAT_STARTUP = [
    ("info", 1, "qemu-img info", [QEMU, "info"]),
    ("check", 1, "vhdiinfo", ["vhdiinfo"]),
    ("map", 1, "qemu-img map", [QEMU, "map"]),
    ("chain", 1, "qemu-img info --backing-chain", [QEMU, "info", "--backing-chain"]),
    ("compare", 2, "qemu-img compare", [QEMU, "compare"]),
]


def _format_startup(command: str, times: int, peer_name: str, peer: list) -> None:
    what = "a small VHD with itself" if times == 2 else "a small VHD"

    @workload(f"startup.{command}", "baseline", f"start-up: `vhdkit {command}` of {what}, start to exit",
              needs=[(command,)], issue=24, target=STARTUP_TARGET)
    def build(ctx: Ctx) -> Workload:
        images = [str(small_images(ctx, 1) / "d00000.vhd")] * times
        return _startup(ctx, [command, *images], [(peer_name, [*peer, *images])])


for _row in _FORMAT_STARTUP:
    _format_startup(*_row)


def one_image_registry(ctx: Ctx) -> tuple[Path, str]:
    """A registry data directory holding one small active image of account
    ``bench``, made once; (data dir, image id)."""
    d = ctx.inputs.dir / "registry-one"
    marker = d.with_name(d.name + ".id")
    if not marker.exists():
        shutil.rmtree(d, ignore_errors=True)
        img = small_images(ctx, 1) / "d00000.vhd"
        r = ctx.run_quiet(ctx.vk("image", "create", "--data", str(d), "--account", "bench",
                                 "--roles", "cloudImages:creator", "--name", "small", "--disk-format", "vhd",
                                 "--container-format", "bare", "--file", str(img)))
        if r.returncode:
            raise RuntimeError(f"making a one-image registry: {r.stderr.strip()[-300:]}")
        marker.write_text(json.loads(r.stdout)["id"])
    return d, marker.read_text()


def _startup_registry(ctx: Ctx, command: str, *args: str) -> Workload:
    """``vhdkit image COMMAND [ARGS] --json`` as the image's owner (no native peer: the floor only)."""
    data, iid = one_image_registry(ctx)
    return _startup(ctx, ["image", command, *[iid if a == "ID" else a for a in args], "--data", str(data),
                          "--account", "bench", "--roles", "cloudImages:observer", "--json"], [])


@workload("startup.image-show", "baseline", "start-up: `vhdkit image show ID --json` on a one-image registry",
          needs=[("image", "show")], issue=24, target=STARTUP_TARGET)
def startup_image_show(ctx: Ctx) -> Workload:
    return _startup_registry(ctx, "show", "ID")


@workload("startup.image-list", "baseline", "start-up: `vhdkit image list --json` on a one-image registry",
          needs=[("image", "list")], issue=24, target=STARTUP_TARGET)
def startup_image_list(ctx: Ctx) -> Workload:
    return _startup_registry(ctx, "list")


# -- convert (issue 3) --------------------------------------------------------------------
# vhdkit runs with --no-sync here, like its peers (neither qemu-img nor cp syncs
# its output); bench/convert_vs_qemu.py also times vhdkit's durable default
# against the peers followed by `sync FILE`.

def _raw_to_vhd(ctx: Ctx, raw: Path, kind: str, a: Path, b: Path) -> List[Variant]:
    """vhdkit (into ``a``) and qemu-img (into ``b``) converting ``raw`` to a ``kind`` VHD."""
    return [
        Variant("vhdkit", [Cmd(ctx.vk("convert", "-f", "raw", "-O", "vhd", "--type", kind, str(raw), str(a),
                                      "--no-sync"))],
                ours=True, setup=ctx.clean(a), output=str(a), verify=lambda: qemu_same("raw", raw, "vpc", a)),
        Variant("qemu-img", [Cmd([QEMU, "convert", "-f", "raw", "-O", "vpc", "-o", f"subformat={kind},force_size=on",
                                  str(raw), str(b)])], setup=ctx.clean(b), output=str(b), tools=[QEMU],
                verify=lambda: qemu_same("raw", raw, "vpc", b)),
    ]


@workload("convert.raw-dynamic", "convert", "raw → dynamic VHD", needs=[("convert",)], issue=3,
          target="≤ 1.0 × qemu-img convert -O vpc -o subformat=dynamic; RSS < 64 MiB")
def convert_raw_dynamic(ctx: Ctx, spec: Optional[DiskSpec] = None) -> Workload:
    spec = spec or half(ctx)
    raw = ctx.inputs.raw(spec)
    a, b = ctx.outdir("vhdkit") / "out.vhd", ctx.outdir("qemu") / "out.vhd"
    return Workload([
        *_raw_to_vhd(ctx, raw, "dynamic", a, b),
    ], basis=spec.size, params=_disk_params(spec))


@workload("convert.raw-fixed", "convert", "raw → fixed VHD", needs=[("convert",)], issue=3,
          target="≤ 1.0 × cp --sparse=always; RSS < 64 MiB")
def convert_raw_fixed(ctx: Ctx) -> Workload:
    spec = half(ctx)
    raw = ctx.inputs.raw(spec)
    a, b, c = (ctx.outdir(n) / "out.vhd" for n in ("vhdkit", "qemu", "cp"))
    return Workload([
        *_raw_to_vhd(ctx, raw, "fixed", a, b),
        Variant("cp --sparse=always", [Cmd(["cp", "--sparse=always", str(raw), str(c)])],
                setup=ctx.clean(c), output=str(c), verify=lambda: same_file(raw, c), floor=True),
    ], basis=spec.size, params=_disk_params(spec),
        notes=["cp copies the data only (no footer): the lower bound for writing a fixed VHD."])


@workload("convert.dynamic-raw", "convert", "dynamic VHD → raw", needs=[("convert",)], issue=3,
          target="≤ 1.0 × qemu-img convert -f vpc -O raw; RSS < 64 MiB")
def convert_dynamic_raw(ctx: Ctx) -> Workload:
    spec = half(ctx)
    raw, dyn = ctx.inputs.raw(spec), ctx.inputs.dynamic(spec)
    a, b = ctx.outdir("vhdkit") / "out.raw", ctx.outdir("qemu") / "out.raw"
    return Workload([
        Variant("vhdkit", [Cmd(ctx.vk("convert", "-O", "raw", str(dyn), str(a), "--no-sync"))], ours=True,
                setup=ctx.clean(a), output=str(a), verify=lambda: same_file(raw, a)),
        Variant("qemu-img", [Cmd([QEMU, "convert", "-f", "vpc", "-O", "raw", str(dyn), str(b)])],
                setup=ctx.clean(b), output=str(b), tools=[QEMU], verify=lambda: same_file(raw, b)),
    ], basis=spec.size, params=_disk_params(spec))


# -- chains (issue 4) -----------------------------------------------------------------------

@workload("chain.read", "chain", "read a differencing chain (depth 3) end to end", issue=4,
          target="(informative) vhdkit.open() read loop vs libvhdi-python read loop")
def chain_read(ctx: Ctx) -> Workload:
    spec = chain3(ctx)
    ch = ctx.inputs.chain(spec)
    leaf = str(ch["leaf"])
    layers_top_down = [str(p) for p in reversed(ch["layers"])]

    def verify() -> Optional[str]:
        r = ctx.run_quiet(ctx.tool("vhdkit-read", "--md5", leaf))
        if r.returncode:
            return f"vhdkit read failed: {r.stderr.strip()[-300:]}"
        if r.stdout.strip() != file_digest(ch["flat"], "md5"):
            return "vhdkit read of the chain differs from its content"
        return None
    return Workload([
        Variant("vhdkit", [Cmd(ctx.tool("vhdkit-read", leaf))], ours=True, verify=verify),
        Variant("libvhdi-python", [Cmd(ctx.tool("pyvhdi-read", *layers_top_down))]),
    ], basis=spec.size, params=_chain_params(spec))


@workload("coalesce", "chain", "coalesce a depth-3 chain into one dynamic VHD", needs=[("coalesce",)], issue=4,
          target="≤ 1.1 × qemu-img convert -O vpc (dynamic) of a raw file with the same content; "
                 "bytes read ≤ 1.05 × data needed; RSS < 64 MiB")
def coalesce(ctx: Ctx, spec: Optional[ChainSpec] = None) -> Workload:
    spec = spec or chain3(ctx)
    ch = ctx.inputs.chain(spec)
    flat = ch["flat"]
    layers_top_down = [str(p) for p in reversed(ch["layers"])]
    a, b, c, d = (ctx.outdir(n) / f for n, f in (("vhdkit", "out.vhd"), ("qemu", "out.vhd"),
                                                  ("pyvhdi", "out.raw"), ("cat", "out.cat")))
    def extra(res: dict) -> dict:
        needed = _nonzero_granule_bytes(flat)   # sectors some layer holds (64 KiB runs of the flat content)
        ours = next(v for v in res["variants"] if v["ours"])
        rchar = ours["stats"].get("rchar")
        return {"needed_bytes": needed,
                "read_amplification": (rchar / needed) if rchar and needed else None,
                "note": "read_amplification = bytes vhdkit read (rchar: includes Python start-up, a few MB) "
                        "/ bytes of the chain's content held by some layer"}
    return Workload([
        Variant("vhdkit", [Cmd(ctx.vk("coalesce", str(ch["leaf"]), "-o", str(a), "--no-sync"))], ours=True,
                setup=ctx.clean(a), output=str(a), verify=lambda: qemu_same("raw", flat, "vpc", a)),
        Variant("qemu-img (flat raw→vpc)", [Cmd([QEMU, "convert", "-f", "raw", "-O", "vpc", "-o",
                                                 "subformat=dynamic,force_size=on", str(flat), str(b)])],
                setup=ctx.clean(b), output=str(b), tools=[QEMU]),
        Variant("libvhdi read+write raw", [Cmd(ctx.tool("pyvhdi-raw", str(c), *layers_top_down))],
                setup=ctx.clean(c), output=str(c), verify=lambda: same_file(flat, c)),
        Variant("cat layers", [Cmd(["cat", *[str(p) for p in ch["layers"]]], stdout=str(d))],
                setup=ctx.clean(d), output=str(d), floor=True),
    ], basis=spec.size, params=_chain_params(spec), extra=extra,
        notes=["vhdkit runs with --no-sync: none of its peers syncs its output (bench/coalesce_vs_qemu.py "
               "times the durable default against qemu-img + sync).",
               "`cat` of the layer files into one file is the I/O floor (reads every layer byte once, writes it once)."])


# -- metadata on a huge sparse image (issue 2/core) -----------------------------------------

def _meta(ctx: Ctx, cmd: str, spec: Optional[DiskSpec] = None) -> Workload:
    spec = spec or large_sparse(ctx)
    img = ctx.inputs.dynamic(spec)
    api_out = ctx.outdir("api") / "t.json"
    return Workload([
        Variant("vhdkit", [Cmd(ctx.vk(cmd, str(img)))], ours=True),
        Variant("vhdiinfo", [Cmd(["vhdiinfo", str(img)])], tools=["vhdiinfo"]),
        Variant("qemu-img info", [Cmd([QEMU, "info", "-f", "vpc", str(img)])], tools=[QEMU]),
        Variant("(ref) vhdkit API in-process", [Cmd(ctx.tool("api-time", cmd, str(img), "200", str(api_out)))],
                inner=str(api_out)),
    ], basis=None, params=_disk_params(spec),
        notes=["qemu-img has no `check` for vpc, so `info` is its nearest operation.",
               f"(ref) = vhdkit.vhd.{cmd}() timed in process (median of up to 200 calls, no start-up); "
               "its ratio column reads CLI / API, i.e. how much of the CLI time is start-up."])


@workload("check.large", "check", "check a 1 TiB-virtual, 1%-allocated dynamic VHD", needs=[("check",)],
          target="(informative) cost follows BAT and bitmaps, not virtual size")
def check_large(ctx: Ctx) -> Workload:
    return _meta(ctx, "check")


@workload("info.large", "check", "info of a 1 TiB-virtual, 1%-allocated dynamic VHD", needs=[("info",)])
def info_large(ctx: Ctx) -> Workload:
    return _meta(ctx, "info")


def small_images(ctx: Ctx, n: int) -> Path:
    """A directory of ``n`` small dynamic VHDs (8 MiB virtual, empty), made once."""
    d = ctx.inputs.dir / f"small-{n}"
    ok = d.with_name(d.name + ".ok")
    if not ok.exists():
        shutil.rmtree(d, ignore_errors=True)
        d.mkdir()
        r = ctx.run_quiet([ctx.py, "-c", "import sys\nfrom vhdkit.vhd import create\n"
                           "for i in range(int(sys.argv[2])): create(f'{sys.argv[1]}/d{i:05d}.vhd', 8 << 20, sync=False)",
                           str(d), str(n)])
        if r.returncode:
            raise RuntimeError(f"making {n} small VHDs: {r.stderr.strip()[-300:]}")
        ok.touch()
    return d


@workload("info.batch", "check", "info of 1,000 small VHDs: one vhdkit call vs a shell loop of qemu-img info",
          needs=[("info",)], issue=24, target="start-up paid once: well under the loop of a native tool")
def info_batch(ctx: Ctx) -> Workload:
    n = 100 if ctx.quick else 1000
    d = small_images(ctx, n)
    vk = " ".join(ctx.vk("info", json=False))
    return Workload([
        Variant("vhdkit", [Cmd.sh(f"{vk} --json {d}/*.vhd")], ours=True),
        Variant("qemu-img info loop", [Cmd.sh(f'for f in {d}/*.vhd; do {QEMU} info --output=json "$f"; done')],
                tools=[QEMU]),
    ], basis=None, params={"image_count": n, "virtual_size": 8 << 20},
        notes=["vhdkit: `vhdkit info --json DIR/*.vhd` (one process, one JSON object per line); the peer runs "
               "`qemu-img info --output=json` once per image.  The startup row is the cost of one vhdkit call."])


# -- packaging (issue 5) --------------------------------------------------------------------

def _gzip_input(ctx: Ctx) -> tuple[DiskSpec, Path]:
    spec = mixed(ctx, max(ctx.size // 2, 4 * MiB))
    return spec, ctx.inputs.dynamic(spec)


@workload("gzip.compress", "packaging", "gzip a dynamic VHD at the fastest level", needs=[("compress",)], issue=5,
          target="≥ 2 × pigz -p 2 -1 throughput, size within 10% of pigz's")
def gzip_compress(ctx: Ctx) -> Workload:
    spec, src = _gzip_input(ctx)
    outs = {n: ctx.outdir(n) / "out.gz" for n in ("vhdkit", "gzip", "pigz")}

    def extra(res: dict) -> dict:
        sizes = {v["name"]: v["stats"].get("out_bytes") for v in res["variants"] if "stats" in v}
        ours = sizes.get("vhdkit")
        return {"compressed_bytes": sizes,
                "size_vs_pigz": (ours / sizes["pigz -p 2 -1"]) if ours and sizes.get("pigz -p 2 -1") else None}
    return Workload([
        Variant("vhdkit", [Cmd(ctx.vk("compress", str(src), "-o", str(outs["vhdkit"]), "--level", "1"))], ours=True,
                setup=ctx.clean(outs["vhdkit"]), output=str(outs["vhdkit"]), verify=lambda: ok_run(["gzip", "-t", str(outs["vhdkit"])], "gzip -t")),
        Variant("gzip -1", [Cmd(["gzip", "-1", "-c"], stdin=str(src), stdout=str(outs["gzip"])), synced(outs["gzip"])],
                output=str(outs["gzip"])),
        Variant("pigz -p 2 -1", [Cmd(["pigz", "-p", "2", "-1", "-c"], stdin=str(src), stdout=str(outs["pigz"])),
                                 synced(outs["pigz"])],
                output=str(outs["pigz"]), tools=["pigz"]),
    ], basis=os.path.getsize(src), params={**_disk_params(spec), "file_bytes": os.path.getsize(src)}, extra=extra,
        notes=["MB/s here is of the VHD file (the bytes compressed).",
               "vhdkit fsyncs its output (temp + fsync + rename); each peer is followed by `sync FILE`."])


def _pigz_made(ctx: Ctx, src: Path) -> Path:
    gz = src.with_name(src.name + ".pigz1.gz")
    if not gz.exists():
        tmp = gz.with_name(gz.name + ".tmp")
        with open(src, "rb") as fi, open(tmp, "wb") as fo:
            subprocess.run(["pigz", "-1", "-c"], stdin=fi, stdout=fo, check=True)
        os.replace(tmp, gz)
    return gz


@workload("gzip.decompress", "packaging", "gunzip a compressed dynamic VHD", needs=[("decompress",)], issue=5,
          target="≥ 1.5 × gzip -dc throughput")
def gzip_decompress(ctx: Ctx) -> Workload:
    spec, src = _gzip_input(ctx)
    gz = _pigz_made(ctx, src)
    outs = {n: ctx.outdir(n) / "out.vhd" for n in ("vhdkit", "gzip", "pigz")}
    return Workload([
        Variant("vhdkit", [Cmd(ctx.vk("decompress", str(gz), "-o", str(outs["vhdkit"])))], ours=True,
                setup=ctx.clean(outs["vhdkit"]),
                verify=lambda: same_file(src, outs["vhdkit"])),
        Variant("gzip -dc", [Cmd(["gzip", "-dc"], stdin=str(gz), stdout=str(outs["gzip"])), synced(outs["gzip"])]),
        Variant("pigz -dc", [Cmd(["pigz", "-dc"], stdin=str(gz), stdout=str(outs["pigz"])), synced(outs["pigz"])],
                tools=["pigz"]),
    ], basis=os.path.getsize(src), params={**_disk_params(spec), "file_bytes": os.path.getsize(src)},
        notes=["input made by `pigz -1`; MB/s is of the decompressed VHD file.",
               "vhdkit fsyncs its output; each peer is followed by `sync FILE`."])


@workload("ova.pack", "packaging", "pack a dynamic VHD into an OVA (gzip)", needs=[("ova", "pack")], issue=5,
          target="≤ 1.2 × compressing the disk alone")
def ova_pack(ctx: Ctx) -> Workload:
    spec = mixed(ctx)
    src = ctx.inputs.dynamic(spec)
    a = ctx.outdir("vhdkit") / "out.ova"
    b = ctx.outdir("pigz") / "disk.vhd.gz"
    cdir = ctx.outdir("tar")
    c = cdir / "out.ova"
    script = (f"pigz -p 2 -1 -c {src} > {cdir}/disk.vhd.gz && "
              f"(cd {cdir} && sha256sum disk.vhd.gz > disk.mf && tar -cf out.ova disk.mf disk.vhd.gz && sync out.ova)")
    return Workload([
        Variant("vhdkit", [Cmd(ctx.vk("ova", "pack", str(src), "-o", str(a)))], ours=True, setup=ctx.clean(a),
                output=str(a), verify=lambda: ok_run(["tar", "-tf", str(a)], "tar -tf")),
        Variant("pigz -p 2 -1 (alone)", [Cmd(["pigz", "-p", "2", "-1", "-c", str(src)], stdout=str(b))],
                output=str(b), tools=["pigz"], floor=True),
        Variant("pigz+sha256sum+tar+sync", [Cmd.sh(script)], setup=ctx.clean(cdir), output=str(c), tools=["pigz"]),
    ], basis=os.path.getsize(src), params={**_disk_params(spec), "file_bytes": os.path.getsize(src)},
        notes=["vhdkit hashes the disk member and fsyncs the OVA; the same-work peer hashes with sha256sum "
               "and ends with `sync`."])


@workload("ova.unpack", "packaging", "unpack an OVA (gzip disk) to a VHD", needs=[("ova", "pack"), ("ova", "unpack")],
          issue=5, target="(informative) vs tar -xO | pigz -dc")
def ova_unpack(ctx: Ctx) -> Workload:
    spec = mixed(ctx)
    src = ctx.inputs.dynamic(spec)
    ova = src.with_name(src.name + ".vhdkit.pack.ova")
    if not ova.exists():
        tmp = ova.with_name(ova.name + ".tmp.ova")
        r = ctx.run_quiet(ctx.vk("ova", "pack", str(src), "-o", str(tmp), "--force"))
        if r.returncode:
            raise RuntimeError(f"vhdkit ova pack (making the input): {r.stderr.strip()[-300:]}")
        os.replace(tmp, ova)
    with tarfile.open(ova) as t:   # the disk member; gzip by its content (OVF names it .vhd with compression="gzip")
        disk = next(m for m in t.getmembers() if m.name.endswith((".gz", ".vhd")))
        member, gzipped = disk.name, t.extractfile(disk).read(2) == b"\x1f\x8b"
    a, b, c = ctx.outdir("vhdkit"), ctx.outdir("tar+sha256"), ctx.outdir("tar")
    dec = "pigz -dc" if gzipped else "cat"

    def verify() -> Optional[str]:
        got = [p for p in a.rglob("*.vhd")]
        return same_file(src, got[0]) if got else "no .vhd unpacked"
    return Workload([
        Variant("vhdkit", [Cmd(ctx.vk("ova", "unpack", str(ova), "-d", str(a)))], ours=True,
                setup=ctx.clean(a), verify=verify),
        Variant(f"tar -xO | tee >(sha256sum) | {dec}; sync",
                [bash(f"tar -xOf {ova} {member} | tee >(sha256sum > {b}/sum) | {dec} > {b}/disk.vhd && "
                      f"sync {b}/disk.vhd")],
                setup=ctx.clean(b), tools=dec.split()[:1], verify=lambda: same_file(src, b / "disk.vhd")),
        Variant(f"tar -xO | {dec}", [Cmd.sh(f"tar -xOf {ova} {member} | {dec} > {c}/disk.vhd")],
                setup=ctx.clean(c), tools=dec.split()[:1], floor=True, verify=lambda: same_file(src, c / "disk.vhd")),
    ], basis=os.path.getsize(src), params={**_disk_params(spec), "file_bytes": os.path.getsize(src)},
        notes=["vhdkit checks the member's sha256 against the manifest and fsyncs the disk; the same-work peer "
               "hashes the member on the way (`tee >(sha256sum)`) and syncs; the bare pipe is the floor."])


def _store_dir(ctx: Ctx) -> Path:
    return ctx.workdir / "home"


@workload("segments.split", "packaging", "split a 2 GiB file into 200 MiB segments", needs=[("segments", "split")],
          issue=5, target="≤ 1.2 × split -b 200M (both with checksums)")
def segments_split(ctx: Ctx) -> Workload:
    spec = half(ctx)
    src = ctx.inputs.fixed(spec)
    home = ctx.outdir("vhdkit") / "home"
    b, c = ctx.outdir("split"), ctx.outdir("split+sums")
    return Workload([
        Variant("vhdkit", [Cmd(ctx.vk("segments", "split", str(src), "--name", "img.vhd", "--segment-size", SEG,
                                      "--container", "bench", "--store", str(home)))],
                ours=True, setup=ctx.clean(home)),
        Variant("split -b", [Cmd(["split", "-b", SEG, "-a", "5", "-d", str(src), f"{b}/img.vhd-"])],
                setup=ctx.clean(b), floor=True),
        Variant("split -b + md5sum + sha256sum + sync", [Cmd.sh(
            f"split -b {SEG} -a 5 -d {src} {c}/img.vhd- && md5sum {c}/img.vhd-* > {c}/md5 && sha256sum {src} > {c}/sha"
            f" && sync {c}/img.vhd-*")],
            setup=ctx.clean(c)),
    ], basis=os.path.getsize(src), params={"file_bytes": os.path.getsize(src), "segment": SEG},
        notes=["vhdkit computes each segment's md5 and the whole file's sha256 on the way and fsyncs each "
               "segment; the third peer does the same job with coreutils; bare `split` is the floor."])


@workload("segments.join", "packaging", "join 200 MiB segments back into one file",
          needs=[("segments", "split"), ("segments", "join")], issue=5, target="≤ 1.2 × cat of the segments")
def segments_join(ctx: Ctx) -> Workload:
    spec = half(ctx)
    src = ctx.inputs.fixed(spec)
    home = src.with_name(src.name + ".segments")
    if not (home / ".done").exists():
        shutil.rmtree(home, ignore_errors=True)
        r = ctx.run_quiet(ctx.vk("segments", "split", str(src), "--name", "img.vhd", "--segment-size", SEG,
                                 "--container", "bench", "--store", str(home)))
        if r.returncode:
            raise RuntimeError(f"vhdkit segments split (making the input): {r.stderr.strip()[-300:]}")
        (home / ".done").touch()
    segs = sorted(p for p in home.rglob("img.vhd-*") if p.is_file() and p.name[len("img.vhd-"):].isdigit())
    if not segs:
        raise RuntimeError(f"no segment files img.vhd-NNNNN found under {home}")
    seg_list = " ".join(str(p) for p in segs)
    a, b, c = (ctx.outdir(n) / "out.vhd" for n in ("vhdkit", "cat", "cat+sums"))
    return Workload([
        Variant("vhdkit", [Cmd(ctx.vk("segments", "join", "bench", "img.vhd", "-o", str(a), "--store", str(home)))],
                ours=True, setup=ctx.clean(a),
                verify=lambda: same_file(src, a)),
        Variant("cat", [Cmd(["cat", *map(str, segs)], stdout=str(b))], setup=ctx.clean(b), floor=True),
        Variant("md5sum & cat | tee >(sha256sum); sync",
                [bash(f"md5sum {seg_list} > /dev/null & cat {seg_list} | tee >(sha256sum > /dev/null) > {c}; "
                      f"wait $! && sync {c}")],
                setup=ctx.clean(c)),
    ], basis=os.path.getsize(src), params={"file_bytes": os.path.getsize(src), "segments": len(segs)},
        notes=["vhdkit checks every segment's md5 and the joined stream's sha256 and fsyncs the output; the "
               "same-work peer hashes the same (md5sum of the segments alongside) and syncs; bare `cat` is the floor."])


# -- helpers -------------------------------------------------------------------------------

def _disk_params(spec: DiskSpec) -> dict:
    return {"virtual_size": spec.size, "block_size": spec.block_size, "random": spec.random,
            "text": spec.text, "zero": round(1 - spec.random - spec.text, 4),
            "allocated_bytes": spec.allocated_bytes, "seed": spec.seed}


def _chain_params(spec: ChainSpec) -> dict:
    return {"virtual_size": spec.size, "depth": len(spec.allocs), "allocs": list(spec.allocs),
            "child_fill": spec.child_fill, "layer_bytes": spec.layer_bytes(), "seed": spec.seed}


def _nonzero_granule_bytes(path, granule: int = 64 * 1024) -> int:
    """Bytes in the non-zero 64 KiB runs of a file (the chain generator's bitmap granule)."""
    import numpy as np
    total = 0
    with open(path, "rb") as f:
        while True:
            b = f.read(256 * granule)
            if not b:
                break
            a = np.frombuffer(b.ljust(-(-len(b) // granule) * granule, b"\0"), dtype=np.uint64)
            total += int(np.count_nonzero(a.reshape(-1, granule // 8).any(axis=1))) * granule
    return total


# -- registry (issue 6) ------------------------------------------------------------------------

POPULATION_VERSION = "2: probe is a member of 60 shared images at every size"


def registry_sizes(ctx: Ctx) -> tuple[int, list[int]]:
    return (20, [50, 100]) if ctx.quick else (1000, [10_000, 100_000])


def registry_home(ctx: Ctx, n: int) -> Path:
    """A registry populated with n images through the public API (cached; 100k takes minutes once)."""
    home = ctx.inputs.dir / f"registry-{n}"
    ok = home.with_name(home.name + ".ok")
    if ok.exists() and ok.read_text() == POPULATION_VERSION and (home / "bench.json").exists():
        return home
    shutil.rmtree(home, ignore_errors=True)
    ctx.log(f"  populating a registry with {n} images (once) ...")
    r = ctx.run_quiet(ctx.tool("registry-populate", str(home), str(n)))
    if r.returncode:
        raise RuntimeError(f"populating the registry: {r.stderr.strip()[-400:]}")
    ok.write_text(POPULATION_VERSION)
    return home


def _registry_query(op: str, idx: int):
    def build(ctx: Ctx) -> Workload:
        small, bigs = registry_sizes(ctx)
        big = bigs[idx]
        homes = {n: registry_home(ctx, n) for n in (small, big)}
        reps = "50" if ctx.quick else "400"
        variants = []
        for n, ours in ((big, True), (small, False)):
            out = ctx.outdir(f"n{n}") / "t.json"
            variants.append(Variant(f"vhdkit @{n} images", [Cmd(ctx.tool("registry-time", str(homes[n]), op, reps, str(out)))],
                                    ours=ours, inner=str(out)))
        q = "tag=a&tag=b&visibility=shared&member_status=accepted&sort=name:asc, page of 25" if op == "list" \
            else "show by id"
        return Workload(variants, basis=None, params={"images": big, "baseline_images": small, "query": q},
                        notes=[f"time = median of up to {reps} in-process calls of the Python API (at most ~3 s of calls; registry open excluded); "
                               "the ratio is the cost at the larger registry over the cost at the smallest."])
    return build


for _op, _title in (("list", "filtered, sorted page of 25"), ("show", "show image by id")):
    for _i, _lbl in enumerate(("10k", "100k")):
        workload(f"registry.{_op}-{_lbl}", "registry", f"registry {_title} at {_lbl} images vs at 1k",
                 issue=6, target="≤ 2 × the same query on 1,000 images" if _lbl == "100k" else "")(
            _registry_query(_op, _i))


@workload("registry.upload", "registry", "upload an image into the registry (md5 + sha512 on the way)", issue=6,
          target="≤ md5sum followed by sha512sum of the same file")
def registry_upload(ctx: Ctx) -> Workload:
    spec = half(ctx, max(ctx.size, 4 * MiB))    # issue 6: a 1 GiB image at --size 1G
    src = ctx.inputs.fixed(spec)
    home = ctx.outdir("vhdkit") / "home"
    copy = ctx.outdir("tee") / "copy"
    return Workload([
        Variant("vhdkit", [Cmd(ctx.tool("registry-upload", str(home), str(src)))], ours=True, setup=ctx.clean(home)),
        Variant("md5sum; sha512sum", [Cmd(["md5sum", str(src)]), Cmd(["sha512sum", str(src)])], floor=True),
        Variant("tee >(md5sum) >(sha512sum) > copy; sync",
                [bash(f"tee >(md5sum > /dev/null) >(sha512sum > /dev/null) < {src} > {copy} && sync {copy}")],
                setup=ctx.clean(copy)),
    ], basis=os.path.getsize(src), params={"file_bytes": os.path.getsize(src)},
        notes=["vhdkit: Registry.upload_file through the Python API, process start-up included: it stores a "
               "fsynced copy and hashes it (md5 + sha512); the same-work peer copies, hashes and syncs; the two "
               "hashes alone (no copy) are the floor."])


def _download_input(ctx: Ctx):
    """The 1 GiB image of registry.upload, uploaded once into its own registry: (home, id, blob, src)."""
    spec = half(ctx, max(ctx.size, 4 * MiB))    # issue 6: a 1 GiB image at --size 1G
    src = ctx.inputs.fixed(spec)
    home = src.with_name(src.name + ".registry")
    meta = home / "uploaded.json"
    if not meta.exists():
        shutil.rmtree(home, ignore_errors=True)
        r = ctx.run_quiet(ctx.tool("registry-upload", str(home), str(src)))
        if r.returncode:
            raise RuntimeError(f"uploading the input: {r.stderr.strip()[-300:]}")
        blobs = [p for p in (home / "blobs").rglob("*") if p.is_file() and p.stat().st_size == src.stat().st_size]
        import sqlite3
        con = sqlite3.connect(home / "registry.db")
        image_id = con.execute("SELECT id FROM images WHERE name = 'bench-upload'").fetchone()[0]
        con.close()
        meta.write_text(json.dumps({"id": image_id, "blob": str(blobs[0])}))
    info = json.loads(meta.read_text())
    return home, info["id"], info["blob"], src


def _download_vs_cp(ctx: Ctx, vhdkit_cmd, notes: List[str]) -> Workload:
    """vhdkit downloading the image of :func:`_download_input` (``vhdkit_cmd(home,
    image_id, out)``) against cp of its blob."""
    home, image_id, blob, src = _download_input(ctx)
    a, b = ctx.outdir("vhdkit") / "out.img", ctx.outdir("cp") / "out.img"
    return Workload([
        Variant("vhdkit", [vhdkit_cmd(home, image_id, a)], ours=True, setup=ctx.clean(a),
                verify=lambda: same_file(src, a)),
        Variant("cp blob", [Cmd(["cp", blob, str(b)])], setup=ctx.clean(b)),
    ], basis=os.path.getsize(src), params={"file_bytes": os.path.getsize(src)}, notes=notes)


@workload("registry.download", "registry", "download an image from the registry into a file", issue=6,
          target="≤ 1.2 × cp of the blob")
def registry_download(ctx: Ctx) -> Workload:
    return _download_vs_cp(
        ctx, lambda home, image_id, out: Cmd(ctx.tool("registry-download", str(home), image_id, str(out))),
        notes=["vhdkit: Registry.download into a new file through the Python API, process start-up "
               "included (as registry.upload is measured); open the registry, check access, copy "
               "(copy_file_range), close.  registry.download-cli times the `vhdkit image download` command."])


@workload("registry.download-cli", "registry", "`vhdkit image download` into a file", issue=6)
def registry_download_cli(ctx: Ctx) -> Workload:
    who = {"VHDKIT_ACCOUNT": "acctup", "VHDKIT_ROLES": "admin"}
    return _download_vs_cp(
        ctx, lambda home, image_id, out: Cmd(ctx.vk("image", "download", image_id, "-o", str(out), "--no-sync",
                                                    json=False), env=dict(who, VHDKIT_HOME=str(home))),
        notes=["vhdkit: `vhdkit image download ID -o FILE --no-sync` (the CLI: the interpreter and click "
               "start up first, ~80 ms before any work; temp file + rename, no fsync and no re-hash, as cp; "
               "bench/registry_scale.py also times the default, which fsyncs)."])


# -- import / export pipeline (issue 8) ---------------------------------------------------------

ACCT = "acctbench"


def _task_script(ctx: Ctx, home: Path, create_args: str) -> str:
    """task create + one worker pass + task wait, each a CLI process, on data dir ``home``."""
    vk = " ".join(ctx.vk(json=False))
    return (f"set -e; export VHDKIT_HOME={home} VHDKIT_ACCOUNT={ACCT} VHDKIT_ROLES=admin; "
            f"id=$({vk} task create {create_args} --data {home} --json | "
            f"{ctx.py} -c 'import json,sys; print(json.load(sys.stdin)[\"id\"])'); "
            f"{vk} worker --data {home} --once >/dev/null; "
            f"{vk} task wait \"$id\" --data {home} --json > {home}/last-task.json || "
            f"{{ {ctx.py} -c 'import json,sys; t=json.load(open(sys.argv[1])); "
            f"print(\"task\", t.get(\"status\"), t.get(\"message\"), file=sys.stderr)' {home}/last-task.json; exit 1; }}")


def _put_input(ctx: Ctx, home: Path, src: Path) -> None:
    r = ctx.run_quiet(ctx.vk("object", "put", "--account", ACCT, "--store", str(home / "objects"),
                             "incoming", "disk.vhd", str(src)))
    if r.returncode:
        raise RuntimeError(f"object put: {r.stderr.strip()[-300:]}")


def _task_ok(home: Path) -> Optional[str]:
    try:
        t = json.loads((home / "last-task.json").read_text())
    except (OSError, ValueError) as e:
        return f"no task result: {e}"
    return None if t.get("status") == "success" else f"task ended {t.get('status')}: {t.get('message')}"


@workload("pipeline.import", "pipeline", "import task: fetch, validate, gzip, OVA, store (half-allocated dynamic VHD)",
          needs=[("task", "create"), ("task", "wait"), ("worker",), ("object", "put")], issue=8,
          target="≤ 1.3 × pigz -p 2 -1 of the same file; worker RSS < 200 MiB")
def pipeline_import(ctx: Ctx) -> Workload:
    spec = mixed(ctx)
    src = ctx.inputs.dynamic(spec)
    home = ctx.outdir("vhdkit") / "home"
    cdir = ctx.outdir("stages")

    def setup() -> None:
        ctx.clean(home)()
        _put_input(ctx, home, src)
    stages = (f"pigz -p 2 -1 -c {src} > {cdir}/disk.vhd.gz && (cd {cdir} && sha256sum disk.vhd.gz > disk.mf && "
              f"tar -cf img.ova disk.mf disk.vhd.gz && md5sum img.ova > /dev/null && sha512sum img.ova > /dev/null"
              f" && sync img.ova)")
    return Workload([
        Variant("vhdkit", [Cmd.sh(_task_script(ctx, home, "import --from incoming/disk.vhd --name bench"))],
                ours=True, setup=setup, verify=lambda: _task_ok(home)),
        Variant("pigz -p 2 -1 (alone)", [Cmd(["pigz", "-p", "2", "-1", "-c", str(src)], stdout=str(cdir / "x.gz"))],
                tools=["pigz"], floor=True),
        Variant("stage sum: pigz+tar+md5sum+sha512sum+sync", [Cmd.sh(stages)], setup=ctx.clean(cdir), tools=["pigz"]),
    ], basis=spec.size, params={**_disk_params(spec), "file_bytes": os.path.getsize(src)},
        notes=["vhdkit = `task create` + `worker --once` + `task wait` (three CLI processes); "
               "RSS = the largest of them (the worker). The object is put before each run (untimed)."])


@workload("pipeline.export", "pipeline", "export task: read OVA, coalesce, split into 200 MiB segments",
          needs=[("task", "create"), ("task", "wait"), ("worker",), ("object", "put")], issue=8,
          target="≤ 1.3 × (pigz -dc of the stored disk into a file, then split -b 200M)")
def pipeline_export(ctx: Ctx) -> Workload:
    spec = mixed(ctx)
    src = ctx.inputs.dynamic(spec)
    gz = src.with_name(src.name + ".pigz1.gz")   # made by the peers' setup (_pigz_made), vhdkit needs none
    base = src.with_name(src.name + ".imported")
    if not (base / "image.json").exists():
        shutil.rmtree(base, ignore_errors=True)
        base.mkdir()
        _put_input(ctx, base, src)
        r = ctx.run_quiet(["sh", "-c", _task_script(ctx, base, "import --from incoming/disk.vhd --name bench")])
        if r.returncode or _task_ok(base):
            raise RuntimeError(f"import (making the input): {_task_ok(base) or r.stderr.strip()[-300:]}")
        task = json.loads((base / "last-task.json").read_text())
        (base / "image.json").write_text(json.dumps({"id": task["result"]["image_id"]}))
    image_id = json.loads((base / "image.json").read_text())["id"]
    home = ctx.outdir("vhdkit") / "home"
    pdir, qdir = ctx.outdir("peer"), ctx.outdir("peer+sums")

    # each run starts with no contender's output on disk (at 16 GiB each takes ~16 GB)
    no_outputs = ctx.clean(home, pdir, qdir)

    def setup() -> None:
        no_outputs()
        shutil.copytree(base, home, dirs_exist_ok=True)   # into the emptied directory
        r = ctx.run_quiet(ctx.vk("object", "put", "--account", ACCT, "--store", str(home / "objects"),
                                 "exports", "README", "/dev/null"))
        if r.returncode:
            raise RuntimeError(f"object put (creating the exports container): {r.stderr.strip()[-300:]}")
    return Workload([
        Variant("vhdkit", [Cmd.sh(_task_script(ctx, home, f"export --image {image_id} --container exports"))],
                ours=True, setup=setup, verify=lambda: _task_ok(home)),
        Variant("pigz -dc > file; split -b 200M", [Cmd.sh(f"pigz -dc {gz} > {pdir}/disk.vhd && "
                                                         f"split -b 200M -a 5 -d {pdir}/disk.vhd {pdir}/seg-")],
                setup=lambda: (_pigz_made(ctx, src), no_outputs()), tools=["pigz"], floor=True),
        Variant("pigz -dc > file; split; md5sum+sha256sum; sync",
                [Cmd.sh(f"pigz -dc {gz} > {qdir}/disk.vhd && split -b 200M -a 5 -d {qdir}/disk.vhd {qdir}/seg- && "
                        f"md5sum {qdir}/seg-* > /dev/null && sha256sum {qdir}/disk.vhd > /dev/null && "
                        f"sync {qdir}/seg-*")],
                setup=lambda: (_pigz_made(ctx, src), no_outputs()), tools=["pigz"]),
    ], basis=spec.size, params={**_disk_params(spec), "file_bytes": os.path.getsize(src)},
        notes=["the data dir holding the imported image is copied before each run (untimed).",
               "vhdkit hashes each segment (md5) and the stream (sha256) and fsyncs the segments; the same-work "
               "peer does so with coreutils; decompress + split alone is the floor."])
