"""Prove an image loads: merge it with the real systemd-sysext into a scratch root.

Follows the recipe of ``shared/reference/sysext.md``: a scratch root with a Flatcar-like
``os-release``, the image in its ``etc/extensions/``, and ``systemd-sysext --root=... merge`` in a
private mount namespace, so the host's ``/usr`` is never touched. systemd-sysext itself checks
the extension-release file (ID, SYSEXT_LEVEL, ARCHITECTURE and the name) and the file system.
Where mounts are not permitted (not root, no loop devices, no namespaces), the result is
"skipped" with the reason, never a false "verified".

An image for another architecture than the worker's (an arm64 image on an x86-64 worker) cannot
be merged: systemd-sysext accepts only ``ARCHITECTURE=`` values equal to the host's (uname), and
has no setting or environment variable to pretend otherwise. It still runs, with debug logging:
it mounts the image, finds ``extension-release.<NAME>`` and then refuses it naming the two
architectures. That refusal, and no other, is what a sound foreign image gets; the result is
"skipped" with a reason saying what was checked, and any other failure is a real one.
"""

from __future__ import annotations

import os
import platform
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from builds.pipeline.command import run_command
from builds.pipeline.errors import PipelineError

SYSTEMD_SYSEXT = "systemd-sysext"
UNSHARE = "unshare"
VERIFY_TIMEOUT = 180.0
# The scratch root looks like a current Flatcar stable (sysext.md).
SCRATCH_OS_RELEASE = "ID=flatcar\nVERSION_ID=4593.0.0\nSYSEXT_LEVEL=1.0\n"
_HOST_ARCHES = {"x86_64": "x86-64", "amd64": "x86-64", "aarch64": "arm64", "arm64": "arm64"}
# Exit codes of the namespace script for outcomes that are not systemd-sysext's own failure.
_NOT_MERGED = 97
# Messages meaning "this machine cannot mount", not "the image is bad".
_NO_MOUNT_HINTS = (
    "Operation not permitted",
    "Permission denied",
    "Failed to set up loopback",
    "loop device",
    "No such device",
    "Read-only file system",
)

_SCRIPT = r"""
set -eu
root=$1; out=$2; name=$3; shift 3
mount --make-rshared /
mount -t tmpfs tmpfs /run
systemd-sysext --root="$root" merge
if [ ! -e "$root/usr/lib/extension-release.d/extension-release.$name" ]; then
  echo "systemd-sysext merged nothing: extension $name was not accepted" >&2
  exit 97
fi
if [ -d "$root/usr/bin" ]; then ls -1A "$root/usr/bin" > "$out/bin"; fi
if [ $# -gt 0 ]; then
  program=$1; shift
  set +e
  "$root/$program" "$@" > "$out/check" 2>&1
  echo $? > "$out/check-rc"
fi
"""


@dataclass(frozen=True)
class VerifyResult:
    """Outcome of the merge check: ``verified`` or ``skipped`` (with ``reason``)."""

    status: str
    reason: str = ""
    merged_bin: tuple[str, ...] = ()
    check_output: str = ""

    @property
    def verified(self) -> bool:
        return self.status == "verified"


def host_arch() -> str | None:
    """The host architecture in systemd's names, or None when sysexts know no name for it."""
    return _HOST_ARCHES.get(platform.machine())


def _skip(reason: str) -> VerifyResult:
    return VerifyResult("skipped", reason)


def _preconditions(arch: str) -> str | None:
    for tool, package in ((SYSTEMD_SYSEXT, "systemd"), (UNSHARE, "util-linux")):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (apt-get install {package})"
    if os.geteuid() != 0:
        return "merging an image needs root (mount namespaces and loop devices)"
    if not Path("/dev/loop-control").exists():
        return "no loop devices on this machine (/dev/loop-control is missing)"
    probe = run_command(
        [UNSHARE, "-m", "--propagation", "private", "true"],
        error_code="verify.unavailable",
        timeout=30,
        check=False,
    )
    if probe.returncode != 0:
        detail = probe.stderr.decode("utf-8", "replace").strip().splitlines()
        return "mount namespaces are not permitted here" + (f" ({detail[-1]})" if detail else "")
    return None


def _foreign_refusal(name: str, arch: str, output: str) -> str | None:
    """systemd-sysext's refusal of extension ``name`` for being ``arch`` and nothing else, or None.

    systemd checks ARCHITECTURE before ID and SYSEXT_LEVEL, and only after it mounted the image
    and read its extension-release file (``src/shared/extension-release.c``).
    """
    wanted = f"Extension '{name}' is for architecture '{arch}', but deployed on top of '"
    return next((line.strip() for line in output.splitlines() if wanted in line), None)


def _stage_image(image: Path, target: Path) -> None:
    try:
        os.link(image, target)  # no copy when the scratch root shares the file system
    except OSError:
        shutil.copyfile(image, target)


def verify_with_systemd_sysext(
    image: str | os.PathLike[str],
    name: str,
    arch: str,
    *,
    run_check: Sequence[str] | None = None,
    timeout: float = VERIFY_TIMEOUT,
    scratch_dir: str | os.PathLike[str] | None = None,
) -> VerifyResult:
    """Merge ``image`` as extension ``name`` into a scratch root with the real systemd-sysext.

    ``run_check`` is an argv whose first element is a path inside the image (``usr/bin/tool``)
    run from the merged root, e.g. ``("usr/bin/tool", "--version")``; a non-zero exit fails
    with ``verify.check-failed``. A refused merge fails with ``verify.merge-failed``.
    """
    image_path = Path(image).absolute()
    if not image_path.is_file():
        raise PipelineError("verify.merge-failed", f"image {image_path} does not exist")
    reason = _preconditions(arch)
    if reason is not None:
        return _skip(reason)
    host = host_arch() or platform.machine()
    foreign = host != arch
    if foreign:
        run_check = None  # the image's programs are not for this machine
    if run_check:
        program = run_check[0].lstrip("/")
        if ".." in program.split("/") or not program.startswith(("usr/", "opt/")):
            raise PipelineError(
                "verify.check-failed", f"check program {run_check[0]!r} must be under usr/ or opt/"
            )
    with tempfile.TemporaryDirectory(prefix="bh-sysext-", dir=scratch_dir) as scratch:
        root = Path(scratch, "root")
        out = Path(scratch, "out")
        for directory in (root / "usr/lib", root / "etc/extensions", root / "opt", out):
            directory.mkdir(parents=True)
        (root / "usr/lib/os-release").write_text(SCRATCH_OS_RELEASE, encoding="utf-8")
        _stage_image(image_path, root / "etc/extensions" / f"{name}.raw")
        argv = [
            UNSHARE,
            "-m",
            "--propagation",
            "private",
            "sh",
            "-c",
            _SCRIPT,
            "sh",
            str(root),
            str(out),
            name,
        ]
        if run_check:
            argv += [run_check[0].lstrip("/"), *run_check[1:]]
        result = run_command(
            argv,
            error_code="verify.merge-failed",
            what="systemd-sysext merge",
            timeout=timeout,
            env={"SYSTEMD_LOG_LEVEL": "debug"} if foreign else None,
            check=False,
        )
        output = result.output
        if foreign and result.returncode == _NOT_MERGED:
            refusal = _foreign_refusal(name, arch, output)
            if refusal is not None:
                return _skip(
                    f"an {arch} image cannot be merged on this {host} machine (systemd-sysext only "
                    f"merges its own architecture and has no override): systemd-sysext mounted it, "
                    f"read extension-release.{name} and refused it for its architecture alone "
                    f"({refusal}); the full merge needs an {arch} worker"
                )
        if foreign:  # debug logging is chatty; judge by what a normal run would have said
            output = "\n".join(line for line in output.splitlines() if "PR_SET_MM" not in line)
        if result.returncode != 0:
            if result.returncode != _NOT_MERGED and any(hint in output for hint in _NO_MOUNT_HINTS):
                last = output.strip().splitlines()[-1] if output.strip() else ""
                return _skip(f"systemd-sysext could not mount here ({last})")
            last = output.strip().splitlines()[-1] if output.strip() else f"exit {result.returncode}"
            raise PipelineError(
                "verify.merge-failed",
                f"systemd-sysext refused {image_path.name} as extension {name}: {last}",
                output=output,
            )
        bin_file = out / "bin"
        merged_bin = tuple(bin_file.read_text(encoding="utf-8").splitlines()) if bin_file.exists() else ()
        check_output = ""
        if run_check:
            check_output = (out / "check").read_text(encoding="utf-8", errors="replace")
            code = (out / "check-rc").read_text(encoding="utf-8").strip()
            if code != "0":
                raise PipelineError(
                    "verify.check-failed",
                    f"{' '.join(run_check)} exited with {code} from the merged image",
                    output=check_output,
                )
        return VerifyResult("verified", "", merged_bin, check_output)
