"""The chaos run's services (bench/chaos_services.py): what an abandoned run leaves running is stopped by the
test's teardown (a pytest timeout leaves the run's own cleanup pending; a hung run's services once ran on through
later tests)."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

from chaos_services import Service, stop_abandoned

SLEEPER = [sys.executable, "-c", "import time; time.sleep(600)"]


def test_what_an_abandoned_run_left_running_is_stopped_and_nothing_else(tmp_path: Path) -> None:
    stop_abandoned()  # whatever an earlier test in this process left
    paused = Service("worker-1", SLEEPER, tmp_path)
    paused.start()
    paused.pause()  # the chaos run's pause fault: a stopped process is stopped too
    running = Service("sink", SLEEPER, tmp_path)
    running.start()
    ended = Service("api", [sys.executable, "-c", "pass"], tmp_path)
    ended.start()
    ended.terminate()  # stopped by its run: not the teardown's to stop
    killed = Service("ingest", SLEEPER, tmp_path)
    killed.start()
    killed.kill()

    assert sorted(stop_abandoned()) == ["sink", "worker-1"]
    assert paused.proc is not None and paused.proc.poll() is not None
    assert running.proc is not None and running.proc.poll() is not None
    assert stop_abandoned() == []
