"""A process a bench measures from outside: its CPU time and peak RSS from /proc, its stderr in a log file."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path
from typing import IO


class ChildProcess:
    """Subclasses start ``self.proc`` with stderr going to ``self.log`` (opened as ``self._stderr``)."""

    proc: subprocess.Popen[bytes]
    log: Path
    _stderr: IO[bytes]

    def cpu_s(self) -> float:
        """User + system CPU seconds of all its threads so far (/proc/PID/stat, in clock ticks)."""
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def peak_rss_mb(self) -> float:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
        return float("nan")

    def tail(self, chars: int = 3000) -> str:
        self._stderr.flush()
        return self.log.read_text(errors="replace")[-chars:]

    def terminate(self, wait_s: float = 60.0) -> int:
        """SIGTERM, then SIGKILL if it has not exited within ``wait_s``; returns its exit code."""
        self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(wait_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait()
        self._stderr.close()
        return code
