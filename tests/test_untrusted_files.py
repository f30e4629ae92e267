"""``validation.untrusted_file`` (issue 23): ssh's StrictModes rule for files raysweep would
unpickle (DCP metadata, Tune's experiment state). Each case on real files, ownership changed as
root does it."""

import os

import pytest

from raysweep.validation import untrusted_file


@pytest.fixture
def tree(tmp_path):
    root = tmp_path / "exp"
    (root / "trial" / "ckpt").mkdir(parents=True)
    for path in (root, root / "trial", root / "trial" / "ckpt"):
        path.chmod(0o755)
    (root / "tuner.pkl").write_bytes(b"x")
    (root / "trial" / "ckpt" / ".metadata").write_bytes(b"x")
    for path in (root / "tuner.pkl", root / "trial" / "ckpt" / ".metadata"):
        path.chmod(0o644)
    return root


def test_your_own_files_are_trusted(tree):
    assert untrusted_file(tree) is None


@pytest.mark.parametrize("where", ["tuner.pkl", "trial/ckpt/.metadata", "trial"])
@pytest.mark.parametrize("change,why", [
    (lambda p: os.chmod(p, 0o666 if p.is_file() else 0o777), "is writable by others"),
    (lambda p: os.chmod(p, 0o664 if p.is_file() else 0o775), "is writable by its group"),
    (lambda p: os.chown(p, 65534, 65534), "is owned by another user (uid 65534)"),
], ids=["others", "group", "owner"])
def test_anything_another_user_could_write_is_named(tree, where, change, why):
    if os.geteuid() != 0 and "owner" in why:
        pytest.skip("only root can give a file to another user")
    change(tree / where)
    assert untrusted_file(tree) == f"'{tree / where}' {why}"


def test_a_link_is_judged_itself_not_followed(tree, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    outside.chmod(0o777)
    (tree / "link").symlink_to(outside)
    assert untrusted_file(tree) is None  # the link is ours; what it points to is never read as part of the tree
