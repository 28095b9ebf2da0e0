"""`mt serve` in a child process: started, waited for until it answers, stopped (tests, benchmarks,
scripts that drive a server).

    server = ServerProcess.start([*mt_command, "serve", "-m", "runs/m30k", "--port", "0"])
    httpx.post(server.url + "/translate", json={"text": "A dog runs."})
    status = server.stop()          # SIGTERM, then the exit status (the process is killed after `grace`)

The server is asked for port 0 (any free port) and its "listening on http://HOST:PORT" line on
stderr gives the address; stderr is read all along (kept in `log`), so the server never blocks on a
full pipe. Needs httpx (the `serve` extra).
"""

from __future__ import annotations

import re
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, field
from typing import Mapping

from mt import MTError

_LISTENING = re.compile(r"listening on (http://\S+)")


@dataclass
class ServerProcess:
    proc: subprocess.Popen
    url: str
    log: list[str] = field(default_factory=list)  # the server's stderr lines so far

    @classmethod
    def start(cls, command: list[str], env: Mapping[str, str] | None = None, start_timeout: float = 120,
              health_timeout: float = 60) -> "ServerProcess":
        """Run `command` (an `mt serve` command line) and return once GET /health answers 200; an
        MTError with the server's stderr when it does not say where it listens within
        start_timeout seconds or is not healthy health_timeout seconds later (it is killed then)."""
        import httpx

        proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                                env=dict(env) if env is not None else None)
        log: list[str] = []
        found: list[str] = []
        ready = threading.Event()

        def read() -> None:
            for line in proc.stderr:  # type: ignore[union-attr]
                log.append(line.rstrip("\n"))
                m = _LISTENING.search(line)
                if m and not found:
                    found.append(m.group(1))
                    ready.set()
            ready.set()  # the server ended

        threading.Thread(target=read, daemon=True).start()
        if not ready.wait(start_timeout) or not found:
            proc.kill()
            raise MTError("mt serve did not start:\n" + "\n".join(log))
        deadline = time.monotonic() + health_timeout
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                if httpx.get(found[0] + "/health", timeout=5).status_code == 200:
                    return cls(proc, found[0], log)
            except httpx.TransportError:
                time.sleep(0.1)
        proc.kill()
        raise MTError("mt serve never became healthy:\n" + "\n".join(log))

    def stderr(self) -> str:
        return "\n".join(self.log)

    def stop(self, grace: float = 30) -> int | str:
        """SIGTERM and wait: the exit status, or "killed after N s" when it had to be killed."""
        if self.proc.poll() is not None:
            return self.proc.returncode
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(grace)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            return f"killed after {grace:g} s"
