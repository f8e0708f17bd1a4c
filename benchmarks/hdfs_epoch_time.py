"""train-mnist's TENSORFLOW input mode reading its data from HDFS vs from the local disk.

In one run on this machine: a real one-host HDFS (NameNode + DataNode from the deploy's jars),
MNIST copied into it; then train-mnist through TFoS on a local Spark standalone cluster (2
executors of 1 core, spark-submit as ops launches it) with --data the local folder, then the
hdfs:// copy (the driver stores the TFRecord shards in HDFS, each node fetches its own), then
hdfs:// again (shards already there). Prints the epoch times and the whole run's time side by
side. The first epoch (tracing, warm-up) counts for no median.

    python benchmarks/hdfs_epoch_time.py --data ../shared/datasets/mnist [--epochs 4]
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO / "benchmarks"))

from hdfs_server import local_hdfs  # noqa: E402  (test helpers, not the product)
from tfos_epoch_time import epoch_arguments, tfos_epochs  # noqa: E402

from workloads import stored  # noqa: E402


def main() -> None:
    args = epoch_arguments(__doc__.split("\n\n")[0])
    rows = []
    with tempfile.TemporaryDirectory(prefix="hdfs-bench-") as scratch:
        with local_hdfs(Path(scratch, "hdfs")) as root:
            in_hdfs = f"{root}/datasets/mnist"
            stored.copy(str(Path(args.data).resolve()), in_hdfs)
            for label, data in (("local disk", str(Path(args.data).resolve())),
                                ("HDFS, shards written", in_hdfs),
                                ("HDFS, shards there", in_hdfs)):
                started = time.monotonic()
                metrics = tfos_epochs(data, args.nodes, args.batch_size, args.epochs,
                                      tempfile.mkdtemp(dir=scratch))
                rows.append((label, time.monotonic() - started,
                             metrics["timings"]["epoch_seconds"], metrics["accuracy"]))
    print(f"MNIST CNN, TFoS TENSORFLOW mode, {args.nodes} executors x 1 core, {args.epochs} "
          "epochs (the first is warm-up):")
    for label, seconds, epochs, accuracy in rows:
        print(f"  {label:<22} epochs {' '.join(f'{s:6.2f}s' for s in epochs[1:])}   median "
              f"{statistics.median(epochs[1:]):6.2f}s   whole run {seconds:6.1f}s   accuracy "
              f"{accuracy:.4f}")
    local_median = statistics.median(rows[0][2][1:])
    for label, _, epochs, _ in rows[1:]:
        print(f"  ratio {label} / local disk, median epoch: "
              f"{statistics.median(epochs[1:]) / local_median:.2f}x")


if __name__ == "__main__":
    main()
