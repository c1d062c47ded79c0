"""No Lq x Lk buffer: peak memory beyond the inputs and the output stays small
(issue bar: under 64 MiB at S4 = 1x8x4096x128), measured as the growth of the
process's peak RSS in a fresh subprocess."""
import subprocess
import sys

SCRIPT = r"""
import resource, numpy as np, attncore
def peak_mib():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
rng = np.random.default_rng(0)
q, k, v = (rng.standard_normal((1, 8, 4096, 128), dtype=np.float32) for _ in range(3))
out = np.zeros_like(q)          # the output, touched
small = np.ones((1, 8, 64, 128), np.float32)
attncore.scaled_dot_product_attention(small, small, small)  # load and warm up
before = peak_mib()
attncore.scaled_dot_product_attention(q, k, v, out=out)
attncore.scaled_dot_product_attention(q, k, v, out=out, is_causal=True)
print(peak_mib() - before)
"""


def test_peak_memory_at_s4_is_small():
    r = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    extra_mib = float(r.stdout.strip())
    assert extra_mib < 64, f"peak memory grew by {extra_mib:.1f} MiB"
