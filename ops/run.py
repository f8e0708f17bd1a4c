"""One run, from `fab run|deploy JOB ...` to its results folder.

The job's arguments are resolved once into a `RunRequest` (offline defaults, --output, the
resume of a run a spot interruption stopped, what the job would download, the storage locations
it reads), all checked on this machine before anything starts on a host. Then the target
deploys (`fab deploy`), prepares its hosts and places the data (ops.targets), the job plans its
processes, ops.launch starts and follows them, the results come back (ops.results), and a
failure is explained by the target's services.
"""

from __future__ import annotations

import os
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from kindling import KindlingError, UserError
from ops import runs
from ops.cluster import console
from ops.launch import Run
from ops.remote import write_private
from workloads.common import describe_notice, new_run_id
from workloads.jobs import Download, Job, split_output

if TYPE_CHECKING:
    from ops.requirements import Requirements
    from ops.targets import Target

DOWNLOAD_CHECK_TIMEOUT = 10


@dataclass(frozen=True)
class RunRequest:
    """A run's arguments, resolved and checked once."""
    job: Job
    args: list[str]
    """As given, plus offline defaults and the resume flag, without --output."""
    run_id: str
    run_dir: str
    """Where the run's processes keep their files on the hosts."""
    locations: list[str]
    """The storage locations it reads (ops.storage), checked from here; once prepared, as the
    hosts see them (local data put in the cluster's storage included)."""
    requirements: "Requirements | None" = None
    """What to install beside kindling's dependencies: --requirements FILE, and on a cluster the
    dependencies of the package the job comes from (ops.requirements)."""

    def local_paths(self, stored: bool | None = None) -> dict[str, Path]:
        """Each value of the job's path flags naming a local file or folder -> that path here;
        only those of flags that may (stored=True) or may not (False) be storage locations."""
        return {value: Path(value).expanduser().resolve()
                for _, value in self.job.path_values(self.args, stored=stored)}


def resolve(target: "Target", job: Job, args: list[str], fresh: bool,
            requirements: str | None = None) -> RunRequest:
    """args checked and completed; bad flags, data, downloads or requirements files refused
    before anything starts."""
    args, output = split_output(job.with_offline_defaults(args))
    if not fresh:
        args = resume_interrupted(job, args)
    run_id = new_run_id(job.run_name)
    run_dir = target.run_folder(run_id, output)
    check_downloads(job.downloads(job.parse(args)))
    locations = job.uri_values(args)
    target.storage.check(locations)
    target.check(job)
    return RunRequest(job, args, run_id, run_dir, locations, target.requirements(job, requirements))


def run(target: "Target", job: Job, args: list[str], timeout: float, detach: bool = False,
        deploy: bool = False, wheelhouse: str | None = None, fresh: bool = False,
        requirements: str | None = None) -> Path | None:
    """(Deploy and) launch job; its results folder, or None when detached. A job whose last run
    a spot interruption stopped resumes from it (unless fresh)."""
    request = resolve(target, job, args, fresh, requirements)
    if deploy:
        target.deploy(request, wheelhouse)
    try:
        started = time.time()
        launched = launch(target, target.prepare(request))
        if detach:
            console.print(f"detached: {request.run_id}")
            console.print(f"follow it with `fab logs --job {job.name}`, stop it with "
                          f"`fab stop --job {job.name}`")
            return None
        return follow(target, request, launched, timeout, started)
    finally:
        if not detach:
            target.release(job)


def launch(target: "Target", prepared: RunRequest) -> Run:
    """The job's plan for the target's placement (the request as the hosts see it), with what
    its storage needs (its private files written on every host first), started."""
    job = prepared.job
    access = target.storage.access(prepared.locations, target.storage.run_location(prepared.run_id))
    write_private_files(target.cluster, access)
    placement = target.placement(job)
    placement = replace(placement, spark_conf=tuple(access.conf.items()),
                        process_env=placement.process_env + tuple(access.env.items()))
    plan = job.plan(job, placement, prepared.args, prepared.run_dir)
    started = Run(prepared.run_id, prepared.run_dir, plan.processes, target.cluster,
                  files=plan.files, folders=plan.folders, noise=plan.noise)
    started.start()
    return started


def write_private_files(cluster, access) -> None:
    """The storage's private files (its credentials) written on every host, 0600."""
    def write_files(host, cxn) -> None:
        for path, text in access.private.items():
            write_private(cxn, path, text, what=f"writing {path}")

    if access.private:
        cluster.parallel(write_files)


def follow(target: "Target", request: RunRequest, launched: Run, timeout: float,
           started: float) -> Path:
    """Stream the run until it ends; its results, or its failure explained (naming the host)."""
    launched.stream()
    try:
        launched.wait(timeout)
    except KindlingError as exc:
        results = target.results(launched, started)
        notices = target.spot_notices()
        if notices:
            runs.record_interruption(results, list(notices.values()),
                                     target.storage.run_location(request.run_id) or str(results))
        raise KindlingError(f"{target.explain(request.job, exc, results, notices)}; logs in "
                            f"{os.path.relpath(results)}") from None
    results = target.results(launched, started)
    for notice in target.spot_notices().values():
        console.print(f"note: {describe_notice(notice)}, during the run"
                      + ("; Spark decommissioned its worker and the job finished on "
                         "the others" if request.job.uses_spark else ""))
    return results


def resume_interrupted(job: Job, args: list[str]) -> list[str]:
    """args plus the job's resume flag, naming its last run, when a spot interruption stopped
    that run (and args choose no run to resume)."""
    if not job.resume or job.given(args, job.resume):
        return args
    interrupted = runs.interrupted_run(job.run_name)
    if interrupted is None:
        return args
    run_id, record = interrupted
    hosts = ", ".join(notice["host"] for notice in record["notices"])
    console.print(f"resuming {run_id} (stopped by a spot interruption on {hosts}) from its last "
                  f"checkpoint: {job.resume} {record['resume']} (--fresh starts over)")
    return [*args, job.resume, record["resume"]]


def check_downloads(downloads: list[Download]) -> None:
    """Everything the job would download is reachable, or one line naming it and the fix.

    Any HTTP answer counts as reachable; a proxy in $https_proxy is honoured, as Keras does."""
    for download in downloads:
        try:
            request = urllib.request.Request(download.url, method="HEAD")
            urllib.request.urlopen(request, timeout=DOWNLOAD_CHECK_TIMEOUT).close()
        except urllib.error.HTTPError:
            continue
        except (OSError, ValueError) as exc:
            reason = getattr(exc, "reason", exc)
            raise UserError(f"cannot fetch {download.what} from {download.url} ({reason}); "
                            f"{download.fix}") from None
