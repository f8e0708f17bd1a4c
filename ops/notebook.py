"""`fab notebook`: JupyterLab on the master (on --target local, this machine), whose kernels'
`spark` is attached to the cluster's Spark master and storage as a job's driver is.

- On the master only, at the first `fab notebook`: pyproject's `notebook` extra, pinned by
  constraints.txt, into the jobs' venv (the kernel runs with the jobs' packages), from PyPI or
  from `--wheelhouse` as `fab deploy` installs; a deploy that never opens a notebook pays nothing.
- The kernelspec `kindling`: the jobs' Python with a driver's environment (Spark's conf folder,
  which holds the cluster's secret; the storage's) and an IPython profile whose startup file
  makes `spark` with a driver's confs (workloads.jobs.driver_conf, workloads.notebook).
- Bound to the master's private address, reached only through an SSH tunnel with the pinned host
  key. A new token each time (secrets.token_urlsafe), in the server's config file: 0600 in the
  SSH user's 0700 secrets folder, written through stdin, never on a command line.
- The watcher asks Jupyter nothing (the token would let it run code as the SSH user): a kernel
  notes `<pid>.busy` in install.NOTEBOOK_KERNELS while a cell runs, and its idle Spark session
  (named autostop.NOTEBOOK_APP) is no activity.
- Ended (Ctrl-C, SIGTERM, SIGHUP, --seconds): the tunnel, then the server and its kernels.
"""

from __future__ import annotations

import importlib.util
import json
import os
import secrets
import shlex
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from kindling import HostError, UserError
from ops import local
from ops.agent.autostop import NOTEBOOK_APP
from ops.agent.install import NOTEBOOK_KERNELS
from ops.cluster import Progress
from ops.deploy import CONSTRAINTS, wheelhouse_folder
from ops.remote import (HOME, SECRETS, SRV, answers_command, read_stamp, sh, start_daemon,
                        write_private)
from ops.run import write_private_files
from ops.services.base import DeployContext, bring_up, file_digest
from ops.services.host import ship_jars
from ops.services.wheels import PythonDependencies, notebook_requirements
from ops.ssh import tunnel_command, write_private_file
from ops.storage import Access
from workloads.jobs import Placement, driver_conf, driver_env

PORT = 8888
FOLDER = f"{HOME}/notebook"
"""The master's JUPYTER_PATH (the kernelspec), the kernels' IPython profile, the server's pid."""
CONFIG = f"{SECRETS}/notebook/jupyter_server_config.json"
LOG = f"{SECRETS}/notebook/server.log"
"""Beside its config, the SSH user's only (what a server logs is nobody else's)."""
NOTEBOOKS = f"{SRV}/notebooks"
"""The server's root folder on the master: the notebooks stay on its disk."""
KERNEL = "kindling"
START_TIMEOUT = 120
STOP_TIMEOUT = 20


@dataclass
class Session:
    process: subprocess.Popen
    """What fab keeps up: the tunnel (a cluster), the server (the local target)."""
    url: str
    stop: Callable[[], None]
    """Ends the rest: the server and its kernels on the master, the local Spark."""


class NotebookDependencies(PythonDependencies):
    """JupyterLab in the master's venv, where the jobs' packages are; current while the pins are
    (whichever source installed it)."""

    name = stamp = "notebook"
    task = "fab notebook"

    def requirements(self, constraints):
        return [(notebook_requirements(constraints), "")]

    def version(self, ctx):
        return file_digest([ctx.constraints, ctx.constraints.parent / "pyproject.toml"])


def server_config(token: str, address: str, port: int, root: str) -> str:
    """jupyter_server_config.json: the token, the address, no browser, the kindling kernel
    only, nothing fetched from the internet (news, updates, extensions); run by root only on
    this machine as root (a cluster's SSH user is not)."""
    return json.dumps({
        "IdentityProvider": {"token": token},
        "ServerApp": {"ip": address, "port": port, "port_retries": 0, "open_browser": False,
                      "root_dir": root, "allow_root": os.geteuid() == 0},
        "MultiKernelManager": {"default_kernel_name": KERNEL},
        "KernelSpecManager": {"allowed_kernelspecs": [KERNEL]},
        "LabApp": {"news_url": None, "check_for_updates_class": "jupyterlab.NeverCheckForUpdate",
                   "extension_manager": "readonly"},
    }, indent=1)


def kernel_files(folder: str, placement: Placement, access: Access, kernels: str) -> dict[str, str]:
    """Path -> text of the kernelspec (below folder/kernels) and its profile's startup file."""
    conf = driver_conf(placement, access.conf) | {  # no progress bar in the cells' stderr
        "spark.master": placement.spark_master_url, "spark.app.name": NOTEBOOK_APP,
        "spark.ui.showConsoleProgress": "false"}
    profile = f"{folder}/profile"
    spec = {"argv": [placement.python, "-m", "ipykernel_launcher", "-f", "{connection_file}",
                     f"--profile-dir={profile}"],
            "display_name": "PySpark on the cluster (kindling)", "language": "python",
            "env": dict(driver_env(placement, tuple(access.env.items())))}
    startup = ("# fab notebook: `spark` on the cluster, with a job driver's confs\n"
               "from workloads.notebook import attach\n\n"
               f"spark = attach({conf!r}, {kernels!r})\nsc = spark.sparkContext\n")
    return {f"{folder}/kernels/{KERNEL}/kernel.json": json.dumps(spec, indent=1),
            f"{profile}/startup/00-spark.py": startup}


def kernels_marker(folder: str) -> str:
    """The argument only the kernels of this kernelspec have."""
    return f"--profile-dir={folder}/profile"


def wait_answers(url: str, process: subprocess.Popen, what: str) -> None:
    """Poll url until it answers while process lives, within START_TIMEOUT."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        try:
            opener.open(url, timeout=5).close()
            return
        except OSError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            state = f"exited {process.returncode}" if process.poll() is not None else \
                f"no answer within {START_TIMEOUT}s"
            raise UserError(f"{what} ({state})")
        time.sleep(0.2)


# -- on a cluster: the master ------------------------------------------------------------------

def stop_command() -> str:
    """Shell: stop the master's notebook server (it shuts its kernels down), then any kernel of
    the kindling kernelspec a killed server left; idempotent."""
    pid = f"{FOLDER}/server.pid"
    kernels = "[i]pykernel_launcher .*" + kernels_marker(FOLDER)  # [i]: not this shell itself
    return (f"pid=$(cat {pid} 2>/dev/null); if [ -n \"$pid\" ] && kill $pid 2>/dev/null; then "
            f"timeout {STOP_TIMEOUT} sh -c \"while kill -0 $pid 2>/dev/null; do sleep 0.2; done\""
            f" || kill -9 $pid; fi; rm -f {pid}; pkill -9 -u $(id -u) -f {shlex.quote(kernels)}; "
            "true")


def check_deployed(where) -> None:
    """The jobs' venv and kindling on the master, Spark up: what a kernel needs."""
    cxn = where.cluster.connection(where.inventory.master)
    if not all(read_stamp(cxn, stamp) for stamp in ("python-deps", "project")):
        raise UserError("kindling is not deployed on master; run `fab deploy JOB` (any job) "
                        "first")
    if where.spark_status() is None:
        raise UserError("the Spark master is not running; `fab deploy JOB` starts it")


def storage_access(where) -> Access:
    """What reaches the cluster's storage (its root), its private files on every host and its
    jars shipped, as for a run."""
    uris = [where.storage.root] if where.storage.root else []
    access = where.storage.access(uris, "")
    write_private_files(where.cluster, access)
    jars = where.storage.jars(uris)
    if jars:
        ship_jars(where.cluster, jars)
    return access


def on_cluster(where, wheelhouse: str | None) -> Session:
    """JupyterLab on the master (installed once), the tunnel to it open and answering."""
    inventory = where.inventory
    master = inventory.master
    ctx = DeployContext(inventory, CONSTRAINTS, None, wheelhouse_folder(wheelhouse))
    check_deployed(where)
    cxn = where.cluster.connection(master)
    bring_up(master, cxn, (NotebookDependencies(),), ctx, Progress((master,)))
    placement = where.placement(None)
    files = kernel_files(FOLDER, placement, storage_access(where), NOTEBOOK_KERNELS)
    writes = [f"mkdir -p {shlex.quote(path.rsplit('/', 1)[0])} && printf %s {shlex.quote(text)} "
              f"> {shlex.quote(path)}" for path, text in files.items()]
    sh(cxn, " && ".join([*writes, f"mkdir -p -m 755 {NOTEBOOKS} {NOTEBOOK_KERNELS}",
                         f"chmod 755 {NOTEBOOK_KERNELS}"]), what="writing the notebook kernel")
    token = secrets.token_urlsafe(32)
    write_private(cxn, CONFIG, server_config(token, master.privateIp, PORT, NOTEBOOKS),
                  what="writing the notebook server's token")

    def stop() -> None:
        sh(cxn, stop_command(), timeout=STOP_TIMEOUT + 30, what="stopping the notebook server")

    stop()  # one a killed fab left
    sh(cxn, start_daemon(shlex.join(["env", f"JUPYTER_PATH={FOLDER}", placement.python, "-m",
                                     "jupyterlab", f"--config={CONFIG}"]), LOG,
                         f"{FOLDER}/server.pid"),
       what="starting JupyterLab")
    try:
        try:
            sh(cxn, answers_command(f"http://{master.privateIp}:{PORT}/api", START_TIMEOUT),
               timeout=START_TIMEOUT + 30, what="starting JupyterLab")
        except HostError as exc:
            log = sh(cxn, f"tail -n 3 {LOG} | cut -c1-200 || true")
            raise HostError(master.name, "master", "starting JupyterLab",
                            f"{exc}; its log ({LOG}) ends: {log}") from None
        [port] = local.free_ports(1)
        tunnel = subprocess.Popen(tunnel_command(inventory, master, [(port, PORT)]),
                                  stdin=subprocess.DEVNULL)
        url = f"http://127.0.0.1:{port}/"
        wait_answers(url + "api", tunnel, f"the SSH tunnel to {master.name}'s JupyterLab "
                                          f"(127.0.0.1:{port}) failed")
    except BaseException:
        stop()
        raise
    return Session(tunnel, f"{url}lab?token={token}", stop)


# -- on this machine ---------------------------------------------------------------------------

def stop_local_kernels(folder: str) -> None:
    """Kill the kernels of the local kindling kernelspec a killed server left."""
    marker = kernels_marker(folder).encode()
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and marker in (proc / "cmdline").read_bytes().split(b"\0"):
                os.kill(int(proc.name), signal.SIGKILL)
        except OSError:
            continue


def on_local(where) -> Session:
    """JupyterLab on 127.0.0.1, its kernels' `spark` on the local Spark cluster."""
    if importlib.util.find_spec("jupyterlab") is None:
        raise UserError("JupyterLab is not installed on this machine; pip install -c "
                        "constraints.txt -e '.[notebook]'")
    folder = (local.STATE_DIR / "notebook").resolve()
    users = where.spark.acquire()

    def stop() -> None:
        stop_local_kernels(str(folder))
        where.spark.release(users)

    try:
        for path, text in kernel_files(str(folder), where.placement(None), Access({}, {}),
                                       "").items():
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            Path(path).write_text(text)
        [port] = local.free_ports(1)
        token = secrets.token_urlsafe(32)
        config = folder / "secrets" / "jupyter_server_config.json"
        config.parent.mkdir(mode=0o700, exist_ok=True)
        write_private_file(config, server_config(token, "127.0.0.1", port, os.getcwd()))
        with open(config.parent / "server.log", "w") as log:  # private, as on the master
            server = subprocess.Popen([sys.executable, "-m", "jupyterlab", f"--config={config}"],
                                      env=os.environ | {"JUPYTER_PATH": str(folder)},
                                      stdin=subprocess.DEVNULL, stdout=log, stderr=log)
        url = f"http://127.0.0.1:{port}/"
        try:
            wait_answers(url + "api", server,
                         f"JupyterLab did not start; see {config.parent}/server.log")
        except BaseException:
            server.kill()
            server.wait()
            raise
    except BaseException:
        stop()
        raise
    return Session(server, f"{url}lab?token={token}", stop)


def open_session(where, wheelhouse: str | None) -> Session:
    """The notebook on the cluster's master, or (the local target) on this machine."""
    from ops.targets import ClusterTarget

    if isinstance(where, ClusterTarget):
        return on_cluster(where, wheelhouse)
    if wheelhouse:
        raise UserError("--wheelhouse is for cluster hosts; the local target uses this machine's "
                        "installation")
    return on_local(where)
