"""attncore's KV cache for torch users: attncore.torch.AttncoreCache as
Hugging Face ``past_key_values`` (float32 / bfloat16 / float16 / int8
storage read in place by the "attncore" attention), and
attncore.torch.MultiheadAttention(..., kv_cache=KVCache(...)).

References: the same weights under transformers' DynamicCache with "sdpa",
and full recomputation. The compact caches are held to docs/numerics.md
statement (10), carried to the logits to first order through the model's
Jacobian (see test_compact_cache_logits_within_the_bound_of_statement_10).
No network: small random configs. Skipped, with a reason, without torch;
the Hugging Face tests also without transformers."""
import copy

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="torch not installed (pip install '.[torch]')")

import attncore  # noqa: E402
import attncore.torch as at  # noqa: E402
from attncore import _config  # noqa: E402
from conftest import pairs_active  # noqa: E402

try:
    import transformers  # noqa: F401
    from transformers import (DynamicCache, LlamaConfig, LlamaForCausalLM, MistralConfig,
                              MistralForCausalLM)
except ImportError:
    transformers = None
hf = pytest.mark.skipif(transformers is None, reason="transformers not installed (pip install '.[hf]')")

COMPACT = ["bfloat16", "float16", "int8"]
if transformers is not None:
    LLAMA = LlamaConfig(vocab_size=100, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                        num_attention_heads=8, num_key_value_heads=2, max_position_embeddings=64,
                        pad_token_id=0)
    MISTRAL = MistralConfig(vocab_size=100, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                            num_attention_heads=8, num_key_value_heads=2, max_position_embeddings=64,
                            sliding_window=4, pad_token_id=0)
GREEDY = dict(do_sample=False, pad_token_id=0, eos_token_id=None)


@pytest.fixture(autouse=True)
def registered():
    if transformers is not None:
        at.register()


@pytest.fixture
def attends(monkeypatch):
    """Records every KVCache.attend call: the storage it read, the query
    shape, the cached length, the mask and the causal flag it got."""
    log = []
    real = attncore.KVCache.attend

    def recording(self, query, **kw):
        mask = kw.get("attn_mask")
        log.append(dict(storage=self.storage, stored=self._k.dtype, q=tuple(np.shape(query)),
                        n=len(self), is_causal=kw.get("is_causal"), window=kw.get("window"),
                        mask=None if mask is None else (mask.dtype, tuple(mask.shape))))
        return real(self, query, **kw)

    monkeypatch.setattr(attncore.KVCache, "attend", recording)
    return log


def pair(cls, cfg):
    """The same random weights under "sdpa" and under "attncore"."""
    torch.manual_seed(0)
    # deepcopy: _from_config(cfg, attn_implementation=...) writes into cfg
    ref = cls._from_config(copy.deepcopy(cfg), attn_implementation="sdpa").eval()
    new = cls._from_config(copy.deepcopy(cfg), attn_implementation="attncore").eval()
    new.load_state_dict(ref.state_dict())
    return ref, new


def prompt(B=1, L=9, seed=0):
    return torch.randint(1, 100, (B, L), generator=torch.Generator().manual_seed(seed))


def generate(model, ids, cache=None, n=10, **kw):
    """Greedy tokens and the logits of every step."""
    with torch.inference_mode():
        out = model.generate(ids, past_key_values=cache, max_new_tokens=n, output_scores=True,
                             return_dict_in_generate=True, **GREEDY, **kw)
    return out.sequences, torch.stack(out.scores, 1)


# -- float32 storage: the tokens and logits of transformers' DynamicCache ---------------

@hf
def test_float32_cache_generates_what_dynamic_cache_does(attends):
    ref, new = pair(LlamaForCausalLM, LLAMA)
    ids = prompt()
    want, want_logits = generate(ref, ids, DynamicCache(config=ref.config))
    cache = at.AttncoreCache(new.config, dtype="float32")
    got, logits = generate(new, ids, cache)
    assert torch.equal(got, want)
    torch.testing.assert_close(logits, want_logits, rtol=1e-5, atol=1e-5)
    # every step of every layer read its KVCache: a 9-token prefill, then one token at a
    # time (the 10th token is not fed back); GQA: 8 query heads on 2 cached heads
    assert len(attends) == 10 * LLAMA.num_hidden_layers
    assert attends[0]["q"] == (1, 8, 9, 8) and attends[-1]["q"] == (1, 8, 1, 8)
    assert [a["n"] for a in attends[::2]] == list(range(9, 19))
    assert cache.get_seq_length() == 18 and cache.layers[0].kv.num_heads == 2
    assert {a["storage"] for a in attends} == {"float32"}


@hf
@pytest.mark.parametrize("dtype", COMPACT)
def test_compact_caches_are_read_in_their_storage(attends, dtype):
    _, new = pair(LlamaForCausalLM, LLAMA)
    cache = at.AttncoreCache(new.config, dtype=dtype)
    generate(new, prompt(), cache, n=4)
    stored = {"bfloat16": np.uint16, "float16": np.float16, "int8": np.int8}[dtype]
    assert len(attends) == 4 * LLAMA.num_hidden_layers
    assert all(a["storage"] == dtype and a["stored"] == stored for a in attends)
    assert all(layer.kv._k.dtype == stored for layer in cache.layers)
    if dtype == "int8":   # a float32 scale per (batch, head, position)
        assert cache.layers[0].kv._ks.dtype == np.float32


@hf
def test_the_storage_grows_past_max_cache_len():
    _, new = pair(LlamaForCausalLM, LLAMA)
    want, want_logits = generate(new, prompt(), at.AttncoreCache(new.config, dtype="int8"))
    small = at.AttncoreCache(new.config, dtype="int8", max_cache_len=10)
    got, logits = generate(new, prompt(), small)
    # 9 + 9 positions: the buffers (and int8 scales) doubled once, copying what they held
    assert small.layers[0].kv.capacity == 20 and small.get_seq_length() == 18
    assert torch.equal(got, want)
    torch.testing.assert_close(logits, want_logits, rtol=0, atol=0)


# -- compact storage: docs/numerics.md (10), carried to the logits ------------------------

def statement_10_row_bounds(queries, keys, values, stored_keys, stored_values, scale):
    """docs/numerics.md (10) for every query row of one layer: the attention
    output over the stored K/V moves from the one over the exact K/V by at
    most 2 eps_s V + eps_v, with eps_s = |scale| max_j sum_d |q_d| |dk_jd|,
    eps_v = max |dv| and V = max |v|, over the keys the row sees (j <= i: the
    rows are the positions 0..L-1 of one unpadded sequence). GQA: query head
    h reads kv head h // (Hq / Hkv). Returns (B, Hq, L)."""
    q, k, v = (np.asarray(a, np.float64) for a in (queries, keys, values))
    dk = np.abs(np.asarray(stored_keys, np.float64) - k)
    dv = np.abs(np.asarray(stored_values, np.float64) - v).max(-1)           # (B, Hkv, L)
    big_v = np.maximum(np.abs(v), np.abs(np.asarray(stored_values, np.float64))).max(-1)
    group = q.shape[1] // k.shape[1]
    dk, dv, big_v = (np.repeat(a, group, axis=1) for a in (dk, dv, big_v))
    L = k.shape[2]
    sees = np.tril(np.ones((L, L), bool))                                     # row i sees j <= i
    eps_s = abs(scale) * np.where(sees, np.abs(q) @ np.swapaxes(dk, -1, -2), 0).max(-1)
    eps_v = np.where(sees, dv[:, :, None, :], 0).max(-1)
    big_v = np.where(sees, big_v[:, :, None, :], 0).max(-1)
    return 2 * eps_s * big_v + eps_v


@pytest.fixture
def kv_traffic(monkeypatch):
    """Per KVCache (by id): the float32 keys/values appended to it and the
    queries it attended with, in order."""
    seen = {}
    append, attend = attncore.KVCache.append, attncore.KVCache.attend

    def appending(self, key, value):
        rec = seen.setdefault(id(self), dict(k=[], v=[], q=[]))
        rec["k"].append(np.array(key))
        rec["v"].append(np.array(value))
        return append(self, key, value)

    def attending(self, query, **kw):
        seen[id(self)]["q"].append(np.array(query))
        return attend(self, query, **kw)

    monkeypatch.setattr(attncore.KVCache, "append", appending)
    monkeypatch.setattr(attncore.KVCache, "attend", attending)
    return seen


def teacher_forced_logits(model, tokens, prompt_len, dtype):
    """Logits at positions prompt_len-1 .. len-2 (those that choose the tokens
    after the prompt) from a prefill of the prompt, then one token at a time."""
    cache = at.AttncoreCache(model.config, dtype=dtype)
    with torch.inference_mode():
        rows = [model(tokens[:, :prompt_len], past_key_values=cache).logits[0, -1:]]
        for t in range(prompt_len, tokens.shape[1] - 1):
            rows.append(model(tokens[:, t:t + 1], past_key_values=cache).logits[0])
    return torch.cat(rows).double().numpy(), cache


@hf
def test_compact_cache_logits_within_the_bound_of_statement_10(kv_traffic):
    """bfloat16 / float16 / int8 caches against the float32 cache, on the same
    tokens (teacher-forced: the float32 run's greedy continuation).

    The bound: storage rounding moves layer l's attention output at position
    p, head h by at most beta[l, p, h] (statement (10), from the keys/values
    that were appended, what was stored, and the queries). To first order the
    logits then move by at most sum |d logits / d a| * beta over every layer,
    position and channel of the attention outputs a (the o_proj inputs), with
    the Jacobian taken by autograd on the float32 model. Added: twice the
    float32 disagreement between the attncore float32 run and sdpa (the
    rounding noise of the two runs, which the first-order term does not cover).
    Measured: the differences are 3-4% of the bound."""
    ref, new = pair(LlamaForCausalLM, LLAMA)
    P = 6
    tokens, _ = generate(new, prompt(L=P), at.AttncoreCache(new.config, dtype="float32"), n=6)
    tokens = tokens.clone()   # a normal tensor (generate made it under inference mode)
    T = tokens.shape[1] - 1   # positions fed to the model
    exact, _ = teacher_forced_logits(new, tokens, P, "float32")

    # the Jacobian of those logits with respect to each layer's attention outputs
    deltas = [torch.zeros(1, T, LLAMA.hidden_size, requires_grad=True)
              for _ in range(LLAMA.num_hidden_layers)]
    hooks = [layer.self_attn.o_proj.register_forward_pre_hook(lambda m, a, d=d: (a[0] + d,))
             for layer, d in zip(ref.model.layers, deltas)]
    try:
        logits = ref(tokens[:, :T]).logits[0, P - 1:]
    finally:
        for h in hooks:
            h.remove()
    rows = logits.reshape(-1)
    jac = torch.autograd.grad(rows, deltas, grad_outputs=torch.eye(rows.numel()),
                              is_grads_batched=True)
    jac = [np.abs(j[:, 0].double().numpy()).reshape(logits.shape + (T, -1)) for j in jac]
    noise = 2 * np.abs(exact - logits.detach().double().numpy()).max()
    assert noise < 1e-5

    head_dim = LLAMA.hidden_size // LLAMA.num_attention_heads
    for dtype in COMPACT:
        kv_traffic.clear()
        got, cache = teacher_forced_logits(new, tokens, P, dtype)
        bound = np.full(got.shape, noise)
        for l, layer in enumerate(cache.layers):
            rec = kv_traffic[id(layer.kv)]
            beta = statement_10_row_bounds(np.concatenate(rec["q"], 2), np.concatenate(rec["k"], 2),
                                           np.concatenate(rec["v"], 2), layer.kv.keys,
                                           layer.kv.values, head_dim ** -0.5)
            # channel c of the attention output (B, L, Hq * D) belongs to head c // D
            beta = np.repeat(beta[0].T, head_dim, axis=1)                     # (T, Hq * D)
            bound += np.einsum("tvpc,pc->tv", jac[l], beta)
        diff = np.abs(got - exact)
        assert (diff <= bound).all(), f"{dtype}: max diff/bound {np.max(diff / bound):.3f}"
        assert diff.max() > 0   # the storage did round something


@hf
@pytest.mark.parametrize("dtype", COMPACT)
def test_compact_caches_keep_the_greedy_tokens_of_a_short_run(dtype):
    _, new = pair(LlamaForCausalLM, LLAMA)
    want, _ = generate(new, prompt(), at.AttncoreCache(new.config, dtype="float32"), n=8)
    got, _ = generate(new, prompt(), at.AttncoreCache(new.config, dtype=dtype), n=8)
    assert torch.equal(got, want)


# -- masks, prefill, batches, beams, sliding windows --------------------------------------

@hf
@pytest.mark.parametrize("dtype", ["float32", "int8"])
def test_left_padded_batch(attends, dtype):
    ref, new = pair(LlamaForCausalLM, LLAMA)
    ids = prompt(B=2, L=7, seed=1)
    am = torch.ones_like(ids)
    am[1, :3] = 0
    ids[1, :3] = 0
    want, want_logits = generate(ref, ids, DynamicCache(config=ref.config), n=8, attention_mask=am)
    got, logits = generate(new, ids, at.AttncoreCache(new.config, dtype=dtype), n=8,
                           attention_mask=am)
    assert torch.equal(got, want)
    if dtype == "float32":
        torch.testing.assert_close(logits, want_logits, rtol=1e-5, atol=1e-5)
    # transformers' 4-D padding mask reached KVCache.attend, covering every cached position
    assert attends[0]["mask"] == (np.bool_, (2, 1, 7, 7))
    assert attends[-1]["mask"] == (np.bool_, (2, 1, 1, 14)) and attends[-1]["n"] == 14


@hf
def test_long_prompt_prefill_and_a_second_chunk(attends):
    ref, new = pair(LlamaForCausalLM, LLAMA)
    ids = prompt(L=56, seed=2)
    with torch.inference_mode():
        want = ref(ids).logits
        cache = at.AttncoreCache(new.config, dtype="float32")
        first = new(ids[:, :48], past_key_values=cache).logits
        second = new(ids[:, 48:], past_key_values=cache).logits
    torch.testing.assert_close(first, want[:, :48], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(second, want[:, 48:], rtol=1e-5, atol=1e-5)
    # the prefill: no mask, causal with the queries as the newest positions (Lq = Lk);
    # the second chunk: transformers' mask over all 56 positions
    assert (attends[0]["q"][2], attends[0]["n"], attends[0]["mask"], attends[0]["is_causal"]) == \
        (48, 48, None, "bottom_right")
    assert (attends[-1]["q"][2], attends[-1]["n"], attends[-1]["mask"]) == \
        (8, 56, (np.bool_, (1, 1, 8, 56)))


@hf
def test_beam_search_reorders_the_cache(monkeypatch):
    ref, new = pair(LlamaForCausalLM, LLAMA)
    reorders = []
    real = at.AttncoreLayer.reorder_cache
    monkeypatch.setattr(at.AttncoreLayer, "reorder_cache",
                        lambda self, idx: (reorders.append(idx.clone()), real(self, idx))[1])
    ids = prompt(B=2, L=6, seed=3)
    with torch.inference_mode():
        want = ref.generate(ids, num_beams=3, max_new_tokens=8, **GREEDY)
        got = new.generate(ids, num_beams=3, max_new_tokens=8, **GREEDY,
                           past_key_values=at.AttncoreCache(new.config, dtype="float32"))
    assert torch.equal(got, want)
    # beams really moved between rows at some step
    assert reorders and any(not torch.equal(i, torch.arange(6)) for i in reorders)


@hf
def test_sliding_window_layers_keep_the_history_and_the_mask_applies_the_window(attends):
    ref, new = pair(MistralForCausalLM, MISTRAL)
    ids = prompt(L=9, seed=4)
    want, want_logits = generate(ref, ids, DynamicCache(config=ref.config), n=8)
    cache = at.AttncoreCache(new.config, dtype="float32")
    got, logits = generate(new, ids, cache, n=8)
    assert torch.equal(got, want)
    torch.testing.assert_close(logits, want_logits, rtol=1e-5, atol=1e-5)
    # all 16 positions cached, the window (4) is in transformers' mask
    assert cache.get_seq_length() == 16 and attends[-1]["mask"] == (np.bool_, (1, 1, 1, 16))
    # a later chunk of 5: the mask cuts each row's own window, so the kernel gets
    # that window too (it skips the key blocks before it) and the mask as it was
    attends.clear()
    chunked = at.AttncoreCache(new.config, dtype="float32")
    want_cache = DynamicCache(config=ref.config)
    with torch.inference_mode():
        new(ids[:, :4], past_key_values=chunked)
        ref(ids[:, :4], past_key_values=want_cache)
        got = new(ids[:, 4:], past_key_values=chunked).logits
        want = ref(ids[:, 4:], past_key_values=want_cache).logits
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert attends[-1]["window"] == (3, None) and attends[-1]["mask"] == (np.bool_, (1, 1, 5, 9))


@hf
def test_a_sliding_window_that_only_the_cache_applies_is_applied(attends):
    # Moshi's mask has no window: its DynamicCache layers (DynamicSlidingWindowLayer)
    # drop the old positions instead. AttncoreCache keeps them, so the attention on
    # the cache applies the window (it used to see the whole history: other tokens)
    MoshiConfig = getattr(transformers, "MoshiConfig", None)
    if MoshiConfig is None:
        pytest.skip("this transformers has no Moshi")
    cfg = MoshiConfig(vocab_size=100, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=4, head_dim=16,
                      max_position_embeddings=256, sliding_window=4, pad_token_id=0,
                      initializer_range=0.1, audio_vocab_size=32, num_codebooks=2,
                      depth_decoder_config=None)
    ref, new = pair(transformers.MoshiForCausalLM, cfg)
    ids = torch.randint(3, 100, (1, 6), generator=torch.Generator().manual_seed(0))
    want, want_logits = generate(ref, ids, DynamicCache(config=ref.config), n=8)
    cache = at.AttncoreCache(new.config, dtype="float32")
    got, logits = generate(new, ids, cache, n=8)
    assert torch.equal(got, want)
    torch.testing.assert_close(logits, want_logits, rtol=1e-5, atol=1e-5)
    assert cache.get_seq_length() == 13
    # every decode step past the window ran with it (the prefill's rows see their
    # causal history, as the sliding cache layer's do), and no mask carried it
    decode = attends[2:]
    assert [a["window"] for a in decode] == [(3, None)] * len(decode)
    assert attends[0]["window"] is None and all(a["mask"] is None for a in decode)
    # a later chunk of several tokens sees what the sliding cache layer keeps: the
    # W - 1 = 3 positions before the chunk, and the chunk (its rows are not each
    # cut to their own window): the logits of every row, chunks split anywhere
    ids = torch.randint(3, 100, (1, 12), generator=torch.Generator().manual_seed(1))
    for split in (3, 4, 6, 8):
        got, want = [], []
        for model, cache in ((ref, DynamicCache(config=ref.config)),
                             (new, at.AttncoreCache(new.config, dtype="float32"))):
            with torch.inference_mode():
                model(ids[:, :split], past_key_values=cache)
                (want if model is ref else got).append(
                    model(ids[:, split:], past_key_values=cache).logits)
        torch.testing.assert_close(got[0], want[0], rtol=1e-5, atol=2e-5)
    # (with the loosest window that keeps them: the key blocks before it are skipped)
    assert attends[-2]["mask"] is not None and attends[-2]["window"] == (3 + 4 - 1, None)


def test_sliding_cut_of_each_mask_kind():
    # W = 3, 8 cached positions, the newest 3 are the queries: first = 8 - 3 - 2 = 3
    n, Lq, W = 8, 3, 3
    rows = np.arange(n - Lq, n)[:, None]
    own = np.arange(n) > rows - W                    # each row's own window (and causal)
    own &= np.arange(n) <= rows
    window, mask = at._sliding_cut(None, W, n, 1, n - 1 - (W - 1))
    assert window == (W - 1, None) and mask is None
    window, mask = at._sliding_cut(own[None, None], W, n, Lq, 3)   # the mask cuts it already
    assert window == (W - 1, None) and mask.shape == (1, 1, Lq, n) and (mask == own).all()
    causal = np.arange(n) <= rows                    # Moshi's: no window
    window, mask = at._sliding_cut(causal[None, None], W, n, Lq, 3)
    assert window == (W + Lq - 2, None) and (mask[0, 0] == (causal & (np.arange(n) >= 3))).all()
    window, mask = at._sliding_cut(None, W, n, Lq, 3)
    assert window == (W + Lq - 2, None) and (mask == (np.arange(n) >= 3)).all()
    additive = np.where(causal, np.float32(0.5), np.float32(-np.inf))[None, None]
    window, mask = at._sliding_cut(additive, W, n, Lq, 3)
    assert window == (W + Lq - 2, None) and mask.dtype == np.float32
    np.testing.assert_array_equal(mask[0, 0], np.where(causal & (np.arange(n) >= 3), 0.5, -np.inf))
    cut = np.where(own, np.float32(0.5), np.float32(-np.inf))[None, None]
    assert at._sliding_cut(cut, W, n, Lq, 3)[0] == (W - 1, None)


@hf
def test_bfloat16_model_with_a_bfloat16_cache():
    _, new = pair(LlamaForCausalLM, LLAMA)
    new = new.to(torch.bfloat16)
    # On a native-pairs level (avx512bf16) bfloat16 SDPA rounds its weights
    # to bfloat16 before P V (docs/numerics.md (4b)) while the cache's float32
    # queries do not: compare the storage on the widening level it builds on.
    level = "avx512" if pairs_active() else _config.active_isa_name()
    with _config.use_isa(level):
        want, want_logits = generate(new, prompt(), DynamicCache(config=new.config), n=6)
        cache = at.AttncoreCache(new.config, dtype="bfloat16")
        got, logits = generate(new, prompt(), cache, n=6)
    # bfloat16 keys/values are stored exactly: the same attention as on the
    # DynamicCache's tensors
    assert torch.equal(got, want)
    torch.testing.assert_close(logits, want_logits)
    assert cache.layers[0].keys.dtype == torch.bfloat16


# -- other attention implementations, placeholders, cache operations ----------------------

@hf
def test_other_implementations_get_the_stored_values_decoded(attends):
    ref, new = pair(LlamaForCausalLM, LLAMA)
    want, want_logits = generate(new, prompt(), at.AttncoreCache(new.config, dtype="int8"), n=6)
    n_attncore = len(attends)
    got, logits = generate(ref, prompt(), at.AttncoreCache(ref.config, dtype="int8"), n=6)
    assert len(attends) == n_attncore   # sdpa computed these itself, from decoded tensors
    assert torch.equal(got, want)
    torch.testing.assert_close(logits, want_logits, rtol=1e-5, atol=1e-5)


@hf
def test_placeholders_refuse_every_other_use():
    _, new = pair(LlamaForCausalLM, LLAMA)
    cache = at.AttncoreCache(new.config, dtype="int8")
    k = torch.randn(1, 2, 5, 8)
    with torch.inference_mode():
        keys, values = cache.update(k, k.clone(), 0)
        assert keys.shape == (1, 2, 5, 8) and keys.dtype == torch.float32
        assert keys.layer is cache.layers[0] and values.which == "values"
        q = torch.randn(1, 8, 5, 8)
        sdpa = torch.nn.functional.scaled_dot_product_attention
        for use in (lambda: sdpa(q, keys, values, enable_gqa=True), lambda: keys[0],
                    lambda: keys.transpose(2, 3), lambda: torch.cat([keys, keys]),
                    lambda: torch.cat([k, values], 2)):
            # (both causes named: a cache built from another model's config, or a
            # model that computes on its cached keys/values itself)
            with pytest.raises(TypeError,
                               match=r"AttncoreCache layer returned.*attn_implementation='attncore'"
                                     r".*running model's config.*DynamicCache"):
                use()
        with pytest.raises(TypeError, match=r"cat\(\) got the values .*int8 storage"):
            torch.cat([k, values], 2)
        # Python operators turn a TypeError into NotImplemented: their own TypeError names the type
        with pytest.raises(TypeError, match="_AttncoreCacheRef"):
            keys + 1
    # a cache built from another config than the running model's: sdpa receives
    # placeholders and refuses them
    ref, _ = pair(LlamaForCausalLM, LLAMA)
    with pytest.raises(TypeError, match="hold no values.*build it from the running model's config"):
        generate(ref, prompt(), at.AttncoreCache(new.config, dtype="int8"), n=2)


def _transformers_at_least(major, minor):
    if transformers is None:
        return False
    from packaging.version import Version   # (a dependency of transformers)
    return Version(transformers.__version__) >= Version(f"{major}.{minor}")


@hf
@pytest.mark.skipif(not _transformers_at_least(5, 24), reason="generate(cache=) is transformers >= 5.24's")
def test_generate_takes_the_cache_by_its_new_name(attends):
    """transformers 5.24 renamed generate's past_key_values= to cache=
    (README): the cache given that way is the one read, with the tokens of
    the old spelling."""
    import warnings
    _, new = pair(LlamaForCausalLM, LLAMA)
    cache = at.AttncoreCache(new.config, dtype="int8")
    with torch.inference_mode(), warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)   # (the new name warns about nothing)
        got = new.generate(prompt(B=2), cache=cache, max_new_tokens=4, **GREEDY)
    assert attends and all(a["storage"] == "int8" for a in attends)
    assert cache.get_seq_length() == 9 + 4 - 1
    with pytest.warns(FutureWarning, match="past_key_values"):
        want, _ = generate(new, prompt(B=2), at.AttncoreCache(new.config, dtype="int8"), n=4)
    assert torch.equal(got, want)


@hf
def test_a_cache_with_fewer_layers_than_the_model_says_so():
    """A cache built from a config with fewer layers than the running model:
    a ValueError naming both counts, not transformers' bare IndexError (a
    user's review); one with more layers runs (the extra layers stay empty)."""
    ref, new = pair(LlamaForCausalLM, LLAMA)
    fewer = copy.deepcopy(new.config)
    fewer.num_hidden_layers = 1
    with pytest.raises(ValueError, match=r"updates layer 1, but the cache has 1 layers.*"
                                         r"another model's config.*AttncoreCache\(model.config"):
        generate(new, prompt(), at.AttncoreCache(fewer, dtype="int8"), n=2)
    more = copy.deepcopy(new.config)
    more.num_hidden_layers = 3
    got, _ = generate(new, prompt(), at.AttncoreCache(more, dtype="float32"), n=3)
    want, _ = generate(ref, prompt(), DynamicCache(), n=3)
    assert torch.equal(got, want)


@hf
def test_a_model_that_computes_on_its_cached_values_is_told_to_use_dynamic_cache():
    # DiffLlama's attention layer splits the cached values (chunk) before the
    # attention call: placeholders cannot serve it. The message must not repeat
    # the advice the user already followed (run "attncore", build the cache
    # from that config) but name the cause and the cache to use instead.
    DiffLlamaConfig = getattr(transformers, "DiffLlamaConfig", None)
    if DiffLlamaConfig is None:
        pytest.skip("this transformers has no DiffLlama")
    cfg = DiffLlamaConfig(vocab_size=100, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                          num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                          pad_token_id=0)
    torch.manual_seed(0)
    model = transformers.DiffLlamaForCausalLM._from_config(
        cfg, attn_implementation="attncore").eval()
    ids = prompt(L=5)
    generate(model, ids, n=2)   # its default cache runs
    with pytest.raises(TypeError, match=r"chunk\(\) got the values .*computes chunk\(\) on the "
                                        r"cached values itself.*DynamicCache") as err:
        generate(model, ids, at.AttncoreCache(model.config, dtype="int8"), n=2)
    assert "set_attn_implementation" not in str(err.value)   # (what the user did already)


@hf
def test_crop_reorder_and_batch_operations():
    _, new = pair(LlamaForCausalLM, LLAMA)
    ids = prompt(B=3, L=12, seed=5)
    cache = at.AttncoreCache(new.config, dtype="int8")
    assert cache.is_croppable and not cache.is_compileable
    with torch.inference_mode():
        new(ids[:, :9], past_key_values=cache)
        once = new(ids[:, 9:], past_key_values=cache).logits
        cache.crop(-3)
        assert cache.get_seq_length() == 9
        again = new(ids[:, 9:], past_key_values=cache).logits
    torch.testing.assert_close(again, once, rtol=0, atol=0)

    layer = cache.layers[1]
    keys, values = layer.keys, layer.values
    cache.reorder_cache(torch.tensor([2, 0, 0]))
    torch.testing.assert_close(layer.keys, keys[[2, 0, 0]], rtol=0, atol=0)
    torch.testing.assert_close(layer.values, values[[2, 0, 0]], rtol=0, atol=0)
    cache.batch_repeat_interleave(2)
    torch.testing.assert_close(layer.keys, keys[[2, 2, 0, 0, 0, 0]], rtol=0, atol=0)
    cache.batch_select_indices(torch.tensor([1, 2]))
    torch.testing.assert_close(layer.keys, keys[[2, 0]], rtol=0, atol=0)
    with pytest.raises(ValueError, match="beam_idx must select rows of a batch of 2"):
        cache.reorder_cache(torch.tensor([0, 5]))
    with pytest.raises(ValueError, match="tokens_to_remove must be <= 0"):
        cache.crop(2)

    # reset drops the storage: a new batch size may follow
    cache.reset()
    assert cache.get_seq_length() == 0
    got, _ = generate(new, prompt(B=2), cache, n=3)
    assert got.shape == (2, 12) and cache.get_seq_length() == 11


@hf
def test_argument_errors():
    with pytest.raises(ValueError,
                       match=r"dtype must be 'float32', 'bfloat16', 'float16' or 'int8'.*'int4'"):
        at.AttncoreCache(LLAMA, dtype="int4")
    with pytest.raises(ValueError, match="dtype must be"):
        at.AttncoreCache(LLAMA, dtype=torch.float64)
    with pytest.raises(TypeError, match="dtype must be a string or a torch.dtype; got int"):
        at.AttncoreCache(LLAMA, dtype=8)
    with pytest.raises(TypeError,
                       match=r"config must be the model's transformers config \(model.config\)"):
        at.AttncoreCache({"num_hidden_layers": 2}, dtype="int8")
    with pytest.raises(ValueError, match="max_cache_len must be a positive int"):
        at.AttncoreCache(LLAMA, dtype="int8", max_cache_len=0)
    chunked = copy.deepcopy(LLAMA)
    chunked.layer_types = ["full_attention", "chunked_attention"]
    chunked.attention_chunk_size = 4
    with pytest.raises(ValueError, match=r"layer types \['chunked_attention'\].*DynamicCache"):
        at.AttncoreCache(chunked, dtype="int8")
    cache = at.AttncoreCache(LLAMA, dtype="int8", max_cache_len=32)
    wide = torch.zeros(1, 2, 3, 8, dtype=torch.float64)
    with pytest.raises(TypeError, match="key_states has dtype torch.float64"):
        cache.update(wide, wide, 0)
    with torch.inference_mode():
        cache.update(wide.float(), wide.float(), 0)
    assert len(cache.layers) == 2 and cache.layers[0].kv.capacity == 32   # then grows
    # a forward pass with autograd on: the cache keeps no graph, so it refuses
    _, new = pair(LlamaForCausalLM, LLAMA)
    with pytest.raises(TypeError, match=r"key_states requires grad.*inference_mode"):
        new(prompt(), past_key_values=at.AttncoreCache(new.config, dtype="int8"))


@hf
def test_trainable_sinks_with_the_cache_are_refused_not_detached():
    """With an AttncoreCache, sinks (s_aux) that require grad raise as on the
    path without a cache; the cache path used to detach them, so backward()
    ran and left the sinks without a gradient."""
    try:
        from transformers import GptOssConfig, GptOssForCausalLM
    except ImportError:
        pytest.skip("this transformers has no gpt-oss")
    cfg = GptOssConfig(vocab_size=100, hidden_size=32, intermediate_size=32, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2, head_dim=8, num_local_experts=2,
                       num_experts_per_tok=1, sliding_window=4, max_position_embeddings=64, pad_token_id=0,
                       layer_types=["sliding_attention", "full_attention"])
    torch.manual_seed(0)
    model = GptOssForCausalLM._from_config(cfg, attn_implementation="attncore")
    for name, p in model.named_parameters():
        p.requires_grad_("sinks" in name)
    ids = torch.randint(1, 100, (1, 6), generator=torch.Generator().manual_seed(0))
    for kw in ({}, dict(past_key_values=at.AttncoreCache(model.config, dtype="float32"), use_cache=True)):
        with pytest.raises(TypeError, match="s_aux requires grad"):
            model(input_ids=ids, **kw)


# -- attncore.torch.MultiheadAttention(kv_cache=...) --------------------------------------

def mha_pair(batch_first=True, seed=0):
    torch.manual_seed(seed)
    mha = torch.nn.MultiheadAttention(32, 4, batch_first=batch_first).eval()
    return mha, at.MultiheadAttention.from_torch(mha)


def decode(fast, x, cache, batch_first, prefill=5):
    """A prefill of `prefill` positions, then one position at a time."""
    seq = 1 if batch_first else 0
    outs = []
    with torch.inference_mode():
        for a, b in [(0, prefill)] + [(t, t + 1) for t in range(prefill, x.shape[seq])]:
            part = x[:, a:b] if batch_first else x[a:b]
            y, _ = fast(part, part, part, kv_cache=cache, need_weights=False)
            outs.append(y)
    return torch.cat(outs, dim=seq)


@pytest.mark.parametrize("batch_first", [True, False])
def test_mha_kv_cache_decoding_matches_full_recomputation(attends, batch_first):
    mha, fast = mha_pair(batch_first)
    x = torch.randn((2, 9, 32) if batch_first else (9, 2, 32),
                    generator=torch.Generator().manual_seed(1))
    causal = torch.nn.Transformer.generate_square_subsequent_mask(9)
    with torch.inference_mode():
        want, _ = mha(x, x, x, attn_mask=causal, need_weights=False)
    cache = attncore.KVCache(max_len=16, num_heads=4, head_dim=8)
    got = decode(fast, x, cache, batch_first)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert len(cache) == 9 and len(attends) == 5
    assert attends[0]["is_causal"] == "bottom_right" and attends[-1]["q"] == (2, 4, 1, 8)


def test_mha_kv_cache_masks_and_weights():
    mha, fast = mha_pair()
    x = torch.randn(2, 6, 32, generator=torch.Generator().manual_seed(2))
    pad = torch.zeros(2, 6, dtype=torch.bool)
    pad[1, 0] = True   # True = padding, torch's convention
    cache = attncore.KVCache(max_len=8, num_heads=4, head_dim=8)
    with torch.inference_mode():
        fast(x[:, :5], x[:, :5], x[:, :5], key_padding_mask=pad[:, :5], kv_cache=cache)
        y, w = fast(x[:, 5:], x[:, 5:], x[:, 5:], key_padding_mask=pad, kv_cache=cache)
        want, want_w = mha(x[:, 5:], x, x, key_padding_mask=pad)
    torch.testing.assert_close(y, want, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(w, want_w, rtol=1e-5, atol=1e-6)
    assert w.shape == (2, 1, 6) and w[1, 0, 0] == 0


def test_mha_int8_kv_cache_within_the_bound_of_statement_10(kv_traffic):
    """Against full float32 recomputation: each attention output row moves by
    at most beta = 2 eps_s V + eps_v (docs/numerics.md (10), from the queries,
    the appended and the stored keys/values), and the output projection y =
    W_o a + b carries that to |dy_r| <= sum_c |W_o[r, c]| beta[head(c)]; plus
    twice the float32 rounding noise (a float32 cache against the same
    recomputation). Measured: the differences are 9% of the bound."""
    mha, fast = mha_pair(seed=3)
    x = torch.randn(2, 9, 32, generator=torch.Generator().manual_seed(4))
    causal = torch.nn.Transformer.generate_square_subsequent_mask(9)
    with torch.inference_mode():
        want, _ = mha(x, x, x, attn_mask=causal, need_weights=False)
    want = want.double().numpy()
    exact = decode(fast, x, attncore.KVCache(max_len=16, num_heads=4, head_dim=8), True)
    noise = 2 * np.abs(exact.double().numpy() - want).max()
    assert noise < 1e-5
    kv_traffic.clear()   # keyed by id(): the float32 cache's id may be reused
    cache = attncore.KVCache(max_len=16, num_heads=4, head_dim=8, dtype="int8")
    got = decode(fast, x, cache, True)
    rec = kv_traffic[id(cache)]
    beta = statement_10_row_bounds(np.concatenate(rec["q"], 2), np.concatenate(rec["k"], 2),
                                   np.concatenate(rec["v"], 2), cache.keys, cache.values, 8 ** -0.5)
    beta = np.repeat(np.swapaxes(beta, 1, 2), 8, axis=2)                  # (B, L, H * Dh)
    bound = beta @ np.abs(mha.out_proj.weight.detach().double().numpy()).T + noise
    diff = np.abs(got.double().numpy() - want)
    assert (diff <= bound).all(), f"max diff/bound {np.max(diff / bound):.3f}"
    assert diff.max() > 10 * noise   # int8 did move the outputs


def test_mha_kv_cache_failed_call_leaves_the_cache_as_it_was():
    """A step whose mask has the wrong shape (found after the step's keys were
    appended) takes them back out; the retried step equals a clean run."""
    mha, fast = mha_pair()
    x = torch.randn(1, 5, 32)
    with torch.inference_mode():
        clean = attncore.KVCache(8, 4, 8)
        fast(x[:, :4], x[:, :4], x[:, :4], kv_cache=clean, need_weights=False)
        want, _ = fast(x[:, 4:], x[:, 4:], x[:, 4:], kv_cache=clean, need_weights=False)
        cache = attncore.KVCache(8, 4, 8)
        fast(x[:, :4], x[:, :4], x[:, :4], kv_cache=cache, need_weights=False)
        with pytest.raises(ValueError, match="key_padding_mask"):
            fast(x[:, 4:], x[:, 4:], x[:, 4:], kv_cache=cache, need_weights=False,
                 key_padding_mask=torch.zeros(1, 4, dtype=torch.bool))   # needs (1, 5)
        assert len(cache) == 4
        got, _ = fast(x[:, 4:], x[:, 4:], x[:, 4:], kv_cache=cache, need_weights=False)
    assert len(cache) == 5
    assert torch.equal(got, want)


def test_mha_kv_cache_errors():
    mha, fast = mha_pair()
    x = torch.randn(1, 3, 32)
    with torch.inference_mode():
        with pytest.raises(TypeError, match="kv_cache must be an attncore.KVCache; got dict"):
            fast(x, x, x, kv_cache={})
        with pytest.raises(ValueError,
                           match="kv_cache holds 2 heads of size 8; this layer needs 4 heads of size 8"):
            fast(x, x, x, kv_cache=attncore.KVCache(8, 2, 8))
        with pytest.raises(TypeError, match="kv_cache takes float32 .*query is torch.float64"):
            fast.double()(x.double(), x.double(), x.double(), kv_cache=attncore.KVCache(8, 4, 8))
    # autograd needed: torch's forward would run, and it has no cache
    with pytest.raises(TypeError,
                       match="kv_cache needs attncore's forward, which cannot run here: autograd"):
        fast.float()(x, x, x, kv_cache=attncore.KVCache(8, 4, 8))


@hf
def test_batch_operations_on_an_emptied_cache_are_no_ops():
    """A layer cropped to no position: reorder / select / repeat do nothing, as
    for transformers' DynamicLayer (select_batch refuses an empty KVCache)."""
    cache = at.AttncoreCache(LLAMA, dtype="float32")
    k = torch.randn(2, 2, 3, 8)
    cache.update(k, k, 0)
    cache.crop(-3)
    assert cache.get_seq_length() == 0
    cache.reorder_cache(torch.tensor([1, 0]))
    cache.batch_select_indices(torch.tensor([0]))
    cache.batch_repeat_interleave(2)
    cache.update(torch.randn(3, 2, 2, 8), torch.randn(3, 2, 2, 8), 0)   # any batch again
    assert cache.get_seq_length() == 2


@hf
@pytest.mark.parametrize("storage", ["float32", "bfloat16", "int8"])
def test_autocast_with_a_rotary_model(storage):
    """Under torch.autocast a rotary model's keys leave the rotation in float32
    and its values in bfloat16 (torch's SDPA casts both): the cache takes each
    dtype (it refused the pair), the attention's result comes back in the
    autocast dtype, and generate gives DynamicCache's tokens."""
    torch.manual_seed(0)
    model = LlamaForCausalLM(LLAMA).eval()
    model.set_attn_implementation("attncore")
    ids = torch.tensor([[5, 6, 7, 8]])
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        want = model.generate(ids, max_new_tokens=6, **GREEDY)
        cache = at.AttncoreCache(model.config, dtype=storage)
        got = model.generate(ids, max_new_tokens=6, past_key_values=cache, **GREEDY)
        layer = cache.layers[0]
        assert (layer.dtype, layer.value_dtype) == (torch.float32, torch.bfloat16)
        assert layer.keys.dtype == torch.float32 and layer.values.dtype == torch.bfloat16
    if storage == "float32":
        assert torch.equal(got, want)
    else:
        assert got.shape == want.shape
