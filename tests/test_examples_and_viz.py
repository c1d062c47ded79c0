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


def test_missing_matplotlib_names_the_extra():
    code = ("import sys; sys.modules['matplotlib'] = None\n"
            "import attncore.viz, numpy as np\n"
            "try:\n    attncore.viz.show_heatmaps(np.ones((2, 2)))\n"
            "except ImportError as e:\n    print(e)\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert "attncore[viz]" in r.stdout, r.stdout + r.stderr
