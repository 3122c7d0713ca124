"""The deployment's own certificate authority and host certificates (TLS for NATS).

One code path for both deployments: the embedded default calls it on first run
(under ``.cache/``), Ansible calls it on the controller (filter ``xz_host_cert``)
into its secrets directory. Files are created once and reused, so restarts and
repeated provisioning runs keep the same certificates; an operator who brings
their own CA drops ``ca.pem`` + ``ca-key.pem`` into the directory first.

Uses the ``cryptography`` package (no openssl binary needed on the controller).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import ipaddress
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

CA_DAYS = 3650
HOST_DAYS = 825  # what browsers and most TLS stacks still accept for a leaf certificate


@dataclass(frozen=True)
class HostCert:
    """Paths of one host's certificate, its key and the CA that signed it."""

    cert: Path
    key: Path
    ca: Path


def _write_private(path: Path, data: bytes) -> None:
    """Write a secret atomically with mode 0600 (a concurrent writer's complete file wins)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    try:
        os.link(tmp, path)
    except FileExistsError:
        pass
    finally:
        tmp.unlink()


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


@contextlib.contextmanager
def _locked(directory: Path):
    """One writer at a time per directory (Ansible forks issue certificates in parallel)."""
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc) - dt.timedelta(minutes=5)  # tolerate small clock skew


def ensure_ca(directory: str | os.PathLike, name: str = "xiaozhi-edge deployment CA") -> tuple[Path, Path]:
    """``(ca.pem, ca-key.pem)`` in ``directory``, created on first use."""
    d = Path(directory)
    with _locked(d):
        return _ensure_ca(d, name)


def _ensure_ca(d: Path, name: str) -> tuple[Path, Path]:
    cert_path, key_path = d / "ca.pem", d / "ca-key.pem"
    if cert_path.is_file() and key_path.is_file():
        return cert_path, key_path
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(_now())
            .not_valid_after(_now() + dt.timedelta(days=CA_DAYS))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                         content_commitment=False, key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, encipher_only=False, decipher_only=False),
                           critical=True)
            .sign(key, hashes.SHA256()))
    _write_private(key_path, _key_pem(key))
    _write_private(cert_path, cert.public_bytes(serialization.Encoding.PEM))
    return cert_path, key_path


def _san(names: list[str]) -> x509.SubjectAlternativeName:
    entries: list[x509.GeneralName] = []
    for n in dict.fromkeys(names):  # unique, in order
        try:
            entries.append(x509.IPAddress(ipaddress.ip_address(n)))
        except ValueError:
            entries.append(x509.DNSName(n))
    return x509.SubjectAlternativeName(entries)


def ensure_host_cert(directory: str | os.PathLike, name: str, hosts: list[str]) -> HostCert:
    """A certificate for ``name`` valid for ``hosts`` (DNS names or IPs), signed by the directory's CA.

    Usable as server and client certificate (NATS cluster routes present it both ways).
    Reissued when the wanted names are not all in the existing certificate.
    """
    d = Path(directory)
    with _locked(d):
        return _ensure_host_cert(d, name, hosts)


def _ensure_host_cert(d: Path, name: str, hosts: list[str]) -> HostCert:
    ca_cert_path, ca_key_path = _ensure_ca(d, "xiaozhi-edge deployment CA")
    cert_path, key_path = d / f"{name}.pem", d / f"{name}-key.pem"
    wanted = [name, *hosts]
    if cert_path.is_file() and key_path.is_file():
        have = x509.load_pem_x509_certificate(cert_path.read_bytes())
        san = have.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        present = {str(v) for v in san.get_values_for_type(x509.DNSName)}
        present |= {str(v) for v in san.get_values_for_type(x509.IPAddress)}
        if set(wanted) <= present:
            return HostCert(cert_path, key_path, ca_cert_path)
        cert_path.unlink()
        key_path.unlink()
    ca_key = serialization.load_pem_private_key(ca_key_path.read_bytes(), None)
    ca_cert = x509.load_pem_x509_certificate(ca_cert_path.read_bytes())
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
            .issuer_name(ca_cert.subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(_now())
            .not_valid_after(_now() + dt.timedelta(days=HOST_DAYS))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(_san(wanted), critical=False)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                           critical=False)
            .sign(ca_key, hashes.SHA256()))
    _write_private(key_path, _key_pem(key))
    _write_private(cert_path, cert.public_bytes(serialization.Encoding.PEM))
    return HostCert(cert_path, key_path, ca_cert_path)


def ensure_password(path: str | os.PathLike) -> str:
    """A random password kept in ``path`` (mode 0600), created on first use."""
    p = Path(path)
    if not p.is_file():
        _write_private(p, secrets.token_urlsafe(24).encode())
    return p.read_text().strip()
