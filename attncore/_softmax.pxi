# Included by _core.pyx: the Cython side of csrc/driver/softmax.c
# (attncore.softmax, masked_softmax, kernel_regression).
#
# The callers (attncore/softmax.py) have validated every argument and passed
# every array through attncore._layout.for_kernel (native byte order,
# aligned, item-size strides); masks and valid lengths come broadcast to the
# problem's shape as zero-stride views, never expanded.

cdef extern from "attncore/softmax.h" nogil:
    enum:
        ATTN_SOFTMAX_MAX_DIMS
        ATTN_SOFTMAX_PATH_ROWS
        ATTN_SOFTMAX_PATH_PANEL
        ATTN_KR_GAUSSIAN
        ATTN_KR_LAPLACE
        ATTN_KR_EPANECHNIKOV

    ctypedef struct attn_softmax_desc:
        int ndim
        int64_t shape[32]
        int64_t L
        const void *x
        int64_t x_st[32]
        int64_t x_sl
        void *out
        int64_t o_st[32]
        int64_t o_sl
        int mask_kind
        const void *mask
        int64_t m_st[32]
        int64_t m_sl
        const int64_t *valid_lens
        int64_t vl_st[32]
        int fill_masked
        double fill
        int cancellable
        uint64_t cancel_epoch

    ctypedef struct attn_softmax_plan_info:
        int path
        int64_t lanes, rows, units, rows_per_unit, chunk
        int threads
        int64_t segments
        int split

    ctypedef struct attn_kreg_desc:
        int64_t B, Lq, Lk, D, Dy
        int kernel
        double bandwidth
        const void *xq
        const int64_t *xq_boff
        int64_t xq_sl
        const void *xk
        const int64_t *xk_boff
        int64_t xk_sl
        const void *y
        const int64_t *y_boff
        int64_t y_sl
        void *out
        const int64_t *o_boff
        int64_t o_sl
        int mask_kind
        const void *mask
        const int64_t *m_boff
        int64_t m_si, m_sj
        const int64_t *valid_lens
        const int64_t *vl_boff
        int64_t vl_si
        void *weights
        int cancellable
        uint64_t cancel_epoch

    attn_status attn_softmax_f32(const attn_softmax_desc *desc, int isa, int num_threads) noexcept
    attn_status attn_softmax_f64(const attn_softmax_desc *desc, int isa, int num_threads) noexcept
    attn_status attn_softmax_plan_f32(const attn_softmax_desc *desc, int isa, int num_threads,
                                      attn_softmax_plan_info *info) noexcept
    attn_status attn_softmax_plan_f64(const attn_softmax_desc *desc, int isa, int num_threads,
                                      attn_softmax_plan_info *info) noexcept
    attn_status attn_kernel_regression_f32(const attn_kreg_desc *desc, int isa,
                                           int num_threads) noexcept
    attn_status attn_kernel_regression_f64(const attn_kreg_desc *desc, int isa,
                                           int num_threads) noexcept


# for the Python layer (one vocabulary end to end)
SOFTMAX_MAX_DIMS = ATTN_SOFTMAX_MAX_DIMS + 1    # the axis and the row dimensions
SOFTMAX_PATH_NAMES = {ATTN_SOFTMAX_PATH_ROWS: "rows", ATTN_SOFTMAX_PATH_PANEL: "panel"}
KR_KERNELS = {"gaussian": ATTN_KR_GAUSSIAN, "laplace": ATTN_KR_LAPLACE,
              "epanechnikov": ATTN_KR_EPANECHNIKOV}


cdef int _softmax_strides(Py_buffer *view, int axis, int64_t *st, int64_t *sl) except -1:
    """Element strides of an array of the problem's shape: the row
    dimensions' into st (the axis left out), the axis' into sl."""
    cdef int k, n = 0
    cdef Py_ssize_t item = view.itemsize
    for k in range(view.ndim):
        if k == axis:
            sl[0] = view.strides[k] // item if view.shape[k] != 1 else 0
        else:
            st[n] = view.strides[k] // item if view.shape[k] != 1 else 0
            n += 1
    return 0


def softmax(str op, bint f64, int isa, int num_threads, x, out, int axis, int mask_kind, mask,
            valid_lens, bint fill_masked, double fill, bint plan_only=False):
    """Run attn_softmax_f32/f64 for `op` (named in errors). x and out: arrays of
    one shape and the compute dtype; softmax along `axis` (>= 0). mask: None,
    or broadcast to x's shape (uint8 for MASK_BOOL, the dtype for MASK_ADD);
    valid_lens: None, or int64 broadcast to x's shape without the axis.
    fill_masked: masked scores become `fill` (d2l) instead of weight 0. With
    plan_only, nothing runs and the plan is returned as a dict."""
    cdef attn_softmax_desc d
    cdef attn_softmax_plan_info info
    cdef _Buf bx = _Buf(), bo = _Buf(), bm = _Buf(), bv = _Buf()
    cdef attn_status st
    cdef int k, n
    cdef int64_t dummy
    cdef bint guard, guarded
    cdef int reruns
    if x.ndim - 1 > ATTN_SOFTMAX_MAX_DIMS:
        raise ValueError(f"{op}: at most {ATTN_SOFTMAX_MAX_DIMS + 1} dimensions are supported")
    d.x = bx.get(x)
    d.out = bo.get(out)
    d.ndim = bx.view.ndim - 1
    n = 0
    for k in range(bx.view.ndim):
        if k == axis:
            d.L = bx.view.shape[k]
        else:
            d.shape[n] = bx.view.shape[k]
            n += 1
    _softmax_strides(&bx.view, axis, d.x_st, &d.x_sl)
    _softmax_strides(&bo.view, axis, d.o_st, &d.o_sl)
    d.mask_kind = mask_kind
    d.mask = NULL
    d.m_sl = 0
    for k in range(ATTN_SOFTMAX_MAX_DIMS):
        d.m_st[k] = 0
        d.vl_st[k] = 0
    if mask_kind != ATTN_MASK_NONE:
        d.mask = bm.get(mask)
        _softmax_strides(&bm.view, axis, d.m_st, &d.m_sl)
    d.valid_lens = NULL
    if valid_lens is not None:
        d.valid_lens = <const int64_t *>bv.get(valid_lens)
        # valid_lens has the row dimensions only: axis -1 leaves none out
        _softmax_strides(&bv.view, -1, d.vl_st, &dummy)
    d.fill_masked = fill_masked
    d.fill = fill
    d.cancellable, d.cancel_epoch = 0, 0
    if plan_only:
        with nogil:
            if f64:
                st = attn_softmax_plan_f64(&d, isa, num_threads, &info)
            else:
                st = attn_softmax_plan_f32(&d, isa, num_threads, &info)
        if st != ATTN_OK:
            _raise(st, op, f"shape {tuple(x.shape)}, axis {axis}")
        return dict(path=SOFTMAX_PATH_NAMES[info.path], lanes=info.lanes, rows=info.rows,
                    units=info.units, rows_per_unit=info.rows_per_unit, chunk=info.chunk,
                    threads=info.threads, segments=info.segments, split=bool(info.split))
    guard = _guard_wanted(<double>x.size * 8.0)
    reruns = 0
    while True:
        guarded = attn_sigint_guard_begin(&d.cancel_epoch) if guard else False
        d.cancellable = guarded
        with nogil:
            if f64:
                st = attn_softmax_f64(&d, isa, num_threads)
            else:
                st = attn_softmax_f32(&d, isa, num_threads)
        if guarded:
            attn_sigint_guard_end()
        if st != ATTN_EINTR:
            break
        guard = _rerun_guarded(guard, &reruns)
    if st != ATTN_OK:
        _raise(st, op, f"shape {tuple(x.shape)}, axis {axis}")
    return None


def kernel_regression(str op, bint f64, int isa, int num_threads, tuple dims, tuple batch,
                      xq, xk, y, out, int kernel, double bandwidth, int mask_kind, mask,
                      valid_lens, weights):
    """Run attn_kernel_regression_f32/f64 for `op`. dims = (B, Lq, Lk, D, Dy)
    with B the product of `batch`; xq (..., Lq, D), xk (..., Lk, D),
    y (..., Lk, Dy), out (..., Lq, Dy) with unit stride in their last
    dimension, their leading dims broadcasting to `batch`; mask broadcasts to
    batch + (Lq, Lk), valid_lens (int64) to batch + (Lq,); weights: None or a
    contiguous (B, Lq, Lk) output."""
    cdef attn_kreg_desc d
    cdef _Tensor txq = _Tensor(), txk = _Tensor(), ty = _Tensor(), to = _Tensor()
    cdef _Tensor tm = _Tensor(), tvl = _Tensor()
    cdef _Buf bw = _Buf()
    cdef int64_t nb = dims[0]
    cdef attn_status st
    cdef bint guard, guarded
    cdef int reruns
    d.B, d.Lq, d.Lk, d.D, d.Dy = dims
    d.kernel = kernel
    d.bandwidth = bandwidth
    txq.load(xq, batch, nb, 2)
    txk.load(xk, batch, nb, 2)
    ty.load(y, batch, nb, 2)
    to.load(out, batch, nb, 2)
    d.xq, d.xq_boff, d.xq_sl = txq.view.buf, txq.boff, txq.core[0]
    d.xk, d.xk_boff, d.xk_sl = txk.view.buf, txk.boff, txk.core[0]
    d.y, d.y_boff, d.y_sl = ty.view.buf, ty.boff, ty.core[0]
    d.out, d.o_boff, d.o_sl = to.view.buf, to.boff, to.core[0]
    d.mask_kind = mask_kind
    d.mask, d.m_boff, d.m_si, d.m_sj = NULL, NULL, 0, 0
    if mask_kind != ATTN_MASK_NONE:
        tm.load(mask, batch, nb, 2)
        d.mask, d.m_boff, d.m_si, d.m_sj = tm.view.buf, tm.boff, tm.core[0], tm.core[1]
    d.valid_lens, d.vl_boff, d.vl_si = NULL, NULL, 0
    if valid_lens is not None:
        tvl.load(valid_lens, batch, nb, 1)
        d.valid_lens = <const int64_t *>tvl.view.buf
        d.vl_boff, d.vl_si = tvl.boff, tvl.core[0]
    d.weights = bw.get(weights)
    d.cancellable, d.cancel_epoch = 0, 0
    guard = _guard_wanted(<double>d.B * d.Lq * d.Lk * (d.D + d.Dy + 8))
    reruns = 0
    while True:
        guarded = attn_sigint_guard_begin(&d.cancel_epoch) if guard else False
        d.cancellable = guarded
        with nogil:
            if f64:
                st = attn_kernel_regression_f64(&d, isa, num_threads)
            else:
                st = attn_kernel_regression_f32(&d, isa, num_threads)
        if guarded:
            attn_sigint_guard_end()
        if st != ATTN_EINTR:
            break
        guard = _rerun_guarded(guard, &reruns)
    if st != ATTN_OK:
        _raise(st, op, f"B={d.B} Lq={d.Lq} Lk={d.Lk} D={d.D} Dy={d.Dy}")
    return None
