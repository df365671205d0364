"""`evilbench store check`: the store's integrity.

SQLite's own page-level check and foreign keys, then per run: the stored bundle decompresses, its
content hash equals the one recorded when it was written, and the rows of every table (metrics,
spectra, evaluations, samples) are exactly the bundle's — none lost, none duplicated, none orphaned."""
from __future__ import annotations

import json
import zlib

from evilbench.store.db import Store, content_sha256


def check_store(store: Store) -> dict:
    """{"ok": bool, "problems": [str], "runs": n, "counts": {...}}."""
    con = store._con
    problems: list[str] = []
    res = [r[0] for r in con.execute("PRAGMA integrity_check")]
    if res != ["ok"]:
        problems += [f"sqlite integrity_check: {r}" for r in res]
    for table, rowid, parent, _fk in con.execute("PRAGMA foreign_key_check"):
        problems.append(f"{table} row {rowid} references a missing {parent} row")
    runs = dict(con.execute("SELECT run_key, content_sha256 FROM runs"))
    bundles = {k for (k,) in con.execute("SELECT run_key FROM bundles")}
    for k in sorted(set(runs) - bundles):
        problems.append(f"run {k}: no stored bundle")
    for k in sorted(bundles - set(runs)):
        problems.append(f"bundle {k}: no run row")

    def count(sql, key):
        return con.execute(sql, (key,)).fetchone()[0]

    for key, blob in con.execute("SELECT run_key, bundle_zlib FROM bundles").fetchall():
        try:
            b = json.loads(zlib.decompress(blob))
        except (zlib.error, ValueError) as e:
            problems.append(f"run {key}: stored bundle unreadable ({e})")
            continue
        if b.get("run_key") != key:
            problems.append(f"run {key}: stored bundle has run_key {b.get('run_key')!r}")
        if key in runs and content_sha256(b) != runs[key]:
            problems.append(f"run {key}: content hash differs from the one recorded at write time")
        expect = {"metrics": len(b.get("metrics", [])), "spectra": len(b.get("spectra", [])),
                  "evals": len(b.get("evals", [])),
                  "samples": sum(len(e.get("samples", [])) for e in b.get("evals", []))}
        got = {"metrics": count("SELECT count(*) FROM metrics WHERE run_key=?", key),
               "spectra": count("SELECT count(*) FROM spectra WHERE run_key=?", key),
               "evals": count("SELECT count(*) FROM evals WHERE run_key=?", key),
               "samples": count("SELECT count(*) FROM samples s JOIN evals e ON s.eval_id=e.eval_id "
                                "WHERE e.run_key=?", key)}
        for t, n in expect.items():
            if n != got[t]:
                problems.append(f"run {key}: {got[t]} {t} rows, the bundle has {n}")
        for eid, n in con.execute("SELECT eval_id, n_samples FROM evals WHERE run_key=?", (key,)).fetchall():
            have = con.execute("SELECT count(*) FROM samples WHERE eval_id=?", (eid,)).fetchone()[0]
            if have != n:
                problems.append(f"run {key}: evaluation {eid} has {have} samples, recorded {n}")
    orphans = con.execute("SELECT count(*) FROM samples WHERE eval_id NOT IN (SELECT eval_id FROM evals)").fetchone()[0]
    if orphans:
        problems.append(f"{orphans} sample rows belong to no evaluation")
    for t in ("metrics", "spectra", "evals", "configs"):
        n = con.execute(f"SELECT count(*) FROM {t} WHERE run_key NOT IN (SELECT run_key FROM runs)").fetchone()[0]
        if n:
            problems.append(f"{n} {t} rows belong to no run")
    return {"ok": not problems, "problems": problems, "runs": len(runs), "counts": store.counts(),
            "schema_version": store.schema_version}
