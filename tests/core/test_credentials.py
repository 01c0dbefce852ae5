"""Secrets by reference: resolved late, masked everywhere; signed evidence anyone can check."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from orchestrator.core.yamlerrors import Loader
from orchestrator.secrets import evidence
from orchestrator.secrets.credentials import CredentialError, Secret, resolve
from orchestrator.secrets.redact import redact, redact_text

VALUE = "s3cret-Value-1234"


def test_env_and_file_references_resolve(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ORCH_TEST_BMC", VALUE)
    (tmp_path / "pw").write_text(VALUE + "\n")
    assert resolve("env:ORCH_TEST_BMC", what="bmc_password").reveal() == VALUE
    assert resolve(f"file:{tmp_path / 'pw'}", what="bmc_password").reveal() == VALUE


@pytest.mark.parametrize(
    ("reference", "message"),
    [
        ("env:ORCH_TEST_UNSET", "environment variable ORCH_TEST_UNSET is not set"),
        ("file:/nonexistent/pw", "cannot read /nonexistent/pw"),
        ("hunter2hunter2", "not a literal secret"),
        ("ldap:cn=x", "unknown reference scheme 'ldap'"),
        (1234, "expected a reference"),
    ],
)
def test_a_bad_reference_names_the_setting_and_never_a_value(
    reference: object, message: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("ORCH_TEST_UNSET", raising=False)
    with pytest.raises(CredentialError, match=message) as caught:
        resolve(reference, what="metal-1 bmc_password")
    assert str(caught.value).startswith("metal-1 bmc_password")
    assert "hunter2" not in str(caught.value)


def _vault_yaml(plain: str, password: str) -> str:
    from ansible.parsing.vault import VaultLib, VaultSecret

    cipher = VaultLib([("default", VaultSecret(password.encode()))]).encrypt(plain).decode()
    indented = "\n".join("  " + line for line in cipher.splitlines())
    return f"bmc_password: !vault |\n{indented}\n"


def test_an_ansible_vault_value_in_the_inventory_decrypts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "vault-pass").write_text("vault-password-xyz\n")
    monkeypatch.setenv("ORCHESTRATOR_VAULT_PASSWORD_FILE", str(tmp_path / "vault-pass"))
    document = yaml.load(_vault_yaml(VALUE, "vault-password-xyz"), Loader=Loader)
    assert VALUE not in repr(document)
    assert resolve(document["bmc_password"], what="bmc_password").reveal() == VALUE


def test_a_vault_value_with_the_wrong_password_is_refused_without_plaintext(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "vault-pass").write_text("not-the-password\n")
    monkeypatch.setenv("ORCHESTRATOR_VAULT_PASSWORD_FILE", str(tmp_path / "vault-pass"))
    document = yaml.load(_vault_yaml(VALUE, "vault-password-xyz"), Loader=Loader)
    with pytest.raises(CredentialError, match="cannot decrypt") as caught:
        resolve(document["bmc_password"], what="bmc_password")
    assert VALUE not in str(caught.value) and "not-the-password" not in str(caught.value)


def test_a_secret_is_masked_when_printed_and_scrubbed_from_any_text(
    tmp_path: Path,
) -> None:
    (tmp_path / "token").write_text("tok-9f8e7d6c5b4a")
    secret = resolve(f"file:{tmp_path / 'token'}", what="api_token")
    assert "tok-9f8e7d6c5b4a" not in f"{secret} {secret!r}"
    error = "login refused for root:tok-9f8e7d6c5b4a at https://root:pw12345@bmc/"
    scrubbed = redact_text(error)
    assert "tok-9f8e7d6c5b4a" not in scrubbed and "pw12345" not in scrubbed
    assert redact({"ssh_key": "x", "passes": 1}) == {"ssh_key": "***", "passes": 1}


def _key_pair(tmp_path: Path, name: str) -> tuple[Secret, Path]:
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    public = tmp_path / f"{name}.pub"
    public.write_bytes(key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ))
    return Secret(pem, f"file:{name}.pem"), public


def test_a_signed_erase_record_verifies_and_any_change_breaks_it(tmp_path: Path) -> None:
    private, public = _key_pair(tmp_path, "ours")
    _, other = _key_pair(tmp_path, "theirs")
    record = {"device": "/dev/sda", "serial": "S6PT", "method": "overwrite", "passes": 1,
              "result": "verified", "samples_checked": 18}
    signed = evidence.Signer(private).sign(record)
    key = evidence.load_public_key(public)
    assert evidence.verify(signed, key)
    assert not evidence.verify(signed, evidence.load_public_key(other))
    for field, value in (("result", "failed"), ("samples_checked", 17), ("serial", "S6PU")):
        assert not evidence.verify({**signed, "record": {**record, field: value}}, key)
    assert not evidence.verify({**signed, "signature": signed["signature"][::-1]}, key)


def test_a_signing_key_that_is_not_ed25519_pem_is_refused() -> None:
    with pytest.raises(evidence.EvidenceError, match="not a PEM key"):
        evidence.Signer(Secret("garbage", "file:/k"))
