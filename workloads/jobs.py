"""The job interface, kindling's public API for jobs: everything ops needs to know about a job,
declared once per job. docs/jobs.md shows how to write one in a package of your own.

A `Job` holds its flags (one declaration feeds `fab --help`, the pass-through of `fab deploy|run`
options and the job's own argument parser), its offline defaults, which flags name files to
stage on every host, what it downloads when a flag is omitted, and its process plan: which
processes run on which hosts with which argv (`spark_submit` and its confs, `tfos_plan`, or
TensorFlow roles and ports, train-ps' `tf_roles_plan`). ops knows no job by name: an installed
package declares its jobs as entry points of the group `kindling.jobs` (`name = "pkg.module:JOB"`),
kindling's own three included (its pyproject.toml); `JOBS` collects them on first use.

No TensorFlow or Spark import here, nor in the declarations: ops reads them on the control
machine.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import re
import shlex
import tomllib
from collections.abc import Iterator, MutableMapping
from dataclasses import dataclass, field
from importlib.metadata import Distribution, EntryPoint, entry_points
from pathlib import Path
from typing import Callable

from kindling import Host, UserError
from workloads.stored import is_uri
from workloads.common import ArgumentParser, asset

__all__ = ["Job", "Flag", "Download", "Placement", "Process", "Launch", "OUTPUT_FLAG",
           "STREAM_NOISE", "spark_submit", "plain_spark_plan", "tfos_plan", "tfos_submit_conf",
           "lazy_check", "module_file", "JOBS", "get_job", "ENTRY_POINTS"]
"""The public API (docs/jobs.md); also `tf_roles_plan` and `TF_PORTS`, train-ps' plan."""

OUTPUT_FLAG = "--output"
"""Every job writes its results (metrics.json, models, plots) into the folder this flag names."""
END_OF_FLAGS = "--"
"""In a job's argv, what follows is its program's own arguments (a plain script's), untouched."""
ENTRY_POINTS = "kindling.jobs"
"""The entry-point group through which an installed package declares its jobs."""
FAB_OPTIONS = ("job", "target", "detach", "timeout", "job_args", "fresh", "wheelhouse", "roles",
               "code", "requirements", "help")
"""`fab deploy|run`'s own options (as dests): a job flag offered to fab (Flag.fab) may not reuse
one."""
KINDLING = "kindling"
CHECKOUT = Path(__file__).resolve().parents[1]
"""The folder kindling runs from: a checkout holds its pyproject.toml."""


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
    workloads.stored), so it may be a location there (stored.LOCATION_EXAMPLES), and a local
    folder is uploaded there once instead of to every host."""
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
    """Ports per TF role when hosts are shared (the local target); None: the plan's fixed
    ports (train-ps' TF_PORTS)."""
    spark_conf: tuple[tuple[str, str], ...] = ()
    """Confs the target adds to every spark-submit (the storage's classpath and settings)."""
    process_env: tuple[tuple[str, str], ...] = ()
    """Environment the target gives the job's own processes (the driver, TF's roles): how to
    reach the cluster's storage (endpoint, region, its credentials file, the run's folder there), where
    a spot interruption notice for their host appears."""
    spark_conf_dir: str = ""
    """SPARK_CONF_DIR on the master: its spark-defaults.conf has the secret the cluster's Spark
    authenticates with (a driver without it is refused)."""

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
    r"[IW]\d{4} [\d:.]+\s+\d+ \S+\.(?:cc|h):\d+\]",             # TensorFlow's C++ info/warnings
    r"To enable the following instructions: ", r".*oneDNN custom operations are on",
    r"\d{4}-\d\d-\d\d [\d:,]+ INFO \(",                          # TFoS' own progress
    r"netlib-blas: JNI_OnLoad: dlopen\(libblas",  # Spark ML without a native BLAS: Java's is used
)
"""Lines kept out of the terminal stream of a run (its log files keep them): start-up chatter
of the JVM, Spark, TensorFlow, absl and TensorFlowOnSpark, not the job's own output."""


@dataclass(frozen=True)
class Launch:
    processes: list[Process]
    files: dict[str, str] = field(default_factory=dict)
    """name -> text written into the run folder on every host before any process starts."""
    folders: tuple[str, ...] = ()
    """Folders made in the run folder on every host before any process starts."""
    noise: tuple[str, ...] = STREAM_NOISE
    """Regexes (matched at a line's start) of output lines not streamed to the terminal."""


@dataclass(frozen=True)
class Job:
    name: str
    module: str
    """What runs: a .py module (`workloads.<job>.main`), spark-submit's script (Placement.script)
    or what each TF process starts with `python -m`."""
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
    passthrough: bool = False
    """Its program takes arguments kindling does not know (a plain script's own flags): they
    follow END_OF_FLAGS in its argv, and its parser keeps them as `program_args`."""

    @property
    def run_name(self) -> str:
        """What its runs' ids start with: its name (a script's: its file name without .py)."""
        return re.sub(r"[^A-Za-z0-9_.-]+", "-", self.name.rsplit("/", 1)[-1].removesuffix(".py"))

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
        if self.passthrough:
            parser.add_argument("program_args", nargs="*", help="its program's own arguments, "
                                f"after {END_OF_FLAGS}")
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
        used = {a.split("=", 1)[0].replace("_", "-") for a in own_flags(argv)
                if a.startswith("--")}
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
        mine = own_flags(argv)
        return [*mine, *extra, *argv[len(mine):]]

    def command_line(self, options: dict[str, object], job_args: str = "") -> list[str]:
        """The job's argv from `fab` options (None: not given) and the --job-args string."""
        argv: list[str] = []
        mine = {flag.dest: flag for flag in self.flags if flag.fab}
        for dest, value in options.items():
            if value is None or value is False:
                continue
            if dest not in mine:
                option = f"--{dest.replace('_', '-')}"
                fix = (f"a script's own flags go through --job-args '{option} VALUE'"
                       if self.passthrough else "its flags: " + ", ".join(
                           f.name for f in mine.values()))
                raise UserError(f"{self.name} has no {option} flag; {fix}")
            argv += [mine[dest].name] if mine[dest].switch else [mine[dest].name, str(value)]
        try:
            return [*argv, *([END_OF_FLAGS] if self.passthrough else []),
                    *shlex.split(job_args or "")]
        except ValueError as exc:
            raise UserError(f"--job-args {job_args!r} is not a valid shell-quoted list ({exc})") from None

    def _path_flag_values(self, argv: list[str]) -> list[tuple[int, str, Flag]]:
        """(argv index of the value, value, flag) of every path flag given in argv."""
        spellings = {s: flag for flag in self.flags if flag.path for s in flag.spellings}
        found = []
        argv = own_flags(argv)
        for i, arg in enumerate(argv):
            name, eq, inline = arg.partition("=")
            flag = spellings.get(name)
            if flag is None or (not eq and i + 1 >= len(argv)):
                continue
            found.append((i, inline, flag) if eq else (i + 1, argv[i + 1], flag))
        return found

    def path_values(self, argv: list[str], stored: bool | None = None) -> list[tuple[int, str]]:
        """(argv index of the value, value) of every path flag naming a local path (a URI, a
        location in the cluster's storage, is read where it is, never copied); only those of
        flags that may (stored=True) or may not (False) be storage locations, when given."""
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
        """argv with each path flag's value found in paths replaced by paths[value] (a local
        path by its path on the hosts or its location in the cluster's storage, a location by
        the way the job's processes must be given it)."""
        out = list(argv)
        for index, value, _ in self._path_flag_values(argv):
            if value not in paths:
                continue
            prefix = out[index].partition("=")[0] + "=" if out[index].startswith("--") else ""
            out[index] = prefix + paths[value]
        return out


def own_flags(argv: list[str]) -> list[str]:
    """argv up to END_OF_FLAGS: the job's own flags (the rest is its program's)."""
    return argv[:argv.index(END_OF_FLAGS)] if END_OF_FLAGS in argv else argv


def split_output(argv: list[str]) -> tuple[list[str], str | None]:
    """(argv without --output, its value or None); a program's own --output stays."""
    rest, output = [], None
    skip = False
    mine = own_flags(argv)
    for i, arg in enumerate(mine):
        if skip:
            skip = False
        elif arg == OUTPUT_FLAG and i + 1 < len(mine):
            output, skip = mine[i + 1], True
        elif arg.startswith(OUTPUT_FLAG + "="):
            output = arg.split("=", 1)[1]
        else:
            rest.append(arg)
    return rest + argv[len(mine):], output


def module_file(module: str) -> str:
    """A job module's file on this machine, as spark-submit wants it."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.origin:
        raise UserError(f"module {module} is not installed; pip install -e '.[workloads]'")
    return spec.origin


# -- process plans ---------------------------------------------------------------------------

def spark_submit(job: Job, placement: Placement, args: list[str], run_dir: str,
                 conf: dict[str, str]) -> Launch:
    """spark-submit of the job's module on the master, with its confs and --output."""
    return spark_driver(placement, [placement.script(job.module), *args, OUTPUT_FLAG, run_dir],
                        conf)


def spark_driver(placement: Placement, program: list[str], conf: dict[str, str],
                 env: tuple[tuple[str, str], ...] = ()) -> Launch:
    """spark-submit of program (a .py file and its arguments) on the master, with conf and env,
    the driver bound privately."""
    argv = [placement.python.rsplit("/", 1)[0] + "/spark-submit", "--master",
            placement.spark_master_url]
    for key, value in driver_conf(placement, conf).items():
        argv += ["--conf", f"{key}={value}"]
    argv += program
    return Launch([Process("driver", placement.master, tuple(argv), driver_env(placement, env),
                           main=True)])


def driver_conf(placement: Placement, conf: dict[str, str]) -> dict[str, str]:
    """The confs of a driver on the master (spark-submit's, a notebook kernel's): conf, the
    target's (storage), the hosts' Python, the driver's private address.

    Decommissioning on: when a worker is decommissioned (a spot host's notice), the driver
    stops sending it tasks and its executors hand their cached and shuffle blocks to others."""
    python = placement.python
    return {"spark.pyspark.python": python, "spark.pyspark.driver.python": python,
            "spark.executorEnv.PYTHONUNBUFFERED": "1", "spark.log.level": "WARN",
            "spark.decommission.enabled": "true", "spark.storage.decommission.enabled": "true",
            **conf, **dict(placement.spark_conf), "spark.driver.host": placement.master.privateIp}


def driver_env(placement: Placement, env: tuple[tuple[str, str], ...] = ()
               ) -> tuple[tuple[str, str], ...]:
    """The environment of a driver on the master: Spark's home and its conf folder (the
    cluster's secret), the private address, env, the target's (storage, spot notices)."""
    conf_dir = (("SPARK_CONF_DIR", placement.spark_conf_dir),) if placement.spark_conf_dir else ()
    return (("SPARK_HOME", placement.spark_home), *conf_dir,
            ("SPARK_LOCAL_IP", placement.master.privateIp), ("PYTHONUNBUFFERED", "1"),
            *env, *placement.process_env)


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


# -- checks that run before anything starts --------------------------------------------------

def lazy_check(module: str, function: str) -> Callable[[str], object]:
    """A Flag.check living in a job's own modules (which may import TensorFlow or Spark),
    imported only when a value is checked."""
    return lambda value: getattr(importlib.import_module(module), function)(value)


# -- the jobs: declared by installed packages ------------------------------------------------

@dataclass(frozen=True)
class Declaration:
    """One entry point of the kindling.jobs group: a job's name and where it comes from."""
    entry_point: EntryPoint
    package: str
    """The distribution that declares it (`kindling` for the bundled jobs)."""
    distribution: Distribution | None
    """None for kindling's own jobs read from its checkout's pyproject.toml."""

    @property
    def name(self) -> str:
        return self.entry_point.name

    def load(self) -> Job:
        """The declared Job, or a UserError naming the package and the fix."""
        ep, where = self.entry_point, f"job {self.name!r} of package {self.package}"
        fix = (f"fix its entry point ({self.name} = \"{ep.value}\" under "
               f"[project.entry-points.\"{ENTRY_POINTS}\"] in {self.package}'s pyproject.toml), "
               "then reinstall the package")
        try:
            job = ep.load()
        except Exception as exc:  # the package's own import failed: any error is its own
            raise UserError(f"{where}: {ep.value} does not load ({type(exc).__name__}: "
                            f"{exc}); {fix}") from None
        if not isinstance(job, Job):
            raise UserError(f"{where}: {ep.value} is a {type(job).__name__}, not a "
                            f"workloads.jobs.Job; {fix}")
        taken = [flag.name for flag in job.flags if flag.fab and flag.dest in FAB_OPTIONS]
        if taken:
            raise UserError(f"{where}: its flag {taken[0]} is also an option of fab deploy|run; "
                            "rename the flag, or declare it with fab=False (then it is given "
                            "through --job-args), then reinstall the package")
        if job.name != self.name:
            raise UserError(f"{where}: {ep.value} is the job {job.name!r}; name the entry "
                            f"point after its job ({job.name} = \"{ep.value}\"), then "
                            "reinstall the package")
        return job


def checkout_declarations() -> list[Declaration] | None:
    """kindling's own jobs from its checkout's pyproject.toml (None when kindling runs from an
    installed wheel): an editable install's metadata keeps the entry points of its last
    `pip install`, which may predate the checkout's."""
    pyproject = CHECKOUT / "pyproject.toml"
    if not pyproject.is_file():
        return None
    project = tomllib.loads(pyproject.read_text()).get("project", {})
    if project.get("name") != KINDLING:
        return None
    declared = project.get("entry-points", {}).get(ENTRY_POINTS, {})
    return [Declaration(EntryPoint(name, value, ENTRY_POINTS), KINDLING, None)
            for name, value in declared.items()]


def declarations() -> list[Declaration]:
    """Every kindling.jobs entry point installed (importlib.metadata): kindling's own first,
    then by package and name (a wheel's metadata lists its entry points sorted)."""
    own = checkout_declarations()
    found = list(own or [])
    for ep in entry_points(group=ENTRY_POINTS):
        package = ep.dist.name if ep.dist else "an unknown package"
        if own is None or package.lower() != KINDLING:
            found.append(Declaration(ep, package, ep.dist))
    return sorted(found, key=lambda d: (d.package.lower() != KINDLING, d.package.lower(), d.name))


class Jobs(MutableMapping):
    """name -> Job, loaded from the kindling.jobs entry points on first use (the declarations
    import this module, so it imports them only once it has loaded). A broken entry point (does
    not load, is no Job, a name two packages declare, ...) leaves its job out with one line in
    `broken()`; the other jobs work."""

    def __init__(self) -> None:
        self._jobs: dict[str, Job] | None = None
        self._declared: dict[str, Declaration] = {}
        """name -> where the job comes from."""
        self._problems: dict[str, str] = {}
        """name -> why the job cannot be used, and the fix."""

    def _all(self) -> dict[str, Job]:
        if self._jobs is None:
            by_name: dict[str, list[Declaration]] = {}
            for declared in declarations():
                by_name.setdefault(declared.name, []).append(declared)
            jobs = {}
            for name, declared in by_name.items():
                if len(declared) > 1:
                    self._problems[name] = (
                        f"job {name!r} is declared by " + " and by ".join(
                            f"{d.package} ({d.entry_point.value})" for d in declared)
                        + "; uninstall one of them, or rename its entry point and its job")
                    continue
                try:
                    jobs[name] = declared[0].load()
                    self._declared[name] = declared[0]
                except UserError as exc:
                    self._problems[name] = str(exc)
            self._jobs = jobs
        return self._jobs

    def declared(self, name: str) -> Declaration | None:
        """Where a job comes from (None for a job not declared by an entry point)."""
        self._all()
        return self._declared.get(name)

    def package(self, name: str) -> str:
        """The distribution a job comes from."""
        declared = self.declared(name)
        return declared.package if declared else KINDLING

    def broken(self) -> dict[str, str]:
        """name -> the one line saying why that declared job cannot be used."""
        self._all()
        return dict(self._problems)

    def __getitem__(self, name: str) -> Job:
        return self._all()[name]

    def __setitem__(self, name: str, job: Job) -> None:
        self._all()[name] = job

    def __delitem__(self, name: str) -> None:
        del self._all()[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._all())

    def __len__(self) -> int:
        return len(self._all())

    def __repr__(self) -> str:
        return f"Jobs({', '.join(self._all())})"


JOBS: Jobs = Jobs()


def get_job(name: str) -> Job:
    try:
        return JOBS[name]
    except KeyError:
        if name in JOBS.broken():
            raise UserError(JOBS.broken()[name]) from None
        raise UserError(f"unknown job {name!r}; choose one of: {', '.join(JOBS)} "
                        "(`fab jobs` lists them with their packages)") from None


def __getattr__(name: str):
    """train-ps' plan (TensorFlow roles on their hosts), lent to other jobs: its module
    declares train-ps, which imports this one."""
    if name in ("tf_roles_plan", "TF_PORTS"):
        return getattr(importlib.import_module("workloads.train_ps.job"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
