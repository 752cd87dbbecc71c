#!/usr/bin/env python3
"""Turns bench/bench.sh's raw samples into a report: a table of medians with
min-max and the Ferry/peer ratio per workload and metric, printed and written
as markdown and JSON, plus one PNG chart of the ratios (gnuplot).

    bench/report.py SAMPLES_FILE RESULTS_DIR [NAME]

NAME (default latest) names the outputs: NAME.md, NAME.json, NAME.png.
"""
import json
import statistics
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

# ferry-distro: `ferry run` with a distribution kernel (the run workload).
SYSTEMS = ["ferry", "ferry-dax", "ferry-distro", "peer"]
# Metrics where more is better; for all others (ms, seconds, MiB) less is.
HIGHER_IS_BETTER = ("-mbps", "-iops")


def higher_is_better(metric):
    return metric.endswith(HIGHER_IS_BETTER)


def load(path):
    meta, samples = {}, defaultdict(list)
    for line in Path(path).read_text(errors="replace").splitlines():
        words = line.strip().split()
        if len(words) >= 2 and words[0] == "meta":
            meta[words[1]] = " ".join(words[2:])
        elif len(words) == 5 and words[0] == "sample":
            _, workload, system, metric, value = words
            try:
                samples[(workload, metric, system)].append(float(value))
            except ValueError:
                pass
    return meta, samples


def summarize(samples):
    rows = []
    keys = sorted({(w, m) for (w, m, _) in samples}, key=lambda k: (order(k[0]), k[1]))
    for workload, metric in keys:
        row = {"workload": workload, "metric": metric,
               "better": "higher" if higher_is_better(metric) else "lower"}
        for system in SYSTEMS:
            values = samples.get((workload, metric, system))
            if values:
                row[system] = {"median": statistics.median(values), "min": min(values),
                               "max": max(values), "n": len(values)}
        peer = row.get("peer", {}).get("median")
        for system in ("ferry", "ferry-dax", "ferry-distro"):
            mine = row.get(system, {}).get("median")
            if mine is not None and peer:
                row[f"{system}/peer"] = mine / peer
                # > 1 means Ferry does better, whichever way the metric points.
                row[f"{system} advantage"] = (mine / peer if higher_is_better(metric)
                                              else (peer / mine if mine else None))
        rows.append(row)
    return rows


WORKLOAD_ORDER = [
    "boot", "seqread", "randread", "write", "mmap", "smallfiles", "walk", "run",
    "net-tx", "net-rx", "net-rr",
]


def order(workload):
    return WORKLOAD_ORDER.index(workload) if workload in WORKLOAD_ORDER else len(WORKLOAD_ORDER)


def fmt(v):
    if v is None:
        return ""
    return f"{v:.0f}" if abs(v) >= 100 else f"{v:.3g}"


def cell(stat):
    if not stat:
        return "–"
    return f"{fmt(stat['median'])} ({fmt(stat['min'])}–{fmt(stat['max'])})"


def ratio(v):
    return f"{v:.2f}" if v is not None else "–"


def markdown(meta, rows):
    out = []
    out.append(f"Ferry vs its peer (QEMU + virtiofsd; QEMU + passt for net-*), {meta.get('date', '?')}: {meta.get('host', '?')}; "
               f"KVM mode {meta.get('mode', '?')}; {meta.get('rounds', '?')} rounds, "
               f"alternating; guest {meta.get('guest', '?')}; ferry {meta.get('ferry', '?')}; "
               f"peer {meta.get('peer', '?')}.")
    if meta.get("note"):
        out.append("")
        out.append(f"Note: {meta['note']}.")
    out.append("")
    out.append("Median (min–max). ferry/peer is the plain ratio of medians; "
               "\"better\" says which way the metric improves.")
    out.append("")
    out.append("ferry distro is `ferry run` with a distribution kernel from /boot "
               "(the run workload only); the peer keeps the project kernel.")
    out.append("")
    out.append("| workload | metric | better | ferry | ferry DAX | ferry distro "
               "| peer | ferry/peer | DAX/peer | distro/peer |")
    out.append("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        out.append(f"| {r['workload']} | {r['metric']} | {r['better']} | {cell(r.get('ferry'))} "
                   f"| {cell(r.get('ferry-dax'))} | {cell(r.get('ferry-distro'))} "
                   f"| {cell(r.get('peer'))} | {ratio(r.get('ferry/peer'))} "
                   f"| {ratio(r.get('ferry-dax/peer'))} | {ratio(r.get('ferry-distro/peer'))} |")
    return "\n".join(out) + "\n"


def chart(rows, results, name):
    """One bar per workload metric: Ferry's advantage (> 1: Ferry better)."""
    data = results / f"{name}-chart.dat"
    lines = []
    for r in rows:
        # Boot and run are timed from the host; the others inside the
        # guest, where their host-side wall time is mostly boot.
        host_timed = r["workload"] in ("boot", "run")
        if host_timed != (r["metric"] in ("wall-ms", "vmm-cpu-s", "vmm-rss-mib")):
            continue
        for system, key in (("ferry", "ferry advantage"), ("ferry-dax", "ferry-dax advantage")):
            v = r.get(key)
            if v:
                label = f"{r['workload']} {r['metric']}" + (" (DAX)" if system == "ferry-dax" else "")
                lines.append(f"\"{label}\" {v:.4f}")
    data.write_text("\n".join(lines) + "\n")
    script = f"""
set terminal pngcairo size 1200,{200 + 28 * len(lines)} font ",10"
set output "{results / f'{name}.png'}"
set title "Ferry vs its peer (QEMU + virtiofsd / passt): Ferry's advantage (median ratio, > 1 = Ferry better)"
set style fill solid 0.8
set boxwidth 0.7
set xtics rotate by -45
set bmargin 14
set grid ytics
set logscale y 2
set yrange [0.1:*]
plot "{data}" using 0:2:xtic(1) with boxes notitle, 1 with lines lw 2 notitle
"""
    try:
        subprocess.run(["gnuplot"], input=script, text=True, check=True)
        return True
    except (OSError, subprocess.CalledProcessError) as e:
        print(f"[report] no chart: gnuplot failed ({e})", file=sys.stderr)
        return False


def main():
    samples_file, results = sys.argv[1], Path(sys.argv[2])
    name = sys.argv[3] if len(sys.argv) > 3 else "latest"
    meta, samples = load(samples_file)
    if not samples:
        sys.exit(f"[report] no samples in {samples_file}")
    rows = summarize(samples)
    md = markdown(meta, rows)
    (results / f"{name}.md").write_text(md)
    (results / f"{name}.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    drew = chart(rows, results, name)
    print()
    print(md)
    print(f"[report] {results}/{name}.md, {name}.json" + (f", {name}.png" if drew else ""))


if __name__ == "__main__":
    main()
