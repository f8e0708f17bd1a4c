"""The job interface: everything ops needs to know about a job, declared once per job.

A `Job` holds its flags (one declaration feeds `fab --help`, the pass-through of `fab deploy|run`
options and the job's own argument parser), its offline defaults, which flags name files to
stage on every host, what it downloads when a flag is omitted, and its process plan: which
processes run on which hosts with which argv (spark-submit and its confs, or TensorFlow roles
and ports). ops knows no job by name: adding a job means adding one `Job` to `JOBS`.

No TensorFlow or Spark import here: ops reads this on the control machine.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import re
import shlex
from dataclasses import dataclass, field
from typing import Callable

from kindling import Host, UserError
from workloads import tf_cluster
from workloads.stored import is_uri
from workloads.common import ArgumentParser, asset

OUTPUT_FLAG = "--output"
"""Every job writes its results (metrics.json, models, plots) into the folder this flag names."""
MNIST_URL = "https://storage.googleapis.com/tensorflow/tf-keras-datasets/mnist.npz"
KERAS_APPLICATIONS_URL = "https://storage.googleapis.com/tensorflow/keras-applications/"
TF_PORTS = {"ps": 2222, "worker": 2223, "chief": 2224}
"""Fixed ports on cluster hosts (each role once per host); the local target picks free ports."""


@dataclass(frozen=True)
class Flag:
    """One job flag: its argparse declaration plus what ops does with it."""
    name: str
    """`--batch-size`; the chapter's `--batch_size` spelling is accepted too."""
    help: str
    type: Callable[[str], object] = str
    default: object = None
    choices: tuple = ()
    minimum: float | None = None
    switch: bool = False
    """A store_true flag (`--tensorboard`)."""
    aliases: tuple[str, ...] = ()
    path: bool = False
    """Names a local file or folder that ops copies to every host (the argv gets the host path)."""
    names: tuple[str, ...] = ()
    """Values of a path flag that are names, not paths (`--weights imagenet`)."""
    stored: bool = False
    """The job can read this path from the cluster's storage (through Spark, or
    workloads.stored), so it may be s3://bucket/prefix or hdfs:///path, and a local folder is
    uploaded there once instead of to every host."""
    offline: str = ""
    """When the flag is omitted and $KINDLING_ASSETS is set: this path below $KINDLING_ASSETS..."""
    offline_value: str = ""
    """...or this value."""
    check: Callable[[str], object] | None = None
    """Checks the value on the control machine before anything starts (raises UserError)."""
    fab: bool = True
    """Offered as a `fab deploy|run` option (else only through --job-args)."""

    @property
    def dest(self) -> str:
        return self.name[2:].replace("-", "_")

    @property
    def spellings(self) -> list[str]:
        names = [self.name, *self.aliases]
        return list(dict.fromkeys(s for n in names for s in (n, "--" + n[2:].replace("-", "_"))))


@dataclass(frozen=True)
class Download:
    """Something a job fetches from the internet when its flag is omitted."""
    what: str
    url: str
    fix: str
    """How to run without it: `pass --data DIR, or set KINDLING_ASSETS ...`."""


@dataclass(frozen=True)
class Process:
    """One OS process of a job: ps 0, worker 1, chief 0, or the Spark driver."""
    label: str
    host: Host
    argv: tuple[str, ...]
    env: tuple[tuple[str, str], ...] = ()
    main: bool = False
    """The job succeeds when this process exits 0 (the chief, or the driver)."""

    @property
    def name(self) -> str:
        """File-name-safe label: `worker-1`."""
        return re.sub(r"[^A-Za-z0-9_.-]+", "-", self.label)

    @property
    def where(self) -> str:
        return f"{self.label} on {self.host.name} ({self.host.privateIp})"


@dataclass(frozen=True)
class Placement:
    """Where a run goes: the target's hosts and what the plan needs to know about them."""
    master: Host
    workers: tuple[Host, ...]
    ps: tuple[Host, ...]
    python: str
    """The Python on the hosts (the venv's)."""
    spark_master_url: str = ""
    spark_home: str = ""
    """The pyspark package folder on the master (spark-submit needs it as SPARK_HOME)."""
    site_packages: str = ""
    """Where kindling is installed on the hosts ("": this machine's installation)."""
    executor_cores: int = 1
    ports: dict[str, list[int]] | None = None
    """Ports per TF role when hosts are shared (the local target); None: TF_PORTS."""
    spark_conf: tuple[tuple[str, str], ...] = ()
    """Confs the target adds to every spark-submit (the storage's classpath and settings)."""
    process_env: tuple[tuple[str, str], ...] = ()
    """Environment the target gives the job's own processes (the driver, TF's roles): how to
    reach the cluster's storage (endpoint, region, credentials, the run's folder there), where
    a spot interruption notice for their host appears."""

    def script(self, module: str) -> str:
        """A job module's file on the hosts, as spark-submit wants it."""
        if not self.site_packages:
            return module_file(module)
        return f"{self.site_packages}/{module.replace('.', '/')}.py"


STREAM_NOISE = (
    r"WARNING: Using incubator modules",                       # the JVM, at Spark's start
    r"Using Spark's default log4j profile", r"Setting Spark log level to",
    r"\d\d/\d\d/\d\d [\d:]+ INFO ",                              # Spark, before its level is set
    r"\d\d/\d\d/\d\d [\d:]+ WARN NativeCodeLoader",
    r".*UserWarning: pkg_resources is deprecated", r"\s+import pkg_resources",  # TFoS' import
    r"WARNING: All log messages before absl::InitializeLog",   # absl
    r"[IW]\d{4} [\d:.]+\s+\d+ \S+\.cc:\d+\]",                   # TensorFlow's C++ info/warnings
    r"To enable the following instructions: ", r".*oneDNN custom operations are on",
    r"\d{4}-\d\d-\d\d [\d:,]+ INFO \(",                          # TFoS' own progress
)
"""Lines kept out of the terminal stream of a run (its log files keep them): start-up chatter
of the JVM, Spark, TensorFlow, absl and TensorFlowOnSpark, not the job's own output."""


@dataclass(frozen=True)
class Launch:
    processes: list[Process]
    files: dict[str, str] = field(default_factory=dict)
    """name -> text written into the run folder on every host before any process starts."""
    noise: tuple[str, ...] = STREAM_NOISE
    """Regexes (matched at a line's start) of output lines not streamed to the terminal."""


@dataclass(frozen=True)
class Job:
    name: str
    module: str
    summary: str
    flags: tuple[Flag, ...]
    plan: Callable[["Job", Placement, list[str], str], Launch]
    """(job, placement, args, run folder) -> the processes of one run."""
    uses_spark: bool = True
    validate: Callable[[argparse.Namespace], None] | None = None
    """Rules across flags, run wherever the flags are parsed."""
    downloads: Callable[[argparse.Namespace], list[Download]] = lambda args: []
    writes_store: bool = False
    """Its executors write into the run's folder in the cluster's storage (through Spark), so
    they need that storage's client on their classpath."""
    resume: str = ""
    """Its flag that continues an earlier run from its last checkpoint (given the run's results
    folder or stored location): fab passes it when a spot interruption stopped the last run."""

    # -- flags ---------------------------------------------------------------------------------

    def parser(self, **kwargs) -> ArgumentParser:
        """The job's argument parser: its flags, plus --output (the results folder)."""
        parser = ArgumentParser(prog=kwargs.pop("prog", self.name),
                                description=kwargs.pop("description", self.summary), **kwargs)
        for flag in self.flags:
            options: dict = {"dest": flag.dest, "help": flag.help}
            if flag.switch:
                options["action"] = "store_true"
            else:
                options |= {"type": flag.type, "default": flag.default}
                if flag.choices:
                    options["choices"] = flag.choices
            parser.add_argument(*flag.spellings, **options)
        parser.add_argument(OUTPUT_FLAG, help=f"results folder (default: runs/{self.name}-<time>)")
        return parser

    def values(self, argv: list[str]) -> argparse.Namespace:
        """The flags' values, parsed without checking files (for plans, with host paths)."""
        return self.parser().parse_args(argv)

    def parse(self, argv: list[str], parser: ArgumentParser | None = None) -> argparse.Namespace:
        """Offline defaults, then the parser, then every flag's checks: one UserError if wrong."""
        args = (parser or self.parser()).parse_args(self.with_offline_defaults(argv))
        for flag in self.flags:
            value = getattr(args, flag.dest)
            if flag.minimum is not None and value is not None and value < flag.minimum:
                raise UserError(f"{flag.name} must be at least {flag.minimum:g}, got {value}")
            if flag.check and value is not None and value not in flag.names and not is_uri(value):
                flag.check(value)  # a URI is checked where it can be read (ops.storage, the job)
        if self.validate:
            self.validate(args)
        return args

    def given(self, argv: list[str], name: str) -> bool:
        """Whether argv sets the flag called name (in any of its spellings)."""
        flag = next(flag for flag in self.flags if flag.name == name)
        used = {a.split("=", 1)[0].replace("_", "-") for a in argv if a.startswith("--")}
        return bool(used & {s.replace("_", "-") for s in flag.spellings})

    def with_offline_defaults(self, argv: list[str]) -> list[str]:
        """argv plus the offline default of each omitted flag (none without $KINDLING_ASSETS)."""
        extra: list[str] = []
        for flag in self.flags:
            if self.given(argv, flag.name):
                continue
            value = asset(flag.offline) if flag.offline else (
                flag.offline_value if flag.offline_value and asset("") else None)
            if value is not None:
                extra += [flag.name, value]
        return [*argv, *extra]

    def command_line(self, options: dict[str, object], job_args: str = "") -> list[str]:
        """The job's argv from `fab` options (None: not given) and the --job-args string."""
        argv: list[str] = []
        mine = {flag.dest: flag for flag in self.flags if flag.fab}
        for dest, value in options.items():
            if value is None or value is False:
                continue
            if dest not in mine:
                raise UserError(f"{self.name} has no --{dest.replace('_', '-')} flag; its flags: "
                                + ", ".join(f.name for f in mine.values()))
            argv += [mine[dest].name] if mine[dest].switch else [mine[dest].name, str(value)]
        try:
            return [*argv, *shlex.split(job_args or "")]
        except ValueError as exc:
            raise UserError(f"--job-args {job_args!r} is not a valid shell-quoted list ({exc})") from None

    def _path_flag_values(self, argv: list[str]) -> list[tuple[int, str, Flag]]:
        """(argv index of the value, value, flag) of every path flag given in argv."""
        spellings = {s: flag for flag in self.flags if flag.path for s in flag.spellings}
        found = []
        for i, arg in enumerate(argv):
            name, eq, inline = arg.partition("=")
            flag = spellings.get(name)
            if flag is None or (not eq and i + 1 >= len(argv)):
                continue
            found.append((i, inline, flag) if eq else (i + 1, argv[i + 1], flag))
        return found

    def path_values(self, argv: list[str], stored: bool | None = None) -> list[tuple[int, str]]:
        """(argv index of the value, value) of every path flag naming a local path (a URI such
        as s3://bucket/prefix is read where it is, never copied); only those of flags that may
        (stored=True) or may not (False) be storage locations, when given."""
        return [(index, value) for index, value, flag in self._path_flag_values(argv)
                if value not in flag.names and not is_uri(value)
                and stored in (None, flag.stored)]

    def uri_values(self, argv: list[str]) -> list[str]:
        """The values of path flags that are URIs: data the job reads where it is stored. A
        URI given to a flag the job reads from the hosts' disks is refused here."""
        uris = []
        for _, value, flag in self._path_flag_values(argv):
            if is_uri(value):
                if not flag.stored:
                    raise UserError(f"{flag.name} {value}: {self.name} reads {flag.name} from "
                                    "the hosts' disks, not through Spark; pass a local path "
                                    "(copied to every host)")
                uris.append(value)
        return uris

    def with_paths(self, argv: list[str], paths: dict[str, str]) -> list[str]:
        """argv with each path flag's value found in paths replaced by paths[value] (its path
        on the hosts, or its location in the cluster's storage)."""
        out = list(argv)
        for index, value in self.path_values(argv):
            if value not in paths:
                continue
            prefix = out[index].partition("=")[0] + "=" if out[index].startswith("--") else ""
            out[index] = prefix + paths[value]
        return out


def split_output(argv: list[str]) -> tuple[list[str], str | None]:
    """(argv without --output, its value or None)."""
    rest, output = [], None
    skip = False
    for i, arg in enumerate(argv):
        if skip:
            skip = False
        elif arg == OUTPUT_FLAG and i + 1 < len(argv):
            output, skip = argv[i + 1], True
        elif arg.startswith(OUTPUT_FLAG + "="):
            output = arg.split("=", 1)[1]
        else:
            rest.append(arg)
    return rest, output


def module_file(module: str) -> str:
    """A job module's file on this machine, as spark-submit wants it."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.origin:
        raise UserError(f"module {module} is not installed; pip install -e '.[workloads]'")
    return spec.origin


# -- process plans ---------------------------------------------------------------------------

def spark_submit(job: Job, placement: Placement, args: list[str], run_dir: str,
                 conf: dict[str, str]) -> Launch:
    """spark-submit of the job's module on the master, with its confs, driver bound privately.

    Decommissioning on: when a worker is decommissioned (a spot host's notice), the driver
    stops sending it tasks and its executors hand their cached and shuffle blocks to others."""
    python = placement.python
    conf = {"spark.pyspark.python": python, "spark.pyspark.driver.python": python,
            "spark.executorEnv.PYTHONUNBUFFERED": "1", "spark.log.level": "WARN",
            "spark.decommission.enabled": "true", "spark.storage.decommission.enabled": "true",
            **conf, **dict(placement.spark_conf), "spark.driver.host": placement.master.privateIp}
    argv = [python.rsplit("/", 1)[0] + "/spark-submit", "--master", placement.spark_master_url]
    for key, value in conf.items():
        argv += ["--conf", f"{key}={value}"]
    argv += [placement.script(job.module), *args, OUTPUT_FLAG, run_dir]
    env = (("SPARK_HOME", placement.spark_home), ("SPARK_LOCAL_IP", placement.master.privateIp),
           ("PYTHONUNBUFFERED", "1"), *placement.process_env)
    return Launch([Process("driver", placement.master, tuple(argv), env, main=True)])


def plain_spark_plan(job: Job, placement: Placement, args: list[str], run_dir: str) -> Launch:
    return spark_submit(job, placement, args, run_dir, {})


def tfos_submit_conf(cluster_size: int, task_cpus: int = 1) -> dict[str, str]:
    """spark-submit confs for a TensorFlowOnSpark job of `cluster_size` TF nodes.

    TFoS needs exactly one task per executor (executor.cores == task.cpus) and as many
    executors as nodes (cores.max). maxFailures=1: a retried TF node re-registers and hangs
    the cluster, failing fast is the only sane outcome. Python workers are reused, which
    TFoS' SPARK input mode requires.
    """
    return {
        "spark.cores.max": str(cluster_size * task_cpus),
        "spark.task.cpus": str(task_cpus),
        "spark.executor.cores": str(task_cpus),
        "spark.task.maxFailures": "1",
        "spark.dynamicAllocation.enabled": "false",
        "spark.python.worker.reuse": "true",
        "spark.executorEnv.TF_NUM_INTRAOP_THREADS": str(task_cpus),
    }


def tfos_plan(job: Job, placement: Placement, args: list[str], run_dir: str) -> Launch:
    """One TF node per worker host (one executor each), unless --cluster_size says otherwise."""
    size = job.values(args).cluster_size
    if size is None:
        size = len(placement.workers)
        args = [*args, "--cluster-size", str(size)]
    return spark_submit(job, placement, args, run_dir,
                        tfos_submit_conf(size, placement.executor_cores))


def tf_roles_plan(job: Job, placement: Placement, args: list[str], run_dir: str) -> Launch:
    """train-ps: --strategy ps: ps on the ps hosts (the master when there are none), a worker
    per worker host, the chief on the master. --strategy sync: the workers only; worker 0 is
    the chief. The cluster spec JSON goes into the run folder on every host."""
    sync = job.values(args).strategy == "sync"
    hosts = {"worker": list(placement.workers)}
    if not sync:
        hosts |= {"ps": list(placement.ps or (placement.master,)), "chief": [placement.master]}
    ports = placement.ports or {role: [port] * len(hosts.get(role, []))
                                for role, port in TF_PORTS.items()}
    addresses = {role: [f"{h.privateIp}:{ports[role][i]}" for i, h in enumerate(role_hosts)]
                 for role, role_hosts in hosts.items()}
    spec = tf_cluster.cluster_spec(addresses["worker"], addresses.get("ps", []),
                                   (addresses.get("chief") or [None])[0])
    main_task = ("worker", 0) if sync else ("chief", 0)
    processes = [
        Process(f"{role} {index}", hosts[role][index], tuple(argv),
                (("PYTHONUNBUFFERED", "1"), *placement.process_env), main=(role, index) == main_task)
        for role, index, _, argv in tf_cluster.process_argvs(
            spec, [*args, OUTPUT_FLAG, run_dir], f"{run_dir}/cluster_spec.json",
            python=placement.python)]
    return Launch(processes, {"cluster_spec.json": json.dumps(spec)})


# -- checks that run before anything starts --------------------------------------------------

def _lazy(module: str, function: str) -> Callable[[str], object]:
    """A check living in a job module, imported only when a value is checked."""
    return lambda value: getattr(importlib.import_module(module), function)(value)


def _mnist_download(args: argparse.Namespace) -> list[Download]:
    if args.data:
        return []
    return [Download("the MNIST dataset", MNIST_URL,
                     "pass --data DIR (a folder of the four MNIST .gz files), or set "
                     "KINDLING_ASSETS to a folder with datasets/mnist")]


def _train_mnist_rules(args: argparse.Namespace) -> None:
    if args.engine == "barrier" and args.input_mode != "tensorflow":
        raise UserError("--engine barrier has no Spark feed: each node reads its data with "
                        "tf.data; add --input-mode tensorflow")
    if args.num_ps != 0:
        raise UserError(f"--num-ps {args.num_ps}: train-mnist trains with all-reduce "
                        "(MultiWorkerMirroredStrategy), without parameter servers; use "
                        "--num-ps 0, or the train-ps job for parameter servers")
    if args.tensorboard and importlib.util.find_spec("tensorboard") is None:
        raise UserError("--tensorboard needs the tensorboard package on every host; "
                        "pip install tensorboard, or drop --tensorboard")


def _classify_rules(args: argparse.Namespace) -> None:
    if not 0.0 < args.test_fraction < 1.0:
        raise UserError(f"--test-fraction must be between 0 and 1, got {args.test_fraction}")
    if args.data is None:
        raise UserError("no data folder; pass --data DIR with one subfolder of images per class "
                        "(or set KINDLING_ASSETS for the offline buses-cars set)")


def _imagenet_download(args: argparse.Namespace) -> list[Download]:
    if args.weights != "imagenet":
        return []
    family = importlib.import_module("workloads.image_models").model_spec(args.model).family
    return [Download(f"the ImageNet weights of {args.model}", f"{KERAS_APPLICATIONS_URL}{family}/",
                     "pass --weights FILE (a Keras .h5 file of that model), or set "
                     "KINDLING_ASSETS to a folder with models/")]


MNIST_DATA = Flag("--data", "MNIST: a folder of the four IDX .gz files or an mnist.npz "
                  "(copied to every host), or where it is stored: s3://bucket/prefix, "
                  "hdfs:///path; omit to download MNIST", aliases=("--data-dir",), path=True,
                  stored=True, offline="datasets/mnist",
                  check=_lazy("workloads.mnist", "mnist_source"))
RESUME = Flag("--resume", "continue from the last checkpoint of an earlier run: its results "
              "folder (runs/<id>) or where the cluster stored it (s3://BUCKET/runs/<id>, "
              "hdfs:///kindling/runs/<id>)", path=True, stored=True,
              check=_lazy("workloads.training", "checkpoints_in"))
BATCH_SIZE = Flag("--batch-size", "examples per training step", type=int, default=64, minimum=1)


def epochs(default: int) -> Flag:
    return Flag("--epochs", "training epochs", type=int, default=default, minimum=1)


def learning_rate(default: float) -> Flag:
    return Flag("--learning-rate", "Adam's initial learning rate (cosine-decayed to 0 over the "
                "run)", type=float, default=default)

JOBS: dict[str, Job] = {job.name: job for job in (
    Job("train-ps", "workloads.train_ps",
        "Distributed TensorFlow MNIST CNN: parameter servers + workers + chief (or --strategy sync)",
        flags=(MNIST_DATA,
               Flag("--strategy", "ps: asynchronous parameter servers; sync: all-reduce, no ps",
                    default="ps", choices=tf_cluster.STRATEGIES),
               epochs(3),
               Flag("--steps-per-epoch", "training steps per epoch (default: one pass over "
                    "the data)", type=int, minimum=1),
               BATCH_SIZE, learning_rate(1e-3),
               RESUME,
               Flag("--timeout", "seconds to wait for peers to come up or answer",
                    type=float, default=120.0, minimum=1, fab=False),
               Flag("--threads", "intra-op threads per process (0: TensorFlow's default)",
                    type=int, default=0, minimum=0, fab=False)),
        plan=tf_roles_plan, uses_spark=False, downloads=_mnist_download, resume="--resume"),
    Job("train-mnist", "workloads.train_mnist",
        "TensorFlowOnSpark MNIST CNN on the Spark cluster (InputMode SPARK or TENSORFLOW)",
        flags=(MNIST_DATA,
               Flag("--input-mode", "spark (RDD fed through TFNode.DataFeed, the chapter's way) "
                    "or tensorflow (tf.data reads TFRecord shards; faster)", default="spark",
                    choices=("spark", "tensorflow")),
               Flag("--engine", "tfos (TensorFlowOnSpark, the chapter's) or barrier (Spark "
                    "barrier mode: nodes start and fail as one unit; --input-mode tensorflow)",
                    default="tfos", choices=("tfos", "barrier")),
               Flag("--cluster-size", "TF nodes = Spark executors (default: one per worker)",
                    type=int, minimum=1),
               Flag("--num-ps", "parameter servers; must be 0 (all-reduce training; see "
                    "train-ps)", type=int, default=0, fab=False),
               epochs(8), BATCH_SIZE,
               Flag("--steps", "at most this many steps per node (default: --epochs of the "
                    "data)", type=int, minimum=1),
               learning_rate(2e-3), RESUME,
               Flag("--model", "where to export the trained model (default "
                    "<output>/model.keras)", fab=False),
               Flag("--tensorboard", "the tfos engine also serves TensorBoard from the chief "
                    "while it trains (the chief always logs to <output>/tensorboard)",
                    switch=True, fab=False),
               Flag("--startup-timeout", "seconds to wait for the executors and the TF nodes "
                    "to come up", type=int, default=120, minimum=1, fab=False),
               Flag("--timeout", "seconds the training may take before the job is stopped",
                    type=int, default=3600, minimum=1, fab=False)),
        plan=tfos_plan, validate=_train_mnist_rules, downloads=_mnist_download,
        resume="--resume"),
    Job("classify", "workloads.classify",
        "Transfer learning: DeepImageFeaturizer + LogisticRegression on a folder of labelled images",
        flags=(Flag("--data", "a folder with one subfolder of images per class (labels follow "
                    "the sorted subfolder names), copied to every host; or where it is stored: "
                    "s3://bucket/prefix, hdfs:///path", path=True, stored=True,
                    offline="datasets/buses-cars", check=_lazy("workloads.classify", "class_folders")),
               Flag("--model", "Keras ImageNet model (default: InceptionV3, the chapter's)",
                    default="InceptionV3", offline_value="MobileNet",
                    check=_lazy("workloads.image_models", "model_spec")),
               Flag("--weights", "'imagenet' (downloaded by Keras) or a Keras .h5/.keras file "
                    "of that model (copied to every host)", default="imagenet", path=True,
                    names=("imagenet",), offline="models/mobilenet_v1_0.25_224.h5",
                    check=_lazy("workloads.image_models", "weights_source")),
               Flag("--seed", "seed of the per-class train/test split", type=int, default=42,
                    fab=False),
               Flag("--test-fraction", "share of each class held out for testing", type=float,
                    default=0.4, fab=False),
               Flag("--max-iter", "LogisticRegression iterations", type=int, default=30,
                    minimum=1, fab=False)),
        plan=plain_spark_plan, validate=_classify_rules, downloads=_imagenet_download,
        writes_store=True),
)}


def get_job(name: str) -> Job:
    try:
        return JOBS[name]
    except KeyError:
        raise UserError(f"unknown job {name!r}; choose one of: {', '.join(JOBS)} "
                        "(`fab jobs` lists them)") from None
