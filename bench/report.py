"""Print the speed-up tables of a pytest-benchmark JSON and merge it into bench/results/<machine>.json.

  python bench/report.py RUN.json [--machine NAME] [--markdown OUT.md] [--no-merge]

Per group ("<suite>/<set>"): every impl's median time and the speed-up of "ours" against it; when
the run also holds a device copy benchmark (group "memcpy/*", impl "copy") and a group declares
extra_info["bytes"], the HBM floor (bytes / copy bandwidth) and how close "ours" gets to it.
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
    threads = next((b["extra_info"].get("threads") for b in run.get("benchmarks", []) if "threads" in b.get("extra_info", {})), None)
    cpu = run.get("machine_info", {}).get("cpu", {})
    brand = cpu.get("brand_raw") or cpu.get("brand") or run.get("machine_info", {}).get("processor") or "unknown"
    return f"cpu-{threads or 'n'}t-{slug(brand)}"


def collect(run: dict) -> dict:
    """group -> impl -> numbers."""
    groups: dict = {}
    for b in run.get("benchmarks", []):
        info = b.get("extra_info", {})
        impl = info.get("impl", b.get("name"))
        stats = b["stats"]
        groups.setdefault(b["group"] or b["name"], {})[impl] = {
            "median_s": stats["median"],
            "min_s": stats["min"],
            "mean_s": stats["mean"],
            "rounds": stats["rounds"],
            **{k: v for k, v in info.items() if k != "impl"},
        }
    return groups


def copy_bandwidth(groups: dict) -> float | None:
    for name, impls in groups.items():
        if name.startswith("memcpy/") and "copy" in impls and impls["copy"].get("bytes"):
            return impls["copy"]["bytes"] / impls["copy"]["median_s"]
    return None


def fmt_time(s: float) -> str:
    return f"{s * 1e3:.3f} ms" if s < 1 else f"{s:.2f} s"


def tables(groups: dict, bandwidth: float | None) -> list[str]:
    lines = []
    if bandwidth:
        lines += [f"device copy bandwidth: {bandwidth / 1e9:.0f} GB/s (read + write bytes / time)", ""]
    for name in sorted(groups):
        impls = groups[name]
        if name.startswith("memcpy/"):
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
            mine = ", ".join(f"{k} = {v['median_s'] / floor:.2f}x" for k, v in sorted(impls.items()) if k.startswith("ours"))
            lines.append(
                f"\nHBM floor (2 reads + 1 write, {nbytes / 1e6:.0f} MB at {bandwidth / 1e9:.0f} GB/s): "
                f"{fmt_time(floor)}; {mine} the floor"
            )
        lines.append("")
    return lines


def merge(machine: str, groups: dict, bandwidth: float | None, extra: dict | None = None) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{machine}.json"
    data = json.loads(path.read_text()) if path.exists() else {"machine": machine, "groups": {}}
    stamp = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    for name, impls in groups.items():
        entry = data["groups"].setdefault(name, {"impls": {}})
        entry["impls"].update(impls)
        entry["updated"] = stamp
    if bandwidth:
        data["copy_bandwidth_Bps"] = bandwidth
    if extra:
        for key, value in extra.items():
            if isinstance(value, dict) and isinstance(data.get(key), dict):
                data[key].update(value)
            else:
                data[key] = value
    path.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
    return path


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("runs", nargs="+", type=Path, help="pytest-benchmark JSON file(s) (--benchmark-json)")
    ap.add_argument("--machine", help="results file name (default: derived from the device)")
    ap.add_argument("--markdown", type=Path, help="also write the tables to this markdown file")
    ap.add_argument("--no-merge", action="store_true", help="print only; do not touch bench/results/")
    ap.add_argument("--label", help="stored with every merged entry (e.g. the commit the kernels came from)")
    args = ap.parse_args(argv)
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
            print(f"merged into {merge(machine, groups, bandwidth)}")
    if args.markdown:
        args.markdown.write_text("\n".join(out) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
