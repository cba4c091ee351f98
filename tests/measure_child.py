"""Run a command under an address-space cap and print its own peak RSS (KiB) on stdout.

Used by tests/test_attack_limits.py. A child forked straight from the test process would report
the test process's RSS as its peak (Linux keeps ru_maxrss across fork and exec), so the test runs
this small launcher, and the launcher's own child is measured.

    python measure_child.py CAP_BYTES FD[,FD...]|- COMMAND ARG...
"""

import os
import resource
import subprocess
import sys


def main() -> None:
    cap_bytes = int(sys.argv[1])
    fds = () if sys.argv[2] == "-" else tuple(int(fd) for fd in sys.argv[2].split(","))
    command = sys.argv[3:]
    resource.setrlimit(resource.RLIMIT_AS, (cap_bytes, cap_bytes))  # inherited by the command
    child = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, pass_fds=fds)
    _pid, status, usage = os.wait4(child.pid, 0)
    print(os.waitstatus_to_exitcode(status), usage.ru_maxrss)


if __name__ == "__main__":
    main()
