"""Source archives: packing a directory (honouring ``.dockerignore``), receiving an upload to disk under a
size cap, and extracting one safely.

Everything here but :func:`receive` is blocking file work: callers on an event loop run it in a thread
(``asyncio.to_thread``). Extraction refuses absolute paths, ``..``, links (symbolic or hard) that point out
of the tree, device files and FIFOs, and leaves nothing behind when it refuses.
"""

from __future__ import annotations

import os
import posixpath
import shutil
import stat
import tarfile
from collections.abc import AsyncIterable, AsyncIterator, Iterable
from pathlib import Path
from typing import IO

from shared.dockerignore import Matcher, walk
from shared.errors import BadRequest, PayloadTooLarge

CHUNK = 1024 * 1024
MAX_LINK_DEPTH = 40
MAX_NAME = 4096
MAX_HEADER = 1024 * 1024
"""The most a GNU long-name or pax header may declare: tarfile reads such a header whole into memory."""


class UnsafeArchive(BadRequest):
    """An archive member that would land outside the tree or is not a plain file, directory or link."""

    def __init__(self, member: str, reason: str) -> None:
        super().__init__(f"bad archive member {member!r}: {reason}")
        self.member = member
        self.reason = reason


def human_size(size: int) -> str:
    """``536870912`` -> ``512 MiB``."""
    value = float(size)
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if value == int(value) else f"{value:.1f} {unit}"
        value /= 1024
    return f"{size} bytes"  # pragma: no cover


# ---- receiving ---------------------------------------------------------------------------------


async def receive(chunks: AsyncIterable[bytes], dest: Path, limit: int, what: str = "source archive") -> int:
    """Write the stream to ``dest`` (a new file) in 1 MiB writes off the loop; returns its size.

    Past ``limit`` bytes: :class:`PayloadTooLarge` (naming ``what``), and ``dest`` is removed. Any other
    failure (the client went away) removes it too."""
    import asyncio  # here: the CLI packs with this module, and asyncio is a fifth of its import

    handle: IO[bytes] = await asyncio.to_thread(open, dest, "xb")
    total = 0
    pending: list[bytes] = []
    pending_size = 0
    try:
        async for chunk in chunks:
            if not chunk:
                continue
            total += len(chunk)
            if total > limit:
                raise PayloadTooLarge(f"{what} is larger than {human_size(limit)}")
            pending.append(chunk)
            pending_size += len(chunk)
            if pending_size >= CHUNK:
                await asyncio.to_thread(handle.write, b"".join(pending))
                pending, pending_size = [], 0
        if pending:
            await asyncio.to_thread(handle.write, b"".join(pending))
        await asyncio.to_thread(handle.close)
    except BaseException:
        await asyncio.to_thread(_discard, handle, dest)
        raise
    return total


async def read_chunks(path: Path, size: int = CHUNK) -> AsyncIterator[bytes]:
    """The file at ``path`` in ``size`` reads, each in a thread (FileNotFoundError when it is not there)."""
    import asyncio

    handle: IO[bytes] = await asyncio.to_thread(open, path, "rb")
    try:
        while chunk := await asyncio.to_thread(handle.read, size):
            yield chunk
    finally:
        await asyncio.to_thread(handle.close)


def _discard(handle: IO[bytes], path: Path) -> None:
    handle.close()
    path.unlink(missing_ok=True)


# ---- packing -----------------------------------------------------------------------------------


def _normalized(info: tarfile.TarInfo) -> tarfile.TarInfo:
    """Owned by root, no local user names: what lands in the image does not depend on who packed it."""
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


def pack(
    root: Path,
    out: IO[bytes],
    *,
    compress: bool = True,
    keep: Iterable[str] = (),
    ignore: bool = True,
    check_links: bool = False,
) -> int:
    """Write ``root`` as a tar (gzipped when ``compress``) to ``out``; returns the number of entries.

    With ``ignore``, ``root/.dockerignore`` decides what is left out; ``keep`` names paths always sent (the
    manifest, Dockerfiles, ``.dockerignore`` itself). Links are stored as links, never followed; with
    ``check_links`` a symbolic link leading out of ``root`` is refused (:class:`UnsafeArchive`) here, as
    :func:`extract` would refuse it at the other end."""
    matcher = Matcher.for_directory(root) if ignore else Matcher([])
    count = 0
    mode = "w:gz" if compress else "w"
    options = {"compresslevel": 6} if compress else {}
    with tarfile.open(fileobj=out, mode=mode, format=tarfile.PAX_FORMAT, **options) as tar:  # type: ignore[call-overload]
        for relative in walk(root, matcher, keep):
            path = root / relative
            try:
                info = tar.gettarinfo(str(path), arcname=relative)
            except FileNotFoundError:  # removed while packing
                continue
            if info is None or not (info.isreg() or info.isdir() or info.issym() or info.islnk()):
                continue  # sockets, FIFOs, devices: not part of a build context
            if check_links and info.issym():
                parent = posixpath.dirname(relative)
                target = posixpath.join(parent, info.linkname) if parent else info.linkname
                if info.linkname.startswith("/") or resolve_inside(root, target) is None:
                    raise UnsafeArchive(relative, f"symbolic link out of the tree ({info.linkname})")
            info = _normalized(info)
            if info.isreg():
                with path.open("rb") as handle:
                    tar.addfile(info, handle)
            else:
                tar.addfile(info)
            count += 1
    return count


# ---- extracting --------------------------------------------------------------------------------


def _parts(name: str) -> list[str]:
    return [p for p in name.split("/") if p not in ("", ".")]


def resolve_inside(root: Path, relative: str, _depth: int = 0) -> str | None:
    """Where ``relative`` leads under ``root`` following the symbolic links already on disk, as a clean
    relative path (``""`` for the root), or ``None`` when it leaves the tree (or links loop too deep).

    Computed component by component (no ``realpath``), so no path length can cut the check short."""
    if _depth > MAX_LINK_DEPTH:
        return None
    if relative.startswith("/"):
        return None
    stack: list[str] = []
    for part in relative.split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            if not stack:
                return None
            stack.pop()
            continue
        candidate = root.joinpath(*stack, part)
        try:
            is_link = stat.S_ISLNK(os.lstat(candidate).st_mode)
        except (FileNotFoundError, NotADirectoryError):
            is_link = False
        if not is_link:
            stack.append(part)
            continue
        target = os.readlink(candidate)
        if target.startswith("/"):
            return None
        resolved = resolve_inside(root, posixpath.join(*stack, target) if stack else target, _depth + 1)
        if resolved is None:
            return None
        stack = resolved.split("/") if resolved else []
    return "/".join(stack)


class BoundedTarInfo(tarfile.TarInfo):
    """A member whose GNU long-name/long-link or pax header is refused before it is read when it declares more
    than :data:`MAX_HEADER` bytes (tarfile would read gigabytes into memory for a header a small upload
    declares)."""

    def _bounded(self) -> None:
        if self.size > MAX_HEADER:
            raise PayloadTooLarge(
                f"bad archive member {self.name[:200]!r}: its header declares {human_size(self.size)} "
                f"(at most {human_size(MAX_HEADER)})"
            )

    def _proc_gnulong(self, tarfile: tarfile.TarFile) -> tarfile.TarInfo:
        self._bounded()
        return super()._proc_gnulong(tarfile)  # type: ignore[misc, no-any-return]

    def _proc_pax(self, tarfile: tarfile.TarFile) -> tarfile.TarInfo:
        self._bounded()
        return super()._proc_pax(tarfile)  # type: ignore[misc, no-any-return]


def _check(member: tarfile.TarInfo, root: Path) -> None:
    """Refuse ``member`` unless it stays inside ``root`` given what is already extracted."""
    name = member.name
    if len(name) > MAX_NAME or len(member.linkname) > MAX_NAME:
        raise UnsafeArchive(name[:200], "name too long")
    if "\x00" in name or "\x00" in member.linkname:
        raise UnsafeArchive(name, "NUL in name")
    if name.startswith("/") or (len(name) > 1 and name[1] == ":"):
        raise UnsafeArchive(name, "absolute path")
    if ".." in name.split("/"):
        raise UnsafeArchive(name, "path contains '..'")
    if member.ischr() or member.isblk():
        raise UnsafeArchive(name, "device file")
    if member.isfifo():
        raise UnsafeArchive(name, "FIFO")
    if not (member.isreg() or member.isdir() or member.issym() or member.islnk()):
        raise UnsafeArchive(name, "not a file, directory or link")
    parent = posixpath.dirname(posixpath.normpath(name))
    if resolve_inside(root, parent) is None or resolve_inside(root, posixpath.normpath(name)) is None:
        raise UnsafeArchive(name, "path leads out of the tree through a link")
    if member.issym():
        if member.linkname.startswith("/"):
            raise UnsafeArchive(name, f"symbolic link to an absolute path ({member.linkname})")
        target = posixpath.join(parent, member.linkname) if parent else member.linkname
        if resolve_inside(root, target) is None:
            raise UnsafeArchive(name, f"symbolic link out of the tree ({member.linkname})")
    if member.islnk():
        link = member.linkname
        if link.startswith("/") or ".." in link.split("/"):
            raise UnsafeArchive(name, f"hard link out of the tree ({link})")
        resolved = resolve_inside(root, link)
        if resolved is None:
            raise UnsafeArchive(name, f"hard link out of the tree ({link})")
        try:
            if not stat.S_ISREG(os.lstat(root / resolved).st_mode):
                raise UnsafeArchive(name, f"hard link to something that is not a file ({link})")
        except FileNotFoundError:
            raise UnsafeArchive(name, f"hard link to a missing file ({link})") from None


def _verify_links(root: Path) -> None:
    """After extraction: every symbolic link in the tree still resolves inside it (a later link can change
    where an earlier one leads)."""
    for directory, dirs, files in os.walk(root):
        for entry in (*dirs, *files):
            path = Path(directory) / entry
            if not path.is_symlink():
                continue
            relative = path.relative_to(root).as_posix()
            parent = posixpath.dirname(relative)
            target = os.readlink(path)
            joined = posixpath.join(parent, target) if parent else target
            if target.startswith("/") or resolve_inside(root, joined) is None:
                raise UnsafeArchive(relative, f"symbolic link out of the tree ({target})")


def _plain(member: tarfile.TarInfo) -> tarfile.TarInfo:
    """What ``tarfile.data_filter`` does to the modes and owners of a member :func:`_check` has let through
    (for Pythons without extraction filters): no set-id or sticky bit, no group or other write, owned by
    whoever extracts."""
    member.mode &= 0o755
    if member.isreg():
        member.mode |= 0o600
    member.uid = member.gid = -1
    member.uname = member.gname = ""
    return member


def extract(archive: Path, dest: Path, *, max_size: int | None = None, max_members: int = 200_000) -> int:
    """Extract the tar (gzipped or not) at ``archive`` into ``dest``, which must not exist yet.

    Returns the number of members. On any refusal (:class:`UnsafeArchive`, a corrupt archive, more than
    ``max_size`` bytes of content or ``max_members`` members) ``dest`` is removed: nothing is left."""
    dest.mkdir(parents=True, exist_ok=False, mode=0o700)
    root = dest.resolve()
    total = 0
    count = 0

    def members(tar: tarfile.TarFile) -> Iterable[tarfile.TarInfo]:
        nonlocal total, count
        for member in tar:
            count += 1
            if count > max_members:
                raise PayloadTooLarge(f"source archive has more than {max_members} entries")
            if not _parts(member.name):  # the root itself ("./")
                if member.isdir():
                    continue
                raise UnsafeArchive(member.name, "not a directory")
            _check(member, root)
            if member.isreg():
                total += member.size
                if max_size is not None and total > max_size:
                    raise PayloadTooLarge(f"source archive expands to more than {human_size(max_size)}")
            yield member

    def safe(member: tarfile.TarInfo, path: str) -> tarfile.TarInfo:
        try:
            return tarfile.data_filter(member, path)
        except tarfile.FilterError as exc:
            raise UnsafeArchive(member.name, str(exc).split(": ", 1)[-1] or type(exc).__name__) from None

    try:
        try:
            with tarfile.open(archive, mode="r:*", tarinfo=BoundedTarInfo) as tar:
                tar.errorlevel = 2
                if hasattr(tarfile, "data_filter"):
                    tar.extractall(root, members=members(tar), filter=safe)
                else:  # Python before 3.11.4 (Debian 12's, in the builder image): _check, and data_filter's modes
                    tar.extractall(root, members=(_plain(m) for m in members(tar)))
        except (tarfile.TarError, EOFError, OSError, UnicodeError, RecursionError) as exc:
            if isinstance(exc, tarfile.FilterError):
                raise UnsafeArchive(exc.tarinfo.name, type(exc).__name__) from None
            raise BadRequest(f"source is not a readable tar.gz archive ({type(exc).__name__})") from None
        _verify_links(root)
    except BaseException:
        shutil.rmtree(dest, ignore_errors=True)
        raise
    return count


def remove_tree(path: Path) -> None:
    """``rm -rf path`` (no error when it is gone); for ``asyncio.to_thread``."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)
