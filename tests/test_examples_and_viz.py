"""The examples run (each checks itself against a reference), and the
heatmap helper writes a real PNG or explains how to get matplotlib."""
import importlib.util
import pathlib
import subprocess
import sys

import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"


def load(name):
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_bahdanau_decoder_step():
    context = load("bahdanau_decoder_step").main()
    assert context.shape == (3, 1, 1, 32)


def test_greedy_decoding_with_kv_cache():
    tokens = load("greedy_decoding_kv_cache").main(steps=12)
    assert len(tokens) == 16


def test_dask_long_context():
    pytest.importorskip("distributed", reason="dask.distributed not installed (pip install '.[dask]')")
    results = load("dask_long_context").main(
        ["--keys", "3000", "--queries", "24", "--workers", "2", "--shards", "4"])
    assert set(results) == {"float32", "float64"}
    assert results["float32"]["max_diff_out"] < 1e-5 and results["float64"]["max_diff_lse"] < 1e-12


def test_self_attention_heatmap(tmp_path):
    pytest.importorskip("matplotlib", reason="matplotlib not installed (pip install '.[viz]')")
    path = load("self_attention_heatmap").main(str(tmp_path / "heat.png"))
    data = pathlib.Path(path).read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000


def test_show_heatmaps_shapes_and_errors(tmp_path):
    pytest.importorskip("matplotlib", reason="matplotlib not installed (pip install '.[viz]')")
    import attncore.viz
    w = np.random.default_rng(0).random((2, 3, 4, 5))
    fig = attncore.viz.show_heatmaps(w, titles=["a", "b", "c"], path=tmp_path / "w.png")
    assert len(fig.axes) == 7  # 6 maps and a colour bar
    assert (tmp_path / "w.png").stat().st_size > 1000
    attncore.viz.show_heatmaps(w[0, 0], path=tmp_path / "one.png")
    with pytest.raises(ValueError, match="dimensions"):
        attncore.viz.show_heatmaps(np.ones(3))
    with pytest.raises(ValueError, match="titles"):
        attncore.viz.show_heatmaps(w, titles=["a"])
    # (NumPy's own messages came through: "zero-size array to reduction ...",
    # "could not convert string to float"; complex weights only warned)
    with pytest.raises(ValueError, match=r"weights of shape \(0, 3\) hold no weight"):
        attncore.viz.show_heatmaps(np.zeros((0, 3)))
    for bad in (np.array([["a", "b"]]), np.ones((2, 2), complex)):
        with pytest.raises(TypeError, match="show_heatmaps: weights must be real numbers"):
            attncore.viz.show_heatmaps(bad)
    attncore.viz.show_heatmaps(np.eye(3, dtype=bool), path=tmp_path / "mask.png")   # a mask draws


def test_missing_matplotlib_names_the_extra():
    code = ("import sys; sys.modules['matplotlib'] = None\n"
            "import attncore.viz, numpy as np\n"
            "try:\n    attncore.viz.show_heatmaps(np.ones((2, 2)))\n"
            "except ImportError as e:\n    print(e)\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert "attncore[viz]" in r.stdout, r.stdout + r.stderr


def test_show_heatmaps_leaves_the_backend_and_pyplot_alone(tmp_path):
    """Object API only: the user's backend is not switched and no pyplot
    figure is left open (checked in a fresh interpreter)."""
    pytest.importorskip("matplotlib", reason="matplotlib not installed (pip install '.[viz]')")
    import subprocess
    import sys
    code = (
        "import matplotlib; matplotlib.use('svg'); import numpy as np, attncore, attncore.viz, sys\n"
        "fig = attncore.viz.show_heatmaps(np.eye(3), path=sys.argv[1])\n"
        "import matplotlib.pyplot as plt\n"
        "print(matplotlib.get_backend(), len(plt.get_fignums()), type(fig).__name__)\n")
    r = subprocess.run([sys.executable, "-c", code, str(tmp_path / "x.png")], capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["svg", "0", "Figure"]
    assert (tmp_path / "x.png").read_bytes()[:4] == b"\x89PNG"


def _readme_block(heading):
    """The first ```python block after `heading` in README.md."""
    text = (ROOT / "README.md").read_text()
    start = text.index("```python\n", text.index(heading)) + len("```python\n")
    return text[start:text.index("```", start)]


def test_readme_usage_block_runs_as_written():
    """README's NumPy usage block runs as written, and what its comments
    claim holds (the merged shards equal attention over all keys; the
    decode loop equals the full causal layer)."""
    ns: dict = {}
    exec(compile(_readme_block("## Usage"), "README.md (Usage)", "exec"), ns)
    attncore = ns["attncore"]
    q, k, v = ns["q"], ns["k"], ns["v"]
    whole, lse = attncore.scaled_dot_product_attention(q, k, v, return_lse=True)
    np.testing.assert_allclose(ns["out2"], whole, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(ns["lse2"], lse, rtol=1e-5, atol=1e-5)
    full, _ = ns["mha"](ns["x"], is_causal=True)
    np.testing.assert_allclose(ns["y_t"], full[:, 15:16], rtol=1e-5, atol=1e-5)
