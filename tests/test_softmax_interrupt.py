"""Ctrl-C during a long kernel_regression (or softmax) call: it stops
within a fraction of a second with KeyboardInterrupt and the library stays
usable and right."""
import os
import signal
import subprocess
import sys
import time

import pytest

pytestmark = pytest.mark.skipif(not hasattr(signal, "SIGINT") or os.name != "posix",
                                reason="POSIX signals")

CHILD = r"""
import signal, sys, time, numpy as np, attncore
# a background job (nohup, CI) may start with SIGINT ignored, which Python
# keeps: install Python's own handler, as in an interactive session
signal.signal(signal.SIGINT, signal.default_int_handler)
which = sys.argv[1]
rng = np.random.default_rng(0)
if which == "kernel_regression":      # 4e9 pairs: many seconds on 2 cores
    x = rng.random(64000).astype(np.float32)
    run = lambda: attncore.kernel_regression(x, x, x)
else:                                 # softmax over 256 MiB, twenty times over
    x = rng.standard_normal((8192, 8192), dtype=np.float32)
    def run():
        for _ in range(20):
            attncore.softmax(x, 0)
small = rng.standard_normal((4, 33)).astype(np.float32)
expect = (attncore.softmax(small), attncore.kernel_regression(small[0], small[1], small[2]))
print("start", flush=True)
try:
    run()
    print("finished", flush=True)
except KeyboardInterrupt:
    print("interrupted %.6f" % time.monotonic(), flush=True)
again = (attncore.softmax(small), attncore.kernel_regression(small[0], small[1], small[2]))
print("ok" if all(np.array_equal(a, b) for a, b in zip(again, expect)) else "WRONG", flush=True)
"""


@pytest.mark.parametrize("which", ["kernel_regression", "softmax"])
def test_ctrl_c_stops_a_long_call(which):
    p = subprocess.Popen([sys.executable, "-c", CHILD, which], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    try:
        assert p.stdout.readline().strip() == "start"
        time.sleep(0.5)
        sent = time.monotonic()
        p.send_signal(signal.SIGINT)
        line = p.stdout.readline().split()
        rest = p.stdout.read()
        p.wait(timeout=60)
    finally:
        p.kill()
    assert line and line[0] == "interrupted", (line, p.stderr.read())
    assert float(line[1]) - sent < 1.0
    assert rest.strip() == "ok"
