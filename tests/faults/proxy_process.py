"""The fault proxy (``servers.fault_proxy``) in a child process of its own, told what to do on its stdin (imported
as ``faults.proxy_process``).

The soak judges the RSS of its own process. A :class:`~servers.fault_proxy.FaultProxy` in that process carries every
byte of the layers' traffic in chunks of every size, and glibc keeps the heap those chunks were freed from: in a
200 s run of the soak's traffic through an in-process proxy, with no fault at all, RSS grew by 6 MiB while the memory
in use (glibc's ``mallinfo2``) stayed flat; with the proxy in a child process, the same traffic and a cut every 10 s
left RSS within 0.4 MiB. Out here, the proxy costs the soak's figure nothing.

The protocol is one line each way: ``fin`` or ``rst`` cuts every connection (with a FIN or a reset) and is
answered with the number cut. The child ends when its stdin closes, so it never outlives the test's process.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from types import TracebackType

from servers.fault_proxy import LOOPBACK, FaultProxy

#: The tests folder, where the child finds ``servers``.
TESTS = Path(__file__).resolve().parents[1]
#: Seconds the child may take to start listening, to answer, and to exit once told.
TIMEOUT = 15.0


class ProxyProcess:
    """A fault proxy to ``host:port`` in a child process; use as a context manager."""

    def __init__(self, host: str, port: int) -> None:
        self._target = (host, port)
        self._child: subprocess.Popen[str] | None = None
        self.port = 0

    def __enter__(self) -> ProxyProcess:
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join(filter(None, [str(TESTS), os.environ.get("PYTHONPATH")])),
        }
        host, port = self._target
        self._child = subprocess.Popen(
            [sys.executable, __file__, host, str(port)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )
        self.port = int(self._answer())
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        child, self._child = self._child, None
        if child is None:
            return
        if child.stdin is not None:
            child.stdin.close()
        try:
            child.wait(TIMEOUT)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait(TIMEOUT)
        finally:
            if child.stdout is not None:
                child.stdout.close()

    def url(self) -> str:
        return f"valkey://{LOOPBACK}:{self.port}"

    def cut(self, *, graceful: bool) -> int:
        """Cut every open connection, both sides, with a FIN (``graceful``) or a reset; how many there were."""
        child = self._child
        if child is None or child.stdin is None:
            raise RuntimeError("the proxy process is not running (use ProxyProcess as a context manager)")
        child.stdin.write("fin\n" if graceful else "rst\n")
        child.stdin.flush()
        return int(self._answer())

    def _answer(self) -> str:
        child = self._child
        if child is None or child.stdout is None:
            raise RuntimeError("the proxy process is not running (use ProxyProcess as a context manager)")
        line = child.stdout.readline()
        if not line:
            raise RuntimeError(
                f"the proxy process ended (exit code {child.wait(TIMEOUT)}); see its stderr above"
            )
        return line.strip()


def _serve(host: str, port: int) -> None:
    with FaultProxy(host, port) as proxy:
        print(proxy.port, flush=True)
        for line in sys.stdin:
            print(proxy.cut(graceful=line.strip() == "fin"), flush=True)


if __name__ == "__main__":
    _serve(sys.argv[1], int(sys.argv[2]))
