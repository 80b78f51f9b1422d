"""amecam_cli/workflow.py: running a bundle config in torchrun processes."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

from amecam_cli.workflow import _TORCHRUN


def test_the_torchrun_launcher_ends_quietly_when_interrupted(tmp_path):
    """Ctrl-C during --nproc_per_node training: torchrun's launcher printed a 30-line SignalException traceback
    above amecam's "--resume continues" line; amecam's launcher exits 130 without one."""
    worker = tmp_path / "worker.py"
    worker.write_text("import pathlib, sys, time\npathlib.Path(sys.argv[1]).touch()\ntry:\n    time.sleep(120)\n"
                      "except KeyboardInterrupt:\n    sys.exit(130)\n", encoding="utf-8")
    started = tmp_path / "started"
    proc = subprocess.Popen([sys.executable, "-c", _TORCHRUN, "--standalone", "--nproc_per_node=1", str(worker), str(started)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not started.exists() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.2)
    assert started.exists(), proc.communicate()[1][-2000:]
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-2000:]
    assert "Traceback" not in err and "SignalException" not in err, err[-2000:]


def test_the_torchrun_launcher_leaves_a_failure_to_the_processes_report(tmp_path):
    """A process that fails: torchrun's launcher added a 30-line ChildFailedError traceback to the process's own
    report; amecam's exits 1 with the report alone."""
    worker = tmp_path / "worker.py"
    worker.write_text("import sys\nprint('error: the bad input, named', file=sys.stderr)\nsys.exit(1)\n", encoding="utf-8")
    proc = subprocess.run([sys.executable, "-c", _TORCHRUN, "--standalone", "--nproc_per_node=1", str(worker)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    assert "error: the bad input, named" in proc.stderr
    assert "Traceback" not in proc.stderr and "ChildFailedError" not in proc.stderr, proc.stderr[-2000:]
