"""examples/quick_start.py runs end to end."""

import subprocess
import sys

from conftest import REPO


def test_quick_start_runs():
    done = subprocess.run([sys.executable, str(REPO / "examples" / "quick_start.py")],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    calls = [line for line in lines if "-> " in line]
    assert len(calls) == 3
    agent = calls[0].split(" ->")[0]
    assert agent in ("code_agent", "local_code")
    assert all(line.startswith(agent + " ->") for line in calls)  # one sticky session
    assert any(line.startswith("denied:") and "untrusted agent" in line for line in lines)
    assert sum(line.startswith("tools/code/code_exec/") and " succeeded " in line
               for line in lines) == 3
