"""scripts/common.sh's check of which host directories may be bound into the rootfs.

The current directory is bound into the Debian 13 root filesystem so that relative
paths mean the same inside. A directory that holds the rootfs (/, the home
directory when FUNNEL_HOME is set under it) must be refused: binding `/`
over the rootfs once put the host's own root where the runtime should be, and the
next set-up wrote into the host.
"""

import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from conftest import REPO


def check_location(cwd, rootfs, bind=""):
    """Runs check_rootfs_location from `cwd`; returns (exit code, shared dirs or error)."""
    script = ('source scripts/common.sh; cd "$1"; check_rootfs_location; '
              'printf "%s\\n" "${FUNNEL_SHARED_DIRS[@]}"')
    done = subprocess.run(["bash", "-c", script, "check", str(cwd)], cwd=REPO,
                          env={"PATH": "/usr/bin:/bin", "FUNNEL_ROOTFS": str(rootfs),
                               "FUNNEL_BIND": bind, "HOME": "/nonexistent"},
                          capture_output=True, text=True)
    return done.returncode, done.stdout.split() if done.returncode == 0 else done.stderr


@pytest.fixture
def layout():
    """home/.cache/rootfs (the runtime), home/data (a user's directory), outside/; in
    /var/tmp, as /tmp and the repository's parent are always shared."""
    base = Path(tempfile.mkdtemp(dir="/var/tmp"))
    for name in ("home/.cache/rootfs/opt", "home/data", "outside"):
        (base / name).mkdir(parents=True)
    yield base
    shutil.rmtree(base)


@pytest.mark.parametrize("cwd", ["/", "HOME", "HOME/.cache"])
def test_a_directory_holding_the_runtime_is_refused_with_the_reason(layout, cwd):
    rootfs = layout / "home" / ".cache" / "rootfs"
    directory = "/" if cwd == "/" else str(layout / cwd.replace("HOME", "home"))
    code, error = check_location(directory, rootfs)
    assert code == 1
    assert f"the current directory ({directory}) holds the runtime ({rootfs})" in error
    assert "run from another directory" in error


def test_a_directory_inside_the_runtime_is_refused(layout):
    rootfs = layout / "home" / ".cache" / "rootfs"
    code, error = check_location(rootfs / "opt", rootfs)
    assert code == 1 and "lies inside the runtime" in error


def test_a_users_directory_is_bound_and_a_shared_one_is_not_bound_twice(layout):
    rootfs = layout / "home" / ".cache" / "rootfs"
    code, shared = check_location(layout / "home" / "data", rootfs)
    assert code == 0 and shared[-1] == str(layout / "home" / "data")
    code, shared = check_location("/tmp", rootfs)
    assert code == 0 and shared.count("/tmp") == 1


def test_a_bind_directory_holding_the_runtime_is_refused(layout):
    rootfs = layout / "home" / ".cache" / "rootfs"
    code, error = check_location(layout / "outside", rootfs, bind="/")
    assert code == 1 and "lies inside /, which is bound into it" in error
