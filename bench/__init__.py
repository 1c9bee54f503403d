"""vhdkit's benchmark harness: every operation timed side by side with its peer.

Run ``python -m bench --help``; see bench/README.md for how to read the results.
"""
