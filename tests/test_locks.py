"""A second process on the same outputs stops at once, naming the first; a killed holder's lock is free."""
import os
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest
from conftest import DEMO, ROOT

from cxrlt.errors import CxrltError
from cxrlt.locks import exclusive

HOLD = """
import sys, time
sys.path.insert(0, {src!r})
from cxrlt.locks import exclusive
with exclusive({lock!r}, "experiment 'x' (stage 04)"):
    print("held", flush=True)
    time.sleep(60)
"""


def hold(lock):
    p = subprocess.Popen([sys.executable, "-c", HOLD.format(src=str(ROOT / "src"), lock=str(lock))],
                         stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "held"
    return p


def test_second_holder_is_refused_with_the_first_named_and_kill_9_frees_it(tmp_path):
    lock = tmp_path / ".stage.lock"
    p = hold(lock)
    try:
        with pytest.raises(CxrltError, match=rf"experiment 'y' is in use by process {p.pid} on .*stage.lock"):
            with exclusive(lock, "experiment 'y'"):
                pass
    finally:
        p.send_signal(signal.SIGKILL)
        p.wait()
    with exclusive(lock, "experiment 'y'"):                  # the OS released the dead holder's lock
        assert f"process {os.getpid()} on " in (tmp_path / ".stage.lock").read_text()


def test_two_trainers_of_one_fold(base, tmp_path):
    cmd = [sys.executable, "src/03_train.py", "--config", str(DEMO), "--fold", "0", *base, f"output_dir={tmp_path}",
           "train.epochs=25", "train.max_steps_per_epoch=2"]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    first = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    try:
        log, t0 = tmp_path / "fold0/log.csv", time.time()
        while not (log.is_file() and len(pd.read_csv(log)) >= 1) and time.time() - t0 < 300:
            time.sleep(0.05)
        second = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=env, timeout=300)
        assert second.returncode == 2, second.stdout[-2000:] + second.stderr[-2000:]
        assert "fold 0 of experiment" in second.stderr and f"in use by process {first.pid}" in second.stderr
        assert "Traceback" not in second.stderr
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
