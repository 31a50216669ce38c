"""`python -m pride.eval.die_with_parent PID COMMAND...`: become COMMAND (exec: the same process)
set to receive SIGTERM when process PID, the one that started it, dies, even by kill -9
(Linux's PR_SET_PDEATHSIG, which exec keeps). `hosting.hosted` starts model servers through
it, so a killed `pride eval` or online round leaves no server holding its port and GPU. Set
here, in a fresh process, rather than in a `preexec_fn` (not safe in a parent with threads)."""

import ctypes
import os
import signal
import sys


def main() -> None:
    parent, command = int(sys.argv[1]), sys.argv[2:]
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # not Linux: the parent's own cleanup is all there is
        pass
    if os.getppid() != parent:  # the parent died before the signal was set up: nothing to serve
        sys.exit(0)
    os.execvp(command[0], command)


if __name__ == "__main__":
    main()
