"""``python -m lab.pve --port P --dir DIR``: serve the emulator over HTTPS on 127.0.0.1.

Secrets (token secrets, the user's password, the lab control secret) are generated here
and written to ``DIR/state.json`` (mode 0600) for the harness; they never appear in argv,
stdout or logs. The self-signed certificate (``DIR/cert.pem``) is what clients pass as
``verify``.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
from pathlib import Path

import uvicorn

from lab.pve import reason
from lab.pve.app import Emulator
from lab.pve.auth import ADMINISTRATOR, AUDITOR, Realm
from lab.pve.certs import write_certificate
from lab.pve.state import Clock, lab_cluster

USER = "orchestrator@pve"
TOKEN = "automation"
RESTRICTED = "audit"


def credentials() -> dict[str, str]:
    return {
        "user": USER, "password": secrets.token_urlsafe(16),
        "token_name": TOKEN, "token_secret": str(_uuid()),
        "restricted_token_name": RESTRICTED, "restricted_token_secret": str(_uuid()),
        "control_secret": secrets.token_urlsafe(24),
    }


def _uuid() -> str:
    """Token secrets look like PVE's: a random UUID."""
    import uuid

    return str(uuid.uuid4())


def realm_for(creds: dict[str, str]) -> Realm:
    """The ACL: the user and its main token are administrators, the other token audits."""
    return Realm(
        passwords={creds["user"]: creds["password"]},
        user_privs={creds["user"]: ADMINISTRATOR},
        tokens={
            f"{creds['user']}!{creds['token_name']}": (creds["token_secret"], ADMINISTRATOR),
            f"{creds['user']}!{creds['restricted_token_name']}":
                (creds["restricted_token_secret"], AUDITOR),
        },
    )


def write_state(directory: Path, port: int, creds: dict[str, str]) -> None:
    path = directory / "state.json"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        json.dump({"port": port, "cert": str(directory / "cert.pem"), **creds}, out)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m lab.pve")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--dir", type=Path, required=True)
    parser.add_argument("--task-seconds", type=float, default=0.3)
    args = parser.parse_args()
    args.dir.mkdir(parents=True, exist_ok=True)
    cert, key = write_certificate(args.dir)
    creds = credentials()
    write_state(args.dir, args.port, creds)
    emulator = Emulator(lab_cluster(Clock()), realm_for(creds), creds["control_secret"],
                        args.task_seconds)
    reason.install()
    uvicorn.run(emulator, host="127.0.0.1", port=args.port, http="h11", ssl_certfile=str(cert),
                ssl_keyfile=str(key), log_level="warning", access_log=False, lifespan="off")


if __name__ == "__main__":
    main()
