/*
 * Row softmax and Nadaraya-Watson kernel regression (attncore.softmax,
 * masked_softmax, kernel_regression): loop nests over a plan, one OpenMP
 * region per call. The vector exp is the active level's kernel-table entry
 * (attn_ktab_get_*(isa)->exp2); everything else here is plain C99 that the
 * compiler vectorises at the baseline ISA (no intrinsics outside csrc/arch/).
 *
 * This file instantiates its dtype-generic part twice by including itself
 * (ATTN_SOFTMAX_BODY): T = float and T = double.
 *
 * ---- softmax: loop nest -------------------------------------------------
 *
 * The plan drops size-1 row dimensions and merges row dimensions that are
 * contiguous in every array (x, out, mask, valid_lens). Then:
 *
 *   rows path (the axis has unit stride in x, or no row dimension does):
 *   for unit u in row ranges of ~SM_UNIT_ELEMS elements     <- omp for, dynamic
 *       for row r in the unit (an odometer over the row dimensions)
 *           m = max_j s_j over kept entries  (s = x [+ mask], in double
 *               for float32)                                  pass 1: x
 *           no kept entry / NaN: write zeros / NaNs; next row
 *           t_j = (s_j - m) log2 e  -> T, masked: -inf (or fill - m)
 *               staged into the unit's chunk buffer; rows shorter than
 *               SM_CHUNK share one buffer (a batch)           pass 2: x
 *       per batch: exp2 on the whole buffer (kernel table), then per row
 *           sum (double; float64: compensated), out_j = e_j / sum
 *       rows longer than SM_CHUNK: chunks of it staged, exp2'd and summed,
 *           written to out raw, then out_j /= sum            pass 3: out
 *
 *   panel path (the axis is strided in x and a row dimension has unit
 *   stride in x, e.g. axis=0 of a C-ordered matrix): lanes = W rows that are
 *   adjacent in memory, so every pass reads lines of W contiguous values:
 *   for unit u in (outer row index, block of W lanes)       <- omp for, dynamic
 *       for j < L: m[r] = max(m[r], s_jr)                    pass 1
 *       for blocks of j: stage t_jr, exp2 on the block, sum[r] += e_jr
 *           (in j order per lane), write e (or keep it when the whole
 *           panel fits one block)                            pass 2
 *       out_jr = e_jr / sum[r]                               pass 3
 *
 * ---- kernel regression: loop nest ----------------------------------------
 *
 *   for unit u in (batch b, block of KR_QUERY_BLOCK query rows)   <- omp for, dynamic
 *       for query i in the block
 *           m = -inf, l = 0, acc[Dy] = 0
 *           for key block [j0, j0 + KR_KEY_BLOCK) below the valid length
 *               s_j = score(|xq_i - xk_j|) in log2 units (the difference
 *                     first, squared, in double), + mask, or -inf
 *               m' = max(m, max_j s_j); l, acc *= exp2(m - m')   (online)
 *               e_j = exp2(s_j - m')  (kernel table); l += sum e, acc += e y
 *           out_i = acc / l (zeros when l == 0)
 *           weights: the scores again, exp2(s_j - m) / l      (return_weights)
 *   epanechnikov: e_j = max(1 - r^2/h^2, 0) directly, no max, no rescaling.
 *
 * ---- determinism ----------------------------------------------------------
 *
 * Every output row is computed by exactly one unit, with a sequence of
 * operations fixed by the problem's shape and layout (the unit sizes, chunk
 * and block lengths are constants or functions of the sizes, never of the
 * thread count), and the vector exp2 is elementwise. Results are therefore
 * bitwise identical for any number of threads.
 *
 * ---- preconditions ----------------------------------------------------------
 *
 * The kernel-table exp2 takes n >= 0 contiguous values and may work in
 * place; the buffers handed to it are scratch of at least n elements. Every
 * pointer formed here is inside its array: row offsets come from the
 * descriptor's strides and sizes, which the Cython layer takes from the
 * arrays themselves; the descriptor check rejects sizes whose products
 * overflow int64.
 */
#ifndef ATTN_SOFTMAX_BODY

#include <math.h>
#include <stdint.h>
#include <string.h>
#include "attncore/softmax.h"
#include "../kernels/ktab.h"
#include "workspace.h"

#define SM_CHUNK 4096        /* elements of the staging buffer (one exp2 call) */
#define SM_BATCH_ROWS 512    /* most short rows one buffer holds */
#define SM_UNIT_ELEMS 16384  /* rows path: elements per work unit (at least one row) */
#define SM_PANEL_BYTES 256   /* panel path: lanes * sizeof(T) */
#define SM_MAX_LANES 64      /* = SM_PANEL_BYTES / sizeof(float): the per-lane arrays */
#define SM_WORK_PER_ELEM 8.0 /* multiply-add equivalents per element, for the thread count */
#define KR_QUERY_BLOCK 8     /* kernel regression: query rows per work unit */
#define KR_KEY_BLOCK 256     /* kernel regression: keys per block */

#define SM_CAT_(a, b) a##_##b
#define SM_CAT(a, b) SM_CAT_(a, b)

/* ---- the softmax plan (dtype-independent) ---- */

typedef struct {
    const attn_softmax_desc *d;
    /* row dimensions after dropping size-1 ones and merging contiguous ones;
     * on the panel path the lane dimension is taken out of this list */
    int nd;
    int64_t shape[ATTN_SOFTMAX_MAX_DIMS];
    int64_t xs[ATTN_SOFTMAX_MAX_DIMS], os[ATTN_SOFTMAX_MAX_DIMS];
    int64_t ms[ATTN_SOFTMAX_MAX_DIMS], vs[ATTN_SOFTMAX_MAX_DIMS];
    int64_t rows;           /* all rows */
    int64_t outer;          /* rows path: rows; panel path: rows / lanes */
    int panel;
    int64_t lanes, x_ls, o_ls, m_ls, v_ls;   /* panel: the lane dimension */
    int64_t W, lane_blocks; /* panel: lanes per unit, units per outer row */
    int64_t rows_per_unit;  /* rows path */
    int64_t units;
} sm_plan;

/* Position of a row (or an outer index): its multi-index and the offset of
 * its element 0 in every array. */
typedef struct {
    int64_t idx[ATTN_SOFTMAX_MAX_DIMS];
    int64_t ox, oo, om, ov;
} sm_pos;

static void sm_pos_set(const sm_plan *P, int64_t flat, sm_pos *p)
{
    p->ox = p->oo = p->om = p->ov = 0;
    for (int k = P->nd - 1; k >= 0; k--) {
        int64_t i = flat % P->shape[k];
        flat /= P->shape[k];
        p->idx[k] = i;
        p->ox += i * P->xs[k];
        p->oo += i * P->os[k];
        p->om += i * P->ms[k];
        p->ov += i * P->vs[k];
    }
}

static void sm_pos_next(const sm_plan *P, sm_pos *p)
{
    for (int k = P->nd - 1; k >= 0; k--) {
        if (++p->idx[k] < P->shape[k]) {
            p->ox += P->xs[k];
            p->oo += P->os[k];
            p->om += P->ms[k];
            p->ov += P->vs[k];
            return;
        }
        p->idx[k] = 0;
        p->ox -= (P->shape[k] - 1) * P->xs[k];
        p->oo -= (P->shape[k] - 1) * P->os[k];
        p->om -= (P->shape[k] - 1) * P->ms[k];
        p->ov -= (P->shape[k] - 1) * P->vs[k];
    }
}

static attn_status sm_check(const attn_softmax_desc *d)
{
    if (!d) return ATTN_EINVAL;
    if (d->ndim < 0 || d->ndim > ATTN_SOFTMAX_MAX_DIMS || d->L < 0) return ATTN_EINVAL;
    if (d->mask_kind < ATTN_MASK_NONE || d->mask_kind > ATTN_MASK_ADD) return ATTN_EINVAL;
    if (d->fill_masked != 0 && d->fill_masked != 1) return ATTN_EINVAL;
    if (d->fill_masked && !(d->fill == d->fill)) return ATTN_EINVAL;
    int64_t n = d->L;
    for (int k = 0; k < d->ndim; k++) {
        if (d->shape[k] < 0) return ATTN_EINVAL;
        n = attn_mul_checked(n, d->shape[k]);
        if (n < 0) return ATTN_EINVAL;
    }
    int64_t rows = 1;
    for (int k = 0; k < d->ndim; k++) rows = attn_mul_checked(rows, d->shape[k]);
    if (rows < 0) return ATTN_EINVAL;
    if (rows == 0 || d->L == 0) return ATTN_OK;
    if (!d->x || !d->out) return ATTN_EINVAL;
    if (d->mask_kind != ATTN_MASK_NONE && !d->mask) return ATTN_EINVAL;
    return ATTN_OK;
}

/* rows * L * SM_WORK_PER_ELEM, for attn_region_threads */
static double sm_work(const sm_plan *P) { return (double)P->rows * (double)P->d->L * SM_WORK_PER_ELEM; }

static void sm_make_plan(sm_plan *P, const attn_softmax_desc *d, int64_t elem_size)
{
    memset(P, 0, sizeof *P);
    P->d = d;
    const int has_m = d->mask_kind != ATTN_MASK_NONE, has_v = d->valid_lens != NULL;
    /* size-1 dimensions dropped; a dimension merged into the one before it
     * when every array steps through both as through one */
    int nd = 0;
    P->rows = 1;
    for (int k = 0; k < d->ndim; k++) {
        int64_t n = d->shape[k];
        P->rows *= n;
        if (n == 1) continue;
        int64_t xs = d->x_st[k], os = d->o_st[k];
        int64_t ms = has_m ? d->m_st[k] : 0, vs = has_v ? d->vl_st[k] : 0;
        if (nd > 0 && P->xs[nd - 1] == xs * n && P->os[nd - 1] == os * n &&
            P->ms[nd - 1] == ms * n && P->vs[nd - 1] == vs * n) {
            P->shape[nd - 1] *= n;
            P->xs[nd - 1] = xs;
            P->os[nd - 1] = os;
            P->ms[nd - 1] = ms;
            P->vs[nd - 1] = vs;
            continue;
        }
        P->shape[nd] = n;
        P->xs[nd] = xs;
        P->os[nd] = os;
        P->ms[nd] = ms;
        P->vs[nd] = vs;
        nd++;
    }
    P->nd = nd;

    /* the panel path: the axis is strided in x, a row dimension is not */
    int lane = -1;
    if (d->L > 1 && d->x_sl != 1 && d->x_sl != -1) {
        for (int k = 0; k < nd; k++)
            if ((P->xs[k] == 1 || P->xs[k] == -1) && (lane < 0 || P->shape[k] > P->shape[lane])) lane = k;
    }
    if (lane >= 0) {
        P->panel = 1;
        P->lanes = P->shape[lane];
        P->x_ls = P->xs[lane];
        P->o_ls = P->os[lane];
        P->m_ls = P->ms[lane];
        P->v_ls = P->vs[lane];
        for (int k = lane; k + 1 < nd; k++) {
            P->shape[k] = P->shape[k + 1];
            P->xs[k] = P->xs[k + 1];
            P->os[k] = P->os[k + 1];
            P->ms[k] = P->ms[k + 1];
            P->vs[k] = P->vs[k + 1];
        }
        P->nd = nd - 1;
        P->W = attn_min64(attn_min64(SM_PANEL_BYTES / elem_size, SM_MAX_LANES), P->lanes);
        P->lane_blocks = (P->lanes + P->W - 1) / P->W;
        P->outer = P->rows / P->lanes;
        P->units = P->outer * P->lane_blocks;
    } else {
        P->outer = P->rows;
        P->rows_per_unit = attn_max64(1, SM_UNIT_ELEMS / attn_max64(d->L, 1));
        P->units = (P->rows + P->rows_per_unit - 1) / P->rows_per_unit;
    }
}

static void sm_fill_info(const sm_plan *P, int num_threads, attn_softmax_plan_info *info)
{
    memset(info, 0, sizeof *info);
    info->path = P->panel ? ATTN_SOFTMAX_PATH_PANEL : ATTN_SOFTMAX_PATH_ROWS;
    info->lanes = P->panel ? P->lanes : 0;
    info->rows = P->rows;
    info->units = P->units;
    info->rows_per_unit = P->panel ? P->W : P->rows_per_unit;
    info->chunk = SM_CHUNK;
    info->threads = attn_region_threads(num_threads, P->units, sm_work(P));
}

static attn_status kr_check(const attn_kreg_desc *d)
{
    if (!d) return ATTN_EINVAL;
    if (d->B < 0 || d->Lq < 0 || d->Lk < 0 || d->D < 0 || d->Dy < 0) return ATTN_EINVAL;
    if (d->kernel < ATTN_KR_GAUSSIAN || d->kernel > ATTN_KR_EPANECHNIKOV) return ATTN_EINVAL;
    if (!(d->bandwidth > 0) || !isfinite(d->bandwidth)) return ATTN_EINVAL;
    if (d->mask_kind < ATTN_MASK_NONE || d->mask_kind > ATTN_MASK_ADD) return ATTN_EINVAL;
    if (d->kernel == ATTN_KR_EPANECHNIKOV && d->mask_kind == ATTN_MASK_ADD) return ATTN_EINVAL;
    int64_t rows = attn_mul_checked(d->B, d->Lq);
    if (rows < 0 || attn_mul_checked(rows, d->Lk) < 0) return ATTN_EINVAL;
    if (attn_mul_checked(rows, attn_max64(d->Dy, 1)) < 0) return ATTN_EINVAL;
    int64_t keys = attn_mul_checked(d->B, d->Lk);
    if (keys < 0 || attn_mul_checked(keys, attn_max64(d->D, 1)) < 0) return ATTN_EINVAL;
    if (attn_mul_checked(keys, attn_max64(d->Dy, 1)) < 0) return ATTN_EINVAL;
    if (d->D > ((int64_t)1 << 40) || d->Dy > ((int64_t)1 << 40)) return ATTN_EINVAL;
    if (rows == 0) return ATTN_OK;
    if (!d->xq || !d->xq_boff || !d->out || !d->o_boff) return ATTN_EINVAL;
    if (d->Lk > 0 && (!d->xk || !d->xk_boff || !d->y || !d->y_boff)) return ATTN_EINVAL;
    if (d->mask_kind != ATTN_MASK_NONE && (!d->mask || !d->m_boff)) return ATTN_EINVAL;
    if (d->valid_lens && !d->vl_boff) return ATTN_EINVAL;
    return ATTN_OK;
}

/* ---- the dtype-generic part, twice ---- */
#define ATTN_SOFTMAX_BODY

#define T float
#define TAG f32
#define IS_F32 1
#define KTAB attn_ktab_f32
#define KTAB_GET attn_ktab_get_f32
#include "softmax.c"
#undef T
#undef TAG
#undef IS_F32
#undef KTAB
#undef KTAB_GET

#define T double
#define TAG f64
#define IS_F32 0
#define KTAB attn_ktab_f64
#define KTAB_GET attn_ktab_get_f64
#include "softmax.c"
#undef T
#undef TAG
#undef IS_F32
#undef KTAB
#undef KTAB_GET

#else /* ATTN_SOFTMAX_BODY: one dtype */

#define SMF(name) SM_CAT(name, TAG)

/* exp2's argument, as T, for a natural-log difference d <= 0 (or NaN, or
 * -inf for a masked entry). float32: d comes in double (exact for float
 * inputs), so the argument is rounded once; below -256 it is clamped (exp2
 * gives 0 below -126 anyway, and the conversion stays in range). */
static inline T SMF(arg)(double d)
{
    double t = d * ATTN_LOG2E;
#if IS_F32
    return (T)(t < -256.0 ? -256.0 : t);
#else
    return t;
#endif
}

/* The normalised weight e / sum. float32: e times the double reciprocal,
 * rounded once; float64: a division. */
#if IS_F32
#define SM_RECIP(sum) (1.0 / (sum))
#define SM_NORM(e, sum, r) ((T)((double)(e) * (r)))
#else
#define SM_RECIP(sum) (sum)
#define SM_NORM(e, sum, r) ((void)(r), (e) / (sum))
#endif

/* Sum of n contiguous values: eight lanes in double, combined in a fixed
 * order; float64 lanes are compensated (Kahan), so the error stays a few
 * ulp for any n. */
static double SMF(sum)(const T *e, int64_t n)
{
    double a[8] = {0, 0, 0, 0, 0, 0, 0, 0};
#if IS_F32
    int64_t j = 0;
    for (; j + 8 <= n; j += 8)
        for (int k = 0; k < 8; k++) a[k] += (double)e[j + k];
    for (int k = 0; j < n; j++, k++) a[k] += (double)e[j];
    return ((a[0] + a[4]) + (a[1] + a[5])) + ((a[2] + a[6]) + (a[3] + a[7]));
#else
    double c[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    int64_t j = 0;
    for (; j + 8 <= n; j += 8)
        for (int k = 0; k < 8; k++) {
            double y = e[j + k] - c[k];
            double t = a[k] + y;
            c[k] = (t - a[k]) - y;
            a[k] = t;
        }
    for (int k = 0; j < n; j++, k++) {
        double y = e[j] - c[k];
        double t = a[k] + y;
        c[k] = (t - a[k]) - y;
        a[k] = t;
    }
    for (int k = 0; k < 8; k++) a[k] -= c[k];
    return ((a[0] + a[4]) + (a[1] + a[5])) + ((a[2] + a[6]) + (a[3] + a[7]));
#endif
}

/* Add a block sum to a running sum (float64: compensated). */
static inline void SMF(accumulate)(double *s, double *c, double v)
{
#if IS_F32
    (void)c;
    *s += v;
#else
    double y = v - *c;
    double t = *s + y;
    *c = (t - *s) - y;
    *s = t;
#endif
}

/* max of n values x[j * s], NaN ignored; -inf for n == 0 */
static double SMF(max_plain)(const T *x, int64_t s, int64_t n)
{
    T a[8];
    for (int k = 0; k < 8; k++) a[k] = (T)-INFINITY;
    int64_t j = 0;
    if (s == 1) {
        for (; j + 8 <= n; j += 8)
            for (int k = 0; k < 8; k++) a[k] = x[j + k] > a[k] ? x[j + k] : a[k];
    }
    for (; j < n; j++) a[0] = x[j * s] > a[0] ? x[j * s] : a[0];
    T m = a[0];
    for (int k = 1; k < 8; k++) m = a[k] > m ? a[k] : m;
    return (double)m;
}

/* ---- softmax: one row ---- */

typedef struct {
    const T *x;
    T *o;
    const unsigned char *mb;   /* bool mask row, or NULL */
    const T *ma;               /* additive mask row, or NULL */
    int64_t len;               /* entries j < len may be kept */
} SMF(row);

static void SMF(row_at)(const sm_plan *P, const sm_pos *p, int64_t lane, SMF(row) *R)
{
    const attn_softmax_desc *d = P->d;
    R->x = (const T *)d->x + p->ox + lane * P->x_ls;
    R->o = (T *)d->out + p->oo + lane * P->o_ls;
    R->mb = NULL;
    R->ma = NULL;
    if (d->mask_kind == ATTN_MASK_BOOL) R->mb = (const unsigned char *)d->mask + p->om + lane * P->m_ls;
    if (d->mask_kind == ATTN_MASK_ADD) R->ma = (const T *)d->mask + p->om + lane * P->m_ls;
    R->len = d->valid_lens ? d->valid_lens[p->ov + lane * P->v_ls] : d->L;
    if (R->len < 0) R->len = 0;
    if (R->len > d->L) R->len = d->L;
}

/* Pass 1: the largest score among the kept entries (and the fill value
 * when an entry is masked in fill mode); -inf when there is none. */
static double SMF(row_max)(const sm_plan *P, const SMF(row) *R)
{
    const attn_softmax_desc *d = P->d;
    const int64_t n = R->len, xs = d->x_sl, ms = d->m_sl;
    double m = -INFINITY;
    int masked = n < d->L;
    if (R->mb) {
        for (int64_t j = 0; j < n; j++) {
            if (R->mb[j * ms]) {
                double v = (double)R->x[j * xs];
                m = v > m ? v : m;
            } else {
                masked = 1;
            }
        }
    } else if (R->ma) {
        for (int64_t j = 0; j < n; j++) {
            double v = (double)R->x[j * xs] + (double)R->ma[j * ms];
            m = v > m ? v : m;
        }
    } else {
        m = SMF(max_plain)(R->x, xs, n);
    }
    if (d->fill_masked && masked && d->fill > m) m = d->fill;
    return m;
}

/* A row without a finite maximum: NaN if a kept entry is NaN, else zeros
 * (no entry kept, or all of them -inf). */
static void SMF(row_special)(const sm_plan *P, const SMF(row) *R)
{
    const attn_softmax_desc *d = P->d;
    const int64_t xs = d->x_sl, ms = d->m_sl, os = d->o_sl;
    int nan = 0;
    for (int64_t j = 0; j < R->len && !nan; j++) {
        if (R->mb && !R->mb[j * ms]) continue;
        double v = (double)R->x[j * xs] + (R->ma ? (double)R->ma[j * ms] : 0.0);
        nan = v != v;
    }
    T value = nan ? (T)NAN : (T)0;
    for (int64_t j = 0; j < d->L; j++) R->o[j * os] = value;
}

/* Pass 2's staging: t[jj] = exp2 argument of entry j0 + jj, jj < n. */
static void SMF(row_stage)(const sm_plan *P, const SMF(row) *R, double m, int64_t j0, int64_t n, T *t)
{
    const attn_softmax_desc *d = P->d;
    const int64_t xs = d->x_sl, ms = d->m_sl;
    const T tm = d->fill_masked ? SMF(arg)(d->fill - m) : (T)-INFINITY;
    int64_t nv = attn_max64(0, attn_min64(n, R->len - j0));
    const T *x = R->x + j0 * xs;
    if (R->mb) {
        const unsigned char *mb = R->mb + j0 * ms;
        for (int64_t jj = 0; jj < nv; jj++) t[jj] = mb[jj * ms] ? SMF(arg)((double)x[jj * xs] - m) : tm;
    } else if (R->ma) {
        const T *ma = R->ma + j0 * ms;
        for (int64_t jj = 0; jj < nv; jj++)
            t[jj] = SMF(arg)(((double)x[jj * xs] + (double)ma[jj * ms]) - m);
    } else if (xs == 1) {
        for (int64_t jj = 0; jj < nv; jj++) t[jj] = SMF(arg)((double)x[jj] - m);
    } else {
        for (int64_t jj = 0; jj < nv; jj++) t[jj] = SMF(arg)((double)x[jj * xs] - m);
    }
    for (int64_t jj = nv; jj < n; jj++) t[jj] = tm;
}

/* out_j = e_j / sum for j < n */
static void SMF(row_write)(T *o, int64_t os, const T *e, int64_t n, double sum)
{
    const double r = SM_RECIP(sum);
    if (os == 1) {
        for (int64_t j = 0; j < n; j++) o[j] = SM_NORM(e[j], sum, r);
    } else {
        for (int64_t j = 0; j < n; j++) o[j * os] = SM_NORM(e[j], sum, r);
    }
}

/* A row longer than the staging buffer: chunks staged, exp2'd, summed and
 * written raw; then normalised in place in out. */
static void SMF(row_long)(const sm_plan *P, const KTAB *kt, const SMF(row) *R, double m, T *buf)
{
    const attn_softmax_desc *d = P->d;
    const int64_t L = d->L, os = d->o_sl;
    double sum = 0, comp = 0;
    for (int64_t j0 = 0; j0 < L; j0 += SM_CHUNK) {
        int64_t n = attn_min64(SM_CHUNK, L - j0);
        SMF(row_stage)(P, R, m, j0, n, buf);
        kt->exp2(n, buf, buf);
        SMF(accumulate)(&sum, &comp, SMF(sum)(buf, n));
        T *o = R->o + j0 * os;
        for (int64_t jj = 0; jj < n; jj++) o[jj * os] = buf[jj];
    }
    sum -= comp;
    const double r = SM_RECIP(sum);
    for (int64_t j = 0; j < L; j++) R->o[j * os] = SM_NORM(R->o[j * os], sum, r);
}

/* Scratch of the rows path: the staging buffer, then the batch's rows. */
typedef struct {
    T *o;
    int64_t off;
} SMF(batch_rec);

static void SMF(flush)(const sm_plan *P, const KTAB *kt, T *buf, int64_t used, const SMF(batch_rec) *rec,
                       int nrec)
{
    const attn_softmax_desc *d = P->d;
    kt->exp2(used, buf, buf);
    for (int k = 0; k < nrec; k++) {
        const T *e = buf + rec[k].off;
        SMF(row_write)(rec[k].o, d->o_sl, e, d->L, SMF(sum)(e, d->L));
    }
}

/* The rows path's loop nest for one unit. Returns 1 if interrupted. */
static int SMF(rows_unit)(const sm_plan *P, const KTAB *kt, int64_t u, T *buf, SMF(batch_rec) *rec)
{
    const attn_softmax_desc *d = P->d;
    const int64_t L = d->L;
    int64_t first = u * P->rows_per_unit;
    int64_t nrows = attn_min64(P->rows_per_unit, P->rows - first);
    sm_pos p;
    sm_pos_set(P, first, &p);
    int64_t used = 0;
    int nrec = 0;
    for (int64_t r = 0; r < nrows; r++, sm_pos_next(P, &p)) {
        if (attn_cancelled(d->cancellable, d->cancel_epoch)) return 1;
        SMF(row) R;
        SMF(row_at)(P, &p, 0, &R);
        double m = SMF(row_max)(P, &R);
        if (!(m > -INFINITY)) {
            SMF(row_special)(P, &R);
            continue;
        }
        if (L > SM_CHUNK) {
            SMF(row_long)(P, kt, &R, m, buf);
            continue;
        }
        if (used + L > SM_CHUNK || nrec == SM_BATCH_ROWS) {
            SMF(flush)(P, kt, buf, used, rec, nrec);
            used = 0;
            nrec = 0;
        }
        SMF(row_stage)(P, &R, m, 0, L, buf + used);
        rec[nrec].o = R.o;
        rec[nrec].off = used;
        nrec++;
        used += L;
    }
    if (nrec) SMF(flush)(P, kt, buf, used, rec, nrec);
    return 0;
}

/* ---- softmax: the panel path ---- */

/* Per-lane state of a panel (W lanes at most). */
typedef struct {
    double m[SM_MAX_LANES];     /* the max; +inf for dead lanes (see below) */
    double sum[SM_MAX_LANES], comp[SM_MAX_LANES], r[SM_MAX_LANES];
    int64_t len[SM_MAX_LANES];
    T tm[SM_MAX_LANES];         /* the masked entries' argument */
    int masked[SM_MAX_LANES];
    int dead[SM_MAX_LANES];     /* no finite max: the lane is zeros (or NaN) */
    T deadval[SM_MAX_LANES];
} SMF(lanes);

/* Score of entry (j, lane r) with its mask; *keep = 0 when masked. */
static inline double SMF(panel_score)(const sm_plan *P, const T *xj, const unsigned char *mbj, const T *maj,
                                      int64_t j, int64_t r, int64_t len, int *keep)
{
    if (j >= len || (mbj && !mbj[r * P->m_ls])) {
        *keep = 0;
        return -INFINITY;
    }
    *keep = 1;
    double v = (double)xj[r * P->x_ls];
    if (maj) v += (double)maj[r * P->m_ls];
    return v;
}

static int SMF(panel_unit)(const sm_plan *P, const KTAB *kt, int64_t u, T *buf, SMF(lanes) *S)
{
    const attn_softmax_desc *d = P->d;
    const int64_t L = d->L, xsl = d->x_sl, osl = d->o_sl, msl = d->m_sl;
    const int64_t xls = P->x_ls, ols = P->o_ls;
    int64_t outer = u / P->lane_blocks, l0 = (u % P->lane_blocks) * P->W;
    int64_t nl = attn_min64(P->W, P->lanes - l0);
    sm_pos p;
    sm_pos_set(P, outer, &p);
    SMF(row) R;
    SMF(row_at)(P, &p, l0, &R);   /* lane l0's row: the panel's base pointers */
    const T *xb = R.x;
    T *ob = R.o;
    const unsigned char *mb = R.mb;
    const T *ma = R.ma;
    const int general = mb || ma || d->valid_lens;
    if (attn_cancelled(d->cancellable, d->cancel_epoch)) return 1;

    /* pass 1: the lanes' maxima */
    for (int64_t r = 0; r < nl; r++) {
        S->m[r] = -INFINITY;
        S->masked[r] = 0;
        S->len[r] = d->valid_lens ? attn_min64(attn_max64(d->valid_lens[p.ov + (l0 + r) * P->v_ls], 0), L) : L;
    }
    for (int64_t j = 0; j < L; j++) {
        const T *xj = xb + j * xsl;
        if (!general) {
            for (int64_t r = 0; r < nl; r++) {
                double v = (double)xj[r * xls];
                S->m[r] = v > S->m[r] ? v : S->m[r];
            }
            continue;
        }
        const unsigned char *mbj = mb ? mb + j * msl : NULL;
        const T *maj = ma ? ma + j * msl : NULL;
        for (int64_t r = 0; r < nl; r++) {
            int keep;
            double v = SMF(panel_score)(P, xj, mbj, maj, j, r, S->len[r], &keep);
            if (!keep) S->masked[r] = 1;
            else S->m[r] = v > S->m[r] ? v : S->m[r];
        }
    }
    for (int64_t r = 0; r < nl; r++) {
        if (d->fill_masked && S->masked[r] && d->fill > S->m[r]) S->m[r] = d->fill;
        S->dead[r] = !(S->m[r] > -INFINITY);
        S->tm[r] = d->fill_masked ? SMF(arg)(d->fill - S->m[r]) : (T)-INFINITY;
        S->sum[r] = 0;
        S->comp[r] = 0;
        if (S->dead[r]) {
            /* zeros, or NaN when a kept entry is NaN */
            int nan = 0;
            for (int64_t j = 0; j < L && !nan; j++) {
                int keep;
                double v = SMF(panel_score)(P, xb + j * xsl, mb ? mb + j * msl : NULL, ma ? ma + j * msl : NULL,
                                            j, r, S->len[r], &keep);
                nan = keep && v != v;
            }
            S->deadval[r] = nan ? (T)NAN : (T)0;
            S->m[r] = INFINITY;   /* its staged arguments are -inf or NaN: harmless */
            S->tm[r] = (T)-INFINITY;
        }
    }

    /* pass 2: stage, exp2 and sum a block of lines at a time */
    const int64_t jb = attn_max64(1, SM_CHUNK / nl);
    const int single = L <= jb;
    for (int64_t j0 = 0; j0 < L; j0 += jb) {
        if (attn_cancelled(d->cancellable, d->cancel_epoch)) return 1;
        int64_t n = attn_min64(jb, L - j0);
        for (int64_t jj = 0; jj < n; jj++) {
            int64_t j = j0 + jj;
            const T *xj = xb + j * xsl;
            T *t = buf + jj * nl;
            if (!general) {
                for (int64_t r = 0; r < nl; r++) t[r] = SMF(arg)((double)xj[r * xls] - S->m[r]);
                continue;
            }
            const unsigned char *mbj = mb ? mb + j * msl : NULL;
            const T *maj = ma ? ma + j * msl : NULL;
            for (int64_t r = 0; r < nl; r++) {
                int keep;
                double v = SMF(panel_score)(P, xj, mbj, maj, j, r, S->len[r], &keep);
                t[r] = keep ? SMF(arg)(v - S->m[r]) : S->tm[r];
            }
        }
        kt->exp2(n * nl, buf, buf);
        for (int64_t jj = 0; jj < n; jj++) {
            const T *e = buf + jj * nl;
#if IS_F32
            for (int64_t r = 0; r < nl; r++) S->sum[r] += (double)e[r];
#else
            for (int64_t r = 0; r < nl; r++) {
                double y = e[r] - S->comp[r];
                double t = S->sum[r] + y;
                S->comp[r] = (t - S->sum[r]) - y;
                S->sum[r] = t;
            }
#endif
        }
        if (!single) {
            for (int64_t jj = 0; jj < n; jj++) {
                T *o = ob + (j0 + jj) * osl;
                const T *e = buf + jj * nl;
                for (int64_t r = 0; r < nl; r++) o[r * ols] = e[r];
            }
        }
    }

    /* pass 3: normalise */
    for (int64_t r = 0; r < nl; r++) {
        S->sum[r] -= S->comp[r];
        S->r[r] = SM_RECIP(S->sum[r]);
    }
    for (int64_t j = 0; j < L; j++) {
        T *o = ob + j * osl;
        const T *e = single ? buf + j * nl : NULL;
        for (int64_t r = 0; r < nl; r++) {
            T v = single ? e[r] : o[r * ols];
            o[r * ols] = S->dead[r] ? S->deadval[r] : SM_NORM(v, S->sum[r], S->r[r]);
        }
    }
    return 0;
}

/* ---- softmax: entry points ---- */

attn_status SMF(attn_softmax_plan)(const attn_softmax_desc *d, int isa, int num_threads,
                                   attn_softmax_plan_info *info)
{
    attn_status st = sm_check(d);
    if (st != ATTN_OK) return st;
    if (!info) return ATTN_EINVAL;
    if (!KTAB_GET(isa)) return ATTN_EISA;
    sm_plan P;
    sm_make_plan(&P, d, (int64_t)sizeof(T));
    sm_fill_info(&P, num_threads, info);
    if (P.rows == 0 || d->L == 0) info->units = 0;
    return ATTN_OK;
}

attn_status SMF(attn_softmax)(const attn_softmax_desc *d, int isa, int num_threads)
{
    attn_status st = sm_check(d);
    if (st != ATTN_OK) return st;
    const KTAB *kt = KTAB_GET(isa);
    if (!kt) return ATTN_EISA;
    sm_plan P;
    sm_make_plan(&P, d, (int64_t)sizeof(T));
    if (P.rows == 0 || d->L == 0) return ATTN_OK;

    int nthreads = attn_region_threads(num_threads, P.units, sm_work(&P));
    int failed = 0, interrupted = 0;
    (void)nthreads; /* unused without OpenMP */
#ifdef _OPENMP
#pragma omp parallel num_threads(nthreads) if (nthreads > 1)
#endif
    {
        T *buf = (T *)attn_scratch_alloc_n(SM_CHUNK, sizeof(T));
        void *aux = P.panel ? attn_scratch_alloc(sizeof(SMF(lanes)))
                            : attn_scratch_alloc_n(SM_BATCH_ROWS, sizeof(SMF(batch_rec)));
        if (!buf || !aux) attn_flag_set(&failed);
#ifdef _OPENMP
#pragma omp for schedule(dynamic, 1)
#endif
        for (int64_t u = 0; u < P.units; u++) {
            if (attn_flag_get(&failed) || attn_flag_get(&interrupted)) continue;
            int stop = P.panel ? SMF(panel_unit)(&P, kt, u, buf, (SMF(lanes) *)aux)
                               : SMF(rows_unit)(&P, kt, u, buf, (SMF(batch_rec) *)aux);
            if (stop) attn_flag_set(&interrupted);
        }
        attn_scratch_free(aux);
        attn_scratch_free(buf);
    }
    if (failed) return ATTN_ENOMEM;
    return interrupted ? ATTN_EINTR : ATTN_OK;
}

/* ---- kernel regression ---- */

typedef struct {
    const attn_kreg_desc *d;
    const KTAB *kt;
    double cs;          /* gaussian: log2 e / (2 h^2); laplace: log2 e / h */
    double ih2;         /* epanechnikov: 1 / h^2 */
    int64_t qblocks;    /* query blocks per batch element */
    int64_t units;
} SMF(kr_plan);

/* Per-thread scratch: scores (double), their exp2 (T), the accumulators. */
typedef struct {
    double s[KR_KEY_BLOCK];
    T e[KR_KEY_BLOCK];
} SMF(kr_tile);

/* Scores of keys [j0, j0 + n) for query xq, in log2 units (epanechnikov:
 * the kernel values themselves); -inf (0) where masked. Returns 1 if a kept
 * score is NaN. */
static int SMF(kr_scores)(const SMF(kr_plan) *K, const T *xq, const T *xk0, const unsigned char *mb,
                          const T *ma, int64_t j0, int64_t n, double *s)
{
    const attn_kreg_desc *d = K->d;
    const int64_t D = d->D, ksl = d->xk_sl, msj = d->m_sj;
    const T *xk = xk0 + j0 * ksl;
    if (D == 1) {
        const double q = (double)xq[0];
        for (int64_t jj = 0; jj < n; jj++) {
            double diff = q - (double)xk[jj * ksl];
            s[jj] = diff * diff;
        }
    } else {
        for (int64_t jj = 0; jj < n; jj++) {
            const T *k = xk + jj * ksl;
            double acc = 0;
            for (int64_t c = 0; c < D; c++) {
                double diff = (double)xq[c] - (double)k[c];
                acc += diff * diff;
            }
            s[jj] = acc;
        }
    }
    int nan = 0;
    switch (d->kernel) {
    case ATTN_KR_GAUSSIAN:
        for (int64_t jj = 0; jj < n; jj++) s[jj] = -(s[jj] * K->cs);
        break;
    case ATTN_KR_LAPLACE:
        for (int64_t jj = 0; jj < n; jj++) s[jj] = -(sqrt(s[jj]) * K->cs);
        break;
    default: /* epanechnikov: the kernel value (NaN kept) */
        for (int64_t jj = 0; jj < n; jj++) {
            double k = 1.0 - s[jj] * K->ih2;
            s[jj] = k < 0 ? 0.0 : k;
        }
        break;
    }
    const double masked = d->kernel == ATTN_KR_EPANECHNIKOV ? 0.0 : -INFINITY;
    if (mb) {
        for (int64_t jj = 0; jj < n; jj++)
            if (!mb[(j0 + jj) * msj]) s[jj] = masked;
    } else if (ma) {
        for (int64_t jj = 0; jj < n; jj++) s[jj] += (double)ma[(j0 + jj) * msj] * ATTN_LOG2E;
    }
    for (int64_t jj = 0; jj < n; jj++) nan |= s[jj] != s[jj];
    return nan;
}

/* e_j (T) from the scores: exp2(s_j - m) (or the epanechnikov values) */
static void SMF(kr_exp)(const SMF(kr_plan) *K, const double *s, double m, int64_t n, T *e)
{
    if (K->d->kernel == ATTN_KR_EPANECHNIKOV) {
        for (int64_t jj = 0; jj < n; jj++) e[jj] = (T)s[jj];
        return;
    }
    for (int64_t jj = 0; jj < n; jj++) {
        double t = s[jj] - m;
#if IS_F32
        e[jj] = (T)(t < -256.0 ? -256.0 : t);
#else
        e[jj] = t;
#endif
    }
    K->kt->exp2(n, e, e);
}

/* One query row: out (Dy values) and, if asked, its weights row. */
static void SMF(kr_row)(const SMF(kr_plan) *K, int64_t b, int64_t i, SMF(kr_tile) *tile, double *acc,
                        double *accc, double *bacc)
{
    const attn_kreg_desc *d = K->d;
    const int64_t Dy = d->Dy, Lk = d->Lk, ysl = d->y_sl;
    const T *xq = (const T *)d->xq + d->xq_boff[b] + i * d->xq_sl;
    T *out = (T *)d->out + d->o_boff[b] + i * d->o_sl;
    const T *xk0 = Lk > 0 ? (const T *)d->xk + d->xk_boff[b] : NULL;
    const T *y0 = Lk > 0 ? (const T *)d->y + d->y_boff[b] : NULL;
    const unsigned char *mb = NULL;
    const T *ma = NULL;
    if (d->mask_kind == ATTN_MASK_BOOL) mb = (const unsigned char *)d->mask + d->m_boff[b] + i * d->m_si;
    if (d->mask_kind == ATTN_MASK_ADD) ma = (const T *)d->mask + d->m_boff[b] + i * d->m_si;
    int64_t len = Lk;
    if (d->valid_lens) len = attn_min64(attn_max64(d->valid_lens[d->vl_boff[b] + i * d->vl_si], 0), Lk);
    const int epan = d->kernel == ATTN_KR_EPANECHNIKOV;

    double m = epan ? 0.0 : -INFINITY, l = 0, lc = 0;
    int nan = 0;
    for (int64_t c = 0; c < Dy; c++) acc[c] = accc[c] = 0;
    for (int64_t j0 = 0; j0 < len; j0 += KR_KEY_BLOCK) {
        int64_t n = attn_min64(KR_KEY_BLOCK, len - j0);
        nan |= SMF(kr_scores)(K, xq, xk0, mb, ma, j0, n, tile->s);
        if (!epan) {
            double bm = -INFINITY;
            for (int64_t jj = 0; jj < n; jj++) bm = tile->s[jj] > bm ? tile->s[jj] : bm;
            if (!(bm > m)) bm = m;
            if (bm == -INFINITY) continue;   /* nothing visible yet */
            if (bm > m && m > -INFINITY) {
                /* online softmax: rescale the running sums to the new max */
                double alpha = exp2(m - bm);
                l *= alpha;
                lc *= alpha;
                for (int64_t c = 0; c < Dy; c++) {
                    acc[c] *= alpha;
                    accc[c] *= alpha;
                }
            }
            m = bm;
        }
        SMF(kr_exp)(K, tile->s, m, n, tile->e);
        const T *e = tile->e;
        SMF(accumulate)(&l, &lc, SMF(sum)(e, n));
        const T *y = y0 + j0 * ysl;
        if (Dy == 1) {
            double a[4] = {0, 0, 0, 0};
            int64_t jj = 0;
            for (; jj + 4 <= n; jj += 4)
                for (int k = 0; k < 4; k++) a[k] += (double)e[jj + k] * (double)y[(jj + k) * ysl];
            for (int k = 0; jj < n; jj++, k++) a[k] += (double)e[jj] * (double)y[jj * ysl];
            SMF(accumulate)(&acc[0], &accc[0], (a[0] + a[2]) + (a[1] + a[3]));
        } else {
            for (int64_t c = 0; c < Dy; c++) bacc[c] = 0;
            for (int64_t jj = 0; jj < n; jj++) {
                const double w = (double)e[jj];
                const T *yr = y + jj * ysl;
                for (int64_t c = 0; c < Dy; c++) bacc[c] += w * (double)yr[c];
            }
            for (int64_t c = 0; c < Dy; c++) SMF(accumulate)(&acc[c], &accc[c], bacc[c]);
        }
    }
    l -= lc;
    for (int64_t c = 0; c < Dy; c++) {
        double v = acc[c] - accc[c];
        out[c] = nan ? (T)NAN : (l > 0 ? (T)(v / l) : (l == 0 ? (T)0 : (T)NAN));
    }
    if (!d->weights) return;

    /* the weights: the scores again, exp2(s - m) / l */
    T *w = (T *)d->weights + (b * d->Lq + i) * Lk;
    if (nan || !(l > 0)) {
        T value = nan || l != l ? (T)NAN : (T)0;
        for (int64_t j = 0; j < Lk; j++) w[j] = value;
        return;
    }
    const double r = SM_RECIP(l);
    for (int64_t j0 = 0; j0 < len; j0 += KR_KEY_BLOCK) {
        int64_t n = attn_min64(KR_KEY_BLOCK, len - j0);
        SMF(kr_scores)(K, xq, xk0, mb, ma, j0, n, tile->s);
        SMF(kr_exp)(K, tile->s, m, n, tile->e);
        for (int64_t jj = 0; jj < n; jj++) w[j0 + jj] = SM_NORM(tile->e[jj], l, r);
    }
    for (int64_t j = len; j < Lk; j++) w[j] = 0;
}

static double SMF(kr_work)(const attn_kreg_desc *d)
{
    return (double)d->B * (double)d->Lq * (double)d->Lk * (double)(d->D + d->Dy + 8);
}

attn_status SMF(attn_kernel_regression)(const attn_kreg_desc *d, int isa, int num_threads)
{
    attn_status st = kr_check(d);
    if (st != ATTN_OK) return st;
    const KTAB *kt = KTAB_GET(isa);
    if (!kt) return ATTN_EISA;
    if (d->B == 0 || d->Lq == 0) return ATTN_OK;

    SMF(kr_plan) K;
    K.d = d;
    K.kt = kt;
    K.cs = d->kernel == ATTN_KR_GAUSSIAN ? ATTN_LOG2E / (2.0 * d->bandwidth * d->bandwidth)
                                         : ATTN_LOG2E / d->bandwidth;
    K.ih2 = 1.0 / (d->bandwidth * d->bandwidth);
    K.qblocks = (d->Lq + KR_QUERY_BLOCK - 1) / KR_QUERY_BLOCK;
    K.units = d->B * K.qblocks;

    int nthreads = attn_region_threads(num_threads, K.units, SMF(kr_work)(d));
    int failed = 0, interrupted = 0;
    const int64_t Dy1 = attn_max64(d->Dy, 1);
    (void)nthreads;
#ifdef _OPENMP
#pragma omp parallel num_threads(nthreads) if (nthreads > 1)
#endif
    {
        SMF(kr_tile) *tile = (SMF(kr_tile) *)attn_scratch_alloc(sizeof(SMF(kr_tile)));
        double *accs = (double *)attn_scratch_alloc_n(3 * Dy1, sizeof(double));
        if (!tile || !accs) attn_flag_set(&failed);
#ifdef _OPENMP
#pragma omp for schedule(dynamic, 1)
#endif
        for (int64_t u = 0; u < K.units; u++) {
            if (attn_flag_get(&failed) || attn_flag_get(&interrupted)) continue;
            int64_t b = u / K.qblocks, i0 = (u % K.qblocks) * KR_QUERY_BLOCK;
            int64_t i1 = attn_min64(d->Lq, i0 + KR_QUERY_BLOCK);
            for (int64_t i = i0; i < i1; i++) {
                if (attn_cancelled(d->cancellable, d->cancel_epoch)) {
                    attn_flag_set(&interrupted);
                    break;
                }
                SMF(kr_row)(&K, b, i, tile, accs, accs + Dy1, accs + 2 * Dy1);
            }
        }
        attn_scratch_free(accs);
        attn_scratch_free(tile);
    }
    if (failed) return ATTN_ENOMEM;
    return interrupted ? ATTN_EINTR : ATTN_OK;
}

#undef SMF
#undef SM_RECIP
#undef SM_NORM

#endif /* ATTN_SOFTMAX_BODY */
