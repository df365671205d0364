"""Merge pytest-benchmark runs into bench/results/<machine>.json and (re)generate bench/results/<machine>.md.

  python -m bench.report RUN.json [RUN.json ...] [--machine NAME] [--label TEXT] [--markdown OUT.md] [--no-merge]
  python -m bench.report --render          # regenerate every bench/results/<machine>.md from its JSON

One results file per machine holds everything measured there:
  groups    group ("<suite>/<set>") -> impl -> the newest numbers (median/min/mean, rounds, extra_info);
  runs      every merged run in full (source, date, label, load average, machine, each benchmark's
            extra_info and complete stats including the per-round times), oldest first;
  accuracy  bench/accuracy.py's error table; other: measurements that are not pytest-benchmark
            runs (keyed by name); notes: prose on how and under which conditions runs were taken.
The markdown file is generated from the JSON (never edit it by hand): per group every impl's median
and the speed-up of "ours" against it; with a device copy benchmark (group "memcpy/*" or
"*/bandwidth", impl "copy") and extra_info["bytes"], the HBM floor and how close "ours" gets to it.
Benchmarks that time a subset and record extra_info["scaled_to_set_s"] are tabulated at that value.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import re
import sys
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def machine_name(run: dict) -> str:
    devices = [b.get("extra_info", {}).get("device", "") for b in run.get("benchmarks", [])]
    gpu = next((d for d in devices if d and not d.startswith("cpu")), None)
    if gpu:
        return "-".join(slug(gpu).split("-")[:2])  # "NVIDIA H100 80GB HBM3" -> "nvidia-h100"
    threads = next((b["extra_info"].get("threads") for b in run.get("benchmarks", [])
                    if "threads" in b.get("extra_info", {})), None)
    cpu = run.get("machine_info", {}).get("cpu", {})
    brand = cpu.get("brand_raw") or cpu.get("brand") or run.get("machine_info", {}).get("processor") or "unknown"
    return f"cpu-{threads or 'n'}t-{slug(brand)}"


def collect(run: dict) -> dict:
    """group -> impl -> numbers (the newest-numbers view of one run)."""
    groups: dict = {}
    for b in run.get("benchmarks", []):
        info = b.get("extra_info", {})
        impl = info.get("impl", b.get("name"))
        stats = b["stats"]
        groups.setdefault(b["group"] or b["name"], {})[impl] = {
            "median_s": info.get("scaled_to_set_s", stats["median"]),
            "min_s": stats["min"],
            "mean_s": stats["mean"],
            "rounds": stats["rounds"],
            **{k: v for k, v in info.items() if k != "impl"},
        }
    return groups


def run_record(run: dict, source: str, label: str | None = None, load: list | None = None) -> dict:
    """One run in full, as stored under "runs"."""
    mi = run.get("machine_info", {})
    cpu = mi.get("cpu", {})
    rec = {
        "source": source,
        "datetime": run.get("datetime"),
        "machine": {"node": mi.get("node"), "cpu": cpu.get("brand_raw"), "cores": cpu.get("count"),
                    "python": mi.get("python_version")},
        "commit": {k: run.get("commit_info", {}).get(k) for k in ("id", "dirty", "branch")},
        "benchmarks": [
            {"group": b.get("group"), "name": b.get("name"), "extra_info": b.get("extra_info", {}), "stats": b["stats"]}
            for b in run.get("benchmarks", [])
        ],
    }
    if label:
        rec["label"] = label
    if load:
        rec["load_average"] = load
    return rec


def copy_bandwidth(groups: dict) -> float | None:
    for name, impls in groups.items():
        if (name.startswith("memcpy/") or name.endswith("/bandwidth")) and impls.get("copy", {}).get("bytes"):
            return impls["copy"]["bytes"] / impls["copy"]["median_s"]
    return None


def fmt_time(s: float) -> str:
    if s < 1e-3:
        return f"{s * 1e6:.1f} µs"
    return f"{s * 1e3:.3f} ms" if s < 1 else f"{s:.2f} s"


def tables(groups: dict, bandwidth: float | None) -> list[str]:
    lines = []
    if bandwidth:
        lines += [f"device copy bandwidth: {bandwidth / 1e9:.0f} GB/s (read + write bytes / time)", ""]
    for name in sorted(groups):
        impls = groups[name]
        if name.startswith("memcpy/") or name.endswith("/bandwidth"):
            continue
        ours = impls.get("ours")
        lines.append(f"### {name}")
        head = "| impl | median | ours is faster by |"
        sep = "|---|---:|---:|"
        nbytes = (ours or {}).get("bytes")
        if bandwidth and nbytes:
            head += " % of HBM floor |"
            sep += "---:|"
        lines += [head, sep]
        order = ["ours"] + sorted(k for k in impls if k != "ours")
        for impl in order:
            if impl not in impls:
                continue
            med = impls[impl]["median_s"]
            speed = "—" if impl == "ours" or not ours else f"{med / ours['median_s']:.1f}x"
            row = f"| {impl} | {fmt_time(med)} | {speed} |"
            if bandwidth and nbytes:
                floor = nbytes / bandwidth
                row += f" {100 * floor / med:.0f}% |"
            lines.append(row)
        if bandwidth and nbytes and ours:
            floor = nbytes / bandwidth
            mine = ", ".join(f"{k} = {v['median_s'] / floor:.2f}x"
                             for k, v in sorted(impls.items()) if k.startswith("ours"))
            lines.append(
                f"\nHBM floor (2 reads + 1 write, {nbytes / 1e6:.0f} MB at {bandwidth / 1e9:.0f} GB/s): "
                f"{fmt_time(floor)}; {mine} the floor"
            )
        lines.append("")
    return lines


def load_results(machine: str) -> dict:
    path = RESULTS / f"{machine}.json"
    if path.exists():
        return json.loads(path.read_text())
    return {"machine": machine, "groups": {}, "runs": []}


def merge(machine: str, groups: dict, bandwidth: float | None, extra: dict | None = None,
          record: dict | None = None) -> Path:
    """Fold one run (its newest-numbers view, its full record, extra keys) into the machine's
    results file and regenerate the machine's markdown table."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{machine}.json"
    data = load_results(machine)
    stamp = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    for name, impls in groups.items():
        entry = data["groups"].setdefault(name, {"impls": {}})
        entry["impls"].update(impls)
        entry["updated"] = (record or {}).get("datetime") or stamp
    if bandwidth:
        data["copy_bandwidth_Bps"] = bandwidth
    if record:
        data.setdefault("runs", []).append(record)
        data["runs"].sort(key=lambda r: r.get("datetime") or "")
    if extra:
        for key, value in extra.items():
            if isinstance(value, dict) and isinstance(data.get(key), dict):
                data[key].update(value)
            else:
                data[key] = value
    path.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
    (RESULTS / f"{machine}.md").write_text(render(data))
    return path


def render(data: dict) -> str:
    """The generated markdown of one machine's results file."""
    groups = {name: entry["impls"] for name, entry in data.get("groups", {}).items()}
    bandwidth = data.get("copy_bandwidth_Bps")
    lines = [
        f"# Benchmark results: {data.get('machine', '?')}",
        "",
        f"Generated by `python -m bench.report --render` from `bench/results/{data.get('machine')}.json`; "
        "edit the JSON (or merge a run), not this file.",
        "",
        "## Newest numbers per group",
        "",
    ]
    lines += tables(groups, bandwidth)
    acc = data.get("accuracy")
    if acc:
        lines += ["## Accuracy (bench/accuracy.py): max |out − ref| / max |ref| against the float64 iteration", ""]
        meta = {k: v for k, v in acc.items() if not isinstance(v, float)}
        if meta:
            lines += ["; ".join(f"{k}: {v}" for k, v in sorted(meta.items())), ""]
        lines += ["| inputs | dtype | impl | error |", "|---|---|---|---:|"]
        for key, err in sorted((k, v) for k, v in acc.items() if isinstance(v, float)):
            set_name, dname, impl = key.rsplit(" ", 2)
            lines.append(f"| {set_name} | {dname} | {impl} | {err:.2e} |")
        lines.append("")
    runs = data.get("runs", [])
    if runs:
        lines += ["## Every run (median per benchmark)", ""]
        for r in runs:
            head = f"### {r.get('datetime') or '?'} — {r.get('source', '?')}"
            lines.append(head)
            bits = []
            if r.get("label"):
                bits.append(r["label"])
            if r.get("commit", {}).get("id"):
                bits.append(f"commit {r['commit']['id'][:7]}{' (dirty)' if r['commit'].get('dirty') else ''}")
            if r.get("load_average"):
                bits.append("load average " + ", ".join(f"{x:.2f}" for x in r["load_average"]))
            if bits:
                lines += ["", "; ".join(bits)]
            lines += ["", "| group | impl | median | rounds |", "|---|---|---:|---:|"]
            for b in r.get("benchmarks", []):
                info = b.get("extra_info", {})
                med = info.get("scaled_to_set_s", b["stats"]["median"])
                lines.append(f"| {b.get('group')} | {info.get('impl', b.get('name'))} | {fmt_time(med)} "
                             f"| {b['stats']['rounds']} |")
            lines.append("")
    other = data.get("other", {})
    if other:
        lines += ["## Other measurements", ""]
        for name in sorted(other):
            value = other[name]
            lines.append(f"### {name}")
            lines.append("")
            if isinstance(value, str):
                lines += ["```", value.rstrip(), "```"]
            else:
                lines += ["```json", json.dumps(value, indent=1, sort_keys=True), "```"]
            lines.append("")
    notes = data.get("notes", {})
    if notes:
        lines += ["## Notes", ""]
        for name in sorted(notes):
            lines += [notes[name].rstrip(), ""]
    return "\n".join(lines).rstrip() + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("runs", nargs="*", type=Path, help="pytest-benchmark JSON file(s) (--benchmark-json)")
    ap.add_argument("--machine", help="results file name (default: derived from the device)")
    ap.add_argument("--markdown", type=Path, help="also write the tables of these runs to this markdown file")
    ap.add_argument("--no-merge", action="store_true", help="print only; do not touch bench/results/")
    ap.add_argument("--label", help="stored with every merged entry (e.g. the commit the kernels came from)")
    ap.add_argument("--render", action="store_true", help="regenerate bench/results/*.md from the JSON files")
    args = ap.parse_args(argv)
    if args.render:
        for path in sorted(RESULTS.glob("*.json")):
            path.with_suffix(".md").write_text(render(json.loads(path.read_text())))
            print(f"wrote {path.with_suffix('.md')}")
    out = []
    for path in args.runs:
        run = json.loads(path.read_text())
        groups = collect(run)
        if args.label:
            for impls in groups.values():
                for entry in impls.values():
                    entry["label"] = args.label
        if not groups:
            print(f"{path}: no benchmarks", file=sys.stderr)
            continue
        machine = args.machine or machine_name(run)
        bandwidth = copy_bandwidth(groups)
        lines = [f"## {machine} ({run.get('datetime', '')})", ""] + tables(groups, bandwidth)
        print("\n".join(lines))
        out += lines
        if not args.no_merge:
            record = run_record(run, path.name, args.label)
            print(f"merged into {merge(machine, groups, bandwidth, record=record)}")
    if args.markdown:
        args.markdown.write_text("\n".join(out) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
