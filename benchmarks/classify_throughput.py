"""What a user waits for: `fab run classify` vs the plain Keras script, on the same photos.

For each N: N photos made from the chapter's (random crops and flips at their original
resolution, JPEG, into a scratch folder, never the repository), then in one run, one after the
other on the same cores:

- the plain script a user would write instead: PIL `open`, `draft("RGB", (size, size))`,
  resize, Keras `model.predict` in batches of 32 (one process, all cores);
- `fab run classify --target local` (a Spark standalone master and 2 executors of 1 core),
  timed from the command to its exit: Spark's start-up, the fit and the evaluation included.

Each is timed as a whole process (Python and TensorFlow start-up included) and prints images/s,
the ratio classify / plain, and the peak resident memory of its whole process tree (the Spark
daemons, driver, executors and Python workers, sampled every 0.2 s; a tree's RSS counts shared
library pages once per process). Goal (issue 24): classify >= 0.8x the plain script at 20,000
photos, for MobileNet and InceptionV3.

MobileNet takes the offline weights file ($KINDLING_ASSETS/models/...); other models get random
weights saved once to a file both sides load (throughput does not depend on their values, and
InceptionV3's ImageNet weights are not available offline).

    KINDLING_ASSETS=/work/shared python benchmarks/classify_throughput.py --sizes 2000 20000
    python benchmarks/classify_throughput.py --model InceptionV3 --sizes 2000 --workdir /tmp/photos
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import random
import re
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from workloads.common import asset, run_cli  # noqa: E402

GOAL_RATIO, GOAL_PHOTOS = 0.8, 20_000
PAGE = os.sysconf("SC_PAGE_SIZE")
PR_SET_CHILD_SUBREAPER = 36

PLAIN_SCRIPT = """
import glob, sys, numpy as np, keras
from PIL import Image

folder, model_name, weights = sys.argv[1:4]
constructor = getattr(keras.applications, model_name)
size = 299 if model_name in ("InceptionV3", "Xception") else 224
family = {"InceptionV3": "inception_v3", "MobileNet": "mobilenet"}[model_name]
alpha = {"alpha": 0.25} if "mobilenet_v1_0.25" in weights else {}
model = constructor(weights=None, include_top=False, pooling="avg", input_shape=(size, size, 3), **alpha)
model.load_weights(weights, **({"by_name": True} if "mobilenet_v1_0.25" in weights else {}))
preprocess = getattr(keras.applications, family).preprocess_input

def pixels(path):
    try:
        image = Image.open(path)
        image.draft("RGB", (size, size))
        return np.asarray(image.convert("RGB").resize((size, size), Image.Resampling.BILINEAR))
    except Exception:
        return None

files = sorted(glob.glob(folder + "/*/*"))
features = []
for start in range(0, len(files), 32):
    batch = [p for p in map(pixels, files[start:start + 32]) if p is not None]
    features.append(model.predict(preprocess(np.stack(batch).astype("float32")), verbose=0))
print(len(files), "files,", sum(len(f) for f in features), "featurized")
"""


# -- photos --------------------------------------------------------------------------------

def sources(chapter: Path) -> list[tuple[str, Path]]:
    return [(folder.name, path) for folder in sorted(p for p in chapter.iterdir() if p.is_dir())
            for path in sorted(folder.iterdir()) if path.is_file()]


def make_photo(job: tuple[Path, Path, int]) -> int:
    """One photo: a random crop of 70-100% of each side at the source's resolution, flipped
    left-right half the time. Its size in bytes."""
    from PIL import Image, ImageOps

    source, target, seed = job
    rng = random.Random(seed)
    with Image.open(source) as image:
        image = image.convert("RGB")
        width, height = image.size
        w, h = max(16, round(width * rng.uniform(0.7, 1))), max(16, round(height * rng.uniform(0.7, 1)))
        left, top = rng.randint(0, width - w), rng.randint(0, height - h)
        crop = image.crop((left, top, left + w, top + h))
        if rng.random() < 0.5:
            crop = ImageOps.mirror(crop)
        crop.save(target, quality=90)
    return target.stat().st_size


def photos(chapter: Path, count: int, workdir: Path, seed: int = 24) -> Path:
    """workdir/photos-<count>, made once (kept when workdir is given, for the next run)."""
    folder = workdir / f"photos-{count}"
    done = folder / "_made"
    if done.exists():
        return folder
    picks = random.Random(seed)
    available = sources(chapter)
    jobs = []
    for index in range(count):
        label, source = picks.choice(available)
        (folder / label).mkdir(parents=True, exist_ok=True)
        jobs.append((source, folder / label / f"{index:06d}.jpg", seed * 1_000_003 + index))
    started = time.monotonic()
    with ProcessPoolExecutor(os.cpu_count()) as pool:
        total = sum(pool.map(make_photo, jobs, chunksize=64))
    done.write_text(f"{count} photos, {total} bytes\n")
    print(f"made {count} photos ({total / 1e6:.0f} MB) in {folder} in "
          f"{time.monotonic() - started:.0f} s", flush=True)
    return folder


# -- timing a process tree ------------------------------------------------------------------

def role(cmdline: str) -> str:
    if "CoarseGrainedExecutorBackend" in cmdline:
        return "executors"
    if "SparkSubmit" in cmdline:
        return "driver"
    if "pyspark.daemon" in cmdline or "pyspark/daemon" in cmdline or "pyspark.worker" in cmdline:
        return "python workers"
    if "org.apache.spark.deploy" in cmdline:
        return "spark daemons"
    return "other"


def descendants() -> dict[int, tuple[str, int]]:
    """{pid: (role, rss bytes)} of every live process below this one (a child subreaper, so
    daemonized Spark processes stay below it)."""
    parents, found = {}, {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
                parents[int(entry)] = int(stat.rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
    mine, frontier = set(), {os.getpid()}
    while frontier:
        frontier = {pid for pid, parent in parents.items() if parent in frontier} - mine
        mine |= frontier
    for pid in mine:
        try:
            rss = int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except (OSError, ValueError, IndexError):
            continue
        found[pid] = (role(cmdline), rss)
    return found


class PeakMemory:
    """Peak RSS of this process's descendants, total and by role, sampled in a thread."""

    def __init__(self, interval: float = 0.2):
        self.interval, self.total, self.by_role = interval, 0, {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def __enter__(self) -> "PeakMemory":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _sample(self) -> None:
        while not self._stop.wait(self.interval):
            sums: dict[str, int] = {}
            for name, rss in descendants().values():
                sums[name] = sums.get(name, 0) + rss
            self.total = max(self.total, sum(sums.values()))
            for name, rss in sums.items():
                self.by_role[name] = max(self.by_role.get(name, 0), rss)
            reap_orphans()

    def describe(self) -> str:
        parts = ", ".join(f"{name} {rss / 2**30:.2f}" for name, rss in sorted(self.by_role.items())
                          if name != "other" and rss)
        return f"peak RSS {self.total / 2**30:.2f} GiB" + (f" ({parts})" if parts else "")


def reap_orphans() -> None:
    """Orphans re-parented to this subreaper (the Spark daemons) are reaped when they exit."""
    for entry in os.listdir("/proc"):
        try:
            stat = Path(f"/proc/{entry}/stat").read_text() if entry.isdigit() else ""
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split() if stat else []
        if fields and fields[0] == "Z" and int(fields[1]) == os.getpid() and int(entry) not in OWN:
            try:
                os.waitpid(int(entry), os.WNOHANG)
            except ChildProcessError:
                pass


OWN: set[int] = set()
"""Children started with subprocess (reaped by subprocess itself)."""


def timed(command: list[str], cwd: Path, env: dict[str, str], timeout: float) -> tuple[float, PeakMemory, str]:
    """Wall seconds, peak memory and stdout of one command run to its end; fails loudly."""
    with PeakMemory() as peak:
        started = time.monotonic()
        process = subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.PIPE,
                                   stderr=subprocess.STDOUT, text=True)
        OWN.add(process.pid)
        try:
            out, _ = process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            out, _ = process.communicate()
            raise RuntimeError(f"{command[:4]} did not finish in {timeout:.0f} s:\n{out[-3000:]}")
        seconds = time.monotonic() - started
    if process.returncode:
        raise RuntimeError(f"{' '.join(command[:6])} failed ({process.returncode}):\n{out[-5000:]}")
    return seconds, peak, out


# -- the two sides ----------------------------------------------------------------------------

def weights_file(model: str, weights: str | None, workdir: Path) -> str:
    """The given file, the offline MobileNet, or random weights saved once for the model."""
    if weights:
        return str(Path(weights).resolve())
    if model == "MobileNet" and asset("models/mobilenet_v1_0.25_224.h5"):
        return asset("models/mobilenet_v1_0.25_224.h5")
    path = workdir / f"random-{model}.h5"
    if not path.exists():
        subprocess.run([sys.executable, "-c", "import keras, sys; getattr(keras.applications, "
                        "sys.argv[1])(weights=None, include_top=False, pooling='avg')"
                        ".save(sys.argv[2])", model, str(path)], check=True, capture_output=True)
    return str(path)


def run_plain(folder: Path, model: str, weights: str, workdir: Path, env: dict) -> tuple[float, PeakMemory]:
    script = workdir / "plain_keras.py"
    script.write_text(PLAIN_SCRIPT)
    seconds, peak, out = timed([sys.executable, str(script), str(folder), model, weights],
                               workdir, env, timeout=6 * 3600)
    print(f"    plain script: {out.strip().splitlines()[-1]}", flush=True)
    return seconds, peak


def run_classify(folder: Path, model: str, weights: str, workdir: Path, env: dict) -> tuple[float, PeakMemory, dict]:
    fab = str(Path(sys.executable).parent / "fab")
    seconds, peak, out = timed([fab, "--search-root", str(REPO), "run", "classify", "--target", "local",
                                "--data", str(folder), "--model", model, "--weights", weights],
                               workdir, env, timeout=6 * 3600)
    results = re.findall(r"^results: (\S+)$", out, re.MULTILINE)
    if not results:
        raise RuntimeError(f"no results line in fab's output:\n{out[-3000:]}")
    return seconds, peak, json.loads((workdir / results[-1] / "metrics.json").read_text())


def report(count: int, folder: Path, plain: tuple[float, PeakMemory],
           classify: tuple[float, PeakMemory, dict]) -> None:
    megabytes = sum(p.stat().st_size for p in folder.rglob("*.jpg")) / 1e6
    metrics = classify[2]
    plain_rate, classify_rate = count / plain[0], count / classify[0]
    ratio = classify_rate / plain_rate
    print(f"  {count} photos ({megabytes:.0f} MB of JPEG), {os.cpu_count()} cores")
    print(f"    plain Keras script   {plain_rate:8.1f} images/s  {plain[0]:7.1f} s   {plain[1].describe()}")
    print(f"    fab run classify     {classify_rate:8.1f} images/s  {classify[0]:7.1f} s   "
          f"{classify[1].describe()}")
    print(f"      accuracy {metrics['accuracy']:.4f}, counts {metrics['counts']}, "
          f"job timings {metrics['timings_s']}")
    verdict = (("met" if ratio >= GOAL_RATIO else "NOT met") if count >= GOAL_PHOTOS
               else f"the goal is stated at {GOAL_PHOTOS:,} photos")
    print(f"    ratio classify / plain  {ratio:5.2f}x   goal: >= {GOAL_RATIO}x at "
          f"{GOAL_PHOTOS:,} photos: {verdict}", flush=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[2000, 20000], help="photo counts N")
    parser.add_argument("--model", default="MobileNet", help="MobileNet or InceptionV3")
    parser.add_argument("--weights", help="a Keras .h5 file of the model (default: the offline "
                        "MobileNet, else random weights)")
    parser.add_argument("--chapter", default=asset("datasets/buses-cars"),
                        help="the photos to crop (default: $KINDLING_ASSETS/datasets/buses-cars)")
    parser.add_argument("--workdir", help="keep the made photos here for later runs (default: a "
                        "temporary folder, removed)")
    args = parser.parse_args(argv)
    if not args.chapter:
        parser.error("pass --chapter DIR or set KINDLING_ASSETS")
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    with tempfile.TemporaryDirectory(prefix="classify-throughput-") as scratch:
        workdir = Path(args.workdir or scratch).resolve()
        workdir.mkdir(parents=True, exist_ok=True)
        weights = weights_file(args.model, args.weights, workdir)
        print(f"{args.model}, weights {weights}", flush=True)
        for count in args.sizes:
            folder = photos(Path(args.chapter), count, workdir)
            plain = run_plain(folder, args.model, weights, workdir, env)
            classify = run_classify(folder, args.model, weights, workdir, env)
            report(count, folder, plain, classify)


if __name__ == "__main__":
    run_cli(main)
