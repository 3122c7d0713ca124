"""Filters for xiaozhi-edge provisioning (run on the controller).

Certificates, generated passwords and NATS permissions come from the project's own
modules (``shared/pki.py``, ``shared/nats_permissions.py``), the same code the embedded
default runs, so a provisioned deployment and ``make run`` are secured alike.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from ansible.errors import AnsibleFilterError

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from shared import nats_permissions, pki  # noqa: E402


def xz_secret(ref: dict | None, name: str, secrets_dir: str) -> str:
    """Resolve a topology secret reference ({env, file}) on the controller.

    Order: the environment variable, then the file, then a generated value kept in
    ``secrets_dir/name`` (created once, mode 0600), so a lab run needs no secrets set up
    and every later run renders the same value (idempotent).
    """
    ref = ref or {}
    if ref.get("env") and os.environ.get(ref["env"]):
        return os.environ[ref["env"]]
    if ref.get("file") and Path(ref["file"]).is_file():
        return Path(ref["file"]).read_text().strip()
    if not secrets_dir:
        raise AnsibleFilterError(f"secret {name}: neither {ref} is set and no xz_secrets_dir to generate it in")
    return pki.ensure_password(Path(secrets_dir) / name)


def xz_host_cert(name: str, hosts: list[str], pki_dir: str) -> dict:
    """This host's certificate from the deployment CA in ``pki_dir`` (both created on first use).

    Returns controller paths ``{cert, key, ca}``; an operator's own CA (ca.pem + ca-key.pem put in
    ``pki_dir`` beforehand) is used as is.
    """
    try:
        c = pki.ensure_host_cert(pki_dir, name, [str(h) for h in hosts if h])
    except (OSError, ValueError) as exc:
        raise AnsibleFilterError(f"certificate for {name}: {exc}") from exc
    return {"cert": str(c.cert), "key": str(c.key), "ca": str(c.ca)}


def xz_ca(pki_dir: str) -> str:
    """The deployment CA certificate's controller path (the CA is created on first use)."""
    return str(pki.ensure_ca(pki_dir)[0])


def xz_nats_permissions(name: str, role: str, model_classes: list[str] | str = "large",
                        per_site_inbox: bool = True) -> dict:
    """The NATS permissions of one user: role ``site`` (name = site), ``worker`` (name = worker), ``operator``."""
    if role == "site":
        classes = [model_classes] if isinstance(model_classes, str) else list(model_classes)
        return nats_permissions.site_permissions(name, classes, per_site_inbox=per_site_inbox)
    if role == "worker":
        return nats_permissions.worker_permissions(name, str(model_classes))
    if role == "operator":
        return nats_permissions.operator_permissions()
    raise AnsibleFilterError(f"xz_nats_permissions: unknown role {role!r}")


class FilterModule:
    def filters(self):
        return {"xz_secret": xz_secret, "xz_host_cert": xz_host_cert, "xz_ca": xz_ca,
                "xz_nats_permissions": xz_nats_permissions}
