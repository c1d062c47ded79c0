# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""The one crossing into C: validated layouts -> C descriptors, GIL released,
status codes -> Python exceptions.

Everything here trusts its caller (attncore.functional), which has already
checked shapes, dtypes and ranges and holds references to every array whose
address it passes. A tensor arrives as ``(address, batch_offsets, *strides)``:
the address of element 0, an int64 array with the element offset of each
flattened batch index, and element strides of the remaining dimensions.
"""
from libc.stdint cimport int64_t, uint32_t, uint64_t, uintptr_t

from attncore._capi cimport *

ISA_NAMES = ("portable", "avx2", "avx512")


cdef const int64_t *_offsets(const int64_t[::1] arr):
    return &arr[0] if arr.shape[0] > 0 else NULL


cdef int _raise(attn_status st, str op) except -1:
    if st == ATTN_ENOMEM:
        raise MemoryError(f"{op}: out of memory for scratch buffers")
    if st == ATTN_EINVAL:
        raise ValueError(f"{op}: internal error, the C kernel rejected its arguments")
    if st == ATTN_EISA:
        raise RuntimeError(f"{op}: the requested kernel level is not available on this CPU/build")
    raise RuntimeError(f"{op}: unknown status {<int>st}")


def sdpa(bint f64, int isa, int num_threads, tuple dims,
         tuple q, tuple k, tuple v, tuple out,
         int mask_kind, tuple mask, int causal, int64_t causal_offset, tuple valid_lens,
         double scale, uint32_t drop_threshold, uint64_t drop_seed, double drop_scale,
         uintptr_t weights, uintptr_t lse, int score_kind=0, uintptr_t w_score=0):
    """Run attn_sdpa_f32/f64 on the given layouts (see the module docstring)."""
    cdef attn_sdpa_desc d
    cdef const int64_t[::1] q_boff = q[1]
    cdef const int64_t[::1] k_boff = k[1]
    cdef const int64_t[::1] v_boff = v[1]
    cdef const int64_t[::1] o_boff = out[1]
    cdef const int64_t[::1] m_boff
    cdef const int64_t[::1] vl_boff
    cdef attn_status st

    d.B, d.Hq, d.Hkv, d.Lq, d.Lk, d.D, d.Dv = dims
    d.score_kind = score_kind
    d.w_score = <const void *>w_score
    d.q = <const void *><uintptr_t>q[0]
    d.q_boff = _offsets(q_boff)
    d.q_sh, d.q_sl = q[2], q[3]
    d.k = <const void *><uintptr_t>k[0]
    d.k_boff = _offsets(k_boff)
    d.k_sh, d.k_sl = k[2], k[3]
    d.v = <const void *><uintptr_t>v[0]
    d.v_boff = _offsets(v_boff)
    d.v_sh, d.v_sl = v[2], v[3]
    d.out = <void *><uintptr_t>out[0]
    d.o_boff = _offsets(o_boff)
    d.o_sh, d.o_sl = out[2], out[3]

    d.mask_kind = mask_kind
    d.mask = NULL
    d.m_boff = NULL
    d.m_sh = d.m_si = d.m_sj = 0
    if mask_kind != 0:
        m_boff = mask[1]
        d.mask = <const void *><uintptr_t>mask[0]
        d.m_boff = _offsets(m_boff)
        d.m_sh, d.m_si, d.m_sj = mask[2], mask[3], mask[4]

    d.causal = causal
    d.causal_offset = causal_offset
    d.valid_lens = NULL
    d.vl_boff = NULL
    d.vl_si = 0
    if valid_lens is not None:
        vl_boff = valid_lens[1]
        d.valid_lens = <const int64_t *><uintptr_t>valid_lens[0]
        d.vl_boff = _offsets(vl_boff)
        d.vl_si = valid_lens[2]

    d.scale = scale
    d.drop_threshold = drop_threshold
    d.drop_seed = drop_seed
    d.drop_scale = drop_scale
    d.weights = <void *>weights
    d.lse = <void *>lse

    with nogil:
        if f64:
            st = attn_sdpa_f64(&d, isa, num_threads)
        else:
            st = attn_sdpa_f32(&d, isa, num_threads)
    if st != ATTN_OK:
        _raise(st, "scaled_dot_product_attention")


def linear(bint f64, int isa, int num_threads, int64_t M, int64_t N, int64_t K,
           uintptr_t x, int64_t x_sm, uintptr_t w, int64_t w_sn, int64_t w_sk,
           uintptr_t bias, uintptr_t y, int64_t y_sm):
    """Run attn_linear_f32/f64: y = x w^T + bias (element strides)."""
    cdef attn_linear_desc d
    cdef attn_status st
    d.M, d.N, d.K = M, N, K
    d.x = <const void *>x
    d.x_sm = x_sm
    d.w = <const void *>w
    d.w_sn, d.w_sk = w_sn, w_sk
    d.bias = <const void *>bias
    d.y = <void *>y
    d.y_sm = y_sm
    with nogil:
        if f64:
            st = attn_linear_f64(&d, isa, num_threads)
        else:
            st = attn_linear_f32(&d, isa, num_threads)
    if st != ATTN_OK:
        _raise(st, "linear")


def dropout_bits(uint64_t seed, uint64_t counter):
    """The 24-bit draw that decides whether weight `counter` is dropped."""
    return attn_dropout_bits(seed, counter)


def vexp2_f32(int isa, const float[::1] x, float[::1] y):
    """y = exp2(x) with one ISA's vector exp2 (test hook)."""
    cdef attn_status st
    with nogil:
        st = attn_vexp2_f32(isa, &x[0], &y[0], x.shape[0])
    if st != ATTN_OK:
        _raise(st, "vexp2")


def vtanh_f32(int isa, const float[::1] x, float[::1] y):
    """y = tanh(x) with one ISA's vector tanh (test hook)."""
    cdef attn_status st
    with nogil:
        st = attn_vtanh_f32(isa, &x[0], &y[0], x.shape[0])
    if st != ATTN_OK:
        _raise(st, "vtanh")


def isa_built(int isa):
    return bool(attn_isa_built(isa))


def isa_supported(int isa):
    return bool(attn_isa_supported(isa))


def isa_best():
    return attn_isa_best()


def cpu_features():
    return attn_cpu_features().decode().split(",") if attn_cpu_features()[0] else []


def compiler():
    return attn_compiler().decode()


def default_threads():
    """OpenMP's current maximum for the calling thread (1 without OpenMP)."""
    return attn_default_threads()


def openmp_enabled():
    return bool(attn_openmp_enabled())
