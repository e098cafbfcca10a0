"""Child process for the catalog fault tests: append numbered batches to one dataset forever (mode
`loop`, killed from outside) or N times (mode `count`), printing each committed batch id."""
import sys

import pyarrow as pa

from catalog import Catalog
from prefdata.errors import CommitConflict

root, name, mode, writer, n, rows = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5]), int(sys.argv[6])
cat = Catalog.open(root)
print("ready", flush=True)
i = 0
while mode == "loop" or i < n:
    batch = f"{writer}-{i}"
    t = pa.table({"batch": [batch] * rows, "row": list(range(rows)), "text": [f"{batch} row {r} " * 8 for r in range(rows)]})
    try:
        v = cat.write(name, t, mode="append", message=batch, lineage={"builder": "reliability", "rows_in": rows,
                                                                     "rows_kept": rows})
        print(f"ok {batch} {v}", flush=True)
    except CommitConflict as e:
        print(f"conflict {batch} {e}", flush=True)
    i += 1
