/*
 * Channel and spatial attention for images (SE, CBAM, reverse attention):
 * attn_vision_f32 / attn_vision_f64, one driver for the four operations
 * (what is computed: csrc/include/attncore/vision.h). Memory-bound: every
 * loop streams the image, and the work per element is a few flops.
 *
 * This file instantiates itself once per dtype (it includes itself with
 * VISION_T = float, then double), because the build's file list is fixed.
 *
 * Loop nest (one OpenMP region per call). Per image n:
 *
 *   pool    for chunk of POOL_CHUNK pixels (problem size only)
 *             for channel block                          <- phased: omp for
 *               psum[n][chunk][c], pmax[n][chunk][c]     (double, fixed lanes)
 *   mlp     a_c = sum over chunks in chunk order / HW, m_c = max over chunks;
 *           s_c = sigmoid(mlp(a) + mlp(m))               <- phased: omp for
 *   pixels  for band of rows                             <- phased: omp for
 *             spatial: mean/max maps of x * s_c over the band's rows plus
 *                      KH/2 halo rows, the KHxKW convolution, sigmoid -> t_p
 *             logits:  t_p = sigmoid(-logits)
 *             out = (x * s_c) * t_p     (each product rounded to the dtype)
 *
 * Schedules. FUSED: one unit is a whole image (pool, MLP, bands in order),
 * so the image is read from memory once and re-read from cache when it
 * fits (with a convolution: up to VISION_FIT_BYTES it is one band, bigger
 * images stream in bands of about VISION_BAND_BYTES; without one, x is read
 * once per band and bands of VISION_BAND_PIXELS pixels only bound the
 * scratch). PHASED, when there are too few images for
 * the threads: pool units (image, chunk, channel block), a barrier, the
 * MLPs, a barrier, band units (image, band).
 *
 * Loop nests. PLANAR when the channel stride is not the smallest (NCHW
 * memory): pooling runs along each channel's pixels (one run per chunk
 * when the plane is contiguous), maps add VISION_MAP_GROUP channels at a
 * time into rows of W doubles, and the rescale runs along rows (the band
 * as one run when contiguous). CHANNELS_LAST (x_sc == 1, NHWC memory):
 * pooling adds a pixel's C values into C running sums, maps reduce a
 * pixel's channels in lanes, and the rescale runs along the channels.
 * Inner loops are written for the compiler to vectorise at -O3 (no
 * intrinsics in drivers); unit strides get their own inlined instance.
 *
 * Determinism. Every value is computed by a fixed sequence of operations
 * that depends only on the problem (sizes, strides): pooling sums run in
 * fixed lanes per pooling chunk (planar) or one chain per channel and
 * chunk (channels-last), chunks are combined in chunk order, the MLP dot
 * products have 4 fixed lanes, a map value reduces its channels in a fixed
 * order, a convolution sums its taps in (map, row, column) order skipping
 * the taps outside the image. Channel blocks, bands and the schedule change
 * who computes a value, never how; halo rows are recomputed bit for bit.
 * So results are bitwise identical for any thread count and schedule (they
 * may differ in the last bits between the two loop nests).
 *
 * Numerics (docs/numerics.md, (V1)-(V4)). Pooled values, the MLP, the
 * maps and the convolution are computed in double for both dtypes (float32
 * data are widened exactly), except that average pooling first sums
 * VISION_SUM_BLOCK = 8 terms per lane in the dtype (half the conversions;
 * error <= 7 u of the sum of |x|); x * s_c and the final product are
 * rounded to the dtype, as a framework computing in the dtype would.
 * sigmoid(z) is 1 / (1 + exp(-z)) for z >= 0 and e / (1 + e), e = exp(z),
 * otherwise: exp never overflows, sigmoid(+inf) = 1 and sigmoid(-inf) = 0
 * exactly, NaN propagates. Max pooling and the max map propagate NaN (as
 * torch does): their lanes skip NaN (a plain compare vectorises), and a
 * run whose sum is NaN is searched for one. ReLU keeps NaN.
 *
 * Preconditions (vision_check checks sizes, kinds and pointers; attncore.vision
 * guarantees the rest): sizes >= 0 with N*C*H*W representable; KH, KW odd;
 * weights C-contiguous of the dtype; x and logits do not overlap out (in
 * place is not supported here: a band's rescale would overwrite halo rows
 * another band still reads -- the Python layer writes to a temporary then).
 * Interrupts: a cancellable call polls the SIGINT count before each unit.
 */
#ifndef VISION_T

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "attncore/vision.h"
#include "workspace.h"

#define VISION_POOL_CHUNK 1024           /* pixels per pooling chunk */
#define VISION_FIT_BYTES (1 << 20)       /* an image up to this size is one band */
#define VISION_BAND_BYTES (256 << 10)    /* else bands of about this much of x */
#define VISION_BAND_PIXELS (1 << 16)     /* without a convolution: pixels per band */
#define VISION_CL_MIN_BLOCK 16           /* channels-last pooling: channels per block */
#define VISION_SUM_LANES 16              /* sum lanes (doubles, in registers) */
#define VISION_MAX_LANES 32              /* max lanes (the dtype, in L1) */
#define VISION_SUM_BLOCK 8               /* terms per lane summed in the dtype first */
#define VISION_MAP_GROUP 4               /* planar maps: channels per pass over a row */

/* max that propagates NaN (either argument) */
static inline double vision_max(double m, double v) { return (v > m || v != v) ? v : m; }

static inline double vision_relu(double h) { return h > 0.0 ? h : (h != h ? h : 0.0); }

static inline double vision_sigmoid(double z)
{
    if (z >= 0.0) return 1.0 / (1.0 + exp(-z));
    double e = exp(z); /* z < 0, or NaN: NaN */
    return e / (1.0 + e);
}

/*
 * Reductions along a run (a channel's pixels, a pixel's channels) use
 * lanes: element i of a run goes to lane i % lanes. Sums: 16 double lanes
 * that the compiler keeps in registers (it vectorises the unrolled lane
 * loop), folded by a fixed tree. Maxima: 32 lanes of the dtype in an array,
 * updated by an inner loop over the lanes whose trip count is not a
 * constant -- a max reduction into registers does not vectorise without
 * -ffast-math, an element-wise max over an array does. The max lanes skip
 * NaN (a plain compare); a NaN also makes the run's sum NaN, and only then
 * is the run searched for one.
 */
static inline double vision_sum_lanes(const double *l)
{
    double s8[8];
    for (int j = 0; j < 8; j++) s8[j] = l[j] + l[j + 8];
    return ((s8[0] + s8[1]) + (s8[2] + s8[3])) + ((s8[4] + s8[5]) + (s8[6] + s8[7]));
}

static inline int64_t vision_ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

static inline int64_t vision_abs(int64_t a) { return a < 0 ? -a : a; }

static int vision_channels_last(const attn_vision_desc *d)
{
    if (d->C <= 1) return 0;
    int64_t sp = d->W > 1 ? d->x_sw : d->H > 1 ? d->x_sh : INT64_MAX;
    return vision_abs(d->x_sc) < vision_abs(sp);
}

static attn_status vision_check(const attn_vision_desc *d)
{
    if (!d || d->N < 0 || d->C < 0 || d->H < 0 || d->W < 0) return ATTN_EINVAL;
    if (d->pool < 0 || d->pool > (ATTN_POOL_AVG | ATTN_POOL_MAX)) return ATTN_EINVAL;
    if (d->spatial < ATTN_SPATIAL_NONE || d->spatial > ATTN_SPATIAL_LOGITS) return ATTN_EINVAL;
    int64_t hw = attn_mul_checked(d->H, d->W);
    if (hw < 0 || attn_mul_checked(attn_mul_checked(d->N, d->C), hw) < 0) return ATTN_EINVAL;
    if (d->pool && (d->Cr < 0 || attn_mul_checked(d->Cr, d->C) < 0)) return ATTN_EINVAL;
    if (d->spatial == ATTN_SPATIAL_CONV &&
        (d->KH < 1 || d->KW < 1 || d->KH % 2 == 0 || d->KW % 2 == 0 || d->KH > (INT64_MAX >> 8) ||
         d->KW > (INT64_MAX >> 8)))
        return ATTN_EINVAL;
    if (d->N == 0 || d->C == 0 || hw == 0) return ATTN_OK;
    if (!d->x || !d->out) return ATTN_EINVAL;
    if (d->pool && d->Cr > 0 && (!d->w1 || !d->w2)) return ATTN_EINVAL;
    if (d->spatial == ATTN_SPATIAL_CONV && !d->conv_w) return ATTN_EINVAL;
    if (d->spatial == ATTN_SPATIAL_LOGITS && !d->logits) return ATTN_EINVAL;
    return ATTN_OK;
}

/* The plan: loop nest, schedule, chunks, blocks, bands, threads (valid,
 * non-empty descriptors only). */
static void vision_make_plan(const attn_vision_desc *d, size_t item, int num_threads,
                             attn_vision_plan_info *p)
{
    const int64_t N = d->N, C = d->C, H = d->H, W = d->W, HW = H * W;
    const int conv = d->spatial == ATTN_SPATIAL_CONV;
    memset(p, 0, sizeof(*p));
    p->nest = vision_channels_last(d) ? ATTN_VISION_CHANNELS_LAST : ATTN_VISION_PLANAR;
    p->pool_chunk = VISION_POOL_CHUNK;
    p->pool_chunks = d->pool ? vision_ceil_div(HW, VISION_POOL_CHUNK) : 0;

    double elems = (double)N * (double)C * (double)HW;
    double work = elems * (1.0 + (d->pool ? 1.0 : 0.0) + (conv ? 1.0 : 0.0));
    if (conv) work += (double)N * (double)HW * 2.0 * (double)d->KH * (double)d->KW;
    if (d->pool) work += 4.0 * (double)N * (double)C * (double)d->Cr;
    int64_t units = attn_mul_checked(N, attn_max64(H, C));
    int threads = attn_plan_threads(num_threads, units < 0 ? INT64_MAX : units, work);
    p->threads = threads;
    p->schedule = (threads == 1 || N % threads == 0 || N >= 4 * (int64_t)threads)
                      ? ATTN_VISION_FUSED : ATTN_VISION_PHASED;

    /* bands. The convolution reads x twice (maps, rescale): the whole image
     * when it fits in cache, else about VISION_BAND_BYTES of x with at least
     * 2 (KH - 1) rows (halo <= 50%). Otherwise x is read once per band and
     * bands only bound the pixel scales' scratch: VISION_BAND_PIXELS (long
     * runs per channel stream better than short ones) */
    double row_bytes = (double)W * (double)C * (double)item;
    int64_t rows = H;
    if (conv && row_bytes * (double)H > (double)VISION_FIT_BYTES) {
        double r = (double)VISION_BAND_BYTES / row_bytes;
        rows = r >= (double)H ? H : (int64_t)r;
        rows = attn_max64(rows, 2 * (d->KH - 1));
    } else if (!conv) {
        rows = attn_min64(H, attn_max64(1, VISION_BAND_PIXELS / W));
    }
    if (p->schedule == ATTN_VISION_PHASED)   /* enough units to balance the threads */
        rows = attn_min64(rows, vision_ceil_div(H, vision_ceil_div(2 * (int64_t)threads, N)));
    rows = attn_max64(1, attn_min64(rows, H));
    p->bands = vision_ceil_div(H, rows);
    p->band_rows = vision_ceil_div(H, p->bands);

    p->channel_blocks = 1;
    if (p->schedule == ATTN_VISION_PHASED && d->pool) {
        int64_t want = vision_ceil_div(2 * (int64_t)threads, N * p->pool_chunks);
        int64_t most = p->nest == ATTN_VISION_CHANNELS_LAST ? vision_ceil_div(C, VISION_CL_MIN_BLOCK) : C;
        p->channel_blocks = attn_max64(1, attn_min64(want, most));
    }
}

static int vision_stop(const attn_vision_desc *d, int *failed, int *interrupted)
{
    if (attn_flag_get(failed) || attn_flag_get(interrupted)) return 1;
    if (attn_cancelled(d->cancellable, d->cancel_epoch)) {
        attn_flag_set(interrupted);
        return 1;
    }
    return 0;
}

#define VISION_CAT_(a, b) a##_##b
#define VISION_CAT(a, b) VISION_CAT_(a, b)
#define VFN(name) VISION_CAT(name, VISION_TAG)

#define VISION_T float
#define VISION_TAG f32
#include "vision.c"
#undef VISION_T
#undef VISION_TAG

#define VISION_T double
#define VISION_TAG f64
#include "vision.c"
#undef VISION_T
#undef VISION_TAG

#else /* VISION_T: the body, once per dtype */

#define T VISION_T

/* ---- lanes --------------------------------------------------------------- */

static inline void VFN(max_init)(T *ml)
{
    for (int j = 0; j < VISION_MAX_LANES; j++) ml[j] = (T)-INFINITY;
}

/* the lanes' max (they hold no NaN: see above), folded as a tree (a chain
 * of 31 dependent compares would cost more than the lanes' loads) */
static inline double VFN(max_lanes)(const T *ml)
{
    T m[VISION_MAX_LANES];
    for (int j = 0; j < VISION_MAX_LANES; j++) m[j] = ml[j];
    for (int w = VISION_MAX_LANES / 2; w >= 1; w /= 2)
        for (int j = 0; j < w; j++) m[j] = m[j + w] > m[j] ? m[j + w] : m[j];
    return (double)m[0];
}

/* sum of a run of len elements with stride s (times f[i] with stride fs,
 * each product rounded to T, when f is given) into the sum lanes; with
 * `blocks` (and no f), VISION_SUM_BLOCK terms per lane are summed in T
 * first (pooling: float32 data converted to double half as often) */
static inline void VFN(sum_run)(const T *restrict p, int64_t s, const T *restrict f, int64_t fs, int64_t len,
                                int blocks, double *restrict lanes)
{
    double a[VISION_SUM_LANES];
    for (int j = 0; j < VISION_SUM_LANES; j++) a[j] = lanes[j];
    int64_t i = 0;
    if (f) {
        for (; i + VISION_SUM_LANES <= len; i += VISION_SUM_LANES)
            for (int j = 0; j < VISION_SUM_LANES; j++) {
                T t = p[(i + j) * s] * f[(i + j) * fs];
                a[j] += (double)t;
            }
        for (int j = 0; i < len; i++, j++) {
            T t = p[i * s] * f[i * fs];
            a[j] += (double)t;
        }
    } else {
        /* blocks of VISION_SUM_BLOCK elements per lane are summed in T first;
         * a block whose partial sums are not all finite (past T's range, or
         * an inf or NaN input) is summed again in double: finite inputs
         * near T's largest (float32: 8 values above 4.3e37) overflowed to
         * inf there, and opposite infinities gave NaN */
        for (; blocks && i + VISION_SUM_LANES * VISION_SUM_BLOCK <= len;
             i += VISION_SUM_LANES * VISION_SUM_BLOCK) {
            T b[VISION_SUM_LANES], nonfinite = 0;
            for (int j = 0; j < VISION_SUM_LANES; j++) b[j] = p[(i + j) * s];
            for (int k = 1; k < VISION_SUM_BLOCK; k++)
                for (int j = 0; j < VISION_SUM_LANES; j++) b[j] += p[(i + k * VISION_SUM_LANES + j) * s];
            for (int j = 0; j < VISION_SUM_LANES; j++) nonfinite += b[j] * 0;   /* NaN iff some b[j] is inf or NaN */
            if (nonfinite == 0) {
                for (int j = 0; j < VISION_SUM_LANES; j++) a[j] += (double)b[j];
            } else {
                for (int k = 0; k < VISION_SUM_BLOCK; k++)
                    for (int j = 0; j < VISION_SUM_LANES; j++) a[j] += (double)p[(i + k * VISION_SUM_LANES + j) * s];
            }
        }
        for (; i + VISION_SUM_LANES <= len; i += VISION_SUM_LANES)
            for (int j = 0; j < VISION_SUM_LANES; j++) a[j] += (double)p[(i + j) * s];
        for (int j = 0; i < len; i++, j++) a[j] += (double)p[i * s];
    }
    for (int j = 0; j < VISION_SUM_LANES; j++) lanes[j] = a[j];
}

/* max of a run (same arguments) into the max lanes, skipping NaN */
static inline void VFN(max_run)(const T *restrict p, int64_t s, const T *restrict f, int64_t fs, int64_t len,
                                T *restrict ml)
{
    for (int64_t i = 0; i < len; i += VISION_MAX_LANES) {
        const T *restrict q = p + i * s;
        const int64_t m = attn_min64(VISION_MAX_LANES, len - i);
        if (f) {
            const T *restrict g = f + i * fs;
            for (int64_t j = 0; j < m; j++) {
                T v = q[j * s] * g[j * fs];
                ml[j] = v > ml[j] ? v : ml[j];
            }
        } else {
            for (int64_t j = 0; j < m; j++) {
                T v = q[j * s];
                ml[j] = v > ml[j] ? v : ml[j];
            }
        }
    }
}

static int VFN(has_nan)(const T *p, int64_t s, const T *f, int64_t fs, int64_t len)
{
    for (int64_t i = 0; i < len; i++) {
        T v = f ? p[i * s] * f[i * fs] : p[i * s];
        if (v != v) return 1;
    }
    return 0;
}

/* ---- pooling ------------------------------------------------------------- */

/* Planar: sum and max of channels [c0, c1) over the chunk's pixels [p0, p1),
 * row by row (the whole chunk as one run when the plane is contiguous). */
static void VFN(pool_planar)(const attn_vision_desc *d, const attn_vision_plan_info *pl, int64_t n,
                             int64_t chunk, int64_t c0, int64_t c1, double *psum, double *pmax)
{
    const int64_t W = d->W, HW = d->H * W, sw = d->x_sw;
    const int64_t p0 = chunk * pl->pool_chunk, p1 = attn_min64(HW, p0 + pl->pool_chunk);
    const int contiguous = sw == 1 && d->x_sh == W;
    const int want_max = (d->pool & ATTN_POOL_MAX) != 0;
    const T *x = (const T *)d->x + n * d->x_sn;
    double *ps = psum + (n * pl->pool_chunks + chunk) * d->C;
    double *pm = pmax + (n * pl->pool_chunks + chunk) * d->C;
    for (int64_t c = c0; c < c1; c++) {
        double sl[VISION_SUM_LANES];
        T ml[VISION_MAX_LANES];
        for (int j = 0; j < VISION_SUM_LANES; j++) sl[j] = 0.0;
        VFN(max_init)(ml);
        const T *xc = x + c * d->x_sc;
        if (contiguous) {
            VFN(sum_run)(xc + p0, 1, NULL, 0, p1 - p0, 1, sl);
            if (want_max) VFN(max_run)(xc + p0, 1, NULL, 0, p1 - p0, ml);
        } else {
            int64_t h = p0 / W, w = p0 % W;
            for (int64_t p = p0; p < p1; h++, w = 0) {
                const int64_t len = attn_min64(W - w, p1 - p);
                const T *row = xc + h * d->x_sh + w * sw;
                if (sw == 1) {
                    VFN(sum_run)(row, 1, NULL, 0, len, 1, sl);
                    if (want_max) VFN(max_run)(row, 1, NULL, 0, len, ml);
                } else {
                    VFN(sum_run)(row, sw, NULL, 0, len, 1, sl);
                    if (want_max) VFN(max_run)(row, sw, NULL, 0, len, ml);
                }
                p += len;
            }
        }
        ps[c] = vision_sum_lanes(sl);
        pm[c] = VFN(max_lanes)(ml);
        if (want_max && ps[c] != ps[c]) {   /* a NaN, or +inf and -inf: look */
            int64_t h = p0 / W, w = p0 % W;
            for (int64_t p = p0; p < p1; h++, w = 0) {
                const int64_t len = attn_min64(W - w, p1 - p);
                if (VFN(has_nan)(xc + h * d->x_sh + w * sw, sw, NULL, 0, len)) pm[c] = NAN;
                p += len;
            }
        }
    }
}

static inline void VFN(accumulate_pixel)(const T *restrict px, int64_t s, int64_t n, int want_max,
                                         double *restrict ps, double *restrict pm)
{
    if (want_max)
        for (int64_t c = 0; c < n; c++) {
            double v = (double)px[c * s];
            ps[c] += v;
            pm[c] = v > pm[c] ? v : pm[c];
        }
    else
        for (int64_t c = 0; c < n; c++) ps[c] += (double)px[c * s];
}

/* Channels-last: running sums (and maxima) of channels [c0, c1), pixel after
 * pixel (one chain per channel). */
static void VFN(pool_cl)(const attn_vision_desc *d, const attn_vision_plan_info *pl, int64_t n,
                         int64_t chunk, int64_t c0, int64_t c1, double *psum, double *pmax)
{
    const int64_t W = d->W, HW = d->H * W;
    const int64_t p0 = chunk * pl->pool_chunk, p1 = attn_min64(HW, p0 + pl->pool_chunk);
    const int want_max = (d->pool & ATTN_POOL_MAX) != 0;
    const T *x = (const T *)d->x + n * d->x_sn + c0 * d->x_sc;
    double *ps = psum + (n * pl->pool_chunks + chunk) * d->C + c0;
    double *pm = pmax + (n * pl->pool_chunks + chunk) * d->C + c0;
    const int64_t nc = c1 - c0;
    for (int64_t c = 0; c < nc; c++) {
        ps[c] = 0.0;
        pm[c] = -INFINITY;
    }
    int64_t h = p0 / W, w = p0 % W;
    for (int64_t p = p0; p < p1; p++) {
        const T *px = x + h * d->x_sh + w * d->x_sw;
        if (d->x_sc == 1)
            VFN(accumulate_pixel)(px, 1, nc, want_max, ps, pm);
        else
            VFN(accumulate_pixel)(px, d->x_sc, nc, want_max, ps, pm);
        if (++w == W) {
            w = 0;
            h++;
        }
    }
    if (!want_max) return;
    for (int64_t c = 0; c < nc; c++) {
        if (ps[c] == ps[c]) continue;
        h = p0 / W, w = p0 % W;
        for (int64_t p = p0; p < p1; p++) {
            T v = x[h * d->x_sh + w * d->x_sw + c * d->x_sc];
            if (v != v) pm[c] = NAN;
            if (++w == W) {
                w = 0;
                h++;
            }
        }
    }
}

static void VFN(pool)(const attn_vision_desc *d, const attn_vision_plan_info *pl, int64_t n,
                      int64_t chunk, int64_t c0, int64_t c1, double *psum, double *pmax)
{
    if (pl->nest == ATTN_VISION_CHANNELS_LAST)
        VFN(pool_cl)(d, pl, n, chunk, c0, c1, psum, pmax);
    else
        VFN(pool_planar)(d, pl, n, chunk, c0, c1, psum, pmax);
}

/* ---- the shared MLP ------------------------------------------------------ */

/* sum_i w[i] v[i] in 4 fixed lanes, in double */
static inline double VFN(dot)(const T *restrict w, const double *restrict v, int64_t n)
{
    double a[4] = {0.0, 0.0, 0.0, 0.0};
    int64_t i = 0;
    for (; i + 4 <= n; i += 4)
        for (int j = 0; j < 4; j++) a[j] += (double)w[i + j] * v[i + j];
    for (int j = 0; i < n; i++, j++) a[j] += (double)w[i] * v[i];
    return (a[0] + a[1]) + (a[2] + a[3]);
}

/* s_c of image n: combine the chunks in order, run the MLP per pooling,
 * add, sigmoid. Scratch: v (C), hid (Cr), y (C) doubles. */
static void VFN(mlp)(const attn_vision_desc *d, const attn_vision_plan_info *pl, int64_t n,
                     const double *psum, const double *pmax, T *chs, double *v, double *hid, double *y)
{
    const int64_t C = d->C, Cr = d->Cr, K = pl->pool_chunks;
    const double hw = (double)(d->H * d->W);
    const T *w1 = (const T *)d->w1, *b1 = (const T *)d->b1;
    const T *w2 = (const T *)d->w2, *b2 = (const T *)d->b2;
    int first = 1;
    for (int branch = 0; branch < 2; branch++) {
        if (!(d->pool & (branch == 0 ? ATTN_POOL_AVG : ATTN_POOL_MAX))) continue;
        const double *src = (branch == 0 ? psum : pmax) + n * K * C;
        for (int64_t c = 0; c < C; c++) {
            double acc = src[c];
            if (branch == 0) {
                for (int64_t k = 1; k < K; k++) acc += src[k * C + c];
                acc /= hw;
            } else {
                for (int64_t k = 1; k < K; k++) acc = vision_max(acc, src[k * C + c]);
            }
            v[c] = acc;
        }
        for (int64_t j = 0; j < Cr; j++) {
            double h = VFN(dot)(w1 + j * C, v, C);
            if (b1) h += (double)b1[j];
            hid[j] = vision_relu(h);
        }
        for (int64_t c = 0; c < C; c++) {
            double o = VFN(dot)(w2 + c * Cr, hid, Cr);
            if (b2) o += (double)b2[c];
            y[c] = first ? o : y[c] + o;
        }
        first = 0;
    }
    T *s = chs + n * C;
    for (int64_t c = 0; c < C; c++) s[c] = (T)vision_sigmoid(y[c]);
}

/* ---- maps ---------------------------------------------------------------- */

/* Planar maps: add VISION_MAP_GROUP channel runs (x1 = x * s_c rounded, or
 * x) at once into the running sum / max runs: ms[i] += ((v0 + v1) + (v2 + v3)).
 * r[k]: the channels' runs (stride s), f[k]: their scales. */
static inline void VFN(map_group)(const T *const *r, int64_t s, const T *f, int64_t len,
                                  double *restrict ms, double *restrict mm)
{
    const T *restrict r0 = r[0], *restrict r1 = r[1], *restrict r2 = r[2], *restrict r3 = r[3];
    if (f) {
        const T f0 = f[0], f1 = f[1], f2 = f[2], f3 = f[3];
        for (int64_t i = 0; i < len; i++) {
            T t0 = r0[i * s] * f0, t1 = r1[i * s] * f1, t2 = r2[i * s] * f2, t3 = r3[i * s] * f3;
            double v0 = (double)t0, v1 = (double)t1, v2 = (double)t2, v3 = (double)t3;
            ms[i] += (v0 + v1) + (v2 + v3);
            double a = v0 > v1 ? v0 : v1, b = v2 > v3 ? v2 : v3;
            double m = a > b ? a : b;
            mm[i] = m > mm[i] ? m : mm[i];
        }
    } else {
        for (int64_t i = 0; i < len; i++) {
            double v0 = (double)r0[i * s], v1 = (double)r1[i * s], v2 = (double)r2[i * s],
                   v3 = (double)r3[i * s];
            ms[i] += (v0 + v1) + (v2 + v3);
            double a = v0 > v1 ? v0 : v1, b = v2 > v3 ? v2 : v3;
            double m = a > b ? a : b;
            mm[i] = m > mm[i] ? m : mm[i];
        }
    }
}

static inline void VFN(map_one)(const T *restrict r, int64_t s, const T *f, int64_t len,
                                double *restrict ms, double *restrict mm)
{
    if (f) {
        const T f0 = f[0];
        for (int64_t i = 0; i < len; i++) {
            T t = r[i * s] * f0;
            double v = (double)t;
            ms[i] += v;
            mm[i] = v > mm[i] ? v : mm[i];
        }
    } else {
        for (int64_t i = 0; i < len; i++) {
            double v = (double)r[i * s];
            ms[i] += v;
            mm[i] = v > mm[i] ? v : mm[i];
        }
    }
}

/* planar: channels [0, C) of rows [m0, m1) into ms/mm (running), in groups
 * of VISION_MAP_GROUP channels; row by row, or the rows as one run when the
 * planes are contiguous */
static void VFN(maps_planar)(const attn_vision_desc *d, int64_t n, const T *sc, int64_t m0, int64_t m1,
                             double *ms, double *mm)
{
    const int64_t C = d->C, W = d->W, sw = d->x_sw;
    const int flat = sw == 1 && d->x_sh == W;
    const int64_t runs = flat ? 1 : m1 - m0, len = flat ? (m1 - m0) * W : W;
    const T *x = (const T *)d->x + n * d->x_sn;
    for (int64_t c = 0; c < C; c += VISION_MAP_GROUP) {
        const int64_t g = attn_min64(VISION_MAP_GROUP, C - c);
        const T *f = sc ? sc + c : NULL;
        for (int64_t q = 0; q < runs; q++) {
            const T *r[VISION_MAP_GROUP];
            for (int64_t k = 0; k < g; k++) r[k] = x + (c + k) * d->x_sc + (m0 + q) * d->x_sh;
            double *s = ms + q * W, *m = mm + q * W;
            if (g == VISION_MAP_GROUP) {
                if (sw == 1)
                    VFN(map_group)(r, 1, f, len, s, m);
                else
                    VFN(map_group)(r, sw, f, len, s, m);
            } else {
                for (int64_t k = 0; k < g; k++) {
                    if (sw == 1)
                        VFN(map_one)(r[k], 1, f ? f + k : NULL, len, s, m);
                    else
                        VFN(map_one)(r[k], sw, f ? f + k : NULL, len, s, m);
                }
            }
        }
    }
}

/* channels-last: one pixel's channels in lanes */
static inline void VFN(map_pixel)(const T *restrict px, int64_t s, int64_t C, const T *restrict sc,
                                  double *ms, double *mm)
{
    double sl[VISION_SUM_LANES];
    T ml[VISION_MAX_LANES];
    for (int j = 0; j < VISION_SUM_LANES; j++) sl[j] = 0.0;
    VFN(max_init)(ml);
    VFN(sum_run)(px, s, sc, 1, C, 0, sl);
    VFN(max_run)(px, s, sc, 1, C, ml);
    *ms = vision_sum_lanes(sl);
    *mm = VFN(max_lanes)(ml);
}

/* whether x1 = x * s_c (or x) holds a NaN at pixel (h, w) of image n */
static int VFN(pixel_has_nan)(const attn_vision_desc *d, int64_t n, const T *sc, int64_t h, int64_t w)
{
    const T *px = (const T *)d->x + n * d->x_sn + h * d->x_sh + w * d->x_sw;
    return VFN(has_nan)(px, d->x_sc, sc, 1, d->C);
}

/* mean and max maps of x1 over rows [m0, m1) of image n: ms/mm[(h - m0) * W + w] */
static void VFN(maps)(const attn_vision_desc *d, const attn_vision_plan_info *pl, int64_t n,
                      const T *sc, int64_t m0, int64_t m1, double *ms, double *mm)
{
    const int64_t C = d->C, W = d->W, np = (m1 - m0) * W;
    const T *x = (const T *)d->x + n * d->x_sn;
    if (pl->nest == ATTN_VISION_CHANNELS_LAST) {
        for (int64_t h = m0; h < m1; h++)
            for (int64_t w = 0; w < W; w++) {
                const T *px = x + h * d->x_sh + w * d->x_sw;
                double *s = ms + (h - m0) * W + w, *m = mm + (h - m0) * W + w;
                if (d->x_sc == 1)
                    VFN(map_pixel)(px, 1, C, sc, s, m);
                else
                    VFN(map_pixel)(px, d->x_sc, C, sc, s, m);
            }
    } else {
        for (int64_t i = 0; i < np; i++) {
            ms[i] = 0.0;
            mm[i] = -INFINITY;
        }
        VFN(maps_planar)(d, n, sc, m0, m1, ms, mm);
    }
    const double count = (double)C;
    for (int64_t i = 0; i < np; i++) {
        if (ms[i] != ms[i] && VFN(pixel_has_nan)(d, n, sc, m0 + i / W, i % W)) mm[i] = NAN;
        ms[i] /= count;
    }
}

/* ---- convolution and rescale --------------------------------------------- */

/* acc[w] = conv_b + sum over taps (map k, row i, column j) inside the image,
 * in that order, for output row r (maps hold rows [m0, ...)) */
static void VFN(conv_row)(const attn_vision_desc *d, int64_t r, int64_t m0, const double *ms,
                          const double *mm, double *restrict acc)
{
    const int64_t H = d->H, W = d->W, KH = d->KH, KW = d->KW, ph = KH / 2, pw = KW / 2;
    const T *cw = (const T *)d->conv_w;
    for (int64_t w = 0; w < W; w++) acc[w] = d->conv_b;
    for (int k = 0; k < 2; k++) {
        const double *map = k ? mm : ms;
        for (int64_t i = 0; i < KH; i++) {
            int64_t hr = r + i - ph;
            if (hr < 0 || hr >= H) continue;
            const double *restrict src = map + (hr - m0) * W;
            for (int64_t j = 0; j < KW; j++) {
                const double wt = (double)cw[((int64_t)k * KH + i) * KW + j];
                const int64_t off = j - pw;
                const int64_t lo = attn_max64(0, -off), hi = attn_min64(W, W - off);
                for (int64_t w = lo; w < hi; w++) acc[w] += wt * src[w + off];
            }
        }
    }
}

/* planar rescale of a run: o = (x * s) * a, each product rounded to T */
static inline void VFN(scale_row)(const T *restrict xr, int64_t xs, T *restrict orow, int64_t os,
                                  int64_t W, int has_s, T s, const T *restrict a)
{
    if (has_s && a)
        for (int64_t w = 0; w < W; w++) {
            T t = xr[w * xs] * s;
            orow[w * os] = t * a[w];
        }
    else if (has_s)
        for (int64_t w = 0; w < W; w++) orow[w * os] = xr[w * xs] * s;
    else if (a)
        for (int64_t w = 0; w < W; w++) orow[w * os] = xr[w * xs] * a[w];
    else
        for (int64_t w = 0; w < W; w++) orow[w * os] = xr[w * xs];
}

/* channels-last rescale of one pixel */
static inline void VFN(scale_pixel)(const T *restrict px, int64_t xs, T *restrict po, int64_t os,
                                    int64_t C, const T *restrict sc, int has_a, T a)
{
    if (sc && has_a)
        for (int64_t c = 0; c < C; c++) {
            T t = px[c * xs] * sc[c];
            po[c * os] = t * a;
        }
    else if (sc)
        for (int64_t c = 0; c < C; c++) po[c * os] = px[c * xs] * sc[c];
    else if (has_a)
        for (int64_t c = 0; c < C; c++) po[c * os] = px[c * xs] * a;
    else
        for (int64_t c = 0; c < C; c++) po[c * os] = px[c * xs];
}

static void VFN(rescale)(const attn_vision_desc *d, const attn_vision_plan_info *pl, int64_t n,
                         const T *sc, const T *att, int64_t r0, int64_t r1)
{
    const int64_t C = d->C, W = d->W;
    const T *x = (const T *)d->x + n * d->x_sn;
    T *o = (T *)d->out + n * d->o_sn;
    if (pl->nest == ATTN_VISION_CHANNELS_LAST) {
        const int unit = d->x_sc == 1 && d->o_sc == 1;
        for (int64_t h = r0; h < r1; h++)
            for (int64_t w = 0; w < W; w++) {
                const T *px = x + h * d->x_sh + w * d->x_sw;
                T *po = o + h * d->o_sh + w * d->o_sw;
                T a = att ? att[(h - r0) * W + w] : (T)1;
                if (unit)
                    VFN(scale_pixel)(px, 1, po, 1, C, sc, att != NULL, a);
                else
                    VFN(scale_pixel)(px, d->x_sc, po, d->o_sc, C, sc, att != NULL, a);
            }
    } else {
        const int unit = d->x_sw == 1 && d->o_sw == 1;
        /* contiguous planes: the band's rows are one run (so is att) */
        const int flat = unit && d->x_sh == W && d->o_sh == W;
        for (int64_t c = 0; c < C; c++) {
            const T *xc = x + c * d->x_sc;
            T *oc = o + c * d->o_sc;
            T s = sc ? sc[c] : (T)1;
            if (flat) {
                VFN(scale_row)(xc + r0 * W, 1, oc + r0 * W, 1, (r1 - r0) * W, sc != NULL, s, att);
                continue;
            }
            for (int64_t h = r0; h < r1; h++) {
                const T *a = att ? att + (h - r0) * W : NULL;
                if (unit)
                    VFN(scale_row)(xc + h * d->x_sh, 1, oc + h * d->o_sh, 1, W, sc != NULL, s, a);
                else
                    VFN(scale_row)(xc + h * d->x_sh, d->x_sw, oc + h * d->o_sh, d->o_sw, W, sc != NULL,
                                   s, a);
            }
        }
    }
}

typedef struct {
    double *v, *hid, *y;   /* MLP: C, Cr, C */
    double *ms, *mm, *acc; /* maps: (band_rows + KH - 1) * W each; conv row: W */
    T *att;                /* pixel scales: band_rows * W */
} VFN(scratch);

/* rows [r0, r1) of image n: pixel scales, then the rescale */
static void VFN(band)(const attn_vision_desc *d, const attn_vision_plan_info *pl, int64_t n,
                      int64_t band, const T *chs, const VFN(scratch) *s)
{
    const int64_t H = d->H, W = d->W;
    const int64_t r0 = band * pl->band_rows, r1 = attn_min64(H, r0 + pl->band_rows);
    if (r0 >= r1) return;
    const T *sc = d->pool ? chs + n * d->C : NULL;
    if (d->spatial == ATTN_SPATIAL_CONV) {
        const int64_t m0 = attn_max64(0, r0 - d->KH / 2), m1 = attn_min64(H, r1 + d->KH / 2);
        VFN(maps)(d, pl, n, sc, m0, m1, s->ms, s->mm);
        for (int64_t r = r0; r < r1; r++) {
            VFN(conv_row)(d, r, m0, s->ms, s->mm, s->acc);
            T *a = s->att + (r - r0) * W;
            for (int64_t w = 0; w < W; w++) a[w] = (T)vision_sigmoid(s->acc[w]);
        }
    } else if (d->spatial == ATTN_SPATIAL_LOGITS) {
        const T *l = (const T *)d->logits + n * d->l_sn;
        for (int64_t r = r0; r < r1; r++) {
            T *a = s->att + (r - r0) * W;
            for (int64_t w = 0; w < W; w++) a[w] = (T)vision_sigmoid(-(double)l[r * d->l_sh + w * d->l_sw]);
        }
    }
    VFN(rescale)(d, pl, n, sc, d->spatial != ATTN_SPATIAL_NONE ? s->att : NULL, r0, r1);
}

/* per-thread scratch, in doubles and Ts; -1 on overflow */
static int64_t VFN(scratch_bytes)(const attn_vision_desc *d, const attn_vision_plan_info *pl,
                                  int64_t *nmap)
{
    int64_t nd = 0, nt = 0;
    *nmap = 0;
    if (d->pool) nd = 2 * d->C + d->Cr;
    if (d->spatial == ATTN_SPATIAL_CONV) {
        *nmap = attn_mul_checked(pl->band_rows + d->KH - 1, d->W);
        if (*nmap < 0 || *nmap > INT64_MAX / 4) return -1;
        nd += 2 * *nmap + d->W;
    }
    if (d->spatial != ATTN_SPATIAL_NONE) nt = attn_mul_checked(pl->band_rows, d->W);
    if (nd < 0 || nt < 0 || nd > INT64_MAX / 16 || nt > INT64_MAX / 16) return -1;
    return nd * (int64_t)sizeof(double) + nt * (int64_t)sizeof(T) + 4 * ATTN_ALIGN;
}

attn_status VFN(attn_vision_plan)(const attn_vision_desc *d, int num_threads, attn_vision_plan_info *info)
{
    attn_status st = vision_check(d);
    if (st != ATTN_OK || !info) return st != ATTN_OK ? st : ATTN_EINVAL;
    if (d->N == 0 || d->C == 0 || d->H == 0 || d->W == 0) {
        memset(info, 0, sizeof(*info));
        info->threads = 1;
        return ATTN_OK;
    }
    vision_make_plan(d, sizeof(T), num_threads, info);
    return ATTN_OK;
}

attn_status VFN(attn_vision)(const attn_vision_desc *d, int num_threads)
{
    attn_status st = vision_check(d);
    if (st != ATTN_OK) return st;
    if (d->N == 0 || d->C == 0 || d->H == 0 || d->W == 0) return ATTN_OK;
    attn_vision_plan_info pl;
    vision_make_plan(d, sizeof(T), num_threads, &pl);
    attn_region_starts(pl.threads);   /* (the plan alone leaves no mark) */
    const int64_t N = d->N, C = d->C;

    double *psum = NULL, *pmax = NULL;
    T *chs = NULL;
    if (d->pool) {
        int64_t np = attn_mul_checked(attn_mul_checked(N, pl.pool_chunks), C);
        psum = (double *)attn_scratch_alloc_n(np, sizeof(double));
        pmax = (double *)attn_scratch_alloc_n(np, sizeof(double));
        chs = (T *)attn_scratch_alloc_n(attn_mul_checked(N, C), sizeof(T));
        if (!psum || !pmax || !chs) {
            attn_scratch_free(psum);
            attn_scratch_free(pmax);
            attn_scratch_free(chs);
            return ATTN_ENOMEM;
        }
    }
    int64_t nmap = 0;
    const int64_t bytes = VFN(scratch_bytes)(d, &pl, &nmap);
    if (bytes < 0) {
        attn_scratch_free(psum);
        attn_scratch_free(pmax);
        attn_scratch_free(chs);
        return ATTN_ENOMEM;
    }
    const int64_t nunits_pool = N * pl.pool_chunks * pl.channel_blocks;
    const int64_t per_image = pl.pool_chunks * pl.channel_blocks;
    int failed = 0, interrupted = 0;
#ifdef _OPENMP
#pragma omp parallel num_threads(pl.threads) if (pl.threads > 1)
#endif
    {
        char *mem = (char *)attn_scratch_alloc_n(bytes, 1);
        VFN(scratch) s;
        memset(&s, 0, sizeof(s));
        if (!mem) {
            attn_flag_set(&failed);
        } else {
            char *p = mem;
            if (d->pool) {
                s.v = (double *)p;
                s.hid = s.v + C;
                s.y = s.hid + d->Cr;
                p += (int64_t)sizeof(double) * (2 * C + d->Cr);
            }
            if (d->spatial == ATTN_SPATIAL_CONV) {
                s.ms = (double *)p;
                s.mm = s.ms + nmap;
                s.acc = s.mm + nmap;
                p += (int64_t)sizeof(double) * (2 * nmap + d->W);
            }
            if (d->spatial != ATTN_SPATIAL_NONE) s.att = (T *)p;
        }
        if (pl.schedule == ATTN_VISION_FUSED) {
#ifdef _OPENMP
#pragma omp for schedule(dynamic, 1)
#endif
            for (int64_t n = 0; n < N; n++) {
                if (vision_stop(d, &failed, &interrupted)) continue;
                if (d->pool) {
                    for (int64_t k = 0; k < pl.pool_chunks; k++) VFN(pool)(d, &pl, n, k, 0, C, psum, pmax);
                    VFN(mlp)(d, &pl, n, psum, pmax, chs, s.v, s.hid, s.y);
                }
                for (int64_t b = 0; b < pl.bands; b++) VFN(band)(d, &pl, n, b, chs, &s);
            }
        } else {
            if (d->pool) {
#ifdef _OPENMP
#pragma omp for schedule(dynamic, 1)
#endif
                for (int64_t u = 0; u < nunits_pool; u++) {
                    if (vision_stop(d, &failed, &interrupted)) continue;
                    int64_t n = u / per_image, k = (u % per_image) / pl.channel_blocks;
                    int64_t cb = u % pl.channel_blocks;
                    int64_t c0 = cb * C / pl.channel_blocks, c1 = (cb + 1) * C / pl.channel_blocks;
                    VFN(pool)(d, &pl, n, k, c0, c1, psum, pmax);
                }
                /* (implicit barrier: every chunk is pooled) */
#ifdef _OPENMP
#pragma omp for schedule(static)
#endif
                for (int64_t n = 0; n < N; n++) {
                    if (vision_stop(d, &failed, &interrupted)) continue;
                    VFN(mlp)(d, &pl, n, psum, pmax, chs, s.v, s.hid, s.y);
                }
                /* (implicit barrier: every channel scale is known) */
            }
#ifdef _OPENMP
#pragma omp for schedule(dynamic, 1)
#endif
            for (int64_t u = 0; u < N * pl.bands; u++) {
                if (vision_stop(d, &failed, &interrupted)) continue;
                VFN(band)(d, &pl, u / pl.bands, u % pl.bands, chs, &s);
            }
        }
        attn_scratch_free(mem);
    }
    attn_scratch_free(psum);
    attn_scratch_free(pmax);
    attn_scratch_free(chs);
    if (failed) return ATTN_ENOMEM;
    return interrupted ? ATTN_EINTR : ATTN_OK;
}

#undef T
#endif /* VISION_T */
