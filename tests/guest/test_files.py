"""File tools and root confinement, through the real dispatcher on a real file tree."""

from __future__ import annotations

import base64
import os
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hivecell.errors import InvalidParams, NotFound, PathDenied, TooLarge, ToolFailed
from hivecell.guest.agent import build_dispatcher
from hivecell.guest.context import CallContext, GuestConfig, Services
from hivecell.guest.paths import resolve

pytestmark = pytest.mark.anyio

SECRET = "top secret, outside the roots"


class Files:
    """Calls file tools the way a connection does: validation, handler, result check."""

    def __init__(self, config: GuestConfig) -> None:
        self.config = config
        self._dispatcher = build_dispatcher()
        self._ctx = CallContext(Services(config), 1, self._no_notifications)

    async def _no_notifications(self, method: str, params: dict[str, Any]) -> None:
        raise AssertionError(f"file tools send no notifications, got {method}")

    async def __call__(self, method: str, **params: Any) -> Any:
        return await self._dispatcher.call(method, params, self._ctx)


def make_tree(base: Path) -> tuple[Path, Path, Path]:
    """Two roots and an outside folder, with symlinks of every kind between them."""
    root, home, outside = base / "root", base / "home", base / "outside"
    for folder in (root / "a" / "b", home, outside):
        folder.mkdir(parents=True)
    (outside / "secret.txt").write_text(SECRET)
    (root / "file.txt").write_text("inside")
    (root / "a" / "b" / "deep.txt").write_text("deep")
    (home / "notes.txt").write_text("notes")
    links = {
        root / "in_link": "a",
        root / "in_abs": str(root / "a" / "b"),
        root / "out_abs": str(outside),
        root / "out_rel": "../outside",
        root / "out_etc": "/etc",
        root / "up": "..",
        root / "chain1": "chain2",
        root / "chain2": "out_abs",
        root / "loop": "loop",
        root / "loop_a": "loop_b",
        root / "loop_b": "loop_a",
        root / "dangling_out": str(outside / "created-by-escape.txt"),
        root / "dangling_in": "not-yet.txt",
        root / "a" / "deep_up": "../../outside",
        home / "to_root": "../root",
    }
    for link, target in links.items():
        link.symlink_to(target)
    return root, home, outside


@pytest.fixture
def tree(tmp_path: Path) -> tuple[Path, Path, Path]:
    return make_tree(tmp_path)


@pytest.fixture
def files(tree: tuple[Path, Path, Path]) -> Files:
    root, home, _ = tree
    return Files(GuestConfig(roots=[root, home], max_file_bytes=1000))


# --- read and write ------------------------------------------------------------------------
async def test_text_round_trip(files: Files, tree: tuple[Path, Path, Path]) -> None:
    text = "héllo\n世界 🎉\r\nend"
    written = await files("write_file", path="new.txt", content=text)
    assert written == {"path": str(tree[0] / "new.txt"), "size": len(text.encode())}
    read = await files("read_file", path="new.txt")
    assert read["content"] == text
    assert read["size"] == len(text.encode())
    assert read["truncated"] is False
    assert (tree[0] / "new.txt").read_bytes() == text.encode()


async def test_base64_round_trip_of_every_byte(files: Files, tree: tuple[Path, Path, Path]) -> None:
    data = bytes(range(256)) * 3
    encoded = base64.b64encode(data).decode()
    await files("write_file", path="bin.dat", content=encoded, encoding="base64")
    assert (tree[0] / "bin.dat").read_bytes() == data
    read = await files("read_file", path="bin.dat", encoding="base64")
    assert base64.b64decode(read["content"]) == data


async def test_base64_with_line_breaks_is_accepted(
    files: Files, tree: tuple[Path, Path, Path]
) -> None:
    encoded = base64.encodebytes(b"x" * 200).decode()  # 76-column lines like `base64`
    await files("write_file", path="wrapped.bin", content=encoded, encoding="base64")
    assert (tree[0] / "wrapped.bin").read_bytes() == b"x" * 200


async def test_invalid_base64_is_invalid_params(files: Files) -> None:
    with pytest.raises(InvalidParams, match="base64"):
        await files("write_file", path="x.bin", content="not base64!!", encoding="base64")


async def test_binary_file_read_as_text_says_use_base64(
    files: Files, tree: tuple[Path, Path, Path]
) -> None:
    (tree[0] / "blob.bin").write_bytes(b"PK\x03\x04\xff\xfe\x00")
    with pytest.raises(ToolFailed, match='encoding "base64"'):
        await files("read_file", path="blob.bin")


async def test_nul_bytes_in_content_round_trip(files: Files) -> None:
    await files("write_file", path="nul.txt", content="a\x00b")
    assert (await files("read_file", path="nul.txt"))["content"] == "a\x00b"


async def test_offset_and_length(files: Files) -> None:
    await files("write_file", path="digits.txt", content="0123456789")
    part = await files("read_file", path="digits.txt", offset=3, length=4)
    assert (part["content"], part["size"], part["truncated"]) == ("3456", 10, True)
    tail = await files("read_file", path="digits.txt", offset=8)
    assert (tail["content"], tail["truncated"]) == ("89", False)
    past = await files("read_file", path="digits.txt", offset=50)
    assert (past["content"], past["truncated"]) == ("", False)


async def test_text_span_never_ends_inside_a_character(files: Files) -> None:
    await files("write_file", path="euro.txt", content="a€b")  # 61 e2 82 ac 62
    first = await files("read_file", path="euro.txt", length=3)
    assert (first["content"], first["truncated"]) == ("a", True)
    rest = await files("read_file", path="euro.txt", offset=len(first["content"].encode()))
    assert rest["content"] == "€b"


async def test_write_over_the_limit_is_too_large(files: Files) -> None:
    with pytest.raises(TooLarge) as err:
        await files("write_file", path="big.txt", content="x" * 1001)
    assert "1001" in err.value.message and "1000" in err.value.message


async def test_read_over_the_limit_is_too_large(
    files: Files, tree: tuple[Path, Path, Path]
) -> None:
    (tree[0] / "big.txt").write_bytes(b"y" * 1500)
    with pytest.raises(TooLarge) as err:
        await files("read_file", path="big.txt")
    message = err.value.message
    assert "1500" in message and "1000" in message
    assert "offset" in message and "length" in message
    head = await files("read_file", path="big.txt", length=1000)
    assert (len(head["content"]), head["truncated"]) == (1000, True)
    rest = await files("read_file", path="big.txt", offset=1000)
    assert (len(rest["content"]), rest["truncated"]) == (500, False)


async def test_create_mode_refuses_an_existing_file(files: Files) -> None:
    await files("write_file", path="once.txt", content="1", mode="create")
    with pytest.raises(ToolFailed, match="already exists"):
        await files("write_file", path="once.txt", content="2", mode="create")
    assert (await files("read_file", path="once.txt"))["content"] == "1"


async def test_append_mode(files: Files) -> None:
    await files("write_file", path="log.txt", content="a", mode="append")
    result = await files("write_file", path="log.txt", content="bc", mode="append")
    assert result["size"] == 3
    assert (await files("read_file", path="log.txt"))["content"] == "abc"


async def test_overwrite_replaces_atomically_and_keeps_the_mode(
    files: Files, tree: tuple[Path, Path, Path]
) -> None:
    script = tree[0] / "run.sh"
    script.write_text("old")
    script.chmod(0o751)
    before = script.stat().st_ino
    await files("write_file", path="run.sh", content="new")
    assert script.read_text() == "new"
    assert stat.S_IMODE(script.stat().st_mode) == 0o751
    assert script.stat().st_ino != before  # a rename, not an in-place rewrite
    assert [p.name for p in tree[0].iterdir() if p.name.endswith(".tmp")] == []


async def test_make_parents(files: Files, tree: tuple[Path, Path, Path]) -> None:
    with pytest.raises(NotFound, match="make_parents"):
        await files("write_file", path="x/y/z.txt", content="1", make_parents=False)
    await files("write_file", path="x/y/z.txt", content="1")
    assert (tree[0] / "x" / "y" / "z.txt").read_text() == "1"
    with pytest.raises(ToolFailed, match="in the way"):
        await files("write_file", path="file.txt/sub.txt", content="1")


async def test_writing_a_directory_fails_clearly(files: Files) -> None:
    with pytest.raises(ToolFailed, match="is a directory"):
        await files("write_file", path="a", content="1")
    with pytest.raises(ToolFailed, match="is a directory"):
        await files("read_file", path="a")


async def test_reading_a_fifo_does_not_hang(files: Files, tree: tuple[Path, Path, Path]) -> None:
    os.mkfifo(tree[0] / "pipe")
    with pytest.raises(ToolFailed, match="not a regular file"):
        await files("read_file", path="pipe")


async def test_missing_file_is_not_found(files: Files) -> None:
    for method in ("read_file", "stat_file", "delete_file", "list_directory"):
        with pytest.raises(NotFound, match="nope"):
            await files(method, path="nope")


# --- list ----------------------------------------------------------------------------------
async def test_list_directory_sorts_dirs_first_and_types_symlinks(files: Files) -> None:
    listing = await files("list_directory", path="a")
    assert [(e["name"], e["type"]) for e in listing["entries"]] == [
        ("b", "dir"),
        ("deep_up", "symlink"),
    ]
    top = await files("list_directory", path=".")
    names = [e["name"] for e in top["entries"]]
    assert names[0] == "a"  # the only real directory; links to dirs are symlinks
    assert names[1:] == sorted(names[1:])
    kinds = {e["name"]: e["type"] for e in top["entries"]}
    assert kinds["in_link"] == kinds["out_etc"] == kinds["loop"] == "symlink"
    assert kinds["file.txt"] == "file"
    assert top["truncated"] is False


async def test_list_directory_hidden_and_limit(files: Files, tree: tuple[Path, Path, Path]) -> None:
    folder = tree[0] / "many"
    folder.mkdir()
    for i in range(30):
        (folder / f"f{i:02}").write_text("x" * i)
    (folder / ".hidden").write_text("h")
    listing = await files("list_directory", path="many", limit=10)
    assert [e["name"] for e in listing["entries"]] == [f"f{i:02}" for i in range(10)]
    assert listing["entries"][3]["size"] == 3
    assert listing["truncated"] is True
    everything = await files("list_directory", path="many", show_hidden=True, limit=1000)
    assert everything["entries"][0]["name"] == ".hidden"
    assert len(everything["entries"]) == 31
    assert everything["truncated"] is False


async def test_list_directory_through_an_inside_symlink(files: Files) -> None:
    listing = await files("list_directory", path="in_link")
    assert [e["name"] for e in listing["entries"]] == ["b", "deep_up"]


async def test_listing_a_file_fails_clearly(files: Files) -> None:
    with pytest.raises(ToolFailed, match="not a directory"):
        await files("list_directory", path="file.txt")


# --- move, delete, stat --------------------------------------------------------------------
async def test_move_and_overwrite(files: Files, tree: tuple[Path, Path, Path]) -> None:
    root = tree[0]
    await files("write_file", path="one.txt", content="1")
    await files("write_file", path="two.txt", content="2")
    with pytest.raises(ToolFailed, match="overwrite"):
        await files("move_file", source="one.txt", destination="two.txt")
    moved = await files("move_file", source="one.txt", destination="two.txt", overwrite=True)
    assert moved == {"source": str(root / "one.txt"), "destination": str(root / "two.txt")}
    assert (root / "two.txt").read_text() == "1"
    assert not (root / "one.txt").exists()


async def test_move_between_roots(files: Files, tree: tuple[Path, Path, Path]) -> None:
    home = tree[1]
    await files("move_file", source="file.txt", destination=str(home / "moved.txt"))
    assert (home / "moved.txt").read_text() == "inside"


def _device(path: Path) -> int:
    return path.stat().st_dev


async def test_move_across_filesystems(tmp_path: Path) -> None:
    with tempfile.TemporaryDirectory(dir="/dev/shm") as shm:
        assert _device(Path(shm)) != _device(tmp_path), "needs two filesystems"
        files = Files(GuestConfig(roots=[tmp_path, Path(shm)]))
        (tmp_path / "d" / "e").mkdir(parents=True)
        (tmp_path / "d" / "e" / "f.txt").write_text("across")
        await files("move_file", source="d", destination=f"{shm}/d")
        assert (Path(shm) / "d" / "e" / "f.txt").read_text() == "across"
        assert not (tmp_path / "d").exists()
        (tmp_path / "g.txt").write_text("new")
        (Path(shm) / "g.txt").write_text("old")
        await files("move_file", source="g.txt", destination=f"{shm}/g.txt", overwrite=True)
        assert (Path(shm) / "g.txt").read_text() == "new"


async def test_move_to_a_missing_folder_names_it(files: Files) -> None:
    with pytest.raises(NotFound, match="no/such"):
        await files("move_file", source="file.txt", destination="no/such/x.txt")


async def test_move_acts_on_a_symlink_not_its_target(
    files: Files, tree: tuple[Path, Path, Path]
) -> None:
    root = tree[0]
    await files("move_file", source="in_link", destination="renamed_link")
    assert (root / "renamed_link").is_symlink()
    assert (root / "a").is_dir()


async def test_move_confinement(files: Files, tree: tuple[Path, Path, Path]) -> None:
    root, home, outside = tree
    with pytest.raises(PathDenied):
        await files("move_file", source=str(outside / "secret.txt"), destination="stolen.txt")
    with pytest.raises(PathDenied):
        await files("move_file", source="file.txt", destination=str(outside / "leaked.txt"))
    with pytest.raises(PathDenied):
        await files("move_file", source="file.txt", destination="out_abs/leaked.txt")
    with pytest.raises(PathDenied, match="root"):
        await files("move_file", source=str(home), destination="home2")
    with pytest.raises(PathDenied, match="root"):
        await files("move_file", source="file.txt", destination=str(home), overwrite=True)
    assert (root / "file.txt").exists() and home.is_dir()
    assert sorted(p.name for p in outside.iterdir()) == ["secret.txt"]


async def test_delete_file_and_directories(files: Files, tree: tuple[Path, Path, Path]) -> None:
    root = tree[0]
    await files("delete_file", path="file.txt")
    assert not (root / "file.txt").exists()
    (root / "empty").mkdir()
    await files("delete_file", path="empty")
    with pytest.raises(ToolFailed, match="recursive"):
        await files("delete_file", path="a")
    await files("delete_file", path="a", recursive=True)
    assert not (root / "a").exists()


async def test_delete_a_symlink_keeps_its_target(
    files: Files, tree: tuple[Path, Path, Path]
) -> None:
    root, _, outside = tree
    await files("delete_file", path="in_link", recursive=True)
    assert (root / "a" / "b" / "deep.txt").exists()
    await files("delete_file", path="out_abs", recursive=True)  # the link is inside the root
    assert not (root / "out_abs").is_symlink()
    assert (outside / "secret.txt").read_text() == SECRET


async def test_deleting_a_root_is_refused(files: Files, tree: tuple[Path, Path, Path]) -> None:
    root, home, _ = tree
    for raw in (str(root), ".", "a/..", str(home), f"{home}/", "up/root"):
        with pytest.raises(PathDenied):
            await files("delete_file", path=raw, recursive=True)
    assert root.is_dir() and home.is_dir()


async def test_deleting_a_folder_holding_a_root_is_refused(tmp_path: Path) -> None:
    (tmp_path / "outer" / "inner").mkdir(parents=True)
    files = Files(GuestConfig(roots=[tmp_path / "outer", tmp_path / "outer" / "inner"]))
    with pytest.raises(PathDenied, match="root"):
        await files("delete_file", path=str(tmp_path / "outer" / "inner"), recursive=True)
    assert (tmp_path / "outer" / "inner").is_dir()


async def test_stat_file(files: Files, tree: tuple[Path, Path, Path]) -> None:
    (tree[0] / "file.txt").chmod(0o640)
    info = await files("stat_file", path="file.txt")
    assert (info["type"], info["size"], info["mode"]) == ("file", 6, "0640")
    assert info["path"] == str(tree[0] / "file.txt")
    assert (await files("stat_file", path="a"))["type"] == "dir"
    assert (await files("stat_file", path="in_link"))["type"] == "symlink"
    assert (await files("stat_file", path="in_link/"))["type"] == "dir"  # slash follows
    assert (await files("stat_file", path="out_etc"))["type"] == "symlink"
    with pytest.raises(PathDenied):
        await files("stat_file", path="out_etc/")


# --- confinement ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    "raw",
    [
        "../../etc/passwd",
        "/etc/passwd",
        "/shared/../etc/passwd",
        "~/../../etc/passwd",
        "a/b/../../../outside/secret.txt",
        "out_abs/secret.txt",
        "out_rel/secret.txt",
        "a/deep_up/secret.txt",
        "chain1/secret.txt",
        "up/outside/secret.txt",
        "out_etc/passwd",
        "loop/../out_abs/secret.txt",  # realpath gives up at the loop; must not escape
        "loop_a/../../outside/secret.txt",
    ],
)
async def test_reads_outside_the_roots_are_denied(files: Files, raw: str) -> None:
    with pytest.raises(PathDenied):
        await files("read_file", path=raw)


async def test_dangling_symlink_to_outside_cannot_be_written(
    files: Files, tree: tuple[Path, Path, Path]
) -> None:
    with pytest.raises(PathDenied):
        await files("write_file", path="dangling_out", content="escape")
    with pytest.raises(PathDenied):
        await files("write_file", path="out_abs/new.txt", content="escape")
    assert sorted(p.name for p in tree[2].iterdir()) == ["secret.txt"]


async def test_symlinks_within_the_roots_work(files: Files, tree: tuple[Path, Path, Path]) -> None:
    root = tree[0]
    assert (await files("read_file", path="in_link/b/deep.txt"))["content"] == "deep"
    assert (await files("read_file", path="in_abs/deep.txt"))["content"] == "deep"
    home_read = await files("read_file", path=f"{tree[1]}/to_root/file.txt")
    assert home_read["content"] == "inside"
    assert home_read["path"] == str(root / "file.txt")
    await files("write_file", path="dangling_in", content="made")  # writes the link's target
    assert (root / "not-yet.txt").read_text() == "made"
    assert (root / "dangling_in").is_symlink()


async def test_nul_byte_in_a_path_is_denied(files: Files) -> None:
    for method in ("read_file", "stat_file", "delete_file"):
        with pytest.raises(PathDenied, match="NUL"):
            await files(method, path="file.txt\x00.png")


async def test_symlink_loop_is_an_error_not_a_hang(files: Files) -> None:
    with pytest.raises(ToolFailed, match="symbolic links"):
        await files("read_file", path="loop")


# --- hostile paths, generated --------------------------------------------------------------
@pytest.fixture(scope="module")
def shared_tree() -> Iterator[tuple[Path, Path, Path]]:
    with tempfile.TemporaryDirectory(prefix="hc-tree") as base:
        yield make_tree(Path(base).resolve())


SEGMENTS = [
    "..",
    ".",
    "",
    "a",
    "b",
    "file.txt",
    "deep.txt",
    "secret.txt",
    "root",
    "home",
    "outside",
    "in_link",
    "in_abs",
    "out_abs",
    "out_rel",
    "out_etc",
    "up",
    "chain1",
    "chain2",
    "loop",
    "loop_a",
    "loop_b",
    "dangling_out",
    "dangling_in",
    "deep_up",
    "to_root",
    "passwd",
    "~",
]
LINKS = [s for s in SEGMENTS if s.startswith(("in_", "out_", "up", "chain", "loop", "dangl"))]
# "link/.." is where lexical and kernel resolution part ways, so offer it as one segment too
hostile_segment = st.one_of(
    st.sampled_from(SEGMENTS), st.sampled_from(LINKS).map(lambda link: f"{link}/..")
)
hostile_paths = st.tuples(
    st.sampled_from(["", "/", "~/", "<base>/", "<root>/", "<home>/"]),
    st.lists(hostile_segment, min_size=1, max_size=8),
    st.sampled_from(["", "/"]),
)


def _render(parts: tuple[str, list[str], str], tree: tuple[Path, Path, Path]) -> str:
    prefix, segments, suffix = parts
    root, home, _ = tree
    prefix = prefix.replace("<base>", str(root.parent))
    prefix = prefix.replace("<root>", str(root)).replace("<home>", str(home))
    return (prefix + "/".join(segments) + suffix) or "."


def _inside(path: Path, tree: tuple[Path, Path, Path]) -> bool:
    return any(path == r or r in path.parents for r in tree[:2])


def _inodes(folder: Path) -> set[tuple[int, int]]:
    found = {(s.st_dev, s.st_ino) for s in [folder.stat()]}
    for dirpath, dirnames, filenames in os.walk(folder):  # never follows symlinks
        for name in dirnames + filenames:
            s = (Path(dirpath) / name).lstat()
            found.add((s.st_dev, s.st_ino))
    return found


@settings(
    max_examples=600, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(parts=hostile_paths, follow=st.booleans())
def test_accepted_paths_always_stay_inside_the_roots(
    shared_tree: tuple[Path, Path, Path], parts: tuple[str, list[str], str], follow: bool
) -> None:
    root, home, _ = shared_tree
    raw = _render(parts, shared_tree)
    try:
        path = resolve(raw, [root, home], op="test", follow=follow)
    except PathDenied:
        return _check_denial_was_right(raw, shared_tree)
    if follow:
        assert os.path.realpath(path) == str(path), raw  # nothing left for the kernel to follow
        assert _inside(path, shared_tree), raw
    else:  # the entry itself: its folder is fully resolved and inside
        assert os.path.realpath(path.parent) == str(path.parent), raw
        assert _inside(path.parent, shared_tree) or _inside(path, shared_tree), raw
    _check_kernel_agrees(raw, path, shared_tree, follow)


def _kernel_target(raw: str, tree: tuple[Path, Path, Path]) -> os.stat_result | None:
    """What the kernel opens for ``raw`` (relative to the first root), or None if it fails."""
    # plain strings: a trailing slash must reach the kernel, and Path would drop it
    joined = os.path.join(tree[0], os.path.expanduser(raw))  # noqa: PTH111, PTH118
    try:
        return os.stat(joined)  # noqa: PTH116
    except OSError:
        return None


def _check_kernel_agrees(raw: str, path: Path, tree: tuple[Path, Path, Path], follow: bool) -> None:
    target = _kernel_target(raw, tree)
    if target is None or not follow:
        return
    mine = path.stat()
    assert (mine.st_dev, mine.st_ino) == (target.st_dev, target.st_ino), raw


def _check_denial_was_right(raw: str, tree: tuple[Path, Path, Path]) -> None:
    """A denied path the kernel can open must really be outside (no over-blocking)."""
    target = _kernel_target(raw, tree)
    if target is None:
        return
    inside = _inodes(tree[0]) | _inodes(tree[1])
    assert (target.st_dev, target.st_ino) not in inside, f"{raw!r} was denied but is inside"


@pytest.fixture(scope="module")
def hostile_files(shared_tree: tuple[Path, Path, Path]) -> Files:
    root, home, _ = shared_tree
    return Files(GuestConfig(roots=[root, home], max_file_bytes=1000))


@settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(parts=hostile_paths, method=st.sampled_from(["read_file", "write_file", "list_directory"]))
async def test_file_tools_never_touch_anything_outside(
    hostile_files: Files,
    shared_tree: tuple[Path, Path, Path],
    parts: tuple[str, list[str], str],
    method: str,
) -> None:
    raw = _render(parts, shared_tree)
    params: dict[str, Any] = {"path": raw}
    if method == "write_file":
        params["content"] = "written"
    try:
        result = await hostile_files(method, **params)
    except (PathDenied, NotFound, ToolFailed, TooLarge):
        result = None
    outside = shared_tree[2]
    assert sorted(p.name for p in outside.iterdir()) == ["secret.txt"], raw
    assert (outside / "secret.txt").read_text() == SECRET
    if result is not None:
        assert SECRET not in str(result), raw
        assert _inside(Path(result["path"]), shared_tree), raw
