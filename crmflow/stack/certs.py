"""The secure local stack's certificates: a private CA, one server certificate and one client certificate.

Made once with ``openssl`` (Debian's, always present where PostgreSQL is) under ``<dir>``; private keys are
unencrypted PKCS#8 PEM files of mode 0600, which Kafka (``ssl.keystore.type=PEM``), PostgreSQL, nginx and
every client read as they are, so no Java keystore is needed. The server certificate names 127.0.0.1 and
localhost, so clients verify host names (``verify-full``, librdkafka's ``https`` identification).
"""

from __future__ import annotations

import logging
import subprocess
from dataclasses import dataclass
from pathlib import Path

from crmflow.exceptions import StackError
from crmflow.stack import tools

log = logging.getLogger(__name__)

DAYS = 825  # the longest validity Apple's and the CA/B forum's TLS clients still accept for a server cert


@dataclass(frozen=True)
class Certs:
    dir: Path

    @property
    def ca(self) -> Path:
        return self.dir / "ca.crt"

    @property
    def ca_key(self) -> Path:
        return self.dir / "ca.key"

    @property
    def server_cert(self) -> Path:
        return self.dir / "server.crt"

    @property
    def server_key(self) -> Path:
        return self.dir / "server.key"

    @property
    def server_pem(self) -> Path:
        """Key and certificate chain in one file: Kafka's PEM keystore."""
        return self.dir / "server.pem"

    @property
    def client_cert(self) -> Path:
        return self.dir / "client.crt"

    @property
    def client_key(self) -> Path:
        return self.dir / "client.key"

    def complete(self) -> bool:
        return all(p.exists() for p in (self.ca, self.server_cert, self.server_key, self.server_pem,
                                        self.client_cert, self.client_key))


def _openssl(*args: str, cwd: Path) -> None:
    openssl = tools.require("openssl", "openssl")
    res = subprocess.run([openssl, *args], cwd=cwd, capture_output=True, text=True, check=False)
    if res.returncode != 0:
        raise StackError(f"openssl {args[0]} failed in {cwd}: {res.stderr.strip()[-1500:]}")


def _leaf(d: Path, name: str, cn: str, ext: str) -> None:
    (d / f"{name}.ext").write_text(ext)
    _openssl("req", "-new", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.csr",
             "-subj", f"/CN={cn}", cwd=d)
    _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
             "-out", f"{name}.crt", "-days", str(DAYS), "-sha256", "-extfile", f"{name}.ext", cwd=d)
    (d / f"{name}.csr").unlink()
    (d / f"{name}.ext").unlink()
    (d / f"{name}.key").chmod(0o600)


def ensure_certs(directory: Path) -> Certs:
    """The certificates under ``directory``, made on first use (an incomplete set is made again)."""
    certs = Certs(directory)
    if certs.complete():
        return certs
    directory.mkdir(parents=True, exist_ok=True)
    directory.chmod(0o700)
    _openssl("req", "-x509", "-new", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.crt",
             "-days", "3650", "-sha256", "-subj", "/CN=crmflow local stack CA",
             "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign",
             cwd=directory)
    certs.ca_key.chmod(0o600)
    common = "basicConstraints=critical,CA:FALSE\nsubjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid,issuer\n"
    _leaf(directory, "server", "localhost",
          common + "keyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth,clientAuth\n"
          "subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    _leaf(directory, "client", "crmflow-client",
          common + "keyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=clientAuth\n")
    certs.server_pem.write_text(certs.server_key.read_text() + certs.server_cert.read_text() + certs.ca.read_text())
    certs.server_pem.chmod(0o600)
    log.info("made the secure stack's CA and certificates in %s", directory)
    return certs
