"""Commands on a box over SSH (paramiko), with host keys pinned, never learned.

A box's host key comes from the inventory (``host_keys``, OpenSSH public-key
lines) or from a known_hosts file the operator keeps; an unknown key or a
changed one is refused (``RejectPolicy``), never added: a box that answers
with a different key may not be the box, and a purge must not run on the
wrong machine. The private key is handed in as a ``Secret`` (the loader
resolved the inventory's reference) and stays in memory; nothing is written
to disk and no secret is in an argument or a message.
"""

from __future__ import annotations

import base64
import io
from dataclasses import dataclass
from pathlib import Path

import paramiko

from drivers.base import PermanentError, Secret, TemporaryError


@dataclass(frozen=True)
class Completed:
    """A finished command: what it printed and how it ended."""

    command: str
    exit_status: int
    stdout: str
    stderr: str


@dataclass(frozen=True)
class SshTarget:
    address: str
    user: str
    key: Secret
    host_keys: tuple[str, ...] = ()
    known_hosts: Path | None = None
    port: int = 22

    @classmethod
    def pinned(
        cls,
        address: str,
        ssh_key: Secret,
        ssh_user: str = "root",
        host_keys: list[str] | None = None,
        known_hosts: str | None = None,
        ssh_port: int = 22,
    ) -> SshTarget:
        """A target in the inventory's words: host keys a list, known_hosts a path."""
        known = Path(known_hosts) if known_hosts else None
        return cls(address, ssh_user, ssh_key, tuple(host_keys or ()), known, ssh_port)


class SshRunner:
    """Runs commands on one box, a fresh connection per command list."""

    def __init__(self, target: SshTarget, connect_timeout: float = 10.0) -> None:
        if not target.host_keys and target.known_hosts is None:
            raise PermanentError(
                f"{target.address}: no pinned host key (host_keys or known_hosts): refused"
            )
        self.target = target
        self.connect_timeout = connect_timeout

    def run(self, command: str, timeout: float = 60.0) -> Completed:
        with self._connect() as client:
            return _execute(client, command, timeout)

    def answers(self) -> bool:
        """Whether the box's sshd answers and proves its pinned key (a liveness probe)."""
        try:
            with self._connect():
                return True
        except TemporaryError:
            return False

    def _connect(self) -> paramiko.SSHClient:
        client = paramiko.SSHClient()
        self._pin(client)
        client.set_missing_host_key_policy(paramiko.RejectPolicy())
        try:
            client.connect(
                self.target.address,
                port=self.target.port,
                username=self.target.user,
                pkey=_private_key(self.target.key),
                timeout=self.connect_timeout,
                banner_timeout=self.connect_timeout,
                auth_timeout=self.connect_timeout,
                allow_agent=False,
                look_for_keys=False,
            )
        except paramiko.BadHostKeyException:
            client.close()
            raise PermanentError(
                f"{self.target.address}: host key differs from the pinned one: refused"
            ) from None
        except paramiko.SSHException as exc:
            client.close()
            if "not found in known_hosts" in str(exc):
                raise PermanentError(f"{self.target.address}: unknown host key: refused") from None
            raise TemporaryError(f"{self.target.address}: ssh: {exc}") from None
        except (TimeoutError, OSError) as exc:
            client.close()
            raise TemporaryError(f"{self.target.address}: ssh: {exc.strerror or exc}") from None
        return client

    def _pin(self, client: paramiko.SSHClient) -> None:
        keys = client.get_host_keys()
        if self.target.known_hosts is not None:
            try:
                keys.load(str(self.target.known_hosts))
            except OSError as exc:
                raise PermanentError(
                    f"{self.target.known_hosts}: cannot read: {exc.strerror}"
                ) from None
        name = _known_name(self.target.address, self.target.port)
        for line in self.target.host_keys:
            kind, blob = line.split()[:2]
            keys.add(name, kind, paramiko.PKey.from_type_string(kind, base64.b64decode(blob)))


def _execute(client: paramiko.SSHClient, command: str, timeout: float) -> Completed:
    try:
        _, stdout, stderr = client.exec_command(command, timeout=timeout)
        out = stdout.read().decode(errors="replace")
        err = stderr.read().decode(errors="replace")
        status = stdout.channel.recv_exit_status()
    except TimeoutError:
        raise TemporaryError(f"command timed out after {timeout:g}s: {command}") from None
    return Completed(command, status, out, err)


def _private_key(secret: Secret) -> paramiko.PKey:
    text = secret.reveal()
    for kind in (paramiko.Ed25519Key, paramiko.ECDSAKey, paramiko.RSAKey):
        try:
            return kind.from_private_key(io.StringIO(text))
        except paramiko.SSHException:
            continue
    raise PermanentError(f"the SSH key from {secret.source} is not a private key paramiko reads")


def _known_name(address: str, port: int) -> str:
    return address if port == 22 else f"[{address}]:{port}"


__all__ = ["Completed", "SshRunner", "SshTarget"]
