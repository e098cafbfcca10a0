"""Writer process for the concurrency and crash tests (run as a script, not collected by pytest).

usage: catalog_writer_proc.py CATALOG NAME TAG COUNT ROWS [START_FILE]
Appends COUNT batches of ROWS rows tagged TAG (COUNT = 0: forever). Waits for START_FILE to exist first,
so several writers start together. Prints one line per committed version: "<tag> <batch> <version>"."""
from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from catalog_kit import pairs_table  # noqa: E402

from catalog import Catalog  # noqa: E402


def main() -> None:
    root, name, tag, count, rows = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
    start_file = Path(sys.argv[6]) if len(sys.argv) > 6 else None
    cat = Catalog.open(root)
    print("ready", flush=True)
    while start_file is not None and not start_file.exists():
        time.sleep(0.005)
    batch = 0
    while count == 0 or batch < count:
        table = pairs_table(rows, start=batch * rows, tag=tag)
        v = cat.write(name, table, mode="append", message=f"{tag} batch {batch}",
                      lineage={"builder": "test-writer", "rows_in": rows, "rows_kept": rows, "writer": tag,
                               "batch": batch})
        print(tag, batch, v, flush=True)
        batch += 1


if __name__ == "__main__":
    main()
