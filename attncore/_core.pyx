# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""The one crossing into C: arrays -> C descriptors, GIL released, status
codes -> Python exceptions that name the calling function.

Everything here trusts its caller (attncore._engine / attncore._linalg),
which has already checked shapes, dtypes and ranges, and passed every array
through attncore._layout.for_kernel (native byte order, aligned, item-size
strides, unit stride in the last dimension).

Arrays are read through the buffer protocol (no NumPy headers needed). A
tensor of the attention layout is aligned to the right of the full shape
``batch + core`` (core = its last three dims); missing or size-1 leading dims
broadcast with stride 0. Its layout for C is: the address of element 0, the
element offset of every flattened batch index, and element strides of the
core dims.

Long calls made from Python's main thread can be stopped with Ctrl-C: a
guard (csrc/driver/interrupt.c) lets the kernels see SIGINT; the call then
raises KeyboardInterrupt (or, if the Python-level handler does not raise,
runs again from the start so the result is complete).
"""
from cpython.buffer cimport PyBUF_RECORDS, PyBUF_RECORDS_RO, PyObject_GetBuffer, PyBuffer_Release
from cpython.exc cimport PyErr_CheckSignals
from cpython.pythread cimport PyThread_get_thread_ident
from libc.stdint cimport int64_t, uint8_t, uint32_t, uint64_t
from libc.stdlib cimport free, malloc

import math
import os as _os
import sys
import threading

import numpy as np
from attncore import _layout

from attncore._capi cimport *

DEF MAX_DIMS = 32

# C enums, for the Python layer (one vocabulary end to end)
SCORE_DOT = ATTN_SCORE_DOT
SCORE_ADDITIVE = ATTN_SCORE_ADDITIVE
MASK_NONE = ATTN_MASK_NONE
MASK_BOOL = ATTN_MASK_BOOL
MASK_ADD = ATTN_MASK_ADD
ISA_NAMES = tuple(attn_isa_name(i).decode() for i in range(ATTN_ISA_COUNT))
PATH_NAMES = {ATTN_PATH_PANEL: "panel", ATTN_PATH_ROWS: "rows"}
ADDITIVE_FORMS = {ATTN_ADDITIVE_NONE: None, ATTN_ADDITIVE_PRODUCT: "product",
                  ATTN_ADDITIVE_TANH: "tanh"}
MAX_NDIM = MAX_DIMS
# input/output element types of the SDPA entry points (float32 compute for
# the 16-bit ones, whose arrays cross as their bit patterns: uint16)
IO_F32, IO_F64, IO_BF16, IO_F16 = 0, 1, 2, 3
# float32 queries over a KV cache stored as bfloat16, float16, or int8 with scales
IO_F32_KVBF16, IO_F32_KVF16, IO_F32_KVI8 = 4, 5, 6
cdef int _IO_F64 = IO_F64

# Calls estimated above this many multiply-adds install the Ctrl-C guard
# (two sigaction calls, about a microsecond): about 0.1 ms of work.
DEF INTERRUPTIBLE_WORK = 1 << 24

cdef unsigned long _main_thread = threading.main_thread().ident

attn_runtime_init()


def _before_fork():
    # torch runs its intra-op work on the same GNU OpenMP runtime (both load
    # libgomp.so.1), and a pool torch started does not survive fork either:
    # a child attncore would run multi-threaded waited forever (a concurrency
    # fuzzer's hang). Whether torch started it cannot be asked (its thread
    # count now may be 1 after a 2-thread region), so with torch loaded the
    # child computes single-threaded, as after attncore's own regions.
    if "torch" in sys.modules:
        attn_note_shared_pool()


def _after_fork_in_child():
    # the forking thread is the child's main thread (the Ctrl-C guard runs
    # on the main thread only; a child forked from another thread kept the
    # parent's main thread's id and never installed it)
    global _main_thread
    _main_thread = PyThread_get_thread_ident()


if hasattr(_os, "register_at_fork"):   # (POSIX only, as in kvcache.py)
    _os.register_at_fork(before=_before_fork, after_in_child=_after_fork_in_child)


cdef int _raise(attn_status st, str op, object detail) except -1:
    if st == ATTN_ENOMEM:
        raise MemoryError(f"{op}: out of memory for scratch buffers ({detail})")
    if st == ATTN_EINVAL:
        raise ValueError(f"{op}: the C kernel rejected the problem ({detail}): sizes beyond "
                         f"its limits, or an internal error")
    if st == ATTN_EISA:
        raise RuntimeError(f"{op}: the requested kernel level is not available on this CPU/build")
    raise RuntimeError(f"{op}: unknown status {<int>st}")


cdef class _Buf:
    """One optional array's buffer; released only if it was acquired."""
    cdef Py_buffer view
    cdef bint held

    cdef void *get(self, object arr) except? NULL:
        """Address of element 0 (NULL for None)."""
        if arr is None:
            return NULL
        PyObject_GetBuffer(arr, &self.view, PyBUF_RECORDS_RO)
        self.held = True
        return self.view.buf

    def __dealloc__(self):
        if self.held:
            PyBuffer_Release(&self.view)


cdef class _Tensor:
    """One array's buffer and its layout against a full shape batch + core."""
    cdef Py_buffer view
    cdef bint held
    cdef int64_t *boff
    cdef int64_t core[3]

    cdef int load(self, object arr, tuple batch, int64_t nb, int core_ndim) except -1:
        cdef int nbatch = len(batch), k, kk, offset_dims
        cdef int64_t strides[MAX_DIMS]
        cdef int64_t sizes[MAX_DIMS]
        cdef int64_t item, t, rem, off
        if nbatch + core_ndim > MAX_DIMS:
            raise ValueError(f"more than {MAX_DIMS} dimensions")
        PyObject_GetBuffer(arr, &self.view, PyBUF_RECORDS_RO)
        self.held = True
        if self.view.ndim > nbatch + core_ndim:
            raise ValueError("array has more dimensions than the problem")
        item = self.view.itemsize
        # strides of the full shape, right-aligned, 0 where broadcast
        offset_dims = nbatch + core_ndim - self.view.ndim
        for k in range(nbatch + core_ndim):
            kk = k - offset_dims
            if kk < 0 or self.view.shape[kk] == 1:
                strides[k] = 0
            else:
                strides[k] = self.view.strides[kk] // item
        for k in range(core_ndim):
            self.core[k] = strides[nbatch + k]
        self.boff = <int64_t *>malloc(max(nb, 1) * sizeof(int64_t))
        if self.boff == NULL:
            raise MemoryError()
        for k in range(nbatch):
            sizes[k] = batch[k]
        for t in range(nb):
            rem = t
            off = 0
            for k in range(nbatch - 1, -1, -1):
                off += (rem % sizes[k]) * strides[k]
                rem //= sizes[k]
            self.boff[t] = off
        return 0

    def __dealloc__(self):
        if self.held:
            PyBuffer_Release(&self.view)
        free(self.boff)


cdef int _rerun_guarded(bint guard, int *reruns) except -1:
    """After a call that stopped for a SIGINT (ATTN_EINTR): run the Python
    handler (an exception it raises propagates). It did not raise, so the
    call runs again; returns whether under the guard: yes after the first
    such interrupt (a second Ctrl-C that raises, asyncio's, still stops the
    rerun), no after the second, when the call runs to its end and a SIGINT
    is handled as it returns (signals coming faster than the call restarted
    it forever)."""
    PyErr_CheckSignals()
    reruns[0] += 1
    return guard and reruns[0] < 2


cdef bint _guard_wanted(double work):
    return work >= INTERRUPTIBLE_WORK and PyThread_get_thread_ident() == _main_thread


cdef class _SdpaCall:
    """A filled attn_sdpa_desc and the buffers it points into."""
    cdef attn_sdpa_desc d
    cdef _Tensor tq, tk, tv, to, tm, tvl, tks, tvs, tal
    cdef _Buf bw, blse, bws, bsk, bhi
    cdef object varlen      # (per-batch offsets, lengths) arrays kept alive for C
    cdef int io
    cdef int isa, threads

    def __cinit__(self):
        self.tq, self.tk, self.tv, self.to, self.tm = _Tensor(), _Tensor(), _Tensor(), _Tensor(), _Tensor()
        self.tvl, self.tks, self.tvs, self.tal = _Tensor(), _Tensor(), _Tensor(), _Tensor()
        self.bw, self.blse, self.bws, self.bsk, self.bhi = _Buf(), _Buf(), _Buf(), _Buf(), _Buf()
        self.varlen = None

    cdef int setup(self, int io, int isa, int num_threads, tuple dims, tuple batch,
                   q, k, v, out, int mask_kind, mask, int causal, int64_t causal_offset,
                   valid_lens, double scale, uint32_t drop_threshold,
                   uint64_t drop_seed, double drop_scale, weights, lse, int score_kind,
                   w_score, k_scale, v_scale, dict variants) except -1:
        cdef attn_sdpa_desc *d = &self.d
        cdef int64_t nb = dims[0]
        self.io, self.isa, self.threads = io, isa, num_threads
        d.B, d.Hq, d.Hkv, d.Lq, d.Lk, d.D, d.Dv = dims
        self.tq.load(q, batch, nb, 3)
        self.tk.load(k, batch, nb, 3)
        self.tv.load(v, batch, nb, 3)
        self.to.load(out, batch, nb, 3)
        d.q, d.q_boff, d.q_sh, d.q_sl = self.tq.view.buf, self.tq.boff, self.tq.core[0], self.tq.core[1]
        d.k, d.k_boff, d.k_sh, d.k_sl = self.tk.view.buf, self.tk.boff, self.tk.core[0], self.tk.core[1]
        d.v, d.v_boff, d.v_sh, d.v_sl = self.tv.view.buf, self.tv.boff, self.tv.core[0], self.tv.core[1]
        d.out, d.o_boff, d.o_sh, d.o_sl = self.to.view.buf, self.to.boff, self.to.core[0], self.to.core[1]
        d.mask_kind = mask_kind
        d.mask, d.m_boff = NULL, NULL
        d.m_sh = d.m_si = d.m_sj = 0
        if mask_kind != ATTN_MASK_NONE:
            self.tm.load(mask, batch, nb, 3)
            d.mask, d.m_boff = self.tm.view.buf, self.tm.boff
            d.m_sh, d.m_si, d.m_sj = self.tm.core[0], self.tm.core[1], self.tm.core[2]
        d.causal = causal
        d.causal_offset = causal_offset
        d.scale = scale
        d.drop_threshold = drop_threshold
        d.drop_seed = drop_seed
        d.drop_scale = drop_scale
        d.score_kind = score_kind
        d.weights = self.bw.get(weights)
        d.lse = self.blse.get(lse)
        d.w_score = self.bws.get(w_score)
        d.valid_lens, d.vl_boff, d.vl_sh, d.vl_si = NULL, NULL, 0, 0
        d.cancellable, d.cancel_epoch = 0, 0
        d.k_scale, d.ks_boff, d.ks_sh, d.v_scale, d.vs_boff, d.vs_sh = NULL, NULL, 0, NULL, NULL, 0
        _set_variants(d, variants, batch, nb, self.tal, self.bsk, self.bhi)
        if variants and variants.get("varlen") is not None:
            self.varlen = _set_varlen(d, variants["varlen"], self.tq, self.tk, self.tv, self.to)
        if k_scale is not None:
            # (..., Hkv, Lk) float32, contiguous along the keys
            self.tks.load(k_scale, batch, nb, 2)
            self.tvs.load(v_scale, batch, nb, 2)
            d.k_scale, d.ks_boff, d.ks_sh = self.tks.view.buf, self.tks.boff, self.tks.core[0]
            d.v_scale, d.vs_boff, d.vs_sh = self.tvs.view.buf, self.tvs.boff, self.tvs.core[0]
        if valid_lens is not None:
            self.tvl.load(valid_lens, batch, nb, 2)
            d.valid_lens = <const int64_t *>self.tvl.view.buf
            d.vl_boff, d.vl_sh, d.vl_si = self.tvl.boff, self.tvl.core[0], self.tvl.core[1]
        return 0

    cdef int run(self, str op) except -1:
        cdef attn_status st = _run_sdpa(&self.d, self.io, self.isa, self.threads)
        if st != ATTN_OK:
            _raise(st, op, _dims_text(self.d))
        return 0


cdef int _set_variants(attn_sdpa_desc *d, dict v, tuple batch, int64_t nb, _Tensor tal,
                       _Buf bsk, _Buf bhi) except -1:
    """The score variants (attn.h): window, ALiBi slopes (batch + (Hq,),
    broadcast), softcap, sinks ((Hq,) contiguous), bottom-right positions."""
    d.weighting, d.sigmoid_bias = ATTN_WEIGHTS_SOFTMAX, 0.0
    d.hard_k, d.hard_sample, d.hard_softmax, d.hard_seed, d.hard_indices = 1, 0, 0, 0, NULL
    d.offset_bottom_right = 0
    d.window_left = d.window_right = -1
    d.alibi, d.al_boff, d.al_sh = NULL, NULL, 0
    d.softcap = 0
    d.sinks, d.sk_sh = NULL, 0
    d.seq_lq = d.seq_lk = NULL
    if not v:
        return 0
    if v.get("sigmoid") is not None:
        d.weighting, d.sigmoid_bias = ATTN_WEIGHTS_SIGMOID, v["sigmoid"]
    if v.get("hard") is not None:   # (k, sample, softmax, seed, int64 indices array or None)
        d.weighting = ATTN_WEIGHTS_HARD
        d.hard_k, d.hard_sample, d.hard_softmax, d.hard_seed = v["hard"][:4]
        d.hard_indices = <int64_t *>bhi.get(v["hard"][4])
    d.offset_bottom_right = v.get("bottom_right", False)
    d.window_left, d.window_right = v.get("window", (-1, -1))
    d.softcap = v.get("softcap", 0.0)
    if v.get("alibi") is not None:
        tal.load(v["alibi"], batch, nb, 1)
        d.alibi, d.al_boff, d.al_sh = tal.view.buf, tal.boff, tal.core[0]
    if v.get("sinks") is not None:
        d.sinks, d.sk_sh = bsk.get(v["sinks"]), 1
    return 0


cdef object _set_varlen(attn_sdpa_desc *d, tuple cu, _Tensor tq, _Tensor tk, _Tensor tv,
                        _Tensor to):
    """Packed sequences: batch b's rows start at cu_q[b] / cu_k[b] of the
    (H, total, D) arrays; its lengths are the differences. Rewrites the batch
    offsets (the arrays were loaded with one batch element per sequence and
    stride 0) and returns the arrays C points into."""
    cdef int64_t b
    cu_q, cu_k = cu
    lq = np.ascontiguousarray(np.diff(cu_q), dtype=np.int64)
    lk = np.ascontiguousarray(np.diff(cu_k), dtype=np.int64)
    cdef const int64_t[::1] cq = cu_q, ck = cu_k
    cdef const int64_t[::1] vlq = lq, vlk = lk
    for b in range(d.B):
        tq.boff[b] = cq[b] * d.q_sl
        to.boff[b] = cq[b] * d.o_sl
        tk.boff[b] = ck[b] * d.k_sl
        tv.boff[b] = ck[b] * d.v_sl
    d.seq_lq, d.seq_lk = &vlq[0], &vlk[0]
    return (lq, lk)


cdef str _dims_text(attn_sdpa_desc d):
    return (f"B={d.B} Hq={d.Hq} Hkv={d.Hkv} Lq={d.Lq} Lk={d.Lk} D={d.D} Dv={d.Dv}")


def sdpa(str op, int io, int isa, int num_threads, tuple dims, tuple batch,
         q, k, v, out, int mask_kind, mask, int causal, int64_t causal_offset,
         valid_lens, double scale, uint32_t drop_threshold, uint64_t drop_seed,
         double drop_scale, weights, lse, int score_kind=ATTN_SCORE_DOT, w_score=None,
         bint plan_only=False, k_scale=None, v_scale=None, dict variants=None):
    """Run attn_sdpa_<io> for the public function `op` (named in errors); io
    is IO_F32, IO_F64, IO_BF16 or IO_F16 (q/k/v/out of that type, 16-bit ones
    as uint16 or float16 arrays; masks, weights and lse in the compute type).
    q/k/v/out are (..., H, L, D)-layout arrays whose leading dims broadcast
    to `batch`; mask broadcasts to batch + (Hq, Lq, Lk); valid_lens (int64)
    broadcasts to batch + (Hq, Lq); weights/lse are contiguous outputs or
    None. With plan_only, nothing runs
    and the plan (path, units, chunks, ...) is returned as a dict."""
    cdef _SdpaCall call = _SdpaCall()
    cdef attn_plan_info info
    cdef attn_status st
    call.setup(io, isa, num_threads, dims, batch, q, k, v, out, mask_kind, mask, causal,
               causal_offset, valid_lens, scale, drop_threshold, drop_seed,
               drop_scale, weights, lse, score_kind, w_score, k_scale, v_scale, variants)
    if not plan_only:
        call.run(op)
        return None
    if io == IO_F64:
        st = attn_sdpa_plan_f64(&call.d, isa, num_threads, &info)
    elif io == IO_BF16:
        st = attn_sdpa_plan_bf16(&call.d, isa, num_threads, &info)
    elif io == IO_F16:
        st = attn_sdpa_plan_f16(&call.d, isa, num_threads, &info)
    elif io == IO_F32_KVBF16:
        st = attn_sdpa_plan_f32_kvbf16(&call.d, isa, num_threads, &info)
    elif io == IO_F32_KVF16:
        st = attn_sdpa_plan_f32_kvf16(&call.d, isa, num_threads, &info)
    elif io == IO_F32_KVI8:
        st = attn_sdpa_plan_f32_kvi8(&call.d, isa, num_threads, &info)
    else:
        st = attn_sdpa_plan_f32(&call.d, isa, num_threads, &info)
    if st != ATTN_OK:
        _raise(st, op, _dims_text(call.d))
    return dict(path=PATH_NAMES[info.path], additive_form=ADDITIVE_FORMS[info.additive_form],
                rows_per_unit=info.rows_per_unit, units=info.units, chunks=info.chunks,
                chunk_len=info.chunk_len, key_block=info.key_block, key_blocks=info.key_blocks,
                threads=info.threads, native_pairs=bool(info.native_pairs), amx_tiles=bool(info.amx_tiles),
                widened_chunks=bool(info.widened_chunks), value_tiles=bool(info.value_tiles),
                int8_integer=bool(info.int8_integer), group_panels=info.group_panels,
                half_panels=bool(info.half_panels))


cdef object _ndarray = np.ndarray
cdef object _empty = np.empty   # the fast paths' buffers' allocator (set_output_allocator)
cdef object _F32 = np.dtype(np.float32)
cdef object _F64 = np.dtype(np.float64)
cdef object _F16 = np.dtype(np.float16)
cdef object _I16 = np.dtype(np.int16)
cdef object _U16 = np.dtype(np.uint16)
cdef object _I64 = np.dtype(np.int64)
cdef object _BOOL = np.dtype(np.bool_)
DEF FAST_MAX_BATCH = 64


ctypedef struct _View:
    void *buf
    int64_t shape[4]
    int64_t strides[4]      # in elements


cdef bint _view_from_buffer(_View *out, Py_buffer *view, int itemsize, char fmt):
    """A 4-D native buffer of items `fmt` (struct format: f, d, e, or H for
    bfloat16's bit patterns) the kernels read as it is (aligned, item-size
    strides, unit stride in the last dimension)."""
    cdef int k
    if view.ndim != 4 or view.itemsize != itemsize or view.format == NULL:
        return False
    if not (view.format[0] == fmt and view.format[1] == 0):
        return False
    if (<size_t>view.buf) % itemsize:
        return False
    out.buf = view.buf
    for k in range(4):
        if view.strides[k] % itemsize:
            return False
        out.shape[k] = view.shape[k]
        out.strides[k] = view.strides[k] // itemsize
    return out.shape[3] <= 1 or out.strides[3] == 1


cdef bint _mask_fits(_View *m, int ndim, int64_t B, int64_t Hq, int64_t Lq, int64_t Lk):
    """Right-align a bool mask of `ndim` <= 4 dims to (B, Hq, Lq, Lk): every
    dim equal or 1 (stride 0, broadcast). Rewrites m as a 4-D view."""
    cdef int64_t full[4]
    cdef int64_t shape[4]
    cdef int64_t strides[4]
    cdef int k, kk
    full[0], full[1], full[2], full[3] = B, Hq, Lq, Lk
    for k in range(4):
        kk = k - (4 - ndim)
        shape[k] = m.shape[kk] if kk >= 0 else 1
        strides[k] = m.strides[kk] if kk >= 0 and shape[k] != 1 else 0
        if shape[k] != full[k] and shape[k] != 1:
            return False
    for k in range(4):
        m.shape[k] = full[k]
        m.strides[k] = strides[k]
    return True


cdef bint _extent(_View *x, int itemsize, size_t *lo, size_t *hi):
    """The bytes [lo, hi) a 4-D view can touch (its bounds, as
    np.may_share_memory reads them); False for an empty view."""
    cdef int k
    cdef int64_t below = 0, above = 0
    for k in range(4):
        if x.shape[k] == 0:
            return False
        if x.strides[k] < 0:
            below += (x.shape[k] - 1) * x.strides[k]
        else:
            above += (x.shape[k] - 1) * x.strides[k]
    lo[0] = <size_t>x.buf + <size_t>(below * itemsize)
    hi[0] = <size_t>x.buf + <size_t>((above + 1) * itemsize)
    return True


cdef bint _may_overlap(_View *a, int a_item, _View *b, int b_item):
    """Whether two views' bounds overlap (out= against an input: the fast
    path leaves such calls to the general one, which writes a copy)."""
    cdef size_t alo, ahi, blo, bhi
    if b == NULL or not _extent(a, a_item, &alo, &ahi) or not _extent(b, b_item, &blo, &bhi):
        return False
    return alo < bhi and blo < ahi


cdef bint _disjoint(int n, const int64_t *shape, const int64_t *strides, int64_t item):
    """Whether no two elements of an n-D layout (n <= 64; strides and item
    in one unit) share memory: the dims by increasing |stride|, each stride
    at least the span of the ones before. An out= the threads may write at
    once."""
    cdef int64_t st[64]
    cdef int64_t ext[64]
    cdef int m = 0, i, j
    cdef int64_t a, reach = item
    for i in range(n):
        if shape[i] > 1:
            a = strides[i] if strides[i] >= 0 else -strides[i]
            j = m
            while j > 0 and st[j - 1] > a:   # insertion sort by |stride|
                st[j], ext[j] = st[j - 1], ext[j - 1]
                j -= 1
            st[j], ext[j] = a, (shape[i] - 1) * a
            m += 1
    for i in range(m):
        if st[i] < reach:
            return False
        reach += ext[i]
    return True


def set_output_allocator(empty):
    """Swap the allocator (np.empty; empty(shape, dtype)) of the buffers
    this module hands the kernels -- the fast paths' outputs and the rows'
    lengths read off bool masks -- and return the previous one: the
    guard-page tests place them next to unreadable pages (tests/_guard.py)."""
    global _empty
    previous, _empty = _empty, empty
    return previous


cdef bint _no_self_overlap(_View *x):
    return _disjoint(4, x.shape, x.strides, 1)


# ---- bool masks that are key lengths --------------------------------------
#
# A bool mask whose every row is a prefix (True for keys j < n, False from n
# on: a key-padding mask, with or without a causal limit, as Hugging Face
# builds them) says no more than the row's length n. The kernels take such
# masks as valid lengths: blocks past a row's length are skipped and the
# others need no mask pass (a padded batch ran 1.2x slower as a mask than
# as lengths). Both the fast path and the general path convert, by the same
# rule, so a call gets the same bits on either; a mask's layout cannot
# change whether it converts (only its values and the problem's size do).

# the smallest problem (B Hq Lq Lk scores) whose bool mask is scanned: the
# scan reads each stored mask byte once, the kernel at least D FMAs a score
DEF MASK_LENGTHS_MIN_SCORES = 4096


cdef bint mask_lengths_pay(int64_t nscores) noexcept nogil:
    return nscores >= MASK_LENGTHS_MIN_SCORES


cdef bint _prefix_lengths(const uint8_t *base, int64_t n0, int64_t s0, int64_t n1, int64_t s1,
                          int64_t n2, int64_t s2, int64_t Lk, int64_t sj,
                          int64_t *lens) noexcept nogil:
    """lens[(i0 n1 + i1) n2 + i2] = the length of row base + i0 s0 + i1 s1 +
    i2 s2 (Lk bytes sj apart, 0 or 1) when every row is a prefix of ones;
    False at the first row that is not."""
    cdef int64_t i0, i1, i2, j, n
    cdef const uint8_t *row
    for i0 in range(n0):
        for i1 in range(n1):
            for i2 in range(n2):
                row = base + i0 * s0 + i1 * s1 + i2 * s2
                j = 0
                while j < Lk and row[j * sj] != 0:
                    j += 1
                n = j
                while j < Lk:
                    if row[j * sj] != 0:
                        return False
                    j += 1
                lens[(i0 * n1 + i1) * n2 + i2] = n
    return True


def bool_mask_lengths(mask, tuple scores_shape):
    """The general path's side of the conversion above: for a bool mask (as
    uint8, 0/1) that broadcasts to scores_shape (..., Hq, Lq, Lk), the
    rows' lengths as an int64 array that broadcasts to scores_shape[:-1]
    (size 1 where the mask is broadcast), if every row is a prefix and the
    problem is large enough to scan; else None."""
    Lk = scores_shape[len(scores_shape) - 1]   # (no wraparound in this module)
    if not mask_lengths_pay(math.prod(scores_shape)) or Lk == 0:
        return None
    m = np.broadcast_to(mask, scores_shape)
    # one row per stored row: index 0 along the broadcast (stride-0) axes
    stored = m[tuple(slice(0, 1) if st == 0 else slice(None) for st in m.strides[:-1])]
    rows = np.ascontiguousarray(stored).reshape(-1, Lk)
    lens = _empty((rows.shape[0],), _I64)
    return lens.reshape(stored.shape[:-1]) if _rows_prefix_lengths(rows, lens) else None


cdef bint _rows_prefix_lengths(const uint8_t[:, ::1] rows, int64_t[::1] lens):
    """_prefix_lengths over the C-contiguous rows (n, Lk), n >= 1, Lk >= 1."""
    cdef bint ok
    with nogil:
        ok = _prefix_lengths(&rows[0, 0], rows.shape[0], rows.shape[1], 1, 0, 1, 0, rows.shape[1], 1,
                             &lens[0])
    return ok


def overlaps_itself(a):
    """Whether two elements of the NumPy array `a` may share memory (a
    writable stride-0 or as_strided view)."""
    cdef int64_t shape[64]
    cdef int64_t strides[64]
    cdef int i
    for i in range(a.ndim):
        shape[i], strides[i] = a.shape[i], a.strides[i]
    return not _disjoint(a.ndim, shape, strides, a.itemsize)


cdef int64_t _SPREAD_MIN_ITEMS = _layout.SPREAD_MIN_ITEMS
cdef int64_t _SPREAD_MIN_REUSE = _layout.SPREAD_MIN_REUSE


cdef inline bint _spread(_View *x, int64_t L, int64_t D, int64_t reuse):
    """attncore._layout.is_spread for a 4-D view (strides in items)."""
    cdef int64_t row = x.strides[2] if x.strides[2] >= 0 else -x.strides[2]
    return reuse >= _SPREAD_MIN_REUSE and row >= 2 * (D if D > 1 else 1) and L * row >= _SPREAD_MIN_ITEMS


cdef object _sdpa_views(str op, _View *q, _View *k, _View *v, _View *m, int mask_kind, int io,
                        object out_dtype, is_causal, scale, enable_gqa, int threads, int isa,
                        _View *ks=NULL, _View *vs=NULL, _View *o_given=NULL, object out_given=None):
    """The fast path's shared part: check the sizes and options of the common
    call, allocate the output (NumPy) unless o_given is the caller's (checked
    by it: dtype, alignment, no overlap with an input; its shape is checked
    here), fill the descriptor and run. m is a 4-D mask view (already
    aligned to the scores) of kind mask_kind (ATTN_MASK_BOOL, or
    ATTN_MASK_ADD in the compute dtype) or NULL; ks/vs the (B, Hkv, Lk)
    float32 scales of an int8 KV cache (io IO_F32_KVI8) or NULL. Returns the
    output (out_given when o_given), or None if the call is not the common
    case."""
    cdef int64_t b, B = q.shape[0], Hq = q.shape[1], Lq = q.shape[2], D = q.shape[3]
    cdef int64_t Hkv = k.shape[1], Lk = k.shape[2], Dv = v.shape[3]
    cdef int causal
    cdef int64_t causal_offset
    cdef double sc
    cdef _View o
    cdef Py_buffer bo
    if (k.shape[0] != B or v.shape[0] != B or k.shape[3] != D or v.shape[1] != Hkv
            or v.shape[2] != Lk):
        return None
    if B == 0 or B > FAST_MAX_BATCH or Hq == 0 or Lq == 0 or D == 0 or Hkv == 0 or Hq % Hkv:
        return None
    if enable_gqa is not True and (Hq != Hkv or enable_gqa is not False):
        return None   # (any other flag value: the general path checks it)
    if ks == NULL and (_spread(k, Lk, D, (Hq // Hkv) * Lq) or _spread(v, Lk, Dv, (Hq // Hkv) * Lq)):
        return None   # the general path reads a dense copy (attncore._layout.is_spread)
    if is_causal is False or is_causal is None:
        causal, causal_offset = 0, 0
    elif is_causal is True or (type(is_causal) is str and is_causal == "top_left"):
        causal, causal_offset = 1, 0
    elif type(is_causal) is str and is_causal == "bottom_right":
        causal, causal_offset = 1, Lk - Lq
    else:
        return None
    if scale is None:
        sc = 1.0 / math.sqrt(D)
    elif type(scale) is float or (type(scale) is int and -(1 << 62) <= scale <= (1 << 62)):
        sc = scale   # (larger ints take the general path, whose check names them)
    else:
        return None
    if o_given != NULL:
        if (o_given.shape[0] != B or o_given.shape[1] != Hq or o_given.shape[2] != Lq
                or o_given.shape[3] != Dv):
            return None
        return _sdpa_run_views(op, q, k, v, m, mask_kind, io, o_given, sc, causal, causal_offset,
                               threads, isa, ks, vs, out_given)
    out = _empty((B, Hq, Lq, Dv), out_dtype)
    PyObject_GetBuffer(out, &bo, PyBUF_RECORDS)   # (writable: the kernel writes it)
    try:
        o.buf = bo.buf
        for b in range(4):
            o.strides[b] = bo.strides[b] // bo.itemsize
        return _sdpa_run_views(op, q, k, v, m, mask_kind, io, &o, sc, causal, causal_offset, threads,
                               isa, ks, vs, out)
    finally:
        PyBuffer_Release(&bo)


cdef object _sdpa_run_views(str op, _View *q, _View *k, _View *v, _View *m, int mask_kind, int io,
                            _View *o, double sc, int causal, int64_t causal_offset, int threads,
                            int isa, _View *ks, _View *vs, object out):
    """_sdpa_views' second half: the descriptor filled from the checked
    views and run, writing o; returns out (o's owner)."""
    cdef attn_sdpa_desc d
    cdef int64_t boff[7][FAST_MAX_BATCH]
    cdef int64_t b, B = q.shape[0], Hq = q.shape[1], Lq = q.shape[2], D = q.shape[3]
    cdef int64_t Hkv = k.shape[1], Lk = k.shape[2], Dv = v.shape[3]
    cdef attn_status st
    for b in range(B):
        boff[0][b] = b * q.strides[0]
        boff[1][b] = b * k.strides[0]
        boff[2][b] = b * v.strides[0]
        boff[3][b] = b * o.strides[0]
    d.B, d.Hq, d.Hkv, d.Lq, d.Lk, d.D, d.Dv = B, Hq, Hkv, Lq, Lk, D, Dv
    d.causal, d.causal_offset = causal, causal_offset
    d.score_kind, d.w_score = ATTN_SCORE_DOT, NULL
    d.q, d.q_boff, d.q_sh, d.q_sl = q.buf, boff[0], q.strides[1], q.strides[2]
    d.k, d.k_boff, d.k_sh, d.k_sl = k.buf, boff[1], k.strides[1], k.strides[2]
    d.v, d.v_boff, d.v_sh, d.v_sl = v.buf, boff[2], v.strides[1], v.strides[2]
    d.out, d.o_boff, d.o_sh, d.o_sl = o.buf, boff[3], o.strides[1], o.strides[2]
    d.mask_kind, d.mask, d.m_boff, d.m_sh, d.m_si, d.m_sj = ATTN_MASK_NONE, NULL, NULL, 0, 0, 0
    if m != NULL:
        for b in range(B):
            boff[4][b] = b * m.strides[0]
        d.mask_kind, d.mask, d.m_boff = mask_kind, m.buf, boff[4]
        d.m_sh, d.m_si, d.m_sj = m.strides[1], m.strides[2], m.strides[3]
    d.valid_lens, d.vl_boff, d.vl_sh, d.vl_si = NULL, NULL, 0, 0
    lens_owner = None
    if m != NULL and mask_kind == ATTN_MASK_BOOL and mask_lengths_pay(B * Hq * Lq * Lk) and Lk > 0:
        lens_owner = _fast_mask_lengths(&d, m, B, Hq, Lq, Lk, boff[4])
    d.scale = sc
    d.drop_threshold, d.drop_seed, d.drop_scale = 0, 0, 1.0
    d.weights, d.lse = NULL, NULL
    d.k_scale, d.ks_boff, d.ks_sh, d.v_scale, d.vs_boff, d.vs_sh = NULL, NULL, 0, NULL, NULL, 0
    if ks != NULL:
        for b in range(B):
            boff[5][b] = b * ks.strides[0]
            boff[6][b] = b * vs.strides[0]
        d.k_scale, d.ks_boff, d.ks_sh = ks.buf, boff[5], ks.strides[1]
        d.v_scale, d.vs_boff, d.vs_sh = vs.buf, boff[6], vs.strides[1]
    d.offset_bottom_right, d.window_left, d.window_right, d.softcap = 0, -1, -1, 0
    d.weighting, d.sigmoid_bias = ATTN_WEIGHTS_SOFTMAX, 0.0
    d.hard_k, d.hard_sample, d.hard_softmax, d.hard_seed, d.hard_indices = 1, 0, 0, 0, NULL
    d.alibi, d.al_boff, d.al_sh, d.sinks, d.sk_sh, d.seq_lq, d.seq_lk = NULL, NULL, 0, NULL, 0, NULL, NULL
    d.cancellable, d.cancel_epoch = 0, 0
    st = _run_sdpa(&d, io, isa, threads)
    if st != ATTN_OK:
        _raise(st, op, _dims_text(d))
    return out


cdef object _fast_mask_lengths(attn_sdpa_desc *d, _View *m, int64_t B, int64_t Hq, int64_t Lq,
                               int64_t Lk, int64_t *vl_boff):
    """The fast path's side of the conversion (bool_mask_lengths): when every
    row of the 4-D bool mask view m (B, Hq, Lq, Lk; stride 0 where
    broadcast) is a prefix, d takes the lengths (in the returned array,
    which the caller keeps alive for the run; vl_boff: its batch offsets)
    in place of the mask; else d is left as it is and None returned."""
    cdef int64_t nb = 1 if m.strides[0] == 0 else B
    cdef int64_t nh = 1 if m.strides[1] == 0 else Hq
    cdef int64_t nq = 1 if m.strides[2] == 0 else Lq
    cdef int64_t b
    cdef bint ok
    lens = _empty((nb * nh * nq,), _I64)
    cdef int64_t[::1] out = lens
    with nogil:
        ok = _prefix_lengths(<const uint8_t *>m.buf, nb, m.strides[0], nh, m.strides[1], nq,
                             m.strides[2], Lk, m.strides[3], &out[0])
    if not ok:
        return None
    for b in range(B):
        vl_boff[b] = 0 if nb == 1 else b * nh * nq
    d.mask_kind, d.mask, d.m_boff, d.m_sh, d.m_si, d.m_sj = ATTN_MASK_NONE, NULL, NULL, 0, 0, 0
    d.valid_lens, d.vl_boff = <const int64_t *>&out[0], vl_boff
    d.vl_sh = 0 if nh == 1 else nq
    d.vl_si = 0 if nq == 1 else 1
    return lens


cdef void _view_of_cache(_View *out, _Buf buf, object arr, int64_t length) except *:
    """A view of a KVCache buffer (C-contiguous, aligned to its item: the
    cache allocates it) -- (B, H, capacity, D) keys/values or (B, H,
    capacity) scales -- cut to its first `length` positions; strides in
    items. `buf` holds the buffer until it is released."""
    cdef int kk
    out.buf = buf.get(arr)
    # (the cache keeps length <= capacity; checked here too, as a kernel
    # would read past the buffer otherwise)
    if buf.view.ndim < 3 or not 0 <= length <= buf.view.shape[2]:
        raise ValueError(f"KVCache: {length} cached positions, but its buffer holds "
                         f"{buf.view.shape[2] if buf.view.ndim >= 3 else 0}")
    for kk in range(buf.view.ndim):
        out.shape[kk] = buf.view.shape[kk]
        out.strides[kk] = buf.view.strides[kk] // buf.view.itemsize
    out.shape[2] = length


def kv_attend_fast(str op, q, k, v, ks, vs, int64_t length, int io, is_causal, scale,
                   num_threads, int isa):
    """KVCache.attend's common call: a NumPy query (B, Hq, Lq, D) in the
    cache's compute dtype against the first `length` positions of the
    cache's own buffers k, v (B, Hkv, capacity, D) -- float32 (io IO_F32),
    float64 (IO_F64) or a compact storage (IO_F32_KV*; ks, vs: the int8
    cache's scales (B, Hkv, capacity), else None) -- with no mask, dropout
    or extra outputs. The cache made its buffers; the query is checked
    here. Returns the output, or None when the call is not that common case
    (the caller takes the general path)."""
    cdef _Buf bq = _Buf(), bk = _Buf(), bv = _Buf(), bks = _Buf(), bvs = _Buf()
    cdef _View vq, vk, vv, vks, vvs
    cdef bint f64 = io == _IO_F64
    out_dtype = _F64 if f64 else _F32
    if type(q) is not _ndarray or q.dtype is not out_dtype:
        return None
    threads = _fast_threads(num_threads)
    if threads < 0:
        return None
    bq.get(q)
    if not _view_from_buffer(&vq, &bq.view, 8 if f64 else 4, b'd' if f64 else b'f'):
        return None
    _view_of_cache(&vk, bk, k, length)
    _view_of_cache(&vv, bv, v, length)
    if ks is None:
        return _sdpa_views(op, &vq, &vk, &vv, NULL, ATTN_MASK_NONE, io, out_dtype, is_causal, scale,
                           True, threads, isa)
    _view_of_cache(&vks, bks, ks, length)
    _view_of_cache(&vvs, bvs, vs, length)
    return _sdpa_views(op, &vq, &vk, &vv, NULL, ATTN_MASK_NONE, io, out_dtype, is_causal, scale,
                       True, threads, isa, &vks, &vvs)


# The most threads a call starts: more than the CPUs never pays, and a huge
# request made the OpenMP runtime exit the process when it could not create
# them (an address-space limit); results do not depend on the count.
MAX_THREADS = max(64, _os.cpu_count() or 1)
cdef int _MAX_THREADS = MAX_THREADS


cdef int _fast_threads(num_threads):
    """num_threads of the common call, or -1 if it needs the general checks."""
    if num_threads is None:
        return min(attn_default_threads(), _MAX_THREADS)
    if type(num_threads) is int and 0 < num_threads <= _MAX_THREADS:
        return num_threads
    return -1


def sdpa_fast(str op, q, k, v, is_causal, scale, enable_gqa, num_threads, int isa, mask=None,
              out=None):
    """The common call -- NumPy arrays (B, H, L, D) of one dtype, readable in
    place, with no dropout, valid_lens or extra outputs -- without the
    general path's Python-level layers: checks are read off the buffer
    protocol and the descriptor is filled here. `mask` may be None, a bool
    array or a float one in the compute dtype (the query's; float32 for
    float16/bfloat16) that broadcasts to (B, Hq, Lq, Lk). `out` may be None
    or a writable float32/float64/float16 array of the output's shape and
    dtype that shares no memory with an input (it is returned). Returns the
    output, or None when the call is not that common case (the caller then
    takes the general path, which checks and explains everything)."""
    cdef Py_buffer bq, bk, bv, bm, bo
    cdef bint hq = False, hk = False, hv = False, hm = False, ho = False
    cdef _View vq, vk, vv, vm, vo
    cdef _View *pm = NULL
    cdef _View *po = NULL
    cdef int kk
    cdef int itemsize, threads, io, mask_kind = ATTN_MASK_NONE, mask_item = 0
    cdef char fmt
    if type(q) is not _ndarray or type(k) is not _ndarray or type(v) is not _ndarray:
        return None
    dt = q.dtype
    out_dtype = dt
    if k.dtype is not dt or v.dtype is not dt:
        return None
    if dt is _F32:
        itemsize, io, fmt = 4, IO_F32, b'f'
    elif dt is _F64:
        itemsize, io, fmt = 8, IO_F64, b'd'
    elif dt is _F16:
        itemsize, io, fmt = 2, IO_F16, b'e'
    elif dt.itemsize == 2 and dt.kind == "V" and dt.name == "bfloat16" and dt.isnative:
        # ml_dtypes.bfloat16: NumPy exports no buffer for it, so the kernels
        # read its bit patterns (uint16 views) and write the output's
        if out is not None:
            return None
        itemsize, io, fmt, out_dtype = 2, IO_BF16, b'H', _I16
        q, k, v = q.view(_U16), k.view(_U16), v.view(_U16)
    else:
        return None
    if mask is not None:
        if type(mask) is not _ndarray:
            return None
        mdt = mask.dtype
        if mdt is _BOOL:
            mask_kind, mask_item = ATTN_MASK_BOOL, 1
        elif mdt is (_F32 if itemsize == 2 else dt):
            mask_kind, mask_item = ATTN_MASK_ADD, mdt.itemsize
        else:
            return None
    if out is not None and (type(out) is not _ndarray or out.dtype is not dt
                            or not out.flags.writeable):
        return None
    threads = _fast_threads(num_threads)
    if threads < 0:
        return None
    try:
        PyObject_GetBuffer(q, &bq, PyBUF_RECORDS_RO)
        hq = True
        PyObject_GetBuffer(k, &bk, PyBUF_RECORDS_RO)
        hk = True
        PyObject_GetBuffer(v, &bv, PyBUF_RECORDS_RO)
        hv = True
        if not (_view_from_buffer(&vq, &bq, itemsize, fmt) and _view_from_buffer(&vk, &bk, itemsize, fmt)
                and _view_from_buffer(&vv, &bv, itemsize, fmt)):
            return None
        if mask is not None:
            PyObject_GetBuffer(mask, &bm, PyBUF_RECORDS_RO)
            hm = True
            if bm.ndim > 4 or bm.itemsize != mask_item or (<size_t>bm.buf) % mask_item:
                return None
            vm.buf = bm.buf
            for kk in range(bm.ndim):
                if bm.strides[kk] % mask_item:
                    return None
                vm.shape[kk] = bm.shape[kk]
                vm.strides[kk] = bm.strides[kk] // mask_item
            if not _mask_fits(&vm, bm.ndim, vq.shape[0], vq.shape[1], vq.shape[2], vk.shape[2]):
                return None
            pm = &vm
        if out is not None:
            PyObject_GetBuffer(out, &bo, PyBUF_RECORDS)
            ho = True
            if not _view_from_buffer(&vo, &bo, itemsize, fmt) or not _out_fits(&vo, itemsize, &vq, &vk,
                                                                              &vv, pm, mask_item):
                return None
            po = &vo
        res = _sdpa_views(op, &vq, &vk, &vv, pm, mask_kind, io, out_dtype, is_causal, scale,
                          enable_gqa, threads, isa, NULL, NULL, po, out)
        return res if res is None or out_dtype is dt else res.view(dt)
    finally:
        if ho:
            PyBuffer_Release(&bo)
        if hm:
            PyBuffer_Release(&bm)
        if hq:
            PyBuffer_Release(&bq)
        if hk:
            PyBuffer_Release(&bk)
        if hv:
            PyBuffer_Release(&bv)


cdef bint _out_fits(_View *o, int itemsize, _View *q, _View *k, _View *v, _View *m, int mask_item):
    """Whether the kernel may write an out= view directly: no two of its
    elements share memory and it shares none with an input (else the
    general path writes a copy)."""
    return (_no_self_overlap(o) and not _may_overlap(o, itemsize, q, itemsize)
            and not _may_overlap(o, itemsize, k, itemsize) and not _may_overlap(o, itemsize, v, itemsize)
            and not _may_overlap(o, itemsize, m, mask_item))


cdef object _torch_strided = None   # torch.strided, fetched by the first sdpa_fast_torch call


cdef bint _view_from_tensor(_View *out, t, int itemsize) except -1:
    """A CPU tensor's memory as a view (torch strides are in elements and
    never negative; data_ptr includes the storage offset). False for a sparse
    tensor (no strides; the general path names it), and for a lazily negated
    or conjugated view (x.conj().imag): its memory holds -x."""
    cdef int k
    if t.layout is not _torch_strided or t.is_neg() or t.is_conj() or t.data_ptr() == 0:
        return False   # (data_ptr 0: a tensor with no elements, for the general path)
    shape, strides = t.shape, t.stride()
    if len(shape) != 4:
        return False
    out.buf = <void *><size_t>t.data_ptr()
    if (<size_t>out.buf) % itemsize:
        return False
    for k in range(4):
        out.shape[k] = shape[k]
        out.strides[k] = strides[k]
    return out.shape[3] <= 1 or out.strides[3] == 1


def sdpa_fast_torch(str op, q, k, v, is_causal, scale, enable_gqa, num_threads, int isa,
                    tuple torch_dtypes, mask=None, out=None):
    """sdpa_fast for CPU tensors (float32, float64, bfloat16, float16) that
    need no gradient: reads their pointers and strides (no conversion) and
    returns a NumPy output -- float32/float64/float16, or int16 bit patterns
    for bfloat16 -- that the caller wraps with torch.from_numpy; or None.
    torch_dtypes: (float32, float64, bfloat16, float16, bool) of torch; mask:
    None or a CPU bool tensor, or a float one in the compute dtype (the
    query's float32/float64; float32, or the query's dtype, for 16-bit
    queries), that broadcasts to (B, Hq, Lq, Lk). out: None, or a CPU
    tensor of the query's dtype and the output's shape that shares no
    memory with an input (attncore.torch's out= views); it is written and
    returned as it is."""
    cdef _View vq, vk, vv, vm, vo
    cdef _View *pm = NULL
    cdef _View *po = NULL
    cdef int itemsize, threads, io, kk, mask_kind = ATTN_MASK_NONE, mask_item = 0
    global _torch_strided
    if type(k) is not type(q) or type(v) is not type(q) or (mask is not None and type(mask) is not type(q)) \
            or (out is not None and type(out) is not type(q)):
        return None   # mixed arguments (arrays, lists, tensor subclasses): the general path
    if _torch_strided is None:
        import torch
        _torch_strided = torch.strided
    dt = q.dtype
    if dt is torch_dtypes[0]:
        itemsize, io, out_dtype = 4, IO_F32, _F32
    elif dt is torch_dtypes[1]:
        itemsize, io, out_dtype = 8, IO_F64, _F64
    elif dt is torch_dtypes[2]:
        itemsize, io, out_dtype = 2, IO_BF16, _I16
    elif dt is torch_dtypes[3]:
        itemsize, io, out_dtype = 2, IO_F16, _F16
    else:
        return None
    if k.dtype is not dt or v.dtype is not dt:
        return None
    if not (q.is_cpu and k.is_cpu and v.is_cpu) or q.requires_grad or k.requires_grad \
            or v.requires_grad:
        return None
    threads = _fast_threads(num_threads)
    if threads < 0:
        return None
    if not (_view_from_tensor(&vq, q, itemsize) and _view_from_tensor(&vk, k, itemsize)
            and _view_from_tensor(&vv, v, itemsize)):
        return None
    if mask is not None:
        if not mask.is_cpu or mask.layout is not _torch_strided or mask.is_neg() or mask.requires_grad:
            return None   # (a mask that needs a gradient: the general path refuses it)
        if itemsize == 2 and mask.dtype is dt:
            # a 16-bit float mask of the query's dtype: to float32 (exact), as
            # the general path does (a float32 mask is taken as it is)
            mask = mask.float()
        mdt = mask.dtype
        if mdt is torch_dtypes[4]:
            mask_kind, mask_item = ATTN_MASK_BOOL, 1
        elif mdt is (torch_dtypes[0] if itemsize == 2 else dt):
            mask_kind, mask_item = ATTN_MASK_ADD, (8 if mdt is torch_dtypes[1] else 4)
        else:
            return None
        shape, strides = mask.shape, mask.stride()
        if len(shape) > 4:
            return None
        vm.buf = <void *><size_t>mask.data_ptr()
        if vm.buf == NULL or (<size_t>vm.buf) % mask_item:
            return None
        for kk in range(len(shape)):
            vm.shape[kk] = shape[kk]
            vm.strides[kk] = strides[kk]
        if not _mask_fits(&vm, len(shape), vq.shape[0], vq.shape[1], vq.shape[2], vk.shape[2]):
            return None
        pm = &vm
    if out is not None:
        if out.dtype is not dt or not out.is_cpu or out.requires_grad:
            return None
        if not _view_from_tensor(&vo, out, itemsize) or not _out_fits(&vo, itemsize, &vq, &vk, &vv, pm,
                                                                     mask_item):
            return None
        po = &vo
    return _sdpa_views(op, &vq, &vk, &vv, pm, mask_kind, io, out_dtype, is_causal, scale, enable_gqa,
                       threads, isa, NULL, NULL, po, out)


cdef attn_status _run_sdpa(attn_sdpa_desc *d, int io, int isa, int threads) except? ATTN_EINTR:
    """Run a filled descriptor: under the Ctrl-C guard when it is long and
    on the main thread (an interrupted call raises, or re-runs when the
    handler does not raise)."""
    cdef attn_status st
    cdef bint guard = _guard_wanted(<double>d.B * d.Hq * d.Lq * d.Lk * (d.D + d.Dv + 1))
    cdef bint guarded
    cdef int reruns = 0
    while True:
        guarded = attn_sigint_guard_begin(&d.cancel_epoch) if guard else False
        d.cancellable = guarded
        with nogil:
            if io == 1:
                st = attn_sdpa_f64(d, isa, threads)
            elif io == 2:
                st = attn_sdpa_bf16(d, isa, threads)
            elif io == 3:
                st = attn_sdpa_f16(d, isa, threads)
            elif io == 4:
                st = attn_sdpa_f32_kvbf16(d, isa, threads)
            elif io == 5:
                st = attn_sdpa_f32_kvf16(d, isa, threads)
            elif io == 6:
                st = attn_sdpa_f32_kvi8(d, isa, threads)
            else:
                st = attn_sdpa_f32(d, isa, threads)
        if guarded:
            attn_sigint_guard_end()
        if st != ATTN_EINTR:
            return st
        guard = _rerun_guarded(guard, &reruns)


LINEAR_PATH_NAMES = ("none", "rows", "packed", "packed-strided")   # by ATTN_LINEAR_PATH_*


def linear(str op, bint f64, int isa, int num_threads, x, w, bias, y, bint plan_only=False):
    """Run attn_linear_f32/f64 for `op`: y = x w^T + bias. x: (M, K) with
    unit stride along K; w: (N, K) any strides; bias: (N,) contiguous or
    None; y: (M, N) with unit stride along N. With plan_only, nothing runs:
    the plan (path, units, threads) is returned as a dict."""
    cdef attn_linear_desc d
    cdef attn_linear_plan_info info
    cdef _Buf bx = _Buf(), bw = _Buf(), bb = _Buf(), by = _Buf()
    cdef attn_status st
    cdef bint guard, guarded
    cdef int reruns
    d.x = bx.get(x)
    d.w = bw.get(w)
    d.y = by.get(y)
    d.bias = bb.get(bias)
    d.M, d.K = bx.view.shape[0], bx.view.shape[1]
    d.N = bw.view.shape[0]
    d.x_sm = bx.view.strides[0] // bx.view.itemsize
    d.w_sn = bw.view.strides[0] // bw.view.itemsize
    d.w_sk = bw.view.strides[1] // bw.view.itemsize
    d.y_sm = by.view.strides[0] // by.view.itemsize
    d.cancel_epoch = 0
    if plan_only:
        st = attn_linear_plan_f64(&d, isa, num_threads, &info) if f64 else \
            attn_linear_plan_f32(&d, isa, num_threads, &info)
        if st != ATTN_OK:
            _raise(st, op, f"linear M={d.M} N={d.N} K={d.K}")
        return dict(path=LINEAR_PATH_NAMES[info.path], units=info.units, threads=info.threads)
    guard = _guard_wanted(<double>d.M * d.N * d.K)
    reruns = 0
    while True:
        guarded = attn_sigint_guard_begin(&d.cancel_epoch) if guard else False
        d.cancellable = guarded
        with nogil:
            if f64:
                st = attn_linear_f64(&d, isa, num_threads)
            else:
                st = attn_linear_f32(&d, isa, num_threads)
        if guarded:
            attn_sigint_guard_end()
        if st != ATTN_EINTR:
            break
        guard = _rerun_guarded(guard, &reruns)
    if st != ATTN_OK:
        _raise(st, op, f"linear M={d.M} N={d.N} K={d.K}")


def simulate_sigint():
    """Test hook: count a SIGINT without delivering one (running cancellable
    kernels stop; nothing is raised)."""
    attn_sigint_simulate()


def dropout_bits(uint64_t seed, uint64_t counter):
    """The 24-bit draw that decides whether weight `counter` is dropped."""
    return attn_dropout_bits(seed, counter)


def vexp2_f32(int isa, const float[::1] x, float[::1] y):
    """y = exp2(x) with one ISA's vector exp2 (test hook)."""
    cdef attn_status st
    if y.shape[0] < x.shape[0]:
        raise ValueError("vexp2: y is shorter than x")
    if x.shape[0] == 0:
        return
    with nogil:
        st = attn_vexp2_f32(isa, &x[0], &y[0], x.shape[0])
    if st != ATTN_OK:
        _raise(st, "vexp2", "")


def vtanh_f32(int isa, const float[::1] x, float[::1] y):
    """y = tanh(x) with one ISA's vector tanh (test hook)."""
    cdef attn_status st
    if y.shape[0] < x.shape[0]:
        raise ValueError("vtanh: y is shorter than x")
    if x.shape[0] == 0:
        return
    with nogil:
        st = attn_vtanh_f32(isa, &x[0], &y[0], x.shape[0])
    if st != ATTN_OK:
        _raise(st, "vtanh", "")


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
    """OpenMP's current maximum for the calling thread (1 without OpenMP),
    cut to MAX_THREADS as an explicit num_threads is (OMP_NUM_THREADS=1000
    made the OpenMP runtime end the process under an address-space limit)."""
    return min(attn_default_threads(), _MAX_THREADS)


def openmp_enabled():
    return bool(attn_openmp_enabled())


def single_threaded_after_fork():
    """True in a child forked after this process ran a multi-threaded region."""
    return bool(attn_single_threaded_after_fork())


# -- further families, each in its own include file (one owner per file) --------
include "_softmax.pxi"
include "_vision.pxi"
