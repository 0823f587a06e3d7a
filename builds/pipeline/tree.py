"""Assemble the sysext root from unpacked sources, and the rules every image must obey.

The rules come from ``shared/reference/sysext.md``: only ``usr/`` and ``opt/`` at the top,
never ``usr/sbin`` or ``usr/lib/os-release``, drop-ins end in ``.conf``, unit names are valid,
and no device nodes, FIFOs, sockets, setuid/setgid/sticky bits, hard links, absolute symlinks or
symlinks that leave the tree. The same checker (:func:`check_entries`) runs on the assembled
directory here and on the finished image's file list (``image.audit_image``).
"""

from __future__ import annotations

import glob
import os
import posixpath
import re
import shutil
import stat
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from builds.pipeline.errors import PipelineError
from builds.pipeline.recipe import InstallRule, Recipe, ResolvedSource, StartUnit

RELEASE_DIR = "usr/lib/extension-release.d"
UNIT_DIRS = ("usr/lib/systemd/system", "usr/lib/systemd/user")
TOP_LEVEL = frozenset({"usr", "opt"})
FORBIDDEN_PATHS = {
    "usr/sbin": "usr/sbin is a symlink to bin on Flatcar; shipping it breaks hosts (use usr/bin)",
    "usr/lib/os-release": "usr/lib/os-release belongs to the host OS",
    "usr/lib/extension-release": "usr/lib/extension-release is not an extension's metadata file",
}
UNIT_TYPES = (
    "service",
    "socket",
    "device",
    "mount",
    "automount",
    "swap",
    "target",
    "path",
    "timer",
    "slice",
    "scope",
)
_UNIT_RE = re.compile(r"^[A-Za-z0-9:_.\\-]+(@[A-Za-z0-9:_.\\-]*)?\.(" + "|".join(UNIT_TYPES) + r")$")
# Unit directories: "<unit>.d" drop-ins, "<type>.d" top-level drop-ins and dependency dirs.
_UNIT_DIR_SUFFIXES = (".d", ".wants", ".requires", ".upholds")
# Directories systemd reads only *.conf from (the recipe loader uses the same list).
_CONF_DIRS = (
    "usr/lib/tmpfiles.d",
    "usr/lib/sysusers.d",
    "usr/lib/sysctl.d",
    "usr/lib/modules-load.d",
    "usr/lib/binfmt.d",
)
_GLOB_CHARS = frozenset("*?[")
MAX_UNIT_NAME = 255
# Scripts shipped as recipe `files` under these directories get the executable bit (they have no mode field).
_EXECUTABLE_DIRS = ("usr/bin/", "usr/libexec/", "opt/")


@dataclass(frozen=True)
class Entry:
    """One file-system entry of a tree or an image, as the rules see it.

    ``kind`` is ``dir``, ``file``, ``symlink`` or a description of anything else (``fifo``,
    ``char device`` ...); ``mode`` holds the permission bits including setuid/setgid/sticky.
    """

    path: str  # relative, "/"-separated, no leading "./"
    kind: str
    mode: int
    target: str | None = None  # symlink target
    links: int = 1  # hard-link count of a regular file, where known


@dataclass(frozen=True)
class UnpackedSource:
    """A fetched source ready to install from.

    ``path`` is the unpacked directory, or the downloaded file itself for ``archive: file``.
    ``movable`` allows moving files out of ``path`` instead of copying (a scratch unpack
    directory, never the download cache).
    """

    source: ResolvedSource
    path: Path
    movable: bool = False


@dataclass(frozen=True)
class TreeSummary:
    """What went into the tree: counts for the build log."""

    files: int
    directories: int
    symlinks: int
    bytes: int


# --------------------------------------------------------------------------------------------
# Rules


def is_valid_unit_name(name: str) -> bool:
    return len(name) <= MAX_UNIT_NAME and bool(_UNIT_RE.match(name))


def _fail(area: str, problem: str, message: str) -> PipelineError:
    return PipelineError(f"{area}.{problem}", message)


def _check_name(entry: Entry, area: str, where: str) -> None:
    path = entry.path
    try:
        path.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise _fail(area, "invalid-name", f"{where}: {path!r} is not a UTF-8 file name") from exc
    if any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in path):
        raise _fail(area, "invalid-name", f"{where}: {path!r} contains control characters")


def _unit_dir_problem(rest: str, kind: str) -> str | None:
    """Why ``rest`` (a path below a unit directory) is not acceptable, or None."""
    parts = rest.split("/")
    head = parts[0]
    if len(parts) == 1:
        if kind == "dir":
            for suffix in _UNIT_DIR_SUFFIXES:
                stem = head[: -len(suffix)] if head.endswith(suffix) else None
                if stem and (is_valid_unit_name(stem) or (suffix == ".d" and stem in UNIT_TYPES)):
                    return None
            return f"directory {head!r} is neither a unit drop-in (<unit>.d) nor a .wants/.requires directory"
        if not is_valid_unit_name(head):
            return f"{head!r} is not a valid unit name (name.service, name@.service, name.socket ...)"
        return None
    if kind == "dir":
        return f"unexpected directory {rest!r} inside a unit directory"
    if (
        head.endswith((".wants", ".requires", ".upholds"))
        and len(parts) == 2
        and not is_valid_unit_name(parts[1])
    ):
        return f"{parts[1]!r} in {head} is not a valid unit name"
    return None  # files in <unit>.d are checked as drop-ins


def _is_drop_in_file(path: str) -> bool:
    parent, _, _ = path.rpartition("/")
    if parent in _CONF_DIRS:
        return True
    return path.startswith("usr/lib/systemd/") and parent.endswith(".d") and path.count("/") >= 4


def _resolve_symlink(
    link_path: str, target: str, links: Mapping[str, str], *, max_hops: int = 40
) -> list[str] | None:
    """Resolve ``target`` of the symlink at ``link_path`` inside the tree, following symlinks
    of the tree itself. Returns the final path components, or None if it leaves the tree."""
    pending = target.split("/")
    resolved = link_path.split("/")[:-1]
    hops = 0
    while pending:
        part = pending.pop(0)
        if part in ("", "."):
            continue
        if part == "..":
            if not resolved:
                return None
            resolved.pop()
            continue
        candidate = "/".join([*resolved, part])
        if candidate in links:
            hops += 1
            if hops > max_hops:
                return None  # a loop: treat as escaping, it cannot be trusted
            inner = links[candidate]
            if inner.startswith("/"):
                return None
            pending = inner.split("/") + pending
            continue
        resolved.append(part)
    return resolved


def check_entries(
    entries: Iterable[Entry], name: str, *, area: str = "tree", where: str = "image tree"
) -> int:
    """Apply the sysext rules to ``entries``; raise ``<area>.<problem>`` on the first violation.

    Returns the number of entries checked. Problems: forbidden-path, special-file, setuid,
    hard-link, absolute-symlink, escaping-symlink, invalid-unit, invalid-dropin, invalid-name,
    missing-release.
    """
    items = sorted(entries, key=lambda e: e.path)
    symlinks = {e.path: e.target or "" for e in items if e.kind == "symlink"}
    release = f"{RELEASE_DIR}/extension-release.{name}"
    seen_release = False
    for entry in items:
        path = entry.path
        _check_name(entry, area, where)
        top = path.split("/", 1)[0]
        if top not in TOP_LEVEL:
            raise _fail(
                area, "forbidden-path", f"{where}: {path!r}: only usr/ and opt/ may be at the top level"
            )
        if path in TOP_LEVEL and entry.kind != "dir":
            raise _fail(area, "forbidden-path", f"{where}: {path!r} must be a directory, not a {entry.kind}")
        for forbidden, why in FORBIDDEN_PATHS.items():
            if path == forbidden or path.startswith(forbidden + "/"):
                raise _fail(area, "forbidden-path", f"{where}: {path!r}: {why}")
        if entry.kind not in ("dir", "file", "symlink"):
            raise _fail(
                area,
                "special-file",
                f"{where}: {path!r} is a {entry.kind}; images hold files, directories and symlinks only",
            )
        if entry.mode & (stat.S_ISUID | stat.S_ISGID | stat.S_ISVTX):
            raise _fail(
                area, "setuid", f"{where}: {path!r} has setuid/setgid/sticky bits (mode {entry.mode:04o})"
            )
        if entry.kind == "file" and entry.links > 1:
            raise _fail(
                area, "hard-link", f"{where}: {path!r} is a hard link ({entry.links} names for one file)"
            )
        if entry.kind == "symlink":
            target = entry.target or ""
            if not target or target.startswith("/"):
                raise _fail(
                    area, "absolute-symlink", f"{where}: {path!r} -> {target!r}: symlinks must be relative"
                )
            if _resolve_symlink(path, target, symlinks) is None:
                raise _fail(
                    area, "escaping-symlink", f"{where}: {path!r} -> {target!r} points outside the image"
                )
        if path.startswith(RELEASE_DIR + "/"):
            if path != release:
                raise _fail(
                    area,
                    "forbidden-path",
                    f"{where}: {path!r}: the only extension-release file must be extension-release.{name}",
                )
            if entry.kind != "file":
                raise _fail(area, "missing-release", f"{where}: {path!r} must be a regular file")
            seen_release = True
        for unit_dir in UNIT_DIRS:
            if path.startswith(unit_dir + "/"):
                problem = _unit_dir_problem(path[len(unit_dir) + 1 :], entry.kind)
                if problem:
                    raise _fail(area, "invalid-unit", f"{where}: {path!r}: {problem}")
        if entry.kind != "dir" and _is_drop_in_file(path) and not path.endswith(".conf"):
            raise _fail(area, "invalid-dropin", f"{where}: {path!r}: drop-in files must end in .conf")
    if not seen_release:
        raise _fail(area, "missing-release", f"{where}: {release} is missing")
    return len(items)


def scan_tree(root: Path) -> list[Entry]:
    """The entries below ``root`` (not following symlinks)."""
    entries: list[Entry] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        rel_dir = os.path.relpath(dirpath, root)
        for entry_name in [*dirnames, *sorted(filenames)]:
            full = os.path.join(dirpath, entry_name)
            rel = entry_name if rel_dir == "." else f"{rel_dir}/{entry_name}"
            st = os.lstat(full)
            kind = _kind(st.st_mode)
            entries.append(
                Entry(
                    path=rel.replace(os.sep, "/"),
                    kind=kind,
                    mode=stat.S_IMODE(st.st_mode),
                    target=os.readlink(full) if kind == "symlink" else None,
                    links=st.st_nlink if kind == "file" else 1,
                )
            )
    return entries


def _kind(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "dir"
    if stat.S_ISREG(mode):
        return "file"
    if stat.S_ISLNK(mode):
        return "symlink"
    if stat.S_ISFIFO(mode):
        return "fifo"
    if stat.S_ISSOCK(mode):
        return "socket"
    if stat.S_ISCHR(mode):
        return "char device"
    if stat.S_ISBLK(mode):
        return "block device"
    return "special file"


def validate_tree(root: Path, name: str) -> TreeSummary:
    """Check an assembled tree against the sysext rules (raises ``tree.*``)."""
    entries = scan_tree(root)
    check_entries(entries, name, area="tree", where="image tree")
    size = 0
    for entry in entries:
        if entry.kind == "file":
            size += os.lstat(root / entry.path).st_size
    return TreeSummary(
        files=sum(e.kind == "file" for e in entries),
        directories=sum(e.kind == "dir" for e in entries),
        symlinks=sum(e.kind == "symlink" for e in entries),
        bytes=size,
    )


# --------------------------------------------------------------------------------------------
# Generated files


def render_extension_release(recipe: Recipe, arch: str) -> str:
    """``extension-release.<name>`` in os-release syntax (sysext.md "Fields")."""
    lines = [f"ID={recipe.release_id}"]
    if recipe.release_id != "_any":
        lines.append("SYSEXT_LEVEL=1.0")
    lines.append(f"ARCHITECTURE={arch}")
    if recipe.reload_manager:
        lines.append("EXTENSION_RELOAD_MANAGER=1")
    return "\n".join(lines) + "\n"


def upholds_dropin(start: StartUnit) -> tuple[str, str]:
    """(path, content) of the drop-in that starts ``start.unit`` with ``start.target``."""
    stem = start.unit.rsplit(".", 1)[0]
    path = f"usr/lib/systemd/system/{start.target}.d/10-{stem}.conf"
    return path, f"[Unit]\nUpholds={start.unit}\n"


# --------------------------------------------------------------------------------------------
# Assembly


@dataclass(frozen=True)
class _Placement:
    dest: str
    origin: str  # for conflict messages
    source_path: Path | None = None  # file to copy/move
    link_target: str | None = None  # symlink to create
    text: str | None = None  # generated content
    mode: int | None = None
    movable: bool = False


def _has_glob(pattern: str) -> bool:
    return any(ch in _GLOB_CHARS for ch in pattern)


def _inside(root: Path, candidate: Path) -> bool:
    real_root = os.path.realpath(root)
    real = os.path.realpath(candidate)
    return real == real_root or real.startswith(real_root + os.sep)


def _top_entries(root: Path) -> str:
    try:
        names = sorted(os.listdir(root))
    except OSError:
        return "nothing"
    shown = ", ".join(names[:8]) + (", ..." if len(names) > 8 else "")
    return shown or "nothing"


def _plan_source(unpacked: UnpackedSource) -> list[_Placement]:
    source = unpacked.source
    placements: list[_Placement] = []
    if source.archive == "file":
        for rule in source.install:
            dest = rule.to
            if rule.into_directory:
                dest = rule.to + _download_name(source)
            # A download has no mode of its own (the cache keeps blobs read-only): 0644 unless set.
            mode = rule.mode if rule.mode is not None else 0o644
            placements.append(
                _Placement(dest, f"{source.label}: downloaded file", source_path=unpacked.path, mode=mode)
            )
        return placements
    root = unpacked.path
    for rule in source.install:
        placements.extend(_plan_rule(unpacked, rule, root))
    return placements


def _download_name(source: ResolvedSource) -> str:
    name = source.url.split("?", 1)[0].split("#", 1)[0].rstrip("/").rsplit("/", 1)[-1]
    return name or source.id


def _plan_rule(unpacked: UnpackedSource, rule: InstallRule, root: Path) -> list[_Placement]:
    source = unpacked.source
    pattern = (rule.source or "").rstrip("/")
    origin = f"{source.label}: install {pattern!r}"
    if _has_glob(pattern):
        matches = sorted(glob.glob(pattern, root_dir=root))
    else:
        matches = [pattern] if os.path.lexists(root / pattern) else []
    if not matches:
        raise PipelineError(
            "tree.install-no-match",
            f"{source.label}: install rule {pattern!r} matches nothing in the archive "
            f"(its top level holds: {_top_entries(root)}; check the path and strip_components)",
        )
    if len(matches) > 1 and not rule.into_directory:
        raise PipelineError(
            "tree.install-ambiguous",
            f"{source.label}: install rule {pattern!r} matches {len(matches)} entries but {rule.to!r} "
            "names one file; end 'to' with '/' to install them into a directory",
        )
    placements: list[_Placement] = []
    for match in matches:
        full = root / match
        if not _inside(root, full.parent):
            raise PipelineError(
                "tree.install-bad-symlink", f"{origin}: {match!r} lies behind a symlink leaving the archive"
            )
        dest = rule.to + posixpath.basename(match) if rule.into_directory else rule.to
        if full.is_symlink():
            if _has_glob(pattern):
                # Globs keep symlinks as they are (library sonames); the tree check vets them.
                placements.append(_Placement(dest, origin, link_target=os.readlink(full)))
                continue
            # A path named on its own means its content: follow the link inside the archive.
            if not _inside(root, full) or not full.exists():
                raise PipelineError(
                    "tree.install-bad-symlink",
                    f"{origin}: {match!r} is a symlink to {os.readlink(full)!r}, which is not in the archive",
                )
            full = Path(os.path.realpath(full))
        if full.is_dir():
            placements.extend(_plan_directory(unpacked, full, dest, rule.mode, origin))
        elif full.is_file():
            placements.append(
                _Placement(dest, origin, source_path=full, mode=rule.mode, movable=unpacked.movable)
            )
        else:
            raise PipelineError(
                "tree.special-file", f"{origin}: {match!r} is not a regular file or directory"
            )
    return placements


def _plan_directory(
    unpacked: UnpackedSource, directory: Path, dest: str, mode: int | None, origin: str
) -> list[_Placement]:
    placements = [_Placement(dest.rstrip("/"), origin, mode=None)]  # the directory itself
    for dirpath, dirnames, filenames in os.walk(directory):
        dirnames.sort()
        rel_dir = os.path.relpath(dirpath, directory)
        base = dest.rstrip("/") if rel_dir == "." else f"{dest.rstrip('/')}/{rel_dir}"
        for entry_name in dirnames:
            full = Path(dirpath, entry_name)
            if full.is_symlink():
                placements.append(_Placement(f"{base}/{entry_name}", origin, link_target=os.readlink(full)))
            else:
                placements.append(_Placement(f"{base}/{entry_name}", origin))
        for entry_name in sorted(filenames):
            full = Path(dirpath, entry_name)
            target = f"{base}/{entry_name}"
            if full.is_symlink():
                placements.append(_Placement(target, origin, link_target=os.readlink(full)))
            elif stat.S_ISREG(full.lstat().st_mode):
                placements.append(
                    _Placement(target, origin, source_path=full, mode=mode, movable=unpacked.movable)
                )
            else:
                raise PipelineError("tree.special-file", f"{origin}: {full.name!r} is not a regular file")
    return placements


def _static_mode(path: str, text: str) -> int:
    if text.startswith("#!") and path.startswith(_EXECUTABLE_DIRS):
        return 0o755
    return 0o644


def assemble_tree(recipe: Recipe, arch: str, sources: Sequence[UnpackedSource], root: Path) -> TreeSummary:
    """Build the image tree of ``recipe`` for ``arch`` in the empty directory ``root``.

    Installs every source's rules, then the recipe's static ``files``, the ``Upholds=``
    drop-ins of ``start`` units and ``extension-release.<name>``; finally validates the tree.
    Two rules writing the same path is an error (``tree.install-conflict``).
    """
    placements: list[_Placement] = []
    for unpacked in sources:
        placements.extend(_plan_source(unpacked))
    for path, text in recipe.files.items():
        placements.append(_Placement(path, f"files: {path}", text=text, mode=_static_mode(path, text)))
    for start in recipe.start:
        path, text = upholds_dropin(start)
        placements.append(_Placement(path, f"start: {start.unit}", text=text, mode=0o644))
    release = f"{RELEASE_DIR}/extension-release.{recipe.name}"
    placements.append(
        _Placement(release, "extension-release", text=render_extension_release(recipe, arch), mode=0o644)
    )

    # Each destination has one origin; a file used by two rules is copied, not moved.
    claimed: dict[str, str] = {}
    uses: dict[Path, int] = {}
    for placement in placements:
        is_dir = placement.source_path is None and placement.link_target is None and placement.text is None
        previous = claimed.get(placement.dest)
        if previous is not None and not (is_dir and previous.startswith("dir:")):
            raise PipelineError(
                "tree.install-conflict",
                f"{placement.dest} is written twice: by {previous.removeprefix('dir:')} "
                f"and by {placement.origin}",
            )
        claimed[placement.dest] = ("dir:" if is_dir else "") + placement.origin
        if placement.source_path is not None:
            uses[placement.source_path] = uses.get(placement.source_path, 0) + 1

    root.mkdir(mode=0o755, parents=True, exist_ok=True)
    for placement in placements:
        _place(root, placement, movable=placement.movable and uses.get(placement.source_path or root, 0) == 1)
    for start in recipe.start:
        _check_start_unit(root, start)
    _normalise_directories(root)
    return validate_tree(root, recipe.name)


def _place(root: Path, placement: _Placement, *, movable: bool) -> None:
    dest = root / placement.dest
    try:
        _make_parents(root, dest.parent)
        if placement.link_target is not None:
            os.symlink(placement.link_target, dest)
        elif placement.text is not None:
            dest.write_text(placement.text, encoding="utf-8")
            dest.chmod(placement.mode if placement.mode is not None else 0o644)
        elif placement.source_path is not None:
            own_mode = stat.S_IMODE(placement.source_path.stat().st_mode) & 0o777
            if movable:
                os.rename(placement.source_path, dest)
            else:
                shutil.copyfile(placement.source_path, dest)
            dest.chmod(placement.mode if placement.mode is not None else own_mode)
        else:
            dest.mkdir(mode=0o755, exist_ok=True)
    except (FileExistsError, NotADirectoryError, IsADirectoryError) as exc:
        raise PipelineError(
            "tree.install-conflict", f"{placement.origin}: cannot place {placement.dest}: {exc.strerror}"
        ) from exc


def _make_parents(root: Path, directory: Path) -> None:
    if directory == root or (directory.is_dir() and not directory.is_symlink()):
        return
    _make_parents(root, directory.parent)
    if directory.is_symlink() or directory.exists():
        raise NotADirectoryError(20, "a parent is not a directory", str(directory))
    directory.mkdir(mode=0o755)


def _check_start_unit(root: Path, start: StartUnit) -> None:
    unit = start.unit
    template = re.sub(r"@[^.]*\.", "@.", unit) if "@" in unit else unit
    for unit_dir in UNIT_DIRS[:1]:
        if os.path.lexists(root / unit_dir / unit) or os.path.lexists(root / unit_dir / template):
            return
    raise PipelineError(
        "tree.missing-unit",
        f"start lists {unit} but the image ships no {UNIT_DIRS[0]}/{unit}; "
        "add it to files or an install rule",
    )


def _normalise_directories(root: Path) -> None:
    # Directory modes from archives vary (0700, 0775 ...); the image wants 0755 everywhere.
    for dirpath, _dirnames, _filenames in os.walk(root):
        os.chmod(dirpath, 0o755)  # noqa: S103 - directories of a read-only image
