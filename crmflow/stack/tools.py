"""Finding the programs the local stack needs, and fetching its Java parts from Maven Central."""

from __future__ import annotations

import glob
import logging
import os
import re
import shutil
import socket
import subprocess
import tarfile
from pathlib import Path

from crmflow.exceptions import MissingToolError, StackError

log = logging.getLogger(__name__)

STACK_PKG_DIR = Path(__file__).resolve().parent
APT_HINT = "install it with: apt-get install -y {pkg}"


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now (the OS picks it), for a private service or a test's own."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def ephemeral_ports() -> tuple[int, int]:
    """The OS's range of ports for outgoing connections (Linux: ``ip_local_port_range``; else IANA's)."""
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 49152, 65535


def port_hint(port: int) -> str:
    """Why ``port`` is a poor pick for a server, or "": one in the ephemeral range may be taken at any moment as
    the local end of some client's connection (a test's, the stack's own), and the server then cannot start."""
    low, high = ephemeral_ports()
    if low <= port <= high:
        return f"it lies in this machine's ephemeral port range (from {low} to {high}), which client " \
            f"connections take; pick one below {low}"
    return ""


def ensure_port_free(port: int, setting: str, part: str) -> None:
    """StackError naming ``setting`` when nothing could listen on 127.0.0.1:``port`` now (what ``part`` is about
    to do); a port left in TIME_WAIT counts as free, as it does for the servers (SO_REUSEADDR)."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError as exc:
            hint = port_hint(port)
            raise StackError(f"{part} cannot listen on 127.0.0.1:{port} ({exc.strerror}): another process holds "
                             f"the port; set {setting} to a free one" + (f" ({hint})" if hint else "")) from None


def require(tool: str, debian_package: str) -> str:
    path = shutil.which(tool)
    if not path:
        raise MissingToolError(tool, APT_HINT.format(pkg=debian_package))
    return path


def java() -> str:
    """A java >= 17 (JAVA_HOME first, then PATH)."""
    home = os.environ.get("JAVA_HOME")
    candidate = str(Path(home) / "bin" / "java") if home else shutil.which("java")
    if not candidate or not Path(candidate).exists():
        raise MissingToolError("java", APT_HINT.format(pkg="openjdk-17-jre-headless"))
    out = subprocess.run([candidate, "-version"], capture_output=True, text=True, check=False).stderr
    m = re.search(r'version "(\d+)', out)
    if not m or int(m.group(1)) < 17:
        raise MissingToolError("java >= 17", APT_HINT.format(pkg="openjdk-17-jre-headless"))
    return candidate


def nginx() -> str:
    """Debian's nginx (in /usr/sbin, off a normal user's PATH): the secure stack's TLS + auth proxy."""
    path = shutil.which("nginx") or next((p for p in ("/usr/sbin/nginx",) if Path(p).exists()), None)
    if not path:
        raise MissingToolError("nginx", APT_HINT.format(pkg="nginx"))
    return path


def postgres_bindir() -> Path:
    """The bin dir of the newest PostgreSQL >= 15 server installed (Debian keeps them off PATH)."""
    dirs = sorted(
        (Path(d) for d in glob.glob("/usr/lib/postgresql/*/bin") if (Path(d) / "initdb").exists()),
        key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0,
    )
    dirs = [d for d in dirs if d.parent.name.isdigit() and int(d.parent.name) >= 15]
    if dirs:
        return dirs[-1]
    on_path = shutil.which("initdb")
    if on_path:
        return Path(on_path).resolve().parent
    raise MissingToolError("initdb (PostgreSQL >= 15 server)", APT_HINT.format(pkg="postgresql"))


def _mvn(args: list[str], cwd: Path) -> None:
    mvn = require("mvn", "maven")
    cmd = [mvn, "-B", "-q", *args]
    log.info("fetching from Maven Central: %s", " ".join(args[-3:]))
    res = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, check=False)
    if res.returncode != 0:
        raise StackError(f"maven failed ({' '.join(cmd)}):\n{(res.stdout + res.stderr)[-3000:]}")


def fetch_kafka(dist_dir: Path, version: str) -> Path:
    """The directory of Kafka jars for ``version``, fetched once into ``dist_dir``."""
    libs = dist_dir / f"kafka-{version}" / "libs"
    if libs.is_dir() and any(libs.glob("kafka_2.13-*.jar")):
        return libs
    dist_dir.mkdir(parents=True, exist_ok=True)
    # Run the pom from a copy in the cache dir, so Maven's target/ never lands in site-packages.
    pom = dist_dir / "pom.xml"
    shutil.copyfile(STACK_PKG_DIR / "pom.xml", pom)
    _mvn(["-f", str(pom), "package", f"-Dkafka.version={version}", f"-Dstack.dir={dist_dir}"], cwd=dist_dir)
    return libs


def fetch_apicurio(dist_dir: Path, version: str) -> Path:
    """The runnable jar of Apicurio Registry's ``all`` assembly, fetched and unpacked once."""
    target = dist_dir / f"apicurio-{version}"
    jar = _runner_jar(target)
    if jar:
        return jar
    dl = dist_dir / "downloads"
    dl.mkdir(parents=True, exist_ok=True)
    artifact = f"io.apicurio:apicurio-registry-app:{version}:tar.gz:all"
    # The assembly's parent pom is not on Maven Central, so resolve it without its descriptor's
    # dependencies first (get, non-transitive), then copy it out of the local repository.
    _mvn(["dependency:get", f"-Dartifact={artifact}", "-Dtransitive=false"], cwd=dl)
    _mvn(["dependency:copy", f"-Dartifact={artifact}", f"-DoutputDirectory={dl}"], cwd=dl)
    archive = dl / f"apicurio-registry-app-{version}-all.tar.gz"
    tmp = target.with_suffix(".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    with tarfile.open(archive) as tf:
        tf.extractall(tmp, filter="data")
    shutil.rmtree(target, ignore_errors=True)
    tmp.rename(target)
    jar = _runner_jar(target)
    if not jar:
        raise StackError(f"no runnable jar in {archive}")
    return jar


def _runner_jar(root: Path) -> Path | None:
    if not root.is_dir():
        return None
    for pattern in ("**/quarkus-run.jar", "**/*-runner.jar"):
        found = sorted(root.glob(pattern))
        if found:
            return found[0]
    return None
