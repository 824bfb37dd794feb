"""Every command-line tool ends quietly when its reader closes stdout (``... | head``)."""

import os
import subprocess
import sys

import pytest

from sgfd_fast._cli import CLOSED_STDOUT_STATUS


@pytest.mark.parametrize("argv", [
    ["sgfd_fast.info", "--json"],
    ["sgfd_fast.info"],
    ["sgfd_fast", "--json"],
    ["sgfd_fast.train", "--help"],
    ["sgfd_fast.data", "--help"],
    ["sgfd_fast.data", "inspect", "--dataset", "office"],
])
def test_closed_stdout_exits_without_traceback(argv):
    # the read end is closed before the tool writes: its first write or flush meets EPIPE
    proc = subprocess.Popen([sys.executable, "-m", *argv], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    proc.stdout.close()
    err = proc.stderr.read().decode()
    status = proc.wait(timeout=120)
    assert err == ""
    # argparse's --help swallows its own write error and exits 0
    assert status in ((0, CLOSED_STDOUT_STATUS) if "--help" in argv else (CLOSED_STDOUT_STATUS,))


@pytest.mark.parametrize("argv", [
    ["sgfd_fast.info", "--json"],
    ["sgfd_fast.info"],
    ["sgfd_fast", "--json"],
    ["sgfd_fast.study", "--list"],
    ["sgfd_fast.train", "--help"],
    ["sgfd_fast.data", "inspect", "--dataset", "office"],
])
def test_unwritable_stdout_is_one_error_line(argv):
    # /dev/full: every write or flush fails with ENOSPC
    with open("/dev/full", "w") as full:
        proc = subprocess.run([sys.executable, "-m", *argv], stdout=full, stderr=subprocess.PIPE,
                              text=True, timeout=120, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    if "--help" in argv and proc.returncode == 0:  # argparse swallows its own write error
        assert proc.stderr == ""
        return
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr == "error: cannot write to standard output: No space left on device\n"


def test_other_os_errors_are_not_taken_for_stdout_ones():
    from sgfd_fast._cli import quiet_on_closed_stdout

    @quiet_on_closed_stdout
    def main():
        print("fine")
        raise FileNotFoundError(2, "No such file or directory", "x")

    with pytest.raises(FileNotFoundError):
        main()
