"""Keep runs in archive/: copy the results store's records into a snapshot folder, gzip-compressed
(<key>/record.json.gz; the store and every analysis script read them as they are), or pack a snapshot's
plain records in place. A snapshot is a results store: `--store archive/<snapshot>` reads it, and
`cp -rn archive/<snapshot>/* results/store/` lets a sweep skip its points.

  python -m experiments.archive archive/2026-12-02-cpu-tables-6 --since 2026-12-02T00:27
  python -m experiments.archive archive/2026-11-27-cpu --pack
"""

from __future__ import annotations

import argparse
from pathlib import Path

from astro.results import ResultStore, archive_records, pack_records


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("snapshot", type=Path, help="the archive folder, e.g. archive/2026-12-02-cpu-tables-6")
    ap.add_argument("--store", type=Path, default=Path("results/store"), help="the results store to copy from")
    ap.add_argument("--since", default="", help="only records finished at or after this ISO time")
    ap.add_argument("--pack", action="store_true", help="pack the snapshot's own plain records instead")
    a = ap.parse_args(argv)
    if a.pack:
        if not a.snapshot.is_dir():
            raise SystemExit(f"snapshot: no folder {a.snapshot}")
        keys = pack_records(a.snapshot)
        print(f"packed {len(keys)} records in {a.snapshot}")
        return
    if not a.store.is_dir():
        raise SystemExit(f"--store: no folder {a.store}")
    keys = archive_records(ResultStore(a.store), a.snapshot, a.since)
    print(f"copied {len(keys)} records into {a.snapshot}")


if __name__ == "__main__":
    main()
