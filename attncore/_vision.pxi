# Included by _core.pyx: the Cython side of csrc/driver/vision.c
# (channel and spatial attention for images).
#
# attncore.vision validates everything and passes arrays that
# attncore._layout.for_kernel accepted (native, aligned, item-size strides);
# x / out / logits arrive as logical (N, C, H, W) views whose strides say
# where the data are (a channels-last array has unit channel stride);
# weights are C-contiguous arrays of x's dtype.

cdef extern from "attncore/vision.h" nogil:
    enum:
        ATTN_POOL_NONE
        ATTN_POOL_AVG
        ATTN_POOL_MAX
        ATTN_SPATIAL_NONE
        ATTN_SPATIAL_CONV
        ATTN_SPATIAL_LOGITS
        ATTN_VISION_PLANAR
        ATTN_VISION_CHANNELS_LAST
        ATTN_VISION_FUSED
        ATTN_VISION_PHASED

    ctypedef struct attn_vision_desc:
        int64_t N, C, H, W
        const void *x
        int64_t x_sn, x_sc, x_sh, x_sw
        void *out
        int64_t o_sn, o_sc, o_sh, o_sw
        int pool
        int64_t Cr
        const void *w1
        const void *b1
        const void *w2
        const void *b2
        int spatial
        int64_t KH, KW
        const void *conv_w
        double conv_b
        const void *logits
        int64_t l_sn, l_sh, l_sw
        int cancellable
        uint64_t cancel_epoch

    ctypedef struct attn_vision_plan_info:
        int nest
        int schedule
        int64_t pool_chunk
        int64_t pool_chunks
        int64_t channel_blocks
        int64_t band_rows
        int64_t bands
        int threads

    attn_status attn_vision_f32(const attn_vision_desc *desc, int num_threads) noexcept
    attn_status attn_vision_f64(const attn_vision_desc *desc, int num_threads) noexcept
    attn_status attn_vision_plan_f32(const attn_vision_desc *desc, int num_threads,
                                     attn_vision_plan_info *info) noexcept
    attn_status attn_vision_plan_f64(const attn_vision_desc *desc, int num_threads,
                                     attn_vision_plan_info *info) noexcept


VISION_POOL_AVG = ATTN_POOL_AVG
VISION_POOL_MAX = ATTN_POOL_MAX
VISION_SPATIAL_NONE = ATTN_SPATIAL_NONE
VISION_SPATIAL_CONV = ATTN_SPATIAL_CONV
VISION_SPATIAL_LOGITS = ATTN_SPATIAL_LOGITS
VISION_NESTS = {ATTN_VISION_PLANAR: "planar", ATTN_VISION_CHANNELS_LAST: "channels_last"}
VISION_SCHEDULES = {ATTN_VISION_FUSED: "fused", ATTN_VISION_PHASED: "phased"}


cdef int _vision_strides4(Py_buffer *view, int64_t *s, str name) except -1:
    """Element strides of a 4-D buffer (0 for size-1 dims: they broadcast)."""
    cdef int k
    if view.ndim != 4:
        raise ValueError(f"vision: {name} must be 4-D, got {view.ndim} dims")
    for k in range(4):
        if view.strides[k] % view.itemsize:
            raise ValueError(f"vision: {name} has strides that are not whole items")
        s[k] = 0 if view.shape[k] == 1 else view.strides[k] // view.itemsize
    return 0


cdef int _vision_contiguous(_Buf b, str name, int itemsize) except -1:
    """A weight must be C-contiguous of the dtype (attncore.vision copies it otherwise)."""
    cdef Py_ssize_t expect = itemsize
    cdef int k
    if not b.held:
        return 0
    if b.view.itemsize != itemsize:
        raise ValueError(f"vision: {name} has the wrong item size")
    for k in range(b.view.ndim - 1, -1, -1):
        if b.view.shape[k] != 1 and b.view.strides[k] != expect:
            raise ValueError(f"vision: {name} must be C-contiguous")
        expect *= b.view.shape[k]
    return 0


def vision(str op, bint f64, int num_threads, x, out, int pool, w1, b1, w2, b2, int spatial,
           conv_w, double conv_b, logits, bint plan_only=False):
    """Run attn_vision_f32/f64 for the public function `op` (named in errors).

    x, out: logical (N, C, H, W) arrays (any strides, not overlapping);
    pool: VISION_POOL_* bits (0: no channel scale) with w1 (Cr, C), b1 (Cr,)
    or None, w2 (C, Cr), b2 (C,) or None; spatial: VISION_SPATIAL_* with
    conv_w (2, KH, KW) and conv_b (CONV) or logits broadcasting as
    (N, 1, H, W) (LOGITS). With plan_only nothing runs and the plan is
    returned as a dict."""
    cdef attn_vision_desc d
    cdef attn_vision_plan_info info
    cdef _Buf bx = _Buf(), bo = _Buf(), bw1 = _Buf(), bb1 = _Buf(), bw2 = _Buf(), bb2 = _Buf()
    cdef _Buf bcw = _Buf(), bl = _Buf()
    cdef int64_t s[4]
    cdef int itemsize = 8 if f64 else 4
    cdef attn_status st
    cdef bint guard, guarded
    cdef int reruns
    d.x = bx.get(x)
    d.out = bo.get(out)
    if bx.view.itemsize != itemsize or bo.view.itemsize != itemsize:
        raise ValueError(f"{op}: x and out must have the dtype's item size")
    _vision_strides4(&bx.view, s, "x")
    d.N, d.C, d.H, d.W = bx.view.shape[0], bx.view.shape[1], bx.view.shape[2], bx.view.shape[3]
    d.x_sn, d.x_sc, d.x_sh, d.x_sw = s[0], s[1], s[2], s[3]
    _vision_strides4(&bo.view, s, "out")
    if (bo.view.shape[0] != d.N or bo.view.shape[1] != d.C or bo.view.shape[2] != d.H
            or bo.view.shape[3] != d.W):
        raise ValueError(f"{op}: out does not have x's shape")
    d.o_sn, d.o_sc, d.o_sh, d.o_sw = s[0], s[1], s[2], s[3]
    d.pool = pool
    d.Cr = 0
    d.w1 = d.b1 = d.w2 = d.b2 = NULL
    if pool:
        d.w1 = bw1.get(w1)
        d.w2 = bw2.get(w2)
        d.b1 = bb1.get(b1)
        d.b2 = bb2.get(b2)
        if bw1.view.ndim != 2 or bw2.view.ndim != 2:
            raise ValueError(f"{op}: w1 and w2 must be 2-D")
        d.Cr = bw1.view.shape[0]
        if (bw1.view.shape[1] != d.C or bw2.view.shape[0] != d.C or bw2.view.shape[1] != d.Cr
                or (bb1.held and bb1.view.shape[0] != d.Cr) or (bb2.held and bb2.view.shape[0] != d.C)):
            raise ValueError(f"{op}: the MLP's shapes do not match C={d.C}")
        for b, name in ((bw1, "w1"), (bw2, "w2"), (bb1, "b1"), (bb2, "b2")):
            _vision_contiguous(b, name, itemsize)
    d.spatial = spatial
    d.KH = d.KW = 0
    d.conv_w = NULL
    d.conv_b = conv_b
    d.logits = NULL
    d.l_sn = d.l_sh = d.l_sw = 0
    if spatial == ATTN_SPATIAL_CONV:
        d.conv_w = bcw.get(conv_w)
        if bcw.view.ndim != 3 or bcw.view.shape[0] != 2:
            raise ValueError(f"{op}: the convolution's weight must be (2, KH, KW)")
        d.KH, d.KW = bcw.view.shape[1], bcw.view.shape[2]
        _vision_contiguous(bcw, "weight", itemsize)
    elif spatial == ATTN_SPATIAL_LOGITS:
        d.logits = bl.get(logits)
        if bl.view.itemsize != itemsize:
            raise ValueError(f"{op}: logits must have x's dtype")
        _vision_strides4(&bl.view, s, "logits")
        if bl.view.shape[1] != 1:
            raise ValueError(f"{op}: logits must have one channel")
        d.l_sn, d.l_sh, d.l_sw = s[0], s[2], s[3]
    d.cancellable, d.cancel_epoch = 0, 0
    if plan_only:
        with nogil:
            if f64:
                st = attn_vision_plan_f64(&d, num_threads, &info)
            else:
                st = attn_vision_plan_f32(&d, num_threads, &info)
        if st != ATTN_OK:
            _raise(st, op, _vision_text(d))
        return dict(nest=VISION_NESTS[info.nest], schedule=VISION_SCHEDULES[info.schedule],
                    pool_chunk=info.pool_chunk, pool_chunks=info.pool_chunks,
                    channel_blocks=info.channel_blocks, band_rows=info.band_rows,
                    bands=info.bands, threads=info.threads)
    guard = _guard_wanted(<double>d.N * d.C * d.H * d.W * 3)
    reruns = 0
    while True:
        guarded = attn_sigint_guard_begin(&d.cancel_epoch) if guard else False
        d.cancellable = guarded
        with nogil:
            if f64:
                st = attn_vision_f64(&d, num_threads)
            else:
                st = attn_vision_f32(&d, num_threads)
        if guarded:
            attn_sigint_guard_end()
        if st != ATTN_EINTR:
            break
        guard = _rerun_guarded(guard, &reruns)
    if st != ATTN_OK:
        _raise(st, op, _vision_text(d))


cdef str _vision_text(attn_vision_desc d):
    return f"N={d.N} C={d.C} H={d.H} W={d.W} Cr={d.Cr} KH={d.KH} KW={d.KW}"
