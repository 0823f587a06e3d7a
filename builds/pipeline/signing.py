"""GPG signatures for SHA256SUMS, made and checked the way systemd-sysupdate expects.

Signing (shared/reference/sysupdate.md): a private GNUPGHOME (0700) per signer, ``--batch
--pinentry-mode loopback``, the passphrase through a file descriptor, and a gpg-agent that
caches nothing, so that a missing or wrong passphrase fails instead of silently reusing one.
Verification runs gpg exactly as systemd does, against a binary (non-armored) keyring.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from types import TracebackType

from builds.pipeline.command import CommandResult, run_command
from builds.pipeline.errors import PipelineError

GPG = "gpg"
GPGCONF = "gpgconf"
# An agent with nothing cached: every signature needs the passphrase given for it.
AGENT_CONF = "default-cache-ttl 0\nmax-cache-ttl 0\nallow-loopback-pinentry\n"
MAX_PASSPHRASE_BYTES = 4096
SIGN_TIMEOUT = 120.0


def _private_home(prefix: str) -> Path:
    # Short paths under /tmp: gpg-agent's socket path must fit in sockaddr_un.
    home = Path(tempfile.mkdtemp(prefix=prefix))
    home.chmod(0o700)
    (home / "gpg-agent.conf").write_text(AGENT_CONF, encoding="utf-8")
    return home


def _remove_home(home: Path) -> None:
    # Stop the agent gpg started for this home before deleting it; best effort.
    try:
        run_command([GPGCONF, "--homedir", str(home), "--kill", "all"], error_code="sign.cleanup", timeout=30)
    except PipelineError:
        pass
    shutil.rmtree(home, ignore_errors=True)


def _passphrase_pipe(passphrase: bytes) -> int:
    """A pipe whose read end yields the passphrase line; returns the read end."""
    if len(passphrase) > MAX_PASSPHRASE_BYTES or b"\n" in passphrase or b"\0" in passphrase:
        raise PipelineError("sign.bad-passphrase", "the passphrase must be one line of at most 4096 bytes")
    read_fd, write_fd = os.pipe()
    try:
        os.write(write_fd, passphrase + b"\n")  # fits in the pipe buffer: no writer thread needed
    finally:
        os.close(write_fd)
    return read_fd


def read_passphrase_file(path: str | os.PathLike[str]) -> bytes:
    """The passphrase in ``path`` (one line; a trailing newline is not part of it)."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise PipelineError(
            "sign.bad-passphrase", f"cannot read the passphrase file {path}: {exc.strerror}"
        ) from exc
    if data.endswith(b"\r\n"):
        data = data[:-2]
    elif data.endswith(b"\n"):
        data = data[:-1]
    return data


def _status_lines(result: CommandResult) -> list[str]:
    return [
        line[len("[GNUPG:] ") :]
        for line in result.stdout.decode("utf-8", "replace").splitlines()
        if line.startswith("[GNUPG:] ")
    ]


def _passphrase_trouble(result: CommandResult) -> bool:
    status = _status_lines(result)
    stderr = result.stderr.decode("utf-8", "replace")
    return (
        any(s.startswith(("BAD_PASSPHRASE", "MISSING_PASSPHRASE", "NEED_PASSPHRASE")) for s in status)
        or any(s.startswith("FAILURE sign 67108875") for s in status)  # GPG_ERR_BAD_PASSPHRASE
        or "Bad passphrase" in stderr
        or "can't get input" in stderr
    )


class GpgSigner:
    """Signs files with one secret key, in a private GNUPGHOME that is removed on ``close()``.

    The passphrase (from ``passphrase_file``, or given directly) is handed to gpg through a
    pipe for each signature and never appears in an argv, an environment or a log.
    """

    def __init__(
        self,
        key_file: str | os.PathLike[str],
        passphrase_file: str | os.PathLike[str] | None = None,
        *,
        passphrase: bytes | None = None,
        timeout: float = SIGN_TIMEOUT,
    ) -> None:
        key_path = Path(key_file)
        if not key_path.is_file():
            raise PipelineError("sign.invalid-key", f"signing key file {key_path} does not exist")
        if passphrase is None and passphrase_file is not None:
            passphrase = read_passphrase_file(passphrase_file)
        self._passphrase = passphrase
        self._timeout = timeout
        self._keyring: bytes | None = None
        self.home = _private_home("bh-gpg-")
        try:
            result = run_command(
                [GPG, "--homedir", str(self.home), "--batch", "--status-fd", "1", "--import", str(key_path)],
                error_code="sign.invalid-key",
                what="gpg --import of the signing key",
                timeout=timeout,
                check=False,
            )
            fingerprints = [
                s.split()[2]
                for s in _status_lines(result)
                if s.startswith("IMPORT_OK ") and len(s.split()) >= 3 and int(s.split()[1]) & 16
            ]
            if not fingerprints:
                raise PipelineError(
                    "sign.invalid-key",
                    f"{key_path} holds no OpenPGP secret key; export one with gpg --export-secret-keys",
                    output=result.output,
                )
            self.fingerprint = fingerprints[0]
        except BaseException:
            _remove_home(self.home)
            raise

    def __enter__(self) -> GpgSigner:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        if self.home.exists():
            _remove_home(self.home)

    def sign_detached(
        self, path: str | os.PathLike[str], output: str | os.PathLike[str] | None = None
    ) -> Path:
        """Write a binary detached signature of ``path`` to ``output`` (default ``path.gpg``)."""
        source = Path(path).absolute()
        target = Path(output).absolute() if output is not None else source.with_name(source.name + ".gpg")
        argv = [
            GPG, "--homedir", str(self.home), "--batch", "--no-tty", "--status-fd", "1",
            "--pinentry-mode", "loopback", "--local-user", self.fingerprint,
            "--digest-algo", "SHA256", "--yes", "--detach-sign", "--output", str(target),
        ]  # fmt: skip
        fds: tuple[int, ...] = ()
        if self._passphrase is not None:
            fd = _passphrase_pipe(self._passphrase)
            fds = (fd,)
            argv += ["--passphrase-fd", str(fd)]
        argv.append(str(source))
        try:
            result = run_command(
                argv,
                error_code="sign.failed",
                what="gpg --detach-sign",
                timeout=self._timeout,
                pass_fds=fds,
                check=False,
            )
        finally:
            for fd in fds:
                os.close(fd)
        if result.returncode != 0 or not target.is_file():
            target.unlink(missing_ok=True)
            if _passphrase_trouble(result):
                raise PipelineError(
                    "sign.bad-passphrase",
                    "the signing key is protected and the passphrase is missing or wrong; "
                    "check the passphrase file",
                    output=result.output,
                )
            raise PipelineError(
                "sign.failed",
                f"gpg could not sign {source.name} (exit {result.returncode})",
                output=result.output,
            )
        return target

    def export_public_keyring(self) -> bytes:
        """The public key as a binary keyring (``gpg --export``), as systemd needs it.

        Exported once per signer: a build asks for it for every listing it signs and for its
        configs, and the key cannot change while the signer holds it."""
        if self._keyring is None:
            self._keyring = self._export_public_keyring()
        return self._keyring

    def _export_public_keyring(self) -> bytes:
        result = run_command(
            [GPG, "--homedir", str(self.home), "--batch", "--export", self.fingerprint],
            error_code="sign.export-failed",
            what="gpg --export",
            timeout=self._timeout,
        )
        if not result.stdout:
            raise PipelineError("sign.export-failed", "gpg exported an empty public keyring")
        return result.stdout


def generate_signing_key(
    key_file: str | os.PathLike[str],
    *,
    name: str,
    email: str,
    passphrase: bytes | None = None,
    timeout: float = SIGN_TIMEOUT,
) -> str:
    """Create an ed25519 signing key, write its armored secret key to ``key_file`` (0600).

    Returns the fingerprint. Used for the portal's embedded default key and in tests.
    """
    if any(ch in name + email for ch in "<>\n\r") or not name.strip() or "@" not in email:
        raise PipelineError("sign.invalid-key", f"cannot make a key for {name!r} <{email}>")
    home = _private_home("bh-gen-")
    try:
        secret = passphrase if passphrase is not None else b""
        fd = _passphrase_pipe(secret)
        try:
            result = run_command(
                [
                    GPG,
                    "--homedir",
                    str(home),
                    "--batch",
                    "--no-tty",
                    "--status-fd",
                    "1",
                    "--pinentry-mode",
                    "loopback",
                    "--passphrase-fd",
                    str(fd),
                    "--quick-gen-key",
                    f"{name} <{email}>",
                    "ed25519",
                    "sign",
                    "0",
                ],
                error_code="sign.keygen-failed",
                what="gpg --quick-gen-key",
                timeout=timeout,
                pass_fds=(fd,),
            )
        finally:
            os.close(fd)
        created = [s.split() for s in _status_lines(result) if s.startswith("KEY_CREATED ")]
        if not created:
            raise PipelineError("sign.keygen-failed", "gpg created no key", output=result.output)
        fingerprint = created[0][2]
        fd = _passphrase_pipe(secret)
        try:
            exported = run_command(
                [
                    GPG,
                    "--homedir",
                    str(home),
                    "--batch",
                    "--no-tty",
                    "--pinentry-mode",
                    "loopback",
                    "--passphrase-fd",
                    str(fd),
                    "--armor",
                    "--export-secret-keys",
                    fingerprint,
                ],
                error_code="sign.keygen-failed",
                what="gpg --export-secret-keys",
                timeout=timeout,
                pass_fds=(fd,),
            )
        finally:
            os.close(fd)
        target = Path(key_file)
        descriptor = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(exported.stdout)
        target.chmod(0o600)
        return fingerprint
    finally:
        _remove_home(home)


def verify_like_systemd(
    sums: str | os.PathLike[str],
    signature: str | os.PathLike[str],
    keyring: str | os.PathLike[str],
    *,
    timeout: float = 60.0,
) -> str:
    """Check ``signature`` over ``sums`` exactly as systemd-sysupdate runs gpg.

    Returns gpg's report; raises ``sign.verify-failed`` when the signature does not verify.
    """
    # gpg reads a --keyring name without a slash relative to the home directory: pass it absolute.
    keyring_path = Path(keyring).absolute()
    with tempfile.TemporaryDirectory(prefix="bh-verify-") as empty_home:
        os.chmod(empty_home, 0o700)
        argv = [
            GPG, "--no-options", "--no-default-keyring", "--batch", "--trust-model=always",
            f"--homedir={empty_home}", f"--keyring={keyring_path}",
            "--verify", str(Path(signature).absolute()), "-",
        ]  # fmt: skip
        try:
            result = run_command(
                argv,
                error_code="sign.verify-failed",
                what="gpg --verify",
                timeout=timeout,
                stdin_data=Path(sums).read_bytes(),
                check=False,
            )
        finally:
            try:
                run_command([GPGCONF, "--homedir", empty_home, "--kill", "all"], error_code="sign.cleanup")
            except PipelineError:
                pass
    if result.returncode != 0:
        raise PipelineError(
            "sign.verify-failed",
            f"the signature {Path(signature).name} does not verify {Path(sums).name} with keyring "
            f"{keyring_path.name}",
            output=result.output,
        )
    return result.stderr.decode("utf-8", "replace")
