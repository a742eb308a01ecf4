"""Copy the latest figure of each study into docs/studies/ and print its result as markdown:
python scripts/collect_studies.py [outputs dir]. docs/studies.md quotes these lines."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

from trainkit.studies import STUDIES

outputs = Path(sys.argv[1] if len(sys.argv) > 1 else "outputs") / "studies"
docs = Path(__file__).parents[1] / "docs" / "studies"
docs.mkdir(parents=True, exist_ok=True)
for name in STUDIES:
    found = sorted(outputs.glob(f"{name}/*/*/result.json"))
    if not found:
        print(f"## {name}: not run yet\n")
        continue
    result = json.loads(found[-1].read_text())
    shutil.copy(found[-1].with_name(f"{name}.png"), docs / f"{name}.png")
    print(f"## {name}\n{result['claim']}\n\n`{result['result']}`\n")
