"""vhdkit's benchmark harness: every operation timed side by side with its peer.

Run ``python -m bench --help``; see bench/README.md for how to read the results.
Inputs are written by fixtures/vhdref.py, the independent VHD writer the tests
share; fixtures/ goes on the import path here, as pytest's pythonpath puts it.
"""
import os as _os
import sys as _sys

_FIXTURES = _os.path.join(_os.path.dirname(_os.path.dirname(_os.path.abspath(__file__))), "fixtures")
if _FIXTURES not in _sys.path:
    _sys.path.append(_FIXTURES)
