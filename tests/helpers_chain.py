"""Helpers for the chains tests: build chains through vhdkit (snapshot +
r+ writes) while keeping an in-memory model of what the leaf must read."""
from __future__ import annotations

import hashlib
import os
import random
from pathlib import Path
from typing import List, Optional, Sequence

import pytest

import vhdkit
from vhdkit import errors
from vhdkit.vhd import chain, write

MiB = 1 << 20


def digest(path) -> str:
    """sha256 of a file's bytes (to prove a file was not modified)."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


class ChainModel:
    """A chain of VHDs under construction and the bytes its leaf must show."""

    def __init__(self, tmp: Path, size: int, *, block_size: int = 2 * MiB, kind: str = "dynamic"):
        self.tmp = Path(tmp)
        self.paths: List[Path] = [self.tmp / "l0.vhd"]
        write.create(self.paths[0], size, type=kind, block_size=None if kind == "fixed" else block_size)
        self.model = bytearray(size)
        self.size = size
        self.sizes = [size]          # virtual size of each layer
        self.data_end = [0]          # end of the data written into each layer

    @property
    def leaf(self) -> Path:
        return self.paths[-1]

    def snapshot(self, *, size: Optional[int] = None, block_size: Optional[int] = None) -> Path:
        p = self.tmp / f"l{len(self.paths)}.vhd"
        r = chain.snapshot(self.leaf, p, size=size, block_size=block_size)
        if r.virtual_size > self.size:
            self.model.extend(bytes(r.virtual_size - self.size))
            self.size = r.virtual_size
        self.paths.append(p)
        self.sizes.append(r.virtual_size)
        self.data_end.append(0)
        return p

    def write(self, offset: int, data: bytes) -> None:
        with vhdkit.open(self.leaf, "r+") as f:
            assert f.pwrite(data, offset) == len(data)
        self.model[offset:offset + len(data)] = data
        self.data_end[-1] = max(self.data_end[-1], offset + len(data))

    def merge_leaf(self, *, remove: bool = True) -> bool:
        """Coalesce the leaf into its parent; the parent becomes the leaf.
        A leaf holding data past its parent's size must be refused (False)."""
        if self.data_end[-1] > self.sizes[-2]:
            with pytest.raises(errors.OutOfRangeError):
                chain.coalesce_into_parent(self.leaf)
            return False
        chain.coalesce_into_parent(self.leaf)
        if remove:
            os.unlink(self.leaf)
        self.paths.pop()
        self.sizes.pop()
        end = self.data_end.pop()
        self.data_end[-1] = max(self.data_end[-1], end)
        self.size = self.sizes[-1]
        del self.model[self.size:]
        return True

    def read(self) -> bytes:
        with vhdkit.open(self.leaf) as f:
            return f.read()


def random_writes(rng: random.Random, size: int, n: int, *, aligned: int = 1, max_len: int = 300 << 10):
    """n (offset, data) pairs; aligned=4096 gives whole-byte bitmap writes."""
    out = []
    for _ in range(n):
        length = max(aligned, rng.randrange(1, max_len) // aligned * aligned)
        off = rng.randrange(0, max(1, size - length)) // aligned * aligned
        out.append((off, rng.randbytes(min(length, size - off))))
    return out


def chain_paths_leaf_first(m: ChainModel) -> Sequence[str]:
    return [str(p) for p in reversed(m.paths)]
