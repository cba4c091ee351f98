"""Attack: a local user plants a link where the wallet or the center is about to write a secret.

Every secret the two programs write (vault, config.json, key files, backups, exports) goes through
hostkit.private_files. An attacker who can create entries in the directory (or who set it up
before the owner tightened it) plants a symbolic link at the name, pointing at a file of theirs
or at a file of the victim's they want overwritten. Each attack must fail: the secret never lands
where the link points, the pointed-to file is unchanged, and every new file is 0600 whatever the
umask says.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from hostkit.private_files import link_new_name, new_file_stream, replace_file, write_new_file

SECRET = b"-----BEGIN PRIVATE KEY-----\nnot really\n"
BAIT = b"the attacker's file, which must not change\n"


@pytest.fixture
def planted(tmp_path: Path) -> tuple[Path, Path]:
    """(the name the program writes, the attacker's file a link at that name points to)."""
    target = tmp_path / "attacker-owned.txt"
    target.write_bytes(BAIT)
    name = tmp_path / "secret.key"
    name.symlink_to(target)
    return name, target


def test_a_link_at_a_new_files_name_is_refused_and_not_followed(planted):
    name, target = planted
    with pytest.raises(FileExistsError):
        write_new_file(name, SECRET)
    assert target.read_bytes() == BAIT and name.is_symlink()


def test_a_streamed_secret_is_not_written_through_a_link(planted):
    name, target = planted
    with pytest.raises(FileExistsError), new_file_stream(name) as handle:
        handle.write(SECRET)
    assert target.read_bytes() == BAIT


def test_publishing_over_a_planted_link_is_refused(planted, tmp_path):
    name, target = planted
    tmp = tmp_path / ".secret.key.tmp"
    write_new_file(tmp, SECRET)
    with pytest.raises(FileExistsError):
        link_new_name(tmp, name)
    assert target.read_bytes() == BAIT and name.is_symlink()


def test_replacing_replaces_the_link_itself_never_the_file_it_points_to(planted):
    name, target = planted
    replace_file(name, SECRET)
    assert target.read_bytes() == BAIT
    assert not name.is_symlink() and name.read_bytes() == SECRET


def test_a_link_planted_at_the_temporary_name_does_not_catch_the_secret(tmp_path, monkeypatch):
    # replace_file writes a temporary file beside the target first: an attacker who guesses that
    # name must not receive the secret either (the name is random, and O_EXCL|O_NOFOLLOW refuses).
    target = tmp_path / "attacker-owned.txt"
    target.write_bytes(BAIT)
    monkeypatch.setattr("hostkit.private_files.secrets.token_hex", lambda _n: "guessed")
    (tmp_path / ".config.json.guessed.tmp").symlink_to(target)
    with pytest.raises(FileExistsError):
        replace_file(tmp_path / "config.json", SECRET)
    assert target.read_bytes() == BAIT and not (tmp_path / "config.json").exists()


@pytest.mark.parametrize("write", ["new", "replace", "stream"])
def test_new_secrets_are_0600_even_under_a_permissive_umask(tmp_path, write):
    old = os.umask(0)
    try:
        path = tmp_path / f"{write}.key"
        if write == "new":
            write_new_file(path, SECRET)
        elif write == "replace":
            replace_file(path, SECRET)
        else:
            with new_file_stream(path) as handle:
                handle.write(SECRET)
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and path.read_bytes() == SECRET


def test_a_failed_stream_leaves_no_partial_secret(tmp_path):
    path = tmp_path / "backup.tar"
    with pytest.raises(RuntimeError), new_file_stream(path) as handle:
        handle.write(SECRET)
        raise RuntimeError("disk full, say")
    assert not path.exists()
