"""The architecture of ELF files, read from their header, and the image tree's check of it.

An image is for one architecture (its file name and ``ARCHITECTURE=`` say which), so every ELF
file in it must be built for that machine: an x86-64 binary in an arm64 image (an upstream that
put the wrong asset under the arm64 name, a recipe that picked the wrong file) would only fail on
the node, with "Exec format error". Only the ELF header is read, in Python (no ``file`` or
``readelf``): the 4-byte magic, class, byte order, version and ``e_machine`` (System V ABI).
Scripts and other files are not ELF and pass.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from builds.pipeline.errors import PipelineError
from builds.pipeline.vocabulary import ELF_MACHINES

_MAGIC = b"\x7fELF"
_HEADER_BYTES = 20  # e_ident (16) + e_type (2) + e_machine (2), the same in ELF32 and ELF64
# Names of machines someone may meet in a download, for messages; the rest are shown by number.
_MACHINE_NAMES = {
    3: "i386",
    8: "mips",
    20: "ppc",
    21: "ppc64",
    22: "s390",
    40: "arm",
    62: "x86-64",
    183: "aarch64",
    243: "riscv",
    258: "loongarch",
}
# ELF files that are not for a CPU: eBPF programs (loaded into the kernel, shipped by networking
# tools) and EM_NONE. They belong in images of every architecture.
_ANY_ARCH_MACHINES = {0: "none", 247: "bpf"}
_SHOWN_PROBLEMS = 3


@dataclass(frozen=True)
class ElfHeader:
    """What the header says: ``e_machine``, 32 or 64 bit, and byte order."""

    machine: int
    bits: int
    little_endian: bool

    @property
    def machine_name(self) -> str:
        known = _MACHINE_NAMES.get(self.machine) or _ANY_ARCH_MACHINES.get(self.machine)
        return known or f"machine {self.machine}"


def read_elf_header(path: str | os.PathLike[str]) -> ElfHeader | None:
    """The ELF header of the file at ``path``, or None when it is not an ELF file."""
    with open(path, "rb") as handle:
        head = handle.read(_HEADER_BYTES)
    return parse_elf_header(head)


def parse_elf_header(head: bytes) -> ElfHeader | None:
    """The header in ``head`` (a file's first bytes), or None when they are not an ELF header.

    A file that merely starts with the magic (a truncated download, a text file) is not ELF: the
    class, byte order and version bytes must hold the only values the ELF standard defines.
    """
    if len(head) < _HEADER_BYTES or not head.startswith(_MAGIC):
        return None
    ei_class, ei_data, ei_version = head[4], head[5], head[6]
    if ei_class not in (1, 2) or ei_data not in (1, 2) or ei_version != 1:
        return None
    little = ei_data == 1
    machine = int.from_bytes(head[18:20], "little" if little else "big")
    return ElfHeader(machine=machine, bits=32 if ei_class == 1 else 64, little_endian=little)


def foreign_elf_files(root: Path, arch: str) -> tuple[int, list[str]]:
    """How many ELF files the tree under ``root`` holds, and those not for ``arch``'s machine.

    Each foreign file is described as ``PATH is an ELF file for MACHINE``. Symlinks are not
    followed (their targets in the tree are checked themselves).
    """
    expected, _name = ELF_MACHINES[arch]
    checked = 0
    foreign: list[str] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for filename in sorted(filenames):
            path = Path(dirpath, filename)
            if path.is_symlink() or not path.is_file():
                continue
            header = read_elf_header(path)
            if header is None:
                continue
            checked += 1
            if header.machine != expected and header.machine not in _ANY_ARCH_MACHINES:
                foreign.append(
                    f"{path.relative_to(root).as_posix()} is an ELF file for {header.machine_name}"
                )
    return checked, foreign


def describe_foreign(foreign: list[str]) -> str:
    """The first few foreign files, and how many more there are."""
    more = f" (and {len(foreign) - _SHOWN_PROBLEMS} more)" if len(foreign) > _SHOWN_PROBLEMS else ""
    return "; ".join(foreign[:_SHOWN_PROBLEMS]) + more


def check_tree_architecture(root: Path, arch: str) -> int:
    """Refuse an image tree holding an ELF file for another machine than ``arch``'s.

    Returns how many ELF files were checked. Raises ``image.wrong-architecture`` naming the
    file(s) and both machines.
    """
    checked, foreign = foreign_elf_files(root, arch)
    if foreign:
        raise PipelineError(
            "image.wrong-architecture",
            f"{describe_foreign(foreign)}, but this is the {arch} image: its ELF files must be "
            f"built for {ELF_MACHINES[arch][1]}. Check that the recipe's {arch} source is the "
            f"{arch} download.",
        )
    return checked
