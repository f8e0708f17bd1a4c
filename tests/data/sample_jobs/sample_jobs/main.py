"""The echo job's program: prints its word, writes metrics.json into --output."""

import json
from pathlib import Path

from sample_jobs.job import JOB

if __name__ == "__main__":
    args = JOB.parser().parse_args()
    print(args.word, flush=True)
    Path(args.output).mkdir(parents=True, exist_ok=True)
    (Path(args.output) / "metrics.json").write_text(json.dumps({"accuracy": 1.0, "word": args.word}))
