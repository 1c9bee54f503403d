"""Deterministic benchmark inputs, generated from a seed and cached in the work dir.

A disk is a sequence of blocks (2 MiB by default), each of one class:

* ``zero``   – all zeros (a hole in raw files, unallocated in dynamic VHDs);
* ``random`` – incompressible bytes from numpy's PCG64 seeded with (seed, block);
* ``text``   – text-like bytes: 64 KiB slices of a Zipf-distributed word corpus
  (compresses roughly like logs or source code, about 3:1 with ``gzip -1``).

Block classes are assigned in exact proportions (``mix``) and shuffled by the
seed, so two runs with the same spec produce byte-identical files.  Each file is
written next to a ``.ok`` marker holding its spec; a file without its marker is
regenerated.  Nothing here imports vhdkit: inputs are made independently of the
code under test (VHDs by fixtures/vhdref.py).
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid as uuidlib
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path
from typing import Optional

import numpy as np

import vhdref

MiB = 1 << 20
GiB = 1 << 30
ZERO, RANDOM, TEXT = 0, 1, 2
GRANULE = 64 * 1024  # differencing layers set their bitmaps in 64 KiB runs (whole bitmap bytes)


@lru_cache(maxsize=1)
def _corpus() -> bytes:
    """About 4 MiB of word-like text, the same on every machine."""
    rng = np.random.default_rng(20260101)
    letters = np.frombuffer(b"etaoinshrdlcumwfgypbvkjxqz", dtype=np.uint8)
    freq = np.array([12.7, 9.1, 8.2, 7.5, 7.0, 6.7, 6.3, 6.1, 6.0, 4.3, 4.0, 2.8, 2.8, 2.4,
                     2.4, 2.2, 2.0, 2.0, 1.9, 1.5, 1.0, .8, .15, .15, .1, .07])
    freq /= freq.sum()
    lens = rng.integers(2, 11, 4096)
    vocab = [bytes(letters[rng.choice(26, n, p=freq)]) for n in lens]
    zipf = 1.0 / np.arange(1, len(vocab) + 1)
    zipf /= zipf.sum()
    idx = rng.choice(len(vocab), 700_000, p=zipf)
    words = [vocab[i] for i in idx]
    for k in range(0, len(words), 13):
        words[k] = words[k] + b"\n"
    return b" ".join(words)


def block_bytes(cls: int, block_size: int, seed: tuple) -> bytes:
    if cls == ZERO:
        return bytes(block_size)
    rng = np.random.default_rng(list(seed))
    if cls == RANDOM:
        return rng.bytes(block_size)
    corpus = _corpus()
    n = -(-block_size // GRANULE)
    offs = rng.integers(0, len(corpus) - GRANULE, n)
    return b"".join(corpus[o:o + GRANULE] for o in offs)[:block_size]


def _classes(n: int, mix: tuple[float, float], seed: tuple) -> np.ndarray:
    """Exactly round(mix*n) random and text blocks, the rest zero, shuffled."""
    n_rand = int(round(mix[0] * n))
    n_text = min(int(round(mix[1] * n)), n - n_rand)
    cls = np.zeros(n, dtype=np.uint8)
    cls[:n_rand] = RANDOM
    cls[n_rand:n_rand + n_text] = TEXT
    np.random.default_rng(list(seed)).shuffle(cls)
    return cls


@dataclass(frozen=True)
class DiskSpec:
    """One virtual disk: size, block mix (random, text; the rest zero), seed."""
    size: int
    random: float = 0.5
    text: float = 0.0
    block_size: int = 2 * MiB
    seed: int = 1
    hollow: bool = False  # allocated VHD blocks whose data area is a file hole (huge sparse images)

    @property
    def n_blocks(self) -> int:
        return -(-self.size // self.block_size)

    def classes(self) -> np.ndarray:
        return _classes(self.n_blocks, (self.random, self.text), (self.seed, 0xD15C))

    @property
    def allocated_bytes(self) -> int:
        return int(np.count_nonzero(self.classes())) * self.block_size

    def key(self) -> str:
        h = hashlib.sha1(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:10]
        return f"{_human(self.size)}-r{int(self.random * 100)}t{int(self.text * 100)}-{h}"

    def block(self, i: int, cls: int) -> bytes:
        data = block_bytes(cls, self.block_size, (self.seed, 1, i))
        end = self.size - i * self.block_size
        return data if end >= self.block_size else data[:end]


@dataclass(frozen=True)
class ChainSpec:
    """A differencing chain: base (dynamic) + children, each with ``alloc`` of its blocks
    allocated at random; a child's allocated block sets ``child_fill`` of its 64 KiB runs
    in the bitmap (the other runs hold garbage that a correct reader never returns)."""
    size: int
    allocs: tuple = (0.2, 0.2, 0.2)   # base first
    block_size: int = 2 * MiB
    seed: int = 3
    child_fill: float = 0.5

    def key(self) -> str:
        h = hashlib.sha1(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:10]
        return f"chain{len(self.allocs)}-{_human(self.size)}-a{int(self.allocs[-1] * 100)}-{h}"

    @property
    def n_blocks(self) -> int:
        return -(-self.size // self.block_size)

    def layer_classes(self, k: int) -> np.ndarray:
        a = self.allocs[k]
        return _classes(self.n_blocks, (a / 2, a / 2), (self.seed, k, 0xC4A1))

    def layer_bytes(self) -> int:
        return sum(int(np.count_nonzero(self.layer_classes(k))) * self.block_size
                   for k in range(len(self.allocs)))


def _human(n: int) -> str:
    for unit, f in (("T", 1 << 40), ("G", GiB), ("M", MiB), ("K", 1024)):
        if n % f == 0:
            return f"{n // f}{unit}"
    return str(n)


def parse_size(text: str) -> int:
    t = text.strip().upper().removesuffix("IB").removesuffix("B")
    mult = {"K": 1 << 10, "M": MiB, "G": GiB, "T": 1 << 40}.get(t[-1:], 1)
    num = t[:-1] if t[-1:] in "KMGT" else t
    return int(float(num) * mult)


class Inputs:
    """Generates and caches inputs under ``<workdir>/inputs``."""

    def __init__(self, workdir: Path, log=print):
        self.dir = Path(workdir) / "inputs"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.log = log

    # -- cache plumbing -------------------------------------------------
    def _cached(self, path: Path, spec, build) -> Path:
        ok = path.with_name(path.name + ".ok")
        want = json.dumps({"spec": asdict(spec), "type": type(spec).__name__, "path": path.name},
                          sort_keys=True)
        if ok.exists() and ok.read_text() == want and path.exists():
            return path
        ok.unlink(missing_ok=True)
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)
        self.log(f"  generating {path.name} ...")
        tmp = path.with_name(path.name + ".tmp")
        if tmp.is_dir():
            shutil.rmtree(tmp)
        else:
            tmp.unlink(missing_ok=True)
        build(tmp)
        os.replace(tmp, path)
        ok.write_text(want)
        return path

    # -- plain disks --------------------------------------------------------
    def raw(self, spec: DiskSpec) -> Path:
        def build(tmp: Path) -> None:
            with open(tmp, "wb") as f:
                f.truncate(spec.size)
                for i, cls in enumerate(spec.classes()):
                    if cls:
                        os.pwrite(f.fileno(), spec.block(i, cls), i * spec.block_size)
        return self._cached(self.dir / f"{spec.key()}.raw", spec, build)

    def fixed(self, spec: DiskSpec) -> Path:
        def build(tmp: Path) -> None:
            shutil.copyfile(self.raw(spec), tmp)  # copy_file_range keeps it cheap
            with open(tmp, "ab") as f:
                f.write(vhdref.footer(spec.size, vhdref.FIXED, _uuid(spec, "fixed"), None))
        return self._cached(self.dir / f"{spec.key()}.fixed.vhd", spec, build)

    def dynamic(self, spec: DiskSpec) -> Path:
        def build(tmp: Path) -> None:
            cls = spec.classes()
            alloc = [int(i) for i in np.flatnonzero(cls)]
            lay = vhdref.Layout(spec.size, spec.block_size, alloc, uid=_uuid(spec, "dynamic"))
            with open(tmp, "wb") as f:
                offs = lay.write_metadata(f, str(tmp))
                bitmap = b"\xff" * lay.bitmap_bytes
                for i in alloc:
                    os.pwrite(f.fileno(), bitmap, offs[i])
                    if not spec.hollow:
                        data = spec.block(i, cls[i]).ljust(spec.block_size, b"\0")
                        os.pwrite(f.fileno(), data, offs[i] + lay.bitmap_bytes)
        return self._cached(self.dir / f"{spec.key()}{'.hollow' if spec.hollow else ''}.vhd", spec, build)

    # -- chains ---------------------------------------------------------------
    def chain(self, spec: ChainSpec) -> dict:
        """{'layers': [base, ..., leaf] paths, 'leaf': path, 'flat': raw path of the chain's content}."""
        depth = len(spec.allocs)
        names = [f"layer{k}.vhd" for k in range(depth)]

        def build(tmp: Path) -> None:
            tmp.mkdir()
            bs = spec.block_size
            nbits = bs // GRANULE
            flat = open(tmp / "flat.raw", "wb")
            flat.truncate(spec.size)
            layers = []
            parent = None
            for k in range(depth):
                cls = spec.layer_classes(k)
                alloc = [int(i) for i in np.flatnonzero(cls)]
                uid = uuidlib.UUID(bytes=hashlib.md5(f"{spec.key()}/{k}".encode()).digest())
                lay = vhdref.Layout(spec.size, bs, alloc, parent=parent, uid=uid)
                f = open(tmp / names[k], "wb")
                layers.append((lay, f, cls, lay.write_metadata(f, str(tmp / names[k]))))
                parent = vhdref.Parent(str(tmp / names[k]), uid)
            for i in range(spec.n_blocks):
                content: Optional[np.ndarray] = None
                for k, (lay, f, cls, offs) in enumerate(layers):
                    if not cls[i]:
                        continue
                    data = block_bytes(int(cls[i]), bs, (spec.seed, 2, k, i))
                    if k == 0:
                        mask = np.ones(nbits, dtype=bool)
                    else:
                        mask = np.random.default_rng([spec.seed, 4, k, i]).random(nbits) < spec.child_fill
                        mask[np.random.default_rng([spec.seed, 5, k, i]).integers(nbits)] = True
                    bitmap = np.repeat(mask, GRANULE // 4096).astype(np.uint8) * 0xFF
                    os.pwrite(f.fileno(), bitmap.tobytes().ljust(lay.bitmap_bytes, b"\0"), offs[i])
                    os.pwrite(f.fileno(), data, offs[i] + lay.bitmap_bytes)
                    arr = np.frombuffer(data, dtype=np.uint8).reshape(nbits, GRANULE)
                    if content is None:
                        content = np.zeros((nbits, GRANULE), dtype=np.uint8)
                    content[mask] = arr[mask]
                if content is not None and content.any():
                    end = min(bs, spec.size - i * bs)
                    os.pwrite(flat.fileno(), content.tobytes()[:end], i * bs)
            for _, f, _, _ in layers:
                f.close()
            flat.close()
        d = self._cached(self.dir / spec.key(), spec, build)
        layers = [d / n for n in names]
        return {"dir": d, "layers": layers, "leaf": layers[-1], "base": layers[0], "flat": d / "flat.raw"}


def _uuid(spec, what: str) -> uuidlib.UUID:
    return uuidlib.UUID(bytes=hashlib.md5(f"{spec.key()}/{what}".encode()).digest())
