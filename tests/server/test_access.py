"""What a client may read and write (`server.access`): the one place that decides, tested as such."""

from pathlib import Path

import pytest

from server.access import Access, AccessError, default_roots


def test_a_server_started_from_the_root_or_a_system_folder_reads_only_home(tmp_path):
    home = tmp_path / "home" / "me"
    home.mkdir(parents=True)
    for cwd in (Path("/"), Path("/etc"), Path("/usr/lib"), Path("/var"), home.parent):
        roots, dropped = default_roots(home, cwd)
        assert roots == (home,) and len(dropped) == 1, cwd
    assert default_roots(home, home / "project") == ((home, home / "project"), [])
    roots, dropped = default_roots(Path("/"), Path("/"))  # a service whose home is /
    assert roots == () and len(dropped) == 2


def test_reads_stay_under_the_roots_and_the_output_folder_and_say_why(tmp_path):
    root, out = tmp_path / "sounds", tmp_path / "out"
    root.mkdir()
    out.mkdir()
    (root / "a.wav").write_bytes(b"x")
    (out / "render.wav").write_bytes(b"x")
    (tmp_path / "secret.wav").write_bytes(b"x")
    (root / "link.wav").symlink_to(tmp_path / "secret.wav")
    access = Access([root], out)
    assert access.readable(str(root / "a.wav")) == root / "a.wav"
    assert access.readable(str(out / "render.wav")) == out / "render.wav"
    for path in ("/etc/passwd", str(tmp_path / "secret.wav"), str(root / "link.wav"), str(root / ".." / "secret.wav")):
        with pytest.raises(AccessError, match="outside the folders the server may read"):
            access.readable(path)
    with pytest.raises(AccessError, match=r"link.wav \(that is .*sounds/link.wav, through a link\)") as refused:
        access.readable(str(root / "link.wav"))
    assert "secret" not in str(refused.value)  # where a link leads is not a client's to learn
    with pytest.raises(AccessError, match=r"\.\./secret.wav \(that is .*/secret.wav\)"):
        access.readable(str(root / ".." / "secret.wav"))  # where `..` leads is said
    with pytest.raises(AccessError, match="outside"):
        access.readable("/etc/nothing-here")  # outside first: nothing says whether it exists
    with pytest.raises(AccessError, match="no such file"):
        access.readable(str(root / "nothing.wav"))
    with pytest.raises(AccessError, match="no such user's home"):
        access.readable("~nobody-at-all/x.wav")
    with pytest.raises(AccessError, match="NUL"):
        access.readable("a\0b")


def test_a_link_swapped_in_after_the_request_is_refused_when_opened(tmp_path):
    root = tmp_path / "sounds"
    (root / "d").mkdir(parents=True)
    (root / "d" / "a.wav").write_bytes(b"x")
    (tmp_path / "secret").mkdir()
    (tmp_path / "secret" / "a.wav").write_bytes(b"x")
    access = Access([root], tmp_path / "out")
    asked = access.readable(str(root / "d" / "a.wav"))
    (root / "d" / "a.wav").unlink()
    (root / "d").rmdir()
    (root / "d").symlink_to(tmp_path / "secret")
    with pytest.raises(AccessError, match="outside"):
        access.recheck(asked)


def test_exports_never_target_the_output_folder_or_the_session(tmp_path):
    root, out, session = tmp_path / "home", tmp_path / "home" / "out", tmp_path / "home" / "live" / "s.npz"
    access = Access([root], out, session)
    assert access.writable(str(root / "inst")) == root / "inst"
    for path, why in [
        (out / "x", "output folder"),
        (root, "output folder"),  # above it
        (session, "session file"),
        (session.parent, "session file"),
        (tmp_path / "elsewhere", "outside the folders the server may write"),
    ]:
        with pytest.raises(AccessError, match=why):
            access.writable(str(path))


def test_a_path_too_long_for_the_system_is_refused_by_name(tmp_path):
    access = Access([tmp_path], tmp_path / "out")
    for check in (access.readable, access.writable):
        with pytest.raises(AccessError, match="File name too long"):
            check(str(tmp_path / ("x" * 60_000)))


def test_renders_of_ended_servers_count_against_keep_and_nothing_else_is_deleted(tmp_path):
    import os

    import numpy as np

    from server.output import OutputFolder

    ended = [pid for pid in range(4_000_000, 4_100_000) if not Path(f"/proc/{pid}").exists()][:40]
    for pid in ended:  # what 40 servers that have ended left
        (tmp_path / f"render-{pid}-000001-1.wav").write_bytes(b"old")
    theirs = tmp_path / f"render-{os.getppid()}-000001-1.wav"  # a server still running shares the folder
    mine = [tmp_path / "render-take1.wav", tmp_path / "render-1-2-3.wav.bak"]  # the performer's own files
    for path in (theirs, *mine):
        path.write_bytes(b"keep")
    out = OutputFolder(tmp_path, keep=32)
    out.write_wav(np.zeros(16, np.float32), 16_000, 1)
    left = {p.name for p in tmp_path.glob("render-*")}
    assert {theirs.name, *(p.name for p in mine)} <= left
    assert len([n for n in left if n.endswith("-000001-1.wav") and n != theirs.name]) == 32  # 31 ended, its own
