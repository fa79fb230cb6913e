"""Source archives: `.dockerignore` matching as Docker does it, packing, size-capped receiving, and safe
extraction that refuses what would land outside the tree and leaves nothing behind."""

from __future__ import annotations

import gzip
import io
import os
import stat
import tarfile
import time
import tracemalloc
from collections.abc import AsyncIterator, Iterable
from pathlib import Path

import pytest

from shared.archive import MAX_HEADER, UnsafeArchive, extract, pack, receive, resolve_inside
from shared.dockerignore import Matcher, parse, walk
from shared.errors import BadRequest, PayloadTooLarge

# ---- .dockerignore -----------------------------------------------------------------------------


def excluded(patterns: str, path: str) -> bool:
    return Matcher(parse(patterns)).excluded(path)


@pytest.mark.parametrize(
    ("patterns", "path", "expected"),
    [
        # Docker's documented examples
        ("*/temp*", "somedir/temporary.txt", True),
        ("*/temp*", "somedir/temp", True),
        ("*/temp*", "temp", False),
        ("*/temp*", "a/b/temp", False),
        ("*/*/temp*", "somedir/subdir/temporary.txt", True),
        ("*/*/temp*", "somedir/temporary.txt", False),
        ("temp?", "tempa", True),
        ("temp?", "temp", False),
        ("temp?", "tempab", False),
        ("**/*.go", "main.go", True),
        ("**/*.go", "a/b/c/x.go", True),
        ("**/*.go", "a/b/c/x.gox", False),
        ("*.md\n!README.md", "README.md", False),
        ("*.md\n!README.md", "CHANGES.md", True),
        ("*.md\n!README*.md\nREADME-secret.md", "README-secret.md", True),
        ("*.md\n!README*.md\nREADME-secret.md", "README-public.md", False),
        ("*.md\nREADME-secret.md\n!README*.md", "README-secret.md", False),
        # a pattern matching a directory matches everything under it
        ("build", "build/x/y.o", True),
        ("build", "src/build", False),
        ("foo/**", "foo/a/b", True),
        ("foo/**", "foo", False),
        ("a/**/b", "a/b", True),
        ("a/**/b", "a/x/y/b", True),
        ("a/**/b", "a/x/y/c", False),
        ("**", "anything/at/all", True),
        # cleaning: leading slash, ./, trailing slash, surrounding spaces, comments
        ("/foo", "foo", True),
        ("./foo/", "foo/bar", True),
        ("  spaced  ", "spaced", True),
        ("# secret.txt", "secret.txt", False),
        ("#comment\n\n\nsecret.txt", "secret.txt", True),
        ("\ufeffsecret.txt", "secret.txt", True),
        ("foo/../bar", "bar", True),
        # classes and escapes
        ("[a-c]x", "bx", True),
        ("[a-c]x", "dx", False),
        ("[^a-c]x", "dx", True),
        ("\\*star", "*star", True),
        ("\\*star", "xstar", False),
        ("file.txt", "fileXtxt", False),
        ("a+b(c)", "a+b(c)", True),
        # exceptions re-include inside an excluded directory
        ("node_modules\n!node_modules/keep", "node_modules/keep/x.js", False),
        ("node_modules\n!node_modules/keep", "node_modules/other.js", True),
        ("*\n!src", "src/main.py", False),
        ("*\n!src", "docs/x", True),
    ],
)
def test_dockerignore_matches_like_docker(patterns: str, path: str, expected: bool) -> None:
    assert excluded(patterns, path) is expected


@pytest.mark.parametrize(
    ("pattern", "path", "expected"),
    [
        ("*a*a*a*a*a*a*b", "a" * 59 + "b", True),
        ("*a*a*a*a*a*a*b", "a" * 60, False),
        ("a*/**/b*", "ax/y/z/bq", True),
        ("a*/**/b*", "ax/y/z/q", False),
        ("**/**/x", "x", True),
        ("**/**/x", "p/q/x", True),
        ("*/", "dir", True),
        ("?", "/", False),
        ("[/]", "/", True),
        ("x**", "xa/b", True),
        ("x*", "xa/b", True),  # through its parent xa
    ],
)
def test_dockerignore_wildcards_match_whole_paths(pattern: str, path: str, expected: bool) -> None:
    assert excluded(pattern, path) is expected


def test_dockerignore_patterns_match_without_backtracking() -> None:
    matcher = Matcher(["*a*a*a*a*a*a*a*a*a*a*a*a*b", "**/**/**/**/**/**/**/**/x*y*z"])
    started = time.perf_counter()
    for _ in range(20):
        assert not matcher.excluded("a" * 60)
        assert not matcher.excluded("/".join(["xyx"] * 30))
    assert time.perf_counter() - started < 2.0  # backtracking took 0.6 s for one name with 6 stars


def test_dockerignore_rejects_a_lone_bang_and_an_open_class() -> None:
    with pytest.raises(ValueError):
        Matcher(["!"])
    with pytest.raises(ValueError):
        Matcher(["[abc"])


def tree(root: Path, files: Iterable[str]) -> None:
    for name in files:
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(name)


def test_walk_skips_excluded_directories_unless_an_exception_reaches_inside(tmp_path: Path) -> None:
    tree(
        tmp_path,
        ["app.py", "node_modules/a/index.js", "node_modules/keep/k.js", "logs/1.log", "docs/Dockerfile", "x.md"],
    )
    (tmp_path / ".dockerignore").write_text("node_modules\n!node_modules/keep\nlogs\n*.md\ndocs\n")
    found = list(walk(tmp_path, keep=[".dockerignore", "docs/Dockerfile"]))
    assert found == [
        ".dockerignore",
        "app.py",
        "node_modules/keep",
        "node_modules/keep/k.js",
        "docs/Dockerfile",
    ]


def test_walk_lists_links_without_following_them(tmp_path: Path) -> None:
    tree(tmp_path, ["real/file"])
    (tmp_path / "link").symlink_to("real")
    (tmp_path / "outside").symlink_to("/etc")
    assert list(walk(tmp_path)) == ["link", "outside", "real", "real/file"]


# ---- packing and extracting ----------------------------------------------------------------------


def test_pack_then_extract_keeps_files_modes_and_links(tmp_path: Path) -> None:
    source = tmp_path / "source"
    tree(source, ["Dockerfile", "bin/run", "lib/pkg/bin/tool", "secret.env", "empty/.keep"])
    (source / "bin/run").chmod(0o755)
    (source / "node_bin").mkdir()
    (source / "node_bin/tool").symlink_to("../lib/pkg/bin/tool")
    os.link(source / "Dockerfile", source / "Dockerfile.hard")
    (source / ".dockerignore").write_text("secret.env\nDockerfile\n")
    archive = tmp_path / "source.tgz"
    with archive.open("wb") as handle:
        pack(source, handle, keep=["Dockerfile", ".dockerignore"])
    with tarfile.open(archive) as tar:
        assert all(m.uid == 0 and m.uname == "" for m in tar.getmembers())
    dest = tmp_path / "out"
    extract(archive, dest)
    assert sorted(p.relative_to(dest).as_posix() for p in dest.rglob("*")) == [
        ".dockerignore",
        "Dockerfile",
        "Dockerfile.hard",
        "bin",
        "bin/run",
        "empty",
        "empty/.keep",
        "lib",
        "lib/pkg",
        "lib/pkg/bin",
        "lib/pkg/bin/tool",
        "node_bin",
        "node_bin/tool",
    ]
    assert (dest / "bin/run").stat().st_mode & 0o111
    assert os.readlink(dest / "node_bin/tool") == "../lib/pkg/bin/tool"
    assert (dest / "node_bin/tool").read_text() == "lib/pkg/bin/tool"


def make_tgz(path: Path, members: list[tuple[tarfile.TarInfo, bytes | None]]) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for info, data in members:
            if data is not None:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
            else:
                tar.addfile(info)
    return path


def file(name: str, data: bytes = b"x") -> tuple[tarfile.TarInfo, bytes]:
    return tarfile.TarInfo(name), data


def directory(name: str) -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type = tarfile.DIRTYPE
    info.mode = 0o755
    return info, None


def link(name: str, target: str, kind: bytes = tarfile.SYMTYPE) -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = target
    return info, None


def special(name: str, kind: bytes) -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.devmajor, info.devminor = 1, 3
    return info, None


BAD_ARCHIVES: dict[str, tuple[list[tuple[tarfile.TarInfo, bytes | None]], str, str]] = {
    "dotdot": ([file("ok.txt"), file("../x")], "../x", "'..'"),
    "dotdot-inside": ([file("a/../b")], "a/../b", "'..'"),
    "absolute": ([file("ok.txt"), file("/abs")], "/abs", "absolute"),
    "symlink-to-etc": ([file("ok.txt"), link("etc", "/etc")], "etc", "absolute"),
    "symlink-up": ([link("up", "../../..")], "up", "out of the tree"),
    "hardlink-out": ([file("ok.txt"), link("h", "../outside", tarfile.LNKTYPE)], "h", "hard link"),
    "hardlink-absolute": ([link("h", "/etc/passwd", tarfile.LNKTYPE)], "h", "hard link"),
    "char-device": ([special("null", tarfile.CHRTYPE)], "null", "device"),
    "block-device": ([special("disk", tarfile.BLKTYPE)], "disk", "device"),
    "fifo": ([special("pipe", tarfile.FIFOTYPE)], "pipe", "FIFO"),
    # a link that looks harmless (s/.. is '.') until s becomes a link to the root: writing through it
    "write-through-link-chain": (
        [link("s", "."), link("t", "s/.."), file("t/evil")],
        "t",
        "out of the tree",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_ARCHIVES))
def test_extract_refuses_members_leaving_the_tree_and_leaves_nothing(tmp_path: Path, case: str) -> None:
    members, member, reason = BAD_ARCHIVES[case]
    archive = make_tgz(tmp_path / "bad.tgz", members)
    dest = tmp_path / "sandbox" / "out"
    (tmp_path / "sandbox").mkdir()
    with pytest.raises(UnsafeArchive) as refused:
        extract(archive, dest)
    assert member in refused.value.message
    assert reason in refused.value.message
    assert refused.value.status == 400
    assert not dest.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.tgz", "sandbox"]
    assert list((tmp_path / "sandbox").iterdir()) == []


def test_a_link_made_harmful_by_a_later_link_is_refused(tmp_path: Path) -> None:
    archive = make_tgz(tmp_path / "bad.tgz", [link("t", "s/.."), link("s", ".")])
    with pytest.raises(UnsafeArchive, match="out of the tree"):
        extract(archive, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_extract_accepts_dot_slash_names_and_links_inside(tmp_path: Path) -> None:
    archive = make_tgz(
        tmp_path / "ok.tgz",
        [
            directory("./"),
            directory("./pkg"),
            file("./pkg/tool", b"#!/bin/sh\n"),
            directory("./bin"),
            link("./bin/tool", "../pkg/tool"),
            link("./hard", "pkg/tool", tarfile.LNKTYPE),
        ],
    )
    assert extract(archive, tmp_path / "out") == 6
    assert (tmp_path / "out/bin/tool").read_bytes() == b"#!/bin/sh\n"
    assert (tmp_path / "out/hard").stat().st_ino == (tmp_path / "out/pkg/tool").stat().st_ino


def test_extract_caps_the_expanded_size_and_the_entries(tmp_path: Path) -> None:
    archive = make_tgz(tmp_path / "bomb.tgz", [file(f"f{i}", b"\0" * 1000) for i in range(20)])
    with pytest.raises(PayloadTooLarge):
        extract(archive, tmp_path / "out", max_size=10_000)
    assert not (tmp_path / "out").exists()
    with pytest.raises(PayloadTooLarge):
        extract(archive, tmp_path / "out", max_members=5)
    assert not (tmp_path / "out").exists()


def test_extract_refuses_what_is_not_a_tgz(tmp_path: Path) -> None:
    junk = tmp_path / "junk.tgz"
    junk.write_bytes(b"\x1f\x8b" + os.urandom(200))
    with pytest.raises(BadRequest, match=r"not a readable tar\.gz"):
        extract(junk, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_extracted_files_lose_setuid_and_world_write(tmp_path: Path) -> None:
    info, data = file("tool")
    info.mode = 0o4777
    extract(make_tgz(tmp_path / "a.tgz", [(info, data)]), tmp_path / "out")
    mode = stat.S_IMODE((tmp_path / "out/tool").stat().st_mode)
    assert not mode & (stat.S_ISUID | stat.S_IWOTH)


def test_resolve_inside_follows_links_on_disk(tmp_path: Path) -> None:
    (tmp_path / "a/b").mkdir(parents=True)
    (tmp_path / "to_b").symlink_to("a/b")
    (tmp_path / "root").symlink_to(".")
    (tmp_path / "loop").symlink_to("loop")
    assert resolve_inside(tmp_path, "to_b/../x") == "a/x"
    assert resolve_inside(tmp_path, "root/..") is None
    assert resolve_inside(tmp_path, "loop/x") is None
    assert resolve_inside(tmp_path, "/etc") is None
    assert resolve_inside(tmp_path, "") == ""


# ---- receiving ---------------------------------------------------------------------------------


async def chunks(sizes: Iterable[int], fail_after: int | None = None) -> AsyncIterator[bytes]:
    for index, size in enumerate(sizes):
        if fail_after is not None and index == fail_after:
            raise ConnectionResetError("client went away")
        yield b"a" * size


async def test_receive_writes_the_stream(tmp_path: Path) -> None:
    dest = tmp_path / "upload.tgz"
    assert await receive(chunks([700_000, 700_000, 5]), dest, limit=2_000_000) == 1_400_005
    assert dest.stat().st_size == 1_400_005


async def test_receive_past_the_limit_is_413_and_leaves_nothing(tmp_path: Path) -> None:
    dest = tmp_path / "upload.tgz"
    with pytest.raises(PayloadTooLarge) as refused:
        await receive(chunks([600_000] * 5), dest, limit=2 * 1024 * 1024)
    assert refused.value.status == 413
    assert "2 MiB" in refused.value.message
    assert not dest.exists()


async def test_receive_cut_off_leaves_nothing(tmp_path: Path) -> None:
    dest = tmp_path / "upload.tgz"
    with pytest.raises(ConnectionResetError):
        await receive(chunks([2_000_000, 10], fail_after=1), dest, limit=10_000_000)
    assert not dest.exists()


def test_pack_refuses_links_out_of_the_tree_when_asked(tmp_path: Path) -> None:
    tree(tmp_path, ["inside/file"])
    (tmp_path / "ok").symlink_to("inside/file")
    (tmp_path / "etc").symlink_to("/etc")
    with pytest.raises(UnsafeArchive, match=r"'etc': symbolic link out of the tree \(/etc\)"):
        pack(tmp_path, io.BytesIO(), check_links=True)
    (tmp_path / ".dockerignore").write_text("etc\n")
    assert pack(tmp_path, io.BytesIO(), check_links=True) == 4  # .dockerignore, inside, inside/file, ok


@pytest.mark.parametrize("kind", [tarfile.GNUTYPE_LONGNAME, tarfile.GNUTYPE_LONGLINK, tarfile.XHDTYPE, tarfile.XGLTYPE])
def test_a_header_declaring_gigabytes_is_refused_before_it_is_read(tmp_path: Path, kind: bytes) -> None:
    header = tarfile.TarInfo("././@LongLink" if kind in (tarfile.GNUTYPE_LONGNAME, tarfile.GNUTYPE_LONGLINK) else "pax")
    header.type = kind
    header.size = 4 << 30
    bomb = tmp_path / "bomb.tgz"
    with gzip.open(bomb, "wb", compresslevel=1) as out:  # 64 MiB of "header" in a few KiB
        out.write(header.tobuf(format=tarfile.GNU_FORMAT))
        for _ in range(64):
            out.write(b"a" * (1 << 20))
    assert bomb.stat().st_size < 1 << 20
    tracemalloc.start()
    try:
        with pytest.raises(PayloadTooLarge, match="header declares 4 GiB"):
            extract(bomb, tmp_path / "out")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 16 << 20
    assert not (tmp_path / "out").exists()


def test_a_long_name_within_the_header_bound_is_extracted(tmp_path: Path) -> None:
    name = "/".join(["d" * 200] * 5) + "/file"
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz", format=tarfile.GNU_FORMAT) as tar:
        info = tarfile.TarInfo(name)
        info.size = 2
        tar.addfile(info, io.BytesIO(b"ok"))
    (tmp_path / "a.tgz").write_bytes(buffer.getvalue())
    assert len(name) < MAX_HEADER
    extract(tmp_path / "a.tgz", tmp_path / "out")
    assert (tmp_path / "out" / name).read_bytes() == b"ok"
