"""Ratio table (markdown) from a pytest-benchmark JSON of bench/bench_spectral.py.

    python bench/spectral_table.py results.json [--out table.md]

Per set: time of each implementation (dense SVD: one measured layer × layers), speed-up of ours
over it, and — when the JSON has a copy-bandwidth entry (GPU runs) — ours against the floor
(bytes / copy bandwidth).
"""
from __future__ import annotations

import argparse
import json
from collections import defaultdict


def build_table(data: dict) -> str:
    groups = defaultdict(list)
    bandwidth = None
    for b in data["benchmarks"]:
        info = b.get("extra_info", {})
        if b.get("group") == "spectral/bandwidth":
            bandwidth = info["bytes"] / b["stats"]["median"]
            continue
        if not str(b.get("group", "")).startswith("spectral/"):
            continue
        t = info.get("scaled_to_set_s", b["stats"]["median"])
        groups[(b["group"], info.get("device", "?"), info.get("dtype", "?"))].append((info, t, b))
    lines, detail = [], []
    dev_names = sorted({k[1] for k in groups})
    lines.append(f"Devices: {', '.join(dev_names)}" + (f"; copy bandwidth {bandwidth / 1e9:.0f} GB/s" if bandwidth else ""))
    lines.append("")
    lines.append("| set | device | dtype | impl | adapters timed | time (ms) | ours is × faster | vs floor | rel err value | rel err grad | kernels fwd+bwd (ms) | kernels vs floor |")
    lines.append("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for (group, dev, dtype), rows in sorted(groups.items()):
        ours = [t for info, t, _ in rows if info.get("impl") == "ours"]
        t_ours = ours[0] if ours else None
        for info, t, b in sorted(rows, key=lambda x: x[1]):
            speed = f"{t / t_ours:.1f}" if t_ours and info.get("impl") != "ours" else ""
            floor = ""
            if bandwidth and info.get("bytes"):
                floor = f"{t / (info['bytes'] / bandwidth):.2f}× floor"
            timed = str(info.get("n_adapters", ""))
            if "scale" in info:
                timed += f" (×{info['scale']} layers)"
            ev, eg = info.get("rel_err_value"), info.get("rel_err_grad")
            kt = info.get("op_forward_backward_s")
            kfloor = f"{kt / (info['bytes'] / bandwidth):.2f}× floor" if kt and bandwidth else ""
            lines.append(
                f"| {group.split('/', 1)[1]} | {dev} | {dtype} | {info.get('impl')} | {timed} | {1e3 * t:.2f} | {speed} | "
                f"{floor} | {'' if ev is None else f'{ev:.1e}'} | {'' if eg is None else f'{eg:.1e}'} | "
                f"{'' if kt is None else f'{1e3 * kt:.3f}'} | {kfloor} |"
            )
            ops = {k[3:-2]: v for k, v in info.items() if k.startswith("op_") and k != "op_forward_backward_s"}
            if ops:
                detail.append(f"{group.split('/', 1)[1]} {dtype}: " + ", ".join(f"{k} {1e3 * v:.3f} ms" for k, v in ops.items()))
    if detail:
        lines += ["", "Registered ops called back to back (kernel time on CUDA):", ""] + [f"- {d}" for d in detail]
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("json")
    ap.add_argument("--out")
    args = ap.parse_args()
    with open(args.json) as f:
        table = build_table(json.load(f))
    print(table)
    if args.out:
        with open(args.out, "w") as f:
            f.write(table + "\n")


if __name__ == "__main__":
    main()
