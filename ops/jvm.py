"""JVM jars beyond what pyspark bundles, from Maven Central: hadoop-aws for Spark's S3A, and
the HDFS daemons (NameNode, DataNode) for a cluster with `hdfs: true`.

Resolved on the control machine by Ivy, the resolver Spark's own `--packages` uses (its jar ships
inside pyspark), at the Hadoop version pyspark bundles, so the S3A client always matches Spark's
Hadoop. Ivy checks Maven Central's sha1 files as it downloads; the jars it retrieves must then
match ops/jars.lock (sha256), so a deploy never ships a jar nobody pinned. Resolved once per
version into a cache folder; hosts get the same bytes from there.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
from pathlib import Path
from typing import NamedTuple
from xml.sax.saxutils import quoteattr

from kindling import UserError
from ops.locks import exclusive


class Artifact(NamedTuple):
    group: str
    name: str
    classifiers: tuple[str, ...] = ()
    """Extra jars of the same module (`tests`), besides its main jar."""


FEATURES: dict[str, tuple[Artifact, ...]] = {
    "s3a": (Artifact("org.apache.hadoop", "hadoop-aws"),),
    # the NameNode's and DataNode's web UIs (webapps/) ship only in hadoop-hdfs' tests jar
    "hdfs": (Artifact("org.apache.hadoop", "hadoop-hdfs", ("tests",)),
             Artifact("org.apache.hadoop", "hadoop-hdfs-client"),
             Artifact("org.apache.hadoop", "hadoop-common")),
}
"""Feature -> the artifacts it adds, each at the bundled Hadoop version; Ivy brings their
runtime dependencies (hadoop-aws: the AWS SDK v2 bundle; HDFS: Hadoop's common libraries)."""
LOCK = Path(__file__).with_name("jars.lock")
RESOLVE_TIMEOUT = 1800
MAVEN_CENTRAL = "https://repo1.maven.org/maven2/"


def cache_root() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "kindling" / "jars"


def bundled_hadoop_version(spark_home: Path) -> str:
    """The Hadoop version of pyspark's own client jars (jars/hadoop-client-api-X.jar)."""
    found = sorted((spark_home / "jars").glob("hadoop-client-api-*.jar"))
    if not found:
        raise UserError(f"{spark_home} has no jars/hadoop-client-api-*.jar; reinstall pyspark "
                        "(pip install -c constraints.txt pyspark)")
    return found[0].name.removeprefix("hadoop-client-api-").removesuffix(".jar")


def ivy_module(feature: str, version: str) -> str:
    """An ivy.xml that depends on the feature's artifacts (their default, runtime, conf)."""
    dependencies = []
    for artifact in FEATURES[feature]:
        name = quoteattr(artifact.name)
        jars = "".join([f'<artifact name={name} type="jar"/>', *(
            f'<artifact name={name} type="jar" m:classifier={quoteattr(c)}/>'
            for c in artifact.classifiers)]) if artifact.classifiers else ""
        dependencies.append(f"<dependency org={quoteattr(artifact.group)} name={name} "
                            f'rev={quoteattr(version)} conf="default->default">{jars}</dependency>')
    return ('<ivy-module version="2.0" xmlns:m="http://ant.apache.org/ivy/maven">'
            f'<info organisation="kindling" module={quoteattr("jars-" + feature)}/>'
            f"<dependencies>{''.join(dependencies)}</dependencies></ivy-module>")


def sha256(path: Path) -> str:
    with open(path, "rb") as file:
        return hashlib.file_digest(file, "sha256").hexdigest()


def sums(digests: dict[str, str]) -> str:
    """jar name -> sha256 as `sha256sum -c` reads it (the hosts check the jars with it)."""
    return "\n".join(f"{digest}  {name}" for name, digest in sorted(digests.items()))


def locked(feature: str, lock: Path = LOCK) -> dict[str, str]:
    """jar name -> sha256 the lock pins for the feature (lines `SHA256  feature/NAME.jar`)."""
    pinned = {}
    for line in lock.read_text().splitlines() if lock.is_file() else []:
        if line.strip() and not line.startswith("#"):
            digest, path = line.split()
            if path.startswith(feature + "/"):
                pinned[path.split("/", 1)[1]] = digest
    return pinned


def resolve(feature: str, spark_home: Path, lock: Path = LOCK) -> Path:
    """The folder of the feature's jars, resolved by Ivy once (cached) and checked against the
    lock; UserError naming the jar that differs or the resolver's last problem."""
    version = bundled_hadoop_version(spark_home)
    folder = cache_root() / version / feature
    pinned = locked(feature, lock)
    if not pinned:
        raise UserError(f"{lock} pins no jar for {feature}; run `fab jars --lock` and commit it")
    with one_resolver():
        if not _matches(folder, pinned):
            print(f"{feature} jars: resolving Hadoop {version}'s from Maven Central into {folder} "
                  "(once per machine)...", flush=True)
            _ivy_retrieve(feature, version, spark_home, folder)
            jars = {jar.name: sha256(jar) for jar in folder.glob("*.jar")}
            if jars != pinned:
                differ = sorted(set(jars.items()) ^ set(pinned.items()))[0][0]
                raise UserError(f"{feature} jars resolved for Hadoop {version} differ from {lock} "
                                f"({differ}); if pyspark's pin changed on purpose, run `fab jars "
                                "--lock` and commit the lock")
            (folder / ".verified").write_text(sums(jars))
    return folder


def one_resolver():
    """One fab at a time resolves or checks jars on this machine: two Ivy processes sharing the
    cache read each other's half-downloaded files (`Downloaded file size (0) doesn't match`)."""
    lock = cache_root() / ".resolving.lock"
    busy = UserError(f"another fab held {lock} (resolving jars) for over {RESOLVE_TIMEOUT}s; "
                     "end it and retry")
    return exclusive(lock, RESOLVE_TIMEOUT, busy)


def _matches(folder: Path, pinned: dict[str, str]) -> bool:
    """Verified before with the same pins (hashing 700 MB on every command would be slow)."""
    stamp = folder / ".verified"
    return stamp.is_file() and stamp.read_text() == sums(pinned) and all(
        (folder / name).is_file() for name in pinned)


def _ivy_retrieve(feature: str, version: str, spark_home: Path, folder: Path) -> None:
    ivy = sorted((spark_home / "jars").glob("ivy-*.jar"))
    if not ivy:
        raise UserError(f"{spark_home}/jars has no ivy-*.jar to resolve the {feature} jars with; "
                        "reinstall pyspark")
    folder.mkdir(parents=True, exist_ok=True)
    module = folder.parent / f"ivy-{feature}.xml"
    module.write_text(ivy_module(feature, version))
    command = ["java", "-jar", str(ivy[-1]), "-ivy", str(module), "-confs", "default",
               "-cache", str(cache_root() / "ivy-cache"), "-sync",
               "-retrieve", f"{folder}/[artifact]-[revision](-[classifier]).[ext]"]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=RESOLVE_TIMEOUT,
                              stdin=subprocess.DEVNULL)
    except FileNotFoundError:
        raise UserError(f"resolving the {feature} jars needs Java on this machine; install it "
                        "(Debian/Ubuntu: apt-get install default-jre-headless)") from None
    except subprocess.TimeoutExpired:
        raise UserError(f"resolving the {feature} jars from {MAVEN_CENTRAL} took over "
                        f"{RESOLVE_TIMEOUT}s; check this machine's access to Maven Central") from None
    if done.returncode:
        problems = [line.strip() for line in (done.stdout + done.stderr).splitlines()
                    if "::" not in line and ("not found" in line or "ERROR" in line
                                             or "failed" in line.lower())]
        raise UserError(f"resolving the {feature} jars (Hadoop {version}) from Maven Central "
                        f"failed: {(problems or ['ivy exit ' + str(done.returncode)])[0][:200]}; "
                        f"check this machine's access to {MAVEN_CENTRAL}")


def write_lock(spark_home: Path, lock: Path = LOCK) -> list[str]:
    """Resolve every feature afresh and pin what Ivy retrieved: the lock's new lines."""
    version = bundled_hadoop_version(spark_home)
    lines = [f"# jars Spark gets beyond pyspark's, for Hadoop {version} (ops/jvm.py; "
             "`fab jars --lock` rewrites this)"]
    with one_resolver():
        for feature in FEATURES:
            folder = cache_root() / version / feature
            _ivy_retrieve(feature, version, spark_home, folder)
            jars = {jar.name: sha256(jar) for jar in folder.glob("*.jar")}
            (folder / ".verified").write_text(sums(jars))  # what resolve() would check again
            lines += [f"{digest}  {feature}/{name}" for name, digest in sorted(jars.items())]
    lock.write_text("\n".join(lines) + "\n")
    return lines
