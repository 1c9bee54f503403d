"""cffi build script for the native core (``vhdkit._native``).

The public C header ``csrc/vhdkit.h`` is read verbatim into ``ffi.cdef`` so the
boundary between C and Python is written exactly once.  This script must not
import :mod:`vhdkit` (it runs before the package is built).

Environment:
  VHDKIT_SANITIZE=1   build with -fsanitize=address,undefined (run the tests
                      with the ASan runtime preloaded, see scripts/test).
  VHDKIT_DEBUG=1      build with -O0 -g.

Run directly (``python vhdkit/_build.py``) to build the extension in place.
"""
import glob
import os
import sys

from cffi import FFI

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
CSRC = os.path.join(ROOT, "csrc")


def _flags():
    cflags = ["-std=c99", "-Wall", "-Wextra", "-Werror", "-Wno-unused-parameter",
              "-D_FILE_OFFSET_BITS=64", "-D_GNU_SOURCE", "-fvisibility=hidden"]
    ldflags = []
    if os.environ.get("VHDKIT_DEBUG") == "1":
        cflags += ["-O0", "-g"]
    else:
        cflags += ["-O2"]
    if os.environ.get("VHDKIT_SANITIZE") == "1":
        san = ["-fsanitize=address,undefined", "-fno-omit-frame-pointer",
               "-fno-sanitize-recover=undefined", "-g"]
        cflags += san
        ldflags += ["-fsanitize=address,undefined"]
    return cflags, ldflags


with open(os.path.join(CSRC, "vhdkit.h"), encoding="utf-8") as fh:
    CDEF = fh.read()



def make_builder(absolute: bool = False) -> FFI:
    """The FFI builder; setuptools wants project-relative source paths, the
    in-place build (which runs the compiler from build/) absolute ones."""
    fix = (lambda p: p) if absolute else (lambda p: os.path.relpath(p, ROOT))
    cflags, ldflags = _flags()
    builder = FFI()
    builder.cdef(CDEF)
    builder.set_source(
        "vhdkit._native",
        "#include <stddef.h>\n#include <stdint.h>\n#include \"vhdkit.h\"\n",
        sources=sorted(fix(p) for p in glob.glob(os.path.join(CSRC, "*.c"))),
        include_dirs=[fix(CSRC)],
        extra_compile_args=cflags,
        extra_link_args=ldflags,
    )
    return builder


ffibuilder = make_builder()

if __name__ == "__main__":
    make_builder(absolute=True).compile(tmpdir=os.path.join(ROOT, "build", "cffi"), verbose=bool(os.environ.get("V")))
    # cffi writes the module under tmpdir/vhdkit/; move it next to the sources.
    built = glob.glob(os.path.join(ROOT, "build", "cffi", "vhdkit", "_native*.so"))
    for so in built:
        os.replace(so, os.path.join(HERE, os.path.basename(so)))
    print("built", [os.path.basename(b) for b in built], file=sys.stderr)
