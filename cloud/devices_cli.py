"""Operators' tool for device admission: ``python -m cloud devices <command>``.

    approve CODE          approve the activation code a device shows (edge.auth.activation)
    revoke DEVICE_ID      refuse the device's tokens on every edge from now on, without a restart
    unrevoke DEVICE_ID    lift a revocation

NATS and credentials as for ``python -m cloud policy`` (``--nats``, ``--creds``; the operator user).
Exit codes: 0 ok, 1 bad input, 2 NATS unreachable or refused.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import socket
import sys
from typing import Sequence

import nats.errors
import nats.js.errors

from cloud.policy_cli import CliError, credentials, nats_url, operator_connection, refused, run_cli
from shared.device_store import DevicesStore
from shared.nats_conn import redact_url

REQUEST_TIMEOUT_S = 3.0


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--nats", default=argparse.SUPPRESS, help="NATS URL (default: $NATS_URL, then topology.yaml)")
    common.add_argument("--creds", default=argparse.SUPPRESS, metavar="FILE", help="operator credentials file")
    p = argparse.ArgumentParser(prog="python -m cloud devices", parents=[common],
                                description="Approve activation codes and revoke devices.")
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("approve", parents=[common], help="approve a device's activation code")
    s.add_argument("code")
    for name, text in (("revoke", "refuse a device from now on"), ("unrevoke", "lift a revocation")):
        s = sub.add_parser(name, parents=[common], help=text)
        s.add_argument("device_id")
    return p


async def _run(args: argparse.Namespace) -> int:
    if args.command == "approve" and not (args.code.isdigit() and 4 <= len(args.code) <= 12):
        raise CliError(f"activation code {args.code!r}: expected the digits the device shows", 1)
    creds = credentials(getattr(args, "creds", None), url_given=bool(getattr(args, "nats", None)))
    url = nats_url(getattr(args, "nats", None), creds)
    author = f"{getpass.getuser()}@{socket.gethostname()}"
    async with operator_connection(url, creds) as nc:
        store = DevicesStore(nc, timeout=REQUEST_TIMEOUT_S)
        try:
            if args.command == "approve":
                rev = await store.approve(args.code, author)
                print(f"approved activation code {args.code} (revision {rev}); the device finishes on its next try")
            elif args.command == "revoke":
                rev = await store.revoke(args.device_id, author)
                print(f"revoked {args.device_id} (revision {rev}): every edge refuses its tokens now")
            else:
                await store.unrevoke(args.device_id)
                print(f"lifted the revocation of {args.device_id}")
        except (nats.js.errors.ServiceUnavailableError, nats.errors.NoRespondersError):
            refused(url, nc)
            raise CliError(f"NATS at {redact_url(url)} has no JetStream for the devices bucket", 2) from None
        except (asyncio.TimeoutError, nats.errors.Error, nats.js.errors.Error) as exc:
            refused(url, nc)
            raise CliError(f"NATS at {redact_url(url)} did not answer: {exc or type(exc).__name__}", 2) from None
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(_parser(), _run, argv)

if __name__ == "__main__":
    sys.exit(main())
