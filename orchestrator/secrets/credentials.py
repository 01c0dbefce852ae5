"""Secrets by reference: the inventory names where a secret lives, never the secret.

A BMC password, an SSH key or an API token is written in the inventory as
a reference:

- ``env:NAME``: the environment variable NAME (how systemd's
  ``LoadCredential``/``EnvironmentFile`` hand secrets to a daemon);
- ``file:/path``: the whole file, one trailing newline dropped (a key file,
  a Kubernetes or Vault-agent secret mount);
- an Ansible Vault value (``password: !vault |`` then the ``$ANSIBLE_VAULT``
  text), decrypted with the vault password named by
  ``ORCHESTRATOR_VAULT_PASSWORD_FILE``, as ansible-playbook would.

Resolving gives a ``Secret``, whose ``str`` and ``repr`` are masked, so a
secret put into a log line, an f-string or an exception by mistake shows
``***``. Every resolved value is also registered with ``redact``, which
scrubs it from anything stored or printed. Secrets go to drivers in memory,
as ``drivers.base.Secret`` values, never on a command line.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from drivers.base import Secret as DriverSecret
from orchestrator.secrets.redact import register_secret

VAULT_PASSWORD_FILE = "ORCHESTRATOR_VAULT_PASSWORD_FILE"
VAULT_HEADER = "$ANSIBLE_VAULT;"


class CredentialError(Exception):
    """A reference that cannot be resolved; the message names the reference, not a value."""


class VaultText(str):
    """An Ansible Vault ciphertext as read from YAML's ``!vault`` tag."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "VaultText(...)"


class Secret(DriverSecret):
    """A resolved secret: the drivers' value type, registered with the redactor.

    Only ``reveal()`` gives the value, at the point of use; it is what the
    loader (``orchestrator.engine.wiring``) hands drivers.
    """

    __slots__ = ()

    def __init__(self, value: str, source: str) -> None:
        super().__init__(value, source)
        register_secret(value)


def resolve(reference: Any, *, what: str) -> Secret:
    """The secret a reference names; ``what`` says in errors which setting it was."""
    if isinstance(reference, Secret):
        return reference
    if isinstance(reference, VaultText) or (
        isinstance(reference, str) and reference.lstrip().startswith(VAULT_HEADER)
    ):
        return Secret(_decrypt_vault(str(reference), what), f"vault ({what})")
    if not isinstance(reference, str) or ":" not in reference:
        raise CredentialError(
            f"{what}: expected a reference (env:NAME, file:/path or !vault), "
            "not a literal secret in the inventory"
        )
    scheme, _, target = reference.partition(":")
    if scheme == "env":
        return Secret(_from_env(target, what), reference)
    if scheme == "file":
        return Secret(_from_file(Path(target), what), reference)
    raise CredentialError(f"{what}: unknown reference scheme {scheme!r} (env, file or !vault)")


def _from_env(name: str, what: str) -> str:
    value = os.environ.get(name)
    if not value:
        raise CredentialError(f"{what}: environment variable {name} is not set")
    return value


def _from_file(path: Path, what: str) -> str:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise CredentialError(f"{what}: cannot read {path}: {exc.strerror}") from None
    value = text[:-1] if text.endswith("\n") else text
    if not value:
        raise CredentialError(f"{what}: {path} is empty")
    return value


def _decrypt_vault(ciphertext: str, what: str) -> str:
    """Ansible's own VaultLib, loaded only when a vault value is met (ansible is heavy)."""
    password_file = os.environ.get(VAULT_PASSWORD_FILE)
    if not password_file:
        raise CredentialError(f"{what}: a vault value needs {VAULT_PASSWORD_FILE}")
    password = _from_file(Path(password_file), f"{what} (vault password)")
    from ansible.parsing.vault import VaultLib, VaultSecret  # type: ignore[import-untyped]

    register_secret(password)
    vault = VaultLib([("default", VaultSecret(password.encode()))])
    try:
        plain: bytes = vault.decrypt(_dedent(ciphertext).encode())
    except Exception as exc:  # ansible raises AnsibleError and plain ValueErrors alike
        raise CredentialError(
            f"{what}: cannot decrypt the vault value ({type(exc).__name__})"
        ) from None
    return plain.decode()


def _dedent(text: str) -> str:
    return "\n".join(line.strip() for line in text.strip().splitlines())
