"""GPG signatures for SHA256SUMS, verified exactly as systemd-sysupdate runs gpg."""

from __future__ import annotations

import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from builds.pipeline.checksums import write_sums
from builds.pipeline.errors import PipelineError
from builds.pipeline.signing import GpgSigner, generate_signing_key, verify_like_systemd
from tests.pipeline.bake_support import PASSPHRASE, make_signing_key

DIGEST = "5" * 64


@pytest.fixture(scope="module")
def key_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    key, phrase = make_signing_key(tmp_path_factory.mktemp("key"))
    assert phrase is not None
    return key, phrase


@pytest.fixture
def signer(key_files: tuple[Path, Path]) -> Iterator[GpgSigner]:
    with GpgSigner(*key_files) as made:
        yield made


@pytest.fixture
def sums(tmp_path: Path) -> Path:
    return write_sums(tmp_path / "SHA256SUMS", {"hello-v1.2.3-x86-64.raw": DIGEST})


def test_signature_verifies_like_systemd_and_tampering_fails(
    signer: GpgSigner, sums: Path, tmp_path: Path
) -> None:
    signature = signer.sign_detached(sums)
    assert signature == sums.with_name("SHA256SUMS.gpg")
    assert not signature.read_bytes().startswith(b"-----BEGIN")  # binary, not armored
    keyring = tmp_path / "import-pubring.gpg"
    keyring.write_bytes(signer.export_public_keyring())
    report = verify_like_systemd(sums, signature, keyring)
    assert "Good signature" in report

    sums.write_text(sums.read_text().replace("5555", "6666", 1))
    with pytest.raises(PipelineError) as error:
        verify_like_systemd(sums, signature, keyring)
    assert error.value.code == "sign.verify-failed"


def test_the_exported_keyring_is_binary_and_a_foreign_key_does_not_verify(
    signer: GpgSigner, sums: Path, tmp_path: Path
) -> None:
    keyring = signer.export_public_keyring()
    assert keyring[0] & 0x80  # an OpenPGP packet header, not ASCII armor
    other_key = tmp_path / "other.asc"
    generate_signing_key(other_key, name="Someone Else", email="else@example.invalid")
    with GpgSigner(other_key) as other:
        (tmp_path / "other.gpg").write_bytes(other.export_public_keyring())
    signature = signer.sign_detached(sums)
    with pytest.raises(PipelineError) as error:
        verify_like_systemd(sums, signature, tmp_path / "other.gpg")
    assert error.value.code == "sign.verify-failed"


def test_an_armored_keyring_fails_as_on_a_node(signer: GpgSigner, sums: Path, tmp_path: Path) -> None:
    armored = subprocess.run(
        ["gpg", "--homedir", str(signer.home), "--batch", "--armor", "--export", signer.fingerprint],
        capture_output=True,
        check=True,
    ).stdout
    (tmp_path / "armored.gpg").write_bytes(armored)
    signature = signer.sign_detached(sums)
    with pytest.raises(PipelineError):
        verify_like_systemd(sums, signature, tmp_path / "armored.gpg")


@pytest.mark.parametrize("passphrase", [b"wrong", None], ids=["wrong", "missing"])
def test_wrong_or_missing_passphrase_fails(
    key_files: tuple[Path, Path], sums: Path, passphrase: bytes | None
) -> None:
    with GpgSigner(key_files[0], passphrase=passphrase) as signer, pytest.raises(PipelineError) as error:
        signer.sign_detached(sums)
    assert error.value.code == "sign.bad-passphrase"
    assert not sums.with_name("SHA256SUMS.gpg").exists()
    assert PASSPHRASE.decode() not in error.value.message + error.value.output


def test_the_agent_caches_no_passphrase(signer: GpgSigner, sums: Path) -> None:
    signer.sign_detached(sums)  # the right passphrase, once
    signer._passphrase = None  # the same home and agent, now without a passphrase
    with pytest.raises(PipelineError) as error:
        signer.sign_detached(sums)
    assert error.value.code == "sign.bad-passphrase"


def test_private_home_is_0700_without_cache_and_removed_on_close(key_files: tuple[Path, Path]) -> None:
    signer = GpgSigner(*key_files)
    home = signer.home
    assert stat.S_IMODE(home.stat().st_mode) == 0o700
    agent_conf = (home / "gpg-agent.conf").read_text()
    assert "default-cache-ttl 0" in agent_conf and "max-cache-ttl 0" in agent_conf
    signer.close()
    assert not home.exists()


def test_key_file_without_a_secret_key_is_refused(signer: GpgSigner, tmp_path: Path) -> None:
    public_only = tmp_path / "public.gpg"
    public_only.write_bytes(signer.export_public_keyring())
    with pytest.raises(PipelineError) as error:
        GpgSigner(public_only)
    assert error.value.code == "sign.invalid-key"
    with pytest.raises(PipelineError) as error:
        GpgSigner(tmp_path / "missing.asc")
    assert error.value.code == "sign.invalid-key"


def test_generated_key_file_is_private(tmp_path: Path) -> None:
    fingerprint = generate_signing_key(tmp_path / "k.asc", name="Portal", email="portal@example.invalid")
    assert len(fingerprint) == 40
    assert stat.S_IMODE((tmp_path / "k.asc").stat().st_mode) == 0o600
    assert (tmp_path / "k.asc").read_text().startswith("-----BEGIN PGP PRIVATE KEY BLOCK-----")
