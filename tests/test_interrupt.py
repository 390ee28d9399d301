"""Ctrl-C on the real command, in its own process: the first stops after a step and saves, a quick second quits
at once; either way exit status 130 with one line per event, never a traceback, and the checkpoint loads."""
import signal
import subprocess
import sys
import time

import pytest

from xpcnn.checkpoint import Checkpoint


@pytest.mark.parametrize("gap", [0.02, 0.035, 0.05])
def test_a_second_ctrl_c_soon_after_the_first_exits_130_cleanly(tmp_path, gap):
    ck = tmp_path / "run.ckpt"
    p = subprocess.Popen([sys.executable, "-m", "xpcnn", "train", "--threads", "2", "--epochs", "100",
                          "--checkpoint", str(ck)],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert p.stdout.readline().startswith("training ")
        time.sleep(0.4)                      # inside an epoch, with the worker threads running
        p.send_signal(signal.SIGINT)
        time.sleep(gap)
        p.send_signal(signal.SIGINT)
        out, err = p.communicate(timeout=60)
    finally:
        p.kill()
    assert p.returncode == 130, (p.returncode, err)
    assert "Traceback" not in err and "Exception ignored" not in err, err
    assert 1 <= len(err.strip().splitlines()) <= 2, err
    if ck.exists():                          # the last complete save, never a half-written file
        Checkpoint(ck)
