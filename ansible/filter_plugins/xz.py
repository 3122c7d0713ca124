"""Filters for xiaozhi-edge provisioning (run on the controller)."""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from ansible.errors import AnsibleFilterError


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
    path = Path(secrets_dir) / name
    if not path.is_file():
        # forks render templates in parallel: write a complete temp file, then link it into place
        # atomically; whoever links first wins and everyone reads the same value
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{name}.{os.getpid()}.{secrets.token_hex(4)}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_urlsafe(24))
        try:
            os.link(tmp, path)
        except FileExistsError:
            pass
        finally:
            tmp.unlink()
    return path.read_text().strip()


class FilterModule:
    def filters(self):
        return {"xz_secret": xz_secret}
