"""The compiler's supervisor: the one process a worker starts for a compile (see `process.py`).

    python -I -S supervisor.py WORKER_PID STATUS_FD PROGRAM [ARG ...]

The worker starts it in a session of its own, so it leads the process group that the compiler,
and everything the compiler starts, belong to. It ties that group's life to the worker's:

- it asks the kernel for SIGTERM when the worker dies (Linux `PR_SET_PDEATHSIG`), then checks
  that its parent is still WORKER_PID (the worker may have died before it asked), and checks
  that again every second;
- when the worker is gone, or on SIGTERM, SIGHUP or SIGINT from anyone, it SIGKILLs its whole
  process group, itself included: the compiler and its helpers (a parent-death signal is not
  inherited across fork, so grandchildren get nothing from the kernel; the group kill reaches
  them);
- the compiler gets `PR_SET_PDEATHSIG=SIGKILL` too, should the supervisor itself be killed.

It ends as the compiler did (the same exit status, or killed by the same signal), so the worker
classifies the compiler's end. When the program cannot be started it writes "<errno>\\0<message>"
to STATUS_FD and exits 127; else STATUS_FD is closed once the compiler runs. Standard library only:
it runs with -S (no site-packages, where neffcache may live).
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
from typing import NoReturn

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
CHECK_PARENT_S = 1.0
STOP_SIGNALS = frozenset({signal.SIGTERM, signal.SIGHUP, signal.SIGINT})


def set_parent_death_signal(signum: int) -> bool:
    """Ask Linux to send `signum` to this process when its parent (thread) dies; False elsewhere."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return int(libc.prctl(PR_SET_PDEATHSIG, signum, 0, 0, 0)) == 0
    except (OSError, AttributeError):
        return False


def kill_group() -> NoReturn:
    """SIGKILL this process group: the compiler, its helpers, and this process."""
    os.killpg(os.getpgid(0), signal.SIGKILL)
    os._exit(128 + signal.SIGKILL)  # not reached


def end_like(returncode: int) -> NoReturn:
    """Exit with the compiler's status, or die by the signal that killed it."""
    if returncode >= 0:
        os._exit(returncode)
    signum = -returncode
    try:
        import resource

        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # the compiler's crash, not ours
        if signum != signal.SIGKILL:
            signal.signal(signum, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signum})
        os.kill(os.getpid(), signum)
    except (OSError, ValueError):
        pass
    os._exit(128 + signum)  # a signal that does not end a process by default


def main(argv: list[str]) -> NoReturn:
    worker, status_fd, program = int(argv[1]), int(argv[2]), argv[3:]
    watched = {signal.SIGCHLD, *STOP_SIGNALS}
    # Blocked, then taken one by one with sigtimedwait: no handler runs at an awkward moment.
    before = signal.pthread_sigmask(signal.SIG_BLOCK, watched)
    set_parent_death_signal(signal.SIGTERM)
    if os.getppid() != worker:  # the worker died before the kernel was asked to tell us
        kill_group()
    me = os.getpid()

    def in_compiler() -> None:  # runs in the forked child, before exec; this process has one thread
        signal.pthread_sigmask(signal.SIG_SETMASK, before)
        set_parent_death_signal(signal.SIGKILL)
        if os.getppid() != me:
            os._exit(128 + signal.SIGKILL)

    try:
        compiler = subprocess.Popen(program, preexec_fn=in_compiler)
    except OSError as exc:
        os.write(status_fd, f"{exc.errno or 0}\0{exc.strerror or exc}".encode(errors="replace"))
        os._exit(127)
    os.close(status_fd)
    while True:
        info = signal.sigtimedwait(watched, CHECK_PARENT_S)
        if info is not None and info.si_signo in STOP_SIGNALS:
            kill_group()
        if os.getppid() != worker:
            kill_group()
        if compiler.poll() is not None:
            end_like(compiler.returncode)


if __name__ == "__main__":
    main(sys.argv)
