"""Summarise bench/packaging.sh results: medians and ratios (ours / peer) per section.

    python bench/packaging_summary.py  ->  prints and writes bench/results/packaging-summary.md
"""
from __future__ import annotations

import json
import statistics
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
SECTIONS = ["compress", "compress-file", "decompress", "ova", "split", "join"]


def main() -> None:
    lines = ["| section | command | median s | min s | max s | runs | median / first row |",
             "|---|---|---:|---:|---:|---:|---:|"]
    for sec in SECTIONS:
        f = RESULTS / f"packaging-{sec}.json"
        if not f.exists():
            continue
        rows = json.loads(f.read_text())["results"]
        base = statistics.median(rows[0]["times"])
        for r in rows:
            med = statistics.median(r["times"])
            lines.append(f"| {sec} | {r['command']} | {med:.2f} | {min(r['times']):.2f} | {max(r['times']):.2f} "
                         f"| {len(r['times'])} | {med / base:.2f} |")
    for extra in ("sizes", "rss"):
        f = RESULTS / f"packaging-{extra}.txt"
        if f.exists():
            lines += ["", f"{extra}:", "```", f.read_text().rstrip(), "```"]
    text = "\n".join(lines) + "\n"
    (RESULTS / "packaging-summary.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
