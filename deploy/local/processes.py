"""Child processes of the local stack: started, logged (with secrets redacted) and stopped.

Every child gets PR_SET_PDEATHSIG, so it dies with the supervisor even when the
supervisor itself is killed; nothing is left behind.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import re
import secrets
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

PR_SET_PDEATHSIG = 1
# what servers print about themselves that must not reach a log file
_SECRET_LINE = re.compile(rb"(Unseal Key|Root Token|Token|Password)(\s*[:=]\s*)\S+", re.IGNORECASE)
_libc = ctypes.CDLL(None, use_errno=True)


def _die_with_parent(signum: int) -> Callable[[], None]:
    def set_pdeathsig() -> None:
        _libc.prctl(PR_SET_PDEATHSIG, signum)

    return set_pdeathsig


def read_or_create_secret(path: Path, nbytes: int = 24) -> str:
    """A random secret kept in a 0600 file of the state folder (never in the repo)."""
    if path.exists():
        return path.read_text().strip()
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    value = secrets.token_hex(nbytes)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(value)
    return value


def write_private(path: Path, text: str, *, owner_uid: int | None = None) -> None:
    """Write a 0600 file atomically: readers see the old content or the new, never half."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    if owner_uid is not None:
        os.chown(tmp, owner_uid, -1)
    os.replace(tmp, path)


class Child:
    """A running child process whose output is copied line by line into a log file."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        log_path: Path,
        *,
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
        user: int | None = None,
        group: int | None = None,
        redact: Sequence[str] = (),
        stop_signal: signal.Signals = signal.SIGTERM,
    ) -> None:
        self.name = name
        self.stop_signal = stop_signal
        self._redact = [s for s in redact if s]
        self._signalled = False
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(log_path, "ab", buffering=0)  # noqa: SIM115 - closed by the pump
        os.chmod(log_path, 0o600)
        self.proc = subprocess.Popen(
            list(argv),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            cwd=cwd,
            user=user,
            group=group,  # the user's own group, and no other: root's group would leak in
            extra_groups=[] if user is not None else None,
            # Ctrl-C reaches the supervisor only; it stops the children in order
            start_new_session=True,
            preexec_fn=_die_with_parent(stop_signal),
        )
        self._pump = threading.Thread(target=self._copy_output, name=f"log-{name}", daemon=True)
        self._pump.start()

    def _copy_output(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            for secret in self._redact:
                line = line.replace(secret.encode(), b"[redacted]")
            line = _SECRET_LINE.sub(rb"\1\2[redacted]", line)
            self._log.write(line)
        self._log.close()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def signal(self) -> None:
        """Ask the process to stop, once (a second SIGTERM makes uvicorn skip draining)."""
        if self.alive() and not self._signalled:
            self._signalled = True
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(self.stop_signal)

    def stop(self, timeout_s: float = 15.0) -> None:
        if self.alive():
            self.signal()
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._pump.join(5)


def wait_until(check: Callable[[], bool], what: str, timeout_s: float, child: Child | None) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if child is not None and not child.alive():
            raise RuntimeError(f"{what}: process exited with {child.proc.returncode}; see its log")
        try:
            if check():
                return
        except Exception:  # noqa: S110 - not ready yet; retried until the deadline
            pass
        time.sleep(0.05)
    raise TimeoutError(f"{what} not ready after {timeout_s} s")


def port_open(host: str, port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex((host, port)) == 0


def port_free(host: str, port: int) -> bool:
    return not port_open(host, port)
