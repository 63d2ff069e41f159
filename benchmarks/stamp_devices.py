"""Stamp a cell's sample records with the machine that decoded them, read from git history.

    python benchmarks/stamp_devices.py results/qwen2.5-coder-1.5b/svamp/sc@10.json [...] [--dry-run]

Records written before the runner named each record's ``device`` carry none. At report time
a cell that ran on one machine lends them its only machine, but a cell resumed on another
machine cannot, and its time ratios would then pair problems decoded on different CPUs. This
walks the commits that touched the cell, oldest first: the records a commit adds were decoded
by the machine its cell JSON lists alone, or else by the one machine that commit added to the
list. Records no commit settles that way stay unstamped (the report leaves them out of time
ratios); records that already name a device are left as they are unless ``--replace``, which
trusts the history over them (wrong only if one commit holds runs from two machines).
A record is its doc id, finish time and settings hash, so another cell once kept at the same
path (a superseded preset's) lends nothing to today's.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import subprocess
import sys
from pathlib import Path

from lm_eval_softreason.bench import records


def _git(*args: str, binary: bool = False) -> bytes | str:
    out = subprocess.run(["git", *args], check=True, capture_output=True).stdout
    return out if binary else out.decode()


def _at(commit: str, path: str) -> bytes | None:
    try:
        return _git("show", f"{commit}:{path}", binary=True)
    except subprocess.CalledProcessError:  # not in that commit
        return None


def _key(record: dict) -> tuple:
    """A record's identity: a rerun of the same problem (another preset's cell once kept at
    this path, say) is another record, decoded perhaps on another machine."""
    return int(record["doc_id"]), record.get("finished"), record.get("settings_hash")


def _keys(raw: bytes | None, gz: bool) -> set[tuple]:
    if raw is None:
        return set()
    text = (gzip.decompress(raw) if gz else raw).decode("utf-8")
    return {_key(json.loads(line)) for line in text.splitlines() if line.strip()}


def attribute(cell_json: Path) -> dict[tuple, dict]:
    """{record key: device} for the records whose machine the cell's git history settles."""
    root = Path(_git("rev-parse", "--show-toplevel").strip())
    paths = records.samples_paths_for(cell_json.resolve())
    rel = [str(p.relative_to(root)) for p in (paths.json, paths.samples, paths.samples_gz)]
    commits = _git("log", "--reverse", "--format=%H", "--", *rel).split()
    found: dict[tuple, dict] = {}
    seen_ids: set[tuple] = set()
    seen_devices: list[dict] = []
    for commit in commits:
        raw_cell = _at(commit, rel[0])
        if raw_cell is None:  # moved away: a cell later at this path starts afresh
            seen_devices = []
            continue
        machines = records.devices(json.loads(raw_cell).get("provenance") or {})
        ids = _keys(_at(commit, rel[1]), False) | _keys(_at(commit, rel[2]), True)
        added = [d for d in machines if d not in seen_devices]
        machine = machines[0] if len(machines) == 1 else added[0] if len(added) == 1 else None
        for key in ids - seen_ids:
            if machine is not None:
                found[key] = machine
        seen_ids |= ids
        seen_devices = machines
    return found


def stamp(cell_json: Path, dry_run: bool = False, replace: bool = False) -> tuple[int, int]:
    """Write the settled devices into the cell's samples file; (stamped, still unknown).
    ``replace``: also overwrite a device the history settles otherwise (a wrong earlier
    stamp); a record it does not settle keeps its own."""
    paths = records.samples_paths_for(cell_json)
    source = paths.existing_samples()
    if source is None:
        raise SystemExit(f"no samples file for {cell_json}")
    gz = source.suffix == ".gz"
    text = (gzip.decompress(source.read_bytes()) if gz else source.read_bytes()).decode("utf-8")
    lines = [json.loads(line) for line in text.splitlines() if line.strip()]
    settled = attribute(cell_json)
    stamped = unknown = 0
    for record in lines:
        settled_device = settled.get(_key(record))
        if record.get("device") and (not replace or settled_device in (None, record["device"])):
            continue
        if settled_device is not None:
            record["device"] = settled_device
            stamped += 1
        else:
            unknown += 1
    if stamped and not dry_run:
        data = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in lines).encode("utf-8")
        tmp = source.with_name(source.name + ".tmp")
        tmp.write_bytes(gzip.compress(data, mtime=0) if gz else data)
        os.replace(tmp, source)  # atomic: a killed run leaves the old file, not half of one
    return stamped, unknown


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("cells", nargs="+", type=Path,
                    help="cell JSON files (results/<model>/<task>/<method>.json)")
    ap.add_argument("--dry-run", action="store_true", help="count, write nothing")
    ap.add_argument("--replace", action="store_true",
                    help="overwrite a record's device where the history settles another")
    args = ap.parse_args()
    for cell in args.cells:
        if not cell.is_file():
            sys.exit(f"no cell JSON at {cell}")
        stamped, unknown = stamp(cell, args.dry_run, args.replace)
        print(f"{cell}: {stamped} records stamped, {unknown} left without a device")


if __name__ == "__main__":
    main()
