"""A plain script needing a package kindling does not install: tabulate, from the requirements
file beside it (`fab run tabulated.py --requirements requirements.txt`)."""

import json
import os
import sys

from tabulate import tabulate

table = tabulate([[word, len(word)] for word in sys.argv[1:]], headers=["word", "letters"])
print(table)
with open(os.path.join(os.environ["KINDLING_OUTPUT"], "table.json"), "w") as out:
    json.dump({"table": table, "python": sys.executable}, out)
