"""Results: JSON document, Markdown tables, scaling fits and the PNG plot."""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Optional

import numpy as np


def _fmt_t(x: Optional[float]) -> str:
    if x is None:
        return "—"
    if x < 0.1:
        return f"{x:.3g}"
    return f"{x:.3f}" if x < 10 else f"{x:.1f}"


def _size(n: Optional[int]) -> str:
    if not n:
        return ""
    for unit, f in (("TiB", 1 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1024)):
        if n >= f:
            v = n / f
            return f"{v:.0f} {unit}" if v == int(v) else f"{v:.1f} {unit}"
    return f"{n} B"


def _input_label(w: dict) -> str:
    p = w.get("params") or {}
    parts = []
    if "virtual_size" in p:
        parts.append(_size(p["virtual_size"]))
    if "allocs" in p:
        parts.append("layers " + "/".join(f"{a:.0%}" for a in p["allocs"]))
    elif "allocated_bytes" in p and p.get("virtual_size"):
        parts.append(f"{p['allocated_bytes'] / p['virtual_size']:.0%} alloc")
    if "images" in p:
        parts.append(f"{p['images']:,} vs {p['baseline_images']:,} images")
    if "image_count" in p:
        parts.append(f"{p['image_count']:,} images")
    if "file_bytes" in p:
        parts.append(f"file {_size(p['file_bytes'])}")
    return ", ".join(parts)


def markdown(doc: dict, readme: bool = False) -> str:
    """The run's table.  ``readme``: the form bench/README.md keeps -- only
    workloads that ran (no failed or unavailable rows), then each verdict with
    its pair named; no date, commit or load (those stay in the results file)."""
    if readme:
        return _readme_table(doc)
    meta = doc["meta"]
    cvs = [v["stats"]["cv"] for w in doc["workloads"] for v in w["variants"]
           if v.get("stats") and len(v.get("runs", [])) > 1]
    noise = (f" Noise: run-to-run coefficient of variation median {np.median(cvs):.0%}, max {max(cvs):.0%} "
             f"over {len(cvs)} contenders." if cvs else "")
    lines = [
        ("**Partial run** (cut short): " if meta.get("partial") else "") + f"Measured {meta['date']} on `{meta['host']}` ({meta['nproc']} cores, {meta['cpu']}), "
        f"commit `{meta['commit']}`{' (dirty tree)' if meta.get('dirty') else ''}; "
        f"repeat {meta['repeat']}{' (quick: no warm-up)' if meta.get('quick') else ' after one warm-up'}, runs alternating vhdkit/peers; "
        f"load average {meta['load_before'][0]:.2f} before, {meta['load_after'][0]:.2f} after." + noise,
        "",
        "| workload | input | tool | median s | min–max s | MB/s | peak RSS MiB | vhdkit / peer (median, min–max) |",
        "|---|---|---|---:|---:|---:|---:|---|",
    ]
    for w in doc["workloads"]:
        if w.get("scaling"):
            continue
        lines.extend(_rows(w))
    behind = behind_list(doc)
    lines += ["", "Where vhdkit is behind a peer doing the same work (median ratio > 1.0; floors excluded): " +
              ("; ".join(behind) if behind else "none") + "."]
    targets = [f"- **{w['name']}** (issue #{w['issue']}): {w['target']}" for w in doc["workloads"]
               if w.get("target") and w.get("issue") and not w.get("scaling")]
    if targets:
        lines += ["", "Issue targets for reference:"] + targets
    extras = []
    for w in doc["workloads"]:
        if w.get("extra") and not w.get("scaling"):
            ex = {k: v for k, v in w["extra"].items() if k != "note"}
            extras.append(f"- {w['name']}: " + ", ".join(f"{k} = {_num(v)}" for k, v in ex.items()))
    if extras:
        lines += ["", "Derived figures:"] + extras
    if doc.get("scaling"):
        lines += ["", scaling_markdown(doc)]
    return "\n".join(lines) + "\n"


#: Ratios within this of 1.0 are parity (the machine is shared; see bench/README.md).
PARITY = 0.10


def verdicts(doc: dict) -> list[str]:
    """One line per same-work pair (floors and in-process references excluded):
    the workload, vhdkit's command against the peer's, the pairwise median and
    the verdict."""
    out = []
    for w in doc["workloads"]:
        if w.get("scaling") or w["status"] != "ok":
            continue
        floors = {v["name"] for v in w["variants"] if v.get("floor")}
        for peer, r in (w.get("ratios") or {}).items():
            if not r or peer.startswith("(ref)") or peer in floors:
                continue
            word = ("the same query at the smaller size: a ratio, not a race" if peer.startswith("vhdkit") else
                    "parity" if abs(r["median"] - 1) <= PARITY else
                    "vhdkit ahead" if r["median"] < 1 else "vhdkit behind")
            out.append(f"- **{w['name']}**: vhdkit vs {peer}: ×{r['median']:.2f} "
                       f"({r['min']:.2f}–{r['max']:.2f}), {word}")
    return out


_LOCAL_OPTIONS = ("--workdir", "--results")   # where files go on the measuring machine, not what was measured


def command_line(argv: list[str]) -> str:
    """The run's ``python -m bench …`` as a reader would retype it: the
    options that only name local directories are left out."""
    kept, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a in _LOCAL_OPTIONS:
            skip = True
        elif not a.startswith(tuple(o + "=" for o in _LOCAL_OPTIONS)):
            kept.append(a)
    return " ".join(["python -m bench", *kept])


def _readme_table(doc: dict) -> str:
    ran = [w for w in doc["workloads"] if not w.get("scaling") and w["status"] == "ok"]
    lines = [
        f"`{command_line(doc['meta']['argv'])}`",
        "",
        "| workload | input | tool | median s | min–max s | MB/s | peak RSS MiB | vhdkit / peer (median, min–max) |",
        "|---|---|---|---:|---:|---:|---:|---|",
    ]
    for w in ran:
        lines.extend(_rows(w))
    lines += ["", "Verdicts (pairs doing the same work; ratio < 1: vhdkit faster; within "
              f"±{PARITY:.0%}: parity):", ""] + verdicts({"workloads": ran})
    extras = [f"- {w['name']}: " + ", ".join(f"{k} = {_num(v)}" for k, v in w["extra"].items() if k != "note")
              for w in ran if w.get("extra")]
    if extras:
        lines += ["", "Derived figures:", ""] + extras
    return "\n".join(lines) + "\n"


def _num(v) -> str:
    if isinstance(v, float) and v.is_integer() and abs(v) >= 1000:
        return f"{int(v):,}"
    if isinstance(v, int) and abs(v) >= 1000:
        return f"{v:,}"
    if isinstance(v, float):
        return f"{v:.3f}"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{k}: {_num(x)}" for k, x in v.items()) + "}"
    return str(v)


def _rows(w: dict) -> list[str]:
    label = _input_label(w)
    if w["status"] != "ok" and not any(v.get("stats") for v in w["variants"]):
        return [f"| {w['name']} | {label} | — | — | — | — | — | {w['status']}: {w.get('reason', '')} |"]
    rows = []
    first = True
    for v in w["variants"]:
        st = v.get("stats")
        name = f"**{v['name']}**" if v["ours"] else v["name"] + (" (floor)" if v.get("floor") else "")
        head = f"{w['name']}" + ("" if w["status"] == "ok" else f" ({w['status']}: {w.get('reason', '')})")
        cell_w = head if first else ""
        cell_in = label if first else ""
        first = False
        if not st:
            rows.append(f"| {cell_w} | {cell_in} | {name} | — | — | — | — | {v.get('status', '')} |")
            continue
        ratio = ""
        if not v["ours"]:
            r = w["ratios"].get(v["name"])
            if r:
                ratio = f"{r['median']:.2f} ({r['min']:.2f}–{r['max']:.2f})"
        mbs = f"{st['mb_s']:.0f}" if st.get("mb_s") else "—"
        rows.append(f"| {cell_w} | {cell_in} | {name} | {_fmt_t(st['median'])} | "
                    f"{_fmt_t(st['min'])}–{_fmt_t(st['max'])} | {mbs} | {st['maxrss_mib']:.0f} | {ratio} |")
    return rows


def behind_list(doc: dict) -> list[str]:
    """Verdicts come only from pairs doing the same work: floors (less work
    than vhdkit) and in-process references are shown but never listed."""
    out = []
    for w in doc["workloads"]:
        if w.get("scaling"):
            continue
        floors = {v["name"] for v in w["variants"] if v.get("floor")}
        for peer, r in (w.get("ratios") or {}).items():
            if r and r["median"] > 1.0 and not peer.startswith("(ref)") and peer not in floors:
                out.append(f"{w['name']} vs {peer} ×{r['median']:.2f}")
    return out


# -- scaling ------------------------------------------------------------------------------

def fit(points: list[dict]) -> dict:
    """Least squares t = a + b·allocated_GiB + c·virtual_GiB, plus one-variable R²."""
    if len(points) < 3:
        return {"error": "fewer than 3 points"}
    t = np.array([p["t"] for p in points])
    al = np.array([p["alloc"] for p in points]) / 2**30
    vs = np.array([p["virt"] for p in points]) / 2**30

    def r2(cols) -> tuple:
        X = np.column_stack([np.ones_like(t)] + cols)
        coef, *_ = np.linalg.lstsq(X, t, rcond=None)
        res = t - X @ coef
        tot = ((t - t.mean()) ** 2).sum()
        return coef, (1 - (res ** 2).sum() / tot) if tot > 0 else 1.0
    (a, b, c), r2_both = r2([al, vs])
    _, r2_alloc = r2([al])
    _, r2_virt = r2([vs])
    tmax = t.max()
    alloc_part = b * al.max()
    virt_part = c * vs.max()
    big = max(alloc_part, virt_part, 0.0)
    if big < 0.2 * tmax:
        verdict = "flat: fixed cost dominates, grows with neither"
    elif virt_part > 0.25 * max(alloc_part, 1e-9) and r2_virt > r2_alloc:
        verdict = "grows with virtual size"
    elif alloc_part > 0 and virt_part <= 0.25 * alloc_part:
        verdict = "linear in allocated data, not in virtual size"
    else:
        verdict = "inconclusive (noise larger than the trend)"
    return {"a_s": a, "s_per_alloc_gib": b, "s_per_virtual_gib": c, "r2_both": r2_both,
            "r2_alloc_only": r2_alloc, "r2_virtual_only": r2_virt,
            "virtual_term_at_max_s": virt_part, "alloc_term_at_max_s": alloc_part, "verdict": verdict}


def scaling_points(doc: dict) -> dict:
    """{scale workload: {tool: [points]}} from the scaling results."""
    out: dict = {}
    for w in doc["workloads"]:
        if not w.get("scaling") or w["status"] != "ok":
            continue
        p = w["params"]
        for v in w["variants"]:
            if v.get("stats"):
                out.setdefault(w["scaling"], {}).setdefault(v["name"], []).append({
                    "t": v["stats"]["median"], "virt": p["virtual_size"], "alloc": p["alloc_bytes"],
                    "alloc_frac": p["alloc_frac"], "ours": v["ours"], "mb_s": v["stats"].get("mb_s"),
                    "rss": v["stats"]["maxrss_mib"]})
    return out


def scaling_markdown(doc: dict) -> str:
    lines = ["### Scaling (median wall time, s)", ""]
    sc = doc.get("scaling") or {}
    for name, tools in scaling_points(doc).items():
        tnames = list(tools)
        lines += [f"**{name}**", "", "| virtual | alloc | " + " | ".join(tnames) + " | vhdkit / " + tnames[-1] + " |",
                  "|---|---|" + "---:|" * len(tnames) + "---:|"]
        keys = sorted({(p["virt"], p["alloc_frac"]) for pts in tools.values() for p in pts})
        for k in keys:
            cells = []
            vals = {}
            for tn in tnames:
                pt = next((p for p in tools[tn] if (p["virt"], p["alloc_frac"]) == k), None)
                vals[tn] = pt["t"] if pt else None
                cells.append(_fmt_t(pt["t"]) if pt else "—")
            ratio = (vals[tnames[0]] / vals[tnames[-1]]) if len(tnames) > 1 and vals[tnames[0]] and vals[tnames[-1]] else None
            lines.append(f"| {_size(k[0])} | {k[1]:.0%} | " + " | ".join(cells) + f" | {ratio:.2f} |" if ratio
                         else f"| {_size(k[0])} | {k[1]:.0%} | " + " | ".join(cells) + " | — |")
        for tn in tnames:
            f = sc.get(name, {}).get(tn)
            if f and "verdict" in f:
                lines.append(f"\n{tn}: t ≈ {f['a_s']:.3g} s + {f['s_per_alloc_gib']:.3g} s/GiB allocated "
                             f"+ {f['s_per_virtual_gib']:.3g} s/GiB virtual (R² {f['r2_both']:.3f}; "
                             f"allocated-only R² {f['r2_alloc_only']:.3f}, virtual-only R² {f['r2_virtual_only']:.3f}) "
                             f"→ **{f['verdict']}**.")
        lines.append("")
    return "\n".join(lines)


# -- plot ---------------------------------------------------------------------------------

def plot_png(docs: list[dict], path: Path) -> Optional[Path]:
    """Throughput (MB/s of virtual disk) against virtual size, one panel per workload,
    vhdkit in bold beside its peers.  ``docs``: this run's result (several sizes allowed)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series: dict = {}   # panel -> tool -> [(x, y)]
    colours: dict = {}  # panel -> key -> None (insertion order gives the colour index)
    for doc in docs:
        for w in doc["workloads"]:
            p = w.get("params") or {}
            x = p.get("virtual_size") or p.get("file_bytes")
            if not x:
                continue
            panel = w["name"] if not w.get("scaling") else f"{w['scaling']} (scaling)"
            for v in w["variants"]:
                st = v.get("stats")
                if not st or not st.get("mb_s"):
                    continue
                label = v["name"] + (f" @{p['alloc_frac']:.0%}" if w.get("scaling") else "")
                series.setdefault(panel, {}).setdefault((label, v["ours"]), []).append((x, st["mb_s"]))
                colours.setdefault(panel, {}).setdefault(
                    f"{p['alloc_frac']:.0%}" if w.get("scaling") else v["name"], None)
    if not series:
        return None
    n = len(series)
    cols = min(3, n)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5.2 * cols, 3.8 * rows), squeeze=False)
    for ax, (panel, tools) in zip(axes.flat, series.items()):
        xs_all = {x for pts in tools.values() for x, _ in pts}
        ordered = sorted(tools.items(), key=lambda kv: (not kv[0][1], kv[0][0]))
        if len(xs_all) == 1:   # one size: bars, vhdkit first and darker
            names = [label for (label, _), _ in ordered]
            vals = [pts[0][1] for _, pts in ordered]
            cols = ["C0" if ours else "0.65" for (_, ours), _ in ordered]
            ax.bar(range(len(vals)), vals, color=cols)
            ax.set_xticks(range(len(vals)))
            ax.set_xticklabels(names, rotation=20, ha="right", fontsize=7)
            ax.set_title(f"{panel} ({next(iter(xs_all)) / 2**30:g} GiB)", fontsize=10)
            ax.set_ylabel("MB/s")
            ax.grid(True, axis="y", alpha=0.3)
            continue
        for (label, ours), pts in ordered:
            pts.sort()
            xs = [a / 2**30 for a, _ in pts]
            ys = [b for _, b in pts]
            key = label.rsplit(" @", 1)[1] if " @" in label and panel.endswith("(scaling)") else label
            idx = list(colours[panel]).index(key) if key in colours[panel] else 0
            ax.plot(xs, ys, marker="o" if ours else "s", linewidth=2.5 if ours else 1.2, color=f"C{idx % 10}",
                    linestyle="-" if ours else "--", label=label)
        ax.set_title(panel, fontsize=10)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("virtual size (GiB)")
        ax.set_ylabel("MB/s")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def write_all(doc: dict, results_dir: Path, stem: str, plot: bool = True) -> dict:
    do_plot = plot
    results_dir.mkdir(parents=True, exist_ok=True)
    paths = {"json": results_dir / f"{stem}.json", "md": results_dir / f"{stem}.md"}
    paths["json"].write_text(json.dumps(doc, indent=1, default=str) + "\n")
    paths["md"].write_text(markdown(doc))
    if not do_plot:
        return paths
    try:
        png = plot_png([doc], results_dir / f"{stem}.png")
        if png:
            paths["png"] = png
    except Exception as e:  # matplotlib missing or broken: the numbers still stand
        doc["meta"]["plot_error"] = f"{type(e).__name__}: {e}"
    return paths
