"""The hosts' basics, the first service `fab deploy` runs on every host: kindling's folders,
cloud-init finished, Java and python3-venv, the job dependencies and your requirements
(ops.services.wheels), kindling's own wheel and that of the package the job comes from, the job's data; and the JVM jars a feature ships to the hosts.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

from kindling import Host, HostError
from ops.cluster import Cluster, Progress
from ops.remote import (COMMAND_TIMEOUT, DATA, HOME, INSTALL_TIMEOUT, PYTHON, RUNS, SPARK_STATE,
                        SRV, STAMPS, jar_folder, ok, read_stamp, sh, where, write_stamp)
from ops.services.base import DeployContext, Service, Step, bring_up, file_digest
from ops.services.wheels import (PythonDependencies, ServedWheelhouse, WheelhouseServer,
                                 YourRequirements, push_files)
from ops.storage.staging import push_missing, staged_check


class CloudInit(Step):
    """Wait for cloud-init to finish before touching the host: its first-boot apt run holds
    the dpkg lock and installs the packages BasePackages would otherwise race it for.

    A host has cloud-init when the command exists and /run/cloud-init does (made at boot by
    its generator, or by its first stage): a cloud-init package that never runs (a container,
    the netns test hosts) is skipped instead of waited for forever.
    """

    name = "cloud-init"
    timeout = 900
    """Seconds to wait for cloud-init's modules (packages included) to finish."""
    run_dir = "/run/cloud-init"

    def is_current(self, cxn, host, ctx):
        present = f"command -v cloud-init >/dev/null && test -d {self.run_dir}"
        return ok(cxn, f"! {{ {present}; }} || cloud-init status 2>/dev/null | "
                       "grep -Eq '^status: (done|error|disabled)'")

    def install(self, cxn, host, ctx):
        # exit 1/2 (error, degraded) still means finished: later steps check what they need
        waited = cxn.run(f"timeout {self.timeout} cloud-init status --wait >/dev/null 2>&1",
                         hide=True, warn=True, timeout=self.timeout + COMMAND_TIMEOUT,
                         in_stream=False)
        if waited.exited == 124:
            raise HostError(*where(cxn), "waiting for cloud-init",
                            f"still running after {self.timeout}s; see /var/log/cloud-init-output.log "
                            f"on the host (`fab ssh --host {host.name}`), then retry `fab deploy`")


class BasePackages(Step):
    """Java >= 17 for Spark (any the host has: Spark 4 runs on 17 and 21) and python3-venv,
    via sudo apt-get, only when missing. default-jre-headless: 17 on Debian 12, 21 on
    Debian 13 and Ubuntu 24.04."""

    name = "base packages"
    packages = ("default-jre-headless", "python3-venv")
    min_java = 17
    lock_timeout = 600
    """Seconds apt-get waits for another apt run (unattended-upgrades, cloud-init) to finish."""
    lock_poll = 5
    check = ("v=$(java -version 2>&1 | sed -n 's/.*version \"\\([0-9]*\\).*/\\1/p' | head -1); "
             f"[ \"${{v:-0}}\" -ge {min_java} ] && python3 -c 'import ensurepip, venv'")

    def is_current(self, cxn, host, ctx):
        return ok(cxn, self.check)

    def install(self, cxn, host, ctx):
        done = cxn.run(self.apt_script(), hide=True, warn=True, in_stream=False,
                       timeout=2 * self.lock_timeout + INSTALL_TIMEOUT)
        if done.exited and "Could not get lock" in done.stderr:
            raise HostError(*where(cxn), "apt-get", "another apt run held the package lock for "
                            f"over {self.lock_timeout}s (unattended-upgrades?); retry `fab deploy` "
                            "when it finishes")
        if done.exited:
            detail = (done.stderr.strip() or done.stdout.strip()).splitlines()[-1:] or ["no output"]
            raise HostError(*where(cxn), f"apt-get install of {' '.join(self.packages)}",
                            f"exit {done.exited}: {detail[0]}")
        if not self.is_current(cxn, host, ctx):
            raise HostError(*where(cxn), "base packages", f"Java {self.min_java}+ or "
                            "python3-venv still missing after apt-get (this release's "
                            f"default-jre-headless is older): install openjdk-{self.min_java}-"
                            "jre-headless or use Ubuntu 24.04")

    def apt_script(self) -> str:
        """apt-get update then install, each waiting up to lock_timeout for the apt locks:
        install through DPkg::Lock::Timeout; update, which ignores it for its lists lock,
        retried while the lock is held."""
        apt = ("sudo -n env DEBIAN_FRONTEND=noninteractive apt-get -q "
               f"-o DPkg::Lock::Timeout={self.lock_timeout}")
        return (f"end=$(($(date +%s) + {self.lock_timeout})); "
                f"until out=$({apt} update 2>&1); do "
                "case $out in *'Could not get lock'*) [ $(date +%s) -lt $end ] && "
                f"sleep {self.lock_poll} && "
                "continue;; esac; echo \"$out\" >&2; exit 100; done; "
                f"{apt} install -y {' '.join(self.packages)}")


class Layout(Step):
    """kindling's folders, owned by the SSH user (created with sudo once)."""

    name = "folders"

    def is_current(self, cxn, host, ctx):
        return ok(cxn, f"test -w {HOME} -a -w {SRV}")

    def install(self, cxn, host, ctx):
        user = ctx.inventory.sshUser
        sh(cxn, f"sudo -n mkdir -p {HOME} {SRV} && sudo -n chown {user}: {HOME} {SRV}",
           what="creating /opt/kindling and /srv/kindling")
        sh(cxn, f"mkdir -p {STAMPS} {DATA} {RUNS} {SPARK_STATE}")


class JvmJars(Step):
    """One feature's jars (ops.jvm: S3A, HDFS) in /opt/kindling/jars/FEATURE on a host: the
    bytes pinned by ops/jars.lock, checked again with sha256sum on the host."""

    def __init__(self, feature: str):
        self.feature = feature
        self.name = f"{feature} jars"

    def is_current(self, cxn, host, ctx):
        return self.feature not in ctx.jars or read_stamp(cxn, self.name.replace(" ", "-")) == \
            self.version(ctx)

    def version(self, ctx: DeployContext) -> str:
        return file_digest([ctx.jars[self.feature] / ".verified"])

    def install(self, cxn, host, ctx):
        local, remote = ctx.jars[self.feature], jar_folder(self.feature)
        push_files(cxn, host, ctx.inventory, sorted(local.glob("*.jar")), remote,
                   f"copying the {self.name}")
        cxn.put(str(local / ".verified"), f"{remote}/SHA256SUMS")
        sh(cxn, f"cd {remote} && sha256sum --quiet -c SHA256SUMS", timeout=INSTALL_TIMEOUT,
           what=f"checking the {self.name}")
        write_stamp(cxn, self.name.replace(" ", "-"), self.version(ctx))


class ProjectWheel(Step):
    """kindling itself, as a wheel built on the control machine (reinstalled when it changes)."""

    name = "kindling wheel"

    def wheel(self, ctx: DeployContext) -> Path | None:
        return ctx.project_wheel

    def stamp(self, wheel: Path) -> str:
        return "project"

    def check(self, wheel: Path) -> str:
        """Python that fails unless the wheel's package is installed."""
        return "import kindling, workloads"

    def is_current(self, cxn, host, ctx):
        """The stamp matches and the venv has it (a venv made anew, e.g. after a Python
        upgrade, keeps no package: the stamp alone would lie)."""
        wheel = self.wheel(ctx)
        return wheel is None or read_stamp(cxn, self.stamp(wheel)) == wheel.parent.name and ok(
            cxn, f"{PYTHON} -c {shlex.quote(self.check(wheel))}")

    def install(self, cxn, host, ctx):
        wheel = self.wheel(ctx)
        remote = f"{HOME}/{wheel.name}"
        cxn.put(str(wheel), remote)
        sh(cxn, f"{PYTHON} -m pip install -q --disable-pip-version-check --no-deps "
                f"--force-reinstall {remote}", timeout=INSTALL_TIMEOUT,
           what=f"installing {wheel.name}")
        write_stamp(cxn, self.stamp(wheel), wheel.parent.name)


class PackageWheel(ProjectWheel):
    """The package a job comes from (its kindling.jobs entry point), as its wheel built on the
    control machine, beside kindling (its dependencies: kindling's)."""

    name = "package wheel"

    def wheel(self, ctx):
        return ctx.package_wheel

    def stamp(self, wheel):
        return package_stamp(wheel.name.split("-")[0])

    def check(self, wheel):
        return f"import importlib.metadata as m; m.distribution({wheel.name.split('-')[0]!r})"


def package_stamp(distribution: str) -> str:
    """The stamp of a package's wheel on the hosts: `package-` and its normalized name."""
    return "package-" + re.sub(r"[-_.]+", "-", distribution).lower()


class StagedData(Step):
    """Data and weights the job reads, pushed to the same path on every host."""

    name = "data"

    def is_current(self, cxn, host, ctx):
        checks = " && ".join(staged_check(r) for r in ctx.staged.values())
        return not checks or ok(cxn, checks)

    def install(self, cxn, host, ctx):
        push_missing(cxn, {Path(local): remote for local, remote in ctx.staged.items()})


class HostBasics(Service):
    """Every step every host needs, in order on each host, every host at once. With a
    wheelhouse, the master serves it to the hosts that need it (see ServedWheelhouse): its
    upload overlaps the other hosts' cloud-init."""

    steps = (Layout(), WheelhouseServer(), CloudInit(), BasePackages(), PythonDependencies(),
             YourRequirements(), ProjectWheel(), PackageWheel(), StagedData())
    """Your requirements before the package's wheel: its stamp, which `fab run` checks, then
    says its dependencies are there too."""

    def deploy(self, cluster, ctx):
        progress = Progress(cluster.inventory.hosts)
        master = cluster.inventory.master
        if ctx.wheelhouse:
            stale = [name for name, current in cluster.parallel(
                lambda host, cxn: PythonDependencies().is_current(cxn, host, ctx)
                and YourRequirements().is_current(cxn, host, ctx)).items()
                if not current and name != master.name]
            ctx.served = ServedWheelhouse(master) if stale else None

        def install(host: Host, cxn) -> None:
            serves = bool(ctx.served) and host == master
            steps = tuple(s for s in self.steps if (not isinstance(s, WheelhouseServer) or serves)
                          and (not isinstance(s, PackageWheel) or ctx.package_wheel)
                          and (not isinstance(s, YourRequirements) or ctx.lock))
            try:
                bring_up(host, cxn, steps, ctx, progress)
            finally:
                if serves:
                    ctx.served.publish(None)  # no-op once published: a waiting host never hangs

        try:
            cluster.parallel(install)
        finally:
            if ctx.served:
                sh(cluster.connection(master), ctx.served.stop_command(),
                   what="stopping the wheelhouse server")
        progress.done("hosts ready")


def ship_jars(cluster: Cluster, features: set[str]) -> None:
    """A feature's JVM jars (ops.jvm) on every host that lacks them, resolved here first and
    checked against the lock."""
    from ops import jvm
    from ops.local import local_spark_home

    ctx = DeployContext(cluster.inventory, Path(), None, jars={
        feature: jvm.resolve(feature, Path(local_spark_home())) for feature in sorted(features)})
    progress = Progress(cluster.inventory.hosts)
    steps = tuple(JvmJars(feature) for feature in sorted(features))
    cluster.parallel(lambda host, cxn: bring_up(host, cxn, steps, ctx, progress))
