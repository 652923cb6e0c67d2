"""A tiny analysis run by `pysandbox run hello.py`: reads the data folder (the current
folder, read-only), writes a report into output/ (the only writable host folder)."""

import collections
import json
import os
import pathlib
import sys

name = sys.argv[1] if len(sys.argv) > 1 else "world"
words = collections.Counter()
for path in pathlib.Path(".").glob("*.txt"):
    words.update(path.read_text().split())

report = {
    "greeting": f"hello, {name}",
    "python": sys.version.split()[0],
    "uid": os.getuid(),
    "top_words": words.most_common(3),
}
pathlib.Path("output").mkdir(exist_ok=True)
pathlib.Path("output/report.json").write_text(json.dumps(report, indent=2) + "\n")
print(json.dumps(report))
