# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""The one crossing into C: arrays -> C descriptors, GIL released, status
codes -> Python exceptions.

Everything here trusts its caller (attncore._engine / attncore._linalg),
which has already checked shapes, dtypes and ranges, and made sure every
array has a unit-stride last dimension and item-aligned strides.

Arrays are read through the buffer protocol (no NumPy headers needed). A
tensor of the attention layout is aligned to the right of the full shape
``batch + core`` (core = its last three dims); missing or size-1 leading dims
broadcast with stride 0. Its layout for C is: the address of element 0, the
element offset of every flattened batch index, and element strides of the
core dims.
"""
from cpython.buffer cimport PyBUF_RECORDS_RO, PyObject_GetBuffer, PyBuffer_Release
from libc.stdint cimport int64_t, uint32_t, uint64_t, uintptr_t
from libc.stdlib cimport free, malloc

from attncore._capi cimport *

ISA_NAMES = ("portable", "avx2", "avx512")
DEF MAX_DIMS = 32

attn_runtime_init()


cdef int _raise(attn_status st, str op) except -1:
    if st == ATTN_ENOMEM:
        raise MemoryError(f"{op}: out of memory for scratch buffers")
    if st == ATTN_EINVAL:
        raise ValueError(f"{op}: internal error, the C kernel rejected its arguments")
    if st == ATTN_EISA:
        raise RuntimeError(f"{op}: the requested kernel level is not available on this CPU/build")
    raise RuntimeError(f"{op}: unknown status {<int>st}")


cdef class _Tensor:
    """One array's buffer and its layout against a full shape batch + core."""
    cdef Py_buffer view
    cdef bint held
    cdef int64_t *boff
    cdef int64_t core[3]

    def __cinit__(self):
        self.held = False
        self.boff = NULL

    cdef int load(self, object arr, tuple batch, int64_t nb, int core_ndim) except -1:
        cdef int nbatch = len(batch), k, kk, offset_dims
        cdef int64_t strides[MAX_DIMS]
        cdef int64_t sizes[MAX_DIMS]
        cdef int64_t item, t, rem, off
        PyObject_GetBuffer(arr, &self.view, PyBUF_RECORDS_RO)
        self.held = True
        item = self.view.itemsize
        if nbatch + core_ndim > MAX_DIMS:
            raise ValueError("too many dimensions")
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

    cdef void *ptr(self):
        return self.view.buf

    def __dealloc__(self):
        if self.held:
            PyBuffer_Release(&self.view)
        free(self.boff)


cdef void *_data(object arr, Py_buffer *view) except? NULL:
    """Address of element 0 of an optional array (NULL for None)."""
    if arr is None:
        return NULL
    PyObject_GetBuffer(arr, view, PyBUF_RECORDS_RO)
    return view.buf


def sdpa(bint f64, int isa, int num_threads, tuple dims, tuple batch,
         q, k, v, out, int mask_kind, mask, int causal, int64_t causal_offset,
         valid_lens, bint vl_per_row, double scale, uint32_t drop_threshold, uint64_t drop_seed,
         double drop_scale, weights, lse, int score_kind=0, w_score=None):
    """Run attn_sdpa_f32/f64. q/k/v/out are (..., H, L, D)-layout arrays whose
    leading dims broadcast to `batch`; mask broadcasts to batch + (Hq, Lq, Lk);
    valid_lens is a contiguous int64 array of shape batch (+ (Lq,) if
    vl_per_row); weights/lse are contiguous outputs or None."""
    cdef attn_sdpa_desc d
    cdef int64_t nb = dims[0]
    cdef _Tensor tq = _Tensor(), tk = _Tensor(), tv = _Tensor(), to = _Tensor(), tm = _Tensor()
    cdef Py_buffer vw, vlse, vvl, vws
    cdef int64_t *vl_boff = NULL
    cdef int64_t t
    cdef attn_status st
    cdef bint have_w = weights is not None, have_lse = lse is not None
    cdef bint have_vl = valid_lens is not None, have_ws = w_score is not None

    d.B, d.Hq, d.Hkv, d.Lq, d.Lk, d.D, d.Dv = dims
    tq.load(q, batch, nb, 3)
    tk.load(k, batch, nb, 3)
    tv.load(v, batch, nb, 3)
    to.load(out, batch, nb, 3)
    d.q, d.q_boff, d.q_sh, d.q_sl = tq.ptr(), tq.boff, tq.core[0], tq.core[1]
    d.k, d.k_boff, d.k_sh, d.k_sl = tk.ptr(), tk.boff, tk.core[0], tk.core[1]
    d.v, d.v_boff, d.v_sh, d.v_sl = tv.ptr(), tv.boff, tv.core[0], tv.core[1]
    d.out, d.o_boff, d.o_sh, d.o_sl = to.ptr(), to.boff, to.core[0], to.core[1]

    d.mask_kind = mask_kind
    d.mask, d.m_boff = NULL, NULL
    d.m_sh = d.m_si = d.m_sj = 0
    if mask_kind != 0:
        tm.load(mask, batch, nb, 3)
        d.mask, d.m_boff = tm.ptr(), tm.boff
        d.m_sh, d.m_si, d.m_sj = tm.core[0], tm.core[1], tm.core[2]

    d.causal = causal
    d.causal_offset = causal_offset
    d.scale = scale
    d.drop_threshold = drop_threshold
    d.drop_seed = drop_seed
    d.drop_scale = drop_scale
    d.score_kind = score_kind
    d.valid_lens, d.vl_boff, d.vl_si = NULL, NULL, 0
    try:
        d.weights = _data(weights, &vw)
        d.lse = _data(lse, &vlse)
        d.w_score = _data(w_score, &vws)
        if have_vl:
            d.valid_lens = <const int64_t *>_data(valid_lens, &vvl)
            vl_boff = <int64_t *>malloc(max(nb, 1) * sizeof(int64_t))
            if vl_boff == NULL:
                raise MemoryError()
            for t in range(nb):
                vl_boff[t] = t * (d.Lq if vl_per_row else 1)
            d.vl_boff = vl_boff
            d.vl_si = 1 if vl_per_row else 0
        with nogil:
            if f64:
                st = attn_sdpa_f64(&d, isa, num_threads)
            else:
                st = attn_sdpa_f32(&d, isa, num_threads)
    finally:
        free(vl_boff)
        if have_w:
            PyBuffer_Release(&vw)
        if have_lse:
            PyBuffer_Release(&vlse)
        if have_ws:
            PyBuffer_Release(&vws)
        if have_vl:
            PyBuffer_Release(&vvl)
    if st != ATTN_OK:
        _raise(st, "scaled_dot_product_attention")


def linear(bint f64, int isa, int num_threads, x, w, bias, y):
    """Run attn_linear_f32/f64: y = x w^T + bias. x: (M, K) with unit stride
    along K; w: (N, K) any strides; bias: (N,) contiguous or None; y: (M, N)
    with unit stride along N."""
    cdef attn_linear_desc d
    cdef Py_buffer vx, vw, vb, vy
    cdef bint have_b = bias is not None
    cdef attn_status st
    PyObject_GetBuffer(x, &vx, PyBUF_RECORDS_RO)
    try:
        PyObject_GetBuffer(w, &vw, PyBUF_RECORDS_RO)
        try:
            PyObject_GetBuffer(y, &vy, PyBUF_RECORDS_RO)
            try:
                d.M, d.K = vx.shape[0], vx.shape[1]
                d.N = vw.shape[0]
                d.x = vx.buf
                d.x_sm = vx.strides[0] // vx.itemsize
                d.w = vw.buf
                d.w_sn = vw.strides[0] // vw.itemsize
                d.w_sk = vw.strides[1] // vw.itemsize
                d.y = vy.buf
                d.y_sm = vy.strides[0] // vy.itemsize
                d.bias = _data(bias, &vb)
                try:
                    with nogil:
                        if f64:
                            st = attn_linear_f64(&d, isa, num_threads)
                        else:
                            st = attn_linear_f32(&d, isa, num_threads)
                finally:
                    if have_b:
                        PyBuffer_Release(&vb)
            finally:
                PyBuffer_Release(&vy)
        finally:
            PyBuffer_Release(&vw)
    finally:
        PyBuffer_Release(&vx)
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


def single_threaded_after_fork():
    """True in a child forked after this process ran a multi-threaded region."""
    return bool(attn_single_threaded_after_fork())
