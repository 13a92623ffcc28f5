"""One process at a time trains in a run folder (engine/run_folder.py: claim_run_dir).

Before its first checkpoint a run's folder holds only config.yaml and metrics.csv; a second run
started there used to take it for an abandoned start and write beside the first. The second
derivation is another process: a child that claims the folder and waits, then is killed.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import pytest

from contrastkit.core.errors import ConfigError
from contrastkit.engine.run_folder import LOCK_FILE, claim_run_dir, release_run_dir, resolve_run_dir

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="advisory locks (fcntl) are POSIX-only")


def hold_in_another_process(run_dir) -> subprocess.Popen:
    script = textwrap.dedent(f"""
        import sys, time
        from pathlib import Path
        from contrastkit.engine.run_folder import claim_run_dir
        claim_run_dir(Path({str(run_dir)!r}))
        print("held", flush=True)
        time.sleep(600)
    """)
    child = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True,
                             env={**os.environ, "LOCAL_RANK": "0", "NODE_RANK": "0"})
    assert child.stdout.readline().strip() == "held"
    return child


def test_a_second_process_is_refused_until_the_first_ends_even_killed(tmp_path):
    run_dir = tmp_path / "run"
    child = hold_in_another_process(run_dir)
    try:
        (run_dir / "config.yaml").write_text("method: simclr\n")  # a run before its first checkpoint
        (run_dir / "metrics.csv").write_text("step,train/loss\n0,1.0\n")
        with pytest.raises(ConfigError, match=f"pid {child.pid}"):
            resolve_run_dir(run_dir, resume=False, default_name="x")
        # Refused before anything in the folder was touched: the first run's log is where it was.
        assert (run_dir / "metrics.csv").read_text() == "step,train/loss\n0,1.0\n"
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    # The operating system dropped the killed process's lock: the folder can be taken again.
    assert resolve_run_dir(run_dir, resume=False, default_name="x") == run_dir
    assert (run_dir / LOCK_FILE).read_text() == str(os.getpid())
    release_run_dir(run_dir)


def test_claiming_twice_in_one_process_is_allowed_and_release_lets_others_in(tmp_path):
    run_dir = tmp_path / "run"
    claim_run_dir(run_dir)
    claim_run_dir(run_dir)  # resolve_run_dir, then open_run_dir, then train: one holder
    release_run_dir(run_dir)
    child = hold_in_another_process(run_dir)  # would block on a lock this process still held
    try:
        with pytest.raises(ConfigError, match="Another process"):
            claim_run_dir(run_dir)
    finally:
        child.kill()
        child.wait()
