/*
 * Row softmax and Nadaraya-Watson kernel regression (attncore.softmax,
 * masked_softmax, kernel_regression): loop nests over a plan, one OpenMP
 * region per call. The vector math is the active level's kernel table
 * (csrc/kernels/ktab.h): row_max / exp_sum_row / scale_row on the rows
 * path and softmax_panel on the panel path (max-shifted exp2, compensated
 * sums) for the softmax, exp2 for the regression;
 * everything else here is plain C99 that the compiler vectorises at the
 * baseline ISA (no intrinsics outside csrc/arch/).
 *
 * This file instantiates its dtype-generic part twice by including itself
 * (ATTN_SOFTMAX_BODY): T = float and T = double.
 *
 * ---- softmax: loop nest -------------------------------------------------
 *
 * The plan drops size-1 row dimensions and merges row dimensions that are
 * contiguous in every array (x, out, mask, valid_lens). With c = log2 e and
 * s = x (+ additive mask, in T; masked: -inf, or d2l's fill value):
 *
 *   rows path (the axis has unit stride in x, or no row dimension does):
 *   for unit u in row ranges of ~SM_UNIT_ELEMS elements      <- omp for, dynamic
 *       for row r in the unit (an odometer over the row dimensions)
 *           contiguous in x and out, nothing masked: the row in place,
 *               no staging (row_direct on x, p written into out)
 *           otherwise stage s_r into the buffer (a contiguous copy; rows
 *               shorter than SM_CHUNK share it: a batch)     reads x once
 *       per row (row_direct, the level's row kernels):
 *           top_r = row_max s_r                               (pass 1)
 *           p = exp2(c fl(s_r - shift_r)), shift_r = top_r (0 when
 *               nothing is above -inf), l_r += sum p in blocks of
 *               128, compensated: exp_sum_row                 (pass 2)
 *           out_r = p * fl(1/l_r) (float64: p / l_r): scale_row (pass 3)
 *       rows longer than SM_CHUNK that need staging: the three passes
 *           chunk by chunk through the buffer (x read three times, out
 *           written once; the same block sums as row_direct)
 *
 *   rows of L >= SM_SPLIT_MIN read in place: exp_sum_row per segment of
 *   SM_SEG entries, the segments' sums added in segment order
 *   (row_segmented); fewer such rows than threads: a unit is a segment, so
 *   threads share a row (softmax_split, the same numbers): segment maxima
 *   | barrier | exp_sum_row per segment with the row's max | barrier |
 *   the row's sum, out scaled in place
 *
 *   panel path (the axis is strided in x and a row dimension has unit
 *   stride, e.g. axis=0 of a C-ordered matrix): a unit is up to
 *   SM_PANEL_LANES rows adjacent in memory (lanes), in groups of the
 *   level's NR lanes, and every pass streams over whole lines:
 *   for unit u in (outer row index, block of lanes)          <- omp for, dynamic
 *       for line j: top[r] = max(top[r], s_jr)                (pass 1)
 *       for blocks of lines: s - top staged, softmax_panel
 *           per group -> l[r] (max preset to 0: rescaling by 1) (pass 2)
 *       for blocks of lines: softmax_panel again (the same
 *           exponentials, bit for bit), out_jr = p_jr / l[r]  (pass 3)
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
 *               e_j = exp2(s_j - m')  (kernel table; s_j - m' in double,
 *                     rounded once to T); l += sum e, acc += e y (double,
 *                     compensated across blocks)
 *           out_i = acc / l (zeros when l == 0)
 *           weights: the scores again, exp2(s_j - m) / l      (return_weights)
 *   epanechnikov: e_j = max(1 - r^2/h^2, 0) directly, no max, no rescaling.
 *
 * ---- determinism ----------------------------------------------------------
 *
 * Every output row is computed by exactly one unit, with a sequence of
 * operations fixed by the problem's shape and layout (unit sizes, batches,
 * chunk and block lengths are constants or functions of the sizes, never of
 * the thread count; the kernels are elementwise per row or lane). Results
 * are therefore bitwise identical for any number of threads.
 *
 * ---- preconditions ----------------------------------------------------------
 *
 * The kernels get contiguous rows: row_max and exp_sum_row read n entries
 * of the staged buffer or of x itself (a row with unit stride), exp_sum_row
 * writes n entries of the buffer or of out, scale_row n entries of out
 * (os apart); softmax_panel St[nk][NR] with NR =
 * the level's nr and m/l/lc/alpha of NR entries (padding lanes hold -inf:
 * their p and l are exactly 0); exp2 n values. Every pointer formed here
 * is inside its array: row offsets come from the descriptor's strides and
 * sizes, which the Cython layer takes from the arrays themselves; the
 * descriptor check rejects sizes whose products overflow int64.
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
#define SM_SEG 65536         /* rows path: entries per segment of a split row (a multiple of 128) */
#define SM_SPLIT_MIN (2 * SM_SEG) /* rows path: contiguous unmasked rows this long go by segments */
#define SM_PANEL_BLOCK 16    /* panel path: lines per kernel call (bounds its sums) */
#define SM_PANEL_LANES 1024  /* panel path: most lanes per unit (whole lines streamed) */
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
    int64_t segs;           /* rows path: segments of a long row read in place (0: none) */
    int split;              /* rows path: a unit is a segment (the threads share rows) */
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

static void sm_make_plan(sm_plan *P, const attn_softmax_desc *d, int64_t nr)
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
        P->W = attn_min64(SM_PANEL_LANES / nr * nr, P->lanes);
        P->lane_blocks = (P->lanes + P->W - 1) / P->W;
        P->outer = P->rows / P->lanes;
        P->units = P->outer * P->lane_blocks;
    } else {
        P->outer = P->rows;
        P->rows_per_unit = attn_max64(1, SM_UNIT_ELEMS / attn_max64(d->L, 1));
        P->units = (P->rows + P->rows_per_unit - 1) / P->rows_per_unit;
        if (d->L >= SM_SPLIT_MIN && d->x_sl == 1 && d->o_sl == 1 && !has_m && !has_v)
            P->segs = (d->L + SM_SEG - 1) / SM_SEG;   /* long rows read in place */
    }
}

/* Long rows read in place are shared by the threads (a unit per segment)
 * only when there are fewer rows than threads: the split costs two more
 * barriers, and its results are those of the unsplit rows, bit for bit
 * (softmax_split), so the choice may depend on the thread count. */
static void sm_choose_split(sm_plan *P, int num_threads)
{
    if (!P->segs || P->panel) return;
    int64_t su = attn_mul_checked(P->rows, P->segs);
    if (su > 0 && P->rows < attn_plan_threads(num_threads, su, sm_work(P))) {
        P->split = 1;
        P->units = su;
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
    info->threads = attn_plan_threads(num_threads, P->units, sm_work(P));
    info->segments = P->segs;
    info->split = P->split;
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
    double cc = (t - *s) - y;
    *c = cc == cc ? cc : 0.0;   /* an infinite term leaves the sum infinite, not NaN */
    *s = t;
#endif
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

/* The score a masked entry gets: -inf (weight 0), or d2l's fill value. */
static inline T SMF(masked_value)(const attn_softmax_desc *d)
{
    return d->fill_masked ? (T)d->fill : (T)-INFINITY;
}

/* s[jj] = the score of entry j0 + jj, jj < n: x (+ the additive mask, in
 * T), or the masked value. A contiguous copy the kernels can work in. */
static void SMF(row_stage)(const sm_plan *P, const SMF(row) *R, int64_t j0, int64_t n, T *s)
{
    const attn_softmax_desc *d = P->d;
    const int64_t xs = d->x_sl, ms = d->m_sl;
    const T tm = SMF(masked_value)(d);
    int64_t nv = attn_max64(0, attn_min64(n, R->len - j0));
    const T *x = R->x + j0 * xs;
    if (R->mb) {
        const unsigned char *mb = R->mb + j0 * ms;
        for (int64_t jj = 0; jj < nv; jj++) s[jj] = mb[jj * ms] ? x[jj * xs] : tm;
    } else if (R->ma) {
        const T *ma = R->ma + j0 * ms;
        for (int64_t jj = 0; jj < nv; jj++) s[jj] = x[jj * xs] + ma[jj * ms];
    } else if (xs == 1) {
        if (nv > 0) memcpy(s, x, (size_t)nv * sizeof(T));
    } else {
        for (int64_t jj = 0; jj < nv; jj++) s[jj] = x[jj * xs];
    }
    for (int64_t jj = nv; jj < n; jj++) s[jj] = tm;
}

/* The shift of a row with maximum `top`: top itself, or 0 when nothing is
 * above -inf (so that -inf - -inf never makes a NaN). The exponents are
 * c fl(s - shift) (the difference rounded once, as in x - max: exp_sum_row
 * on the rows path, the staged lines on the panel path), and the panel
 * kernel's running max
 * is preset to their maximum, c * 0 = 0 (or -inf): the kernels never
 * subtract a rounded c * top, which for |top| beyond 2^24 (float32) would
 * be off by more than a unit and underflow every exponential. */
static inline T SMF(shift_of)(T top) { return top == (T)-INFINITY ? (T)0 : top; }
static inline T SMF(preset_of)(T top) { return top == (T)-INFINITY ? (T)-INFINITY : (T)0; }

/* Running max of two maxima, NaN sticky. */
static inline T SMF(max2)(T a, T b) { return (b > a || b != b) ? b : a; }

/* The sum the kernels accumulated (l - lc), as the normalisation factor:
 * out = p * r (float32: r = 1/sum rounded once), out = p / sum (float64). */
typedef struct {
    double sum;
    T r;
} SMF(norm);

static inline SMF(norm) SMF(norm_of)(T l, T lc)
{
    /* a zero sum means every p is 0 (nothing kept): they stay 0 */
    SMF(norm) z;
    double sum = (double)l - (double)lc;
    z.sum = sum == 0 ? 1.0 : sum;
    z.r = sum == 0 ? (T)0 : (T)(1.0 / sum);
    return z;
}

#if IS_F32
#undef SM_SCALE
#undef SM_PSCALE
#define SM_SCALE(p, z) ((p) * (z).r)
#define SM_PSCALE(p, r, sum) ((p) * (r))
#else
#undef SM_SCALE
#undef SM_PSCALE
#define SM_SCALE(p, z) ((p) / (z).sum)
#define SM_PSCALE(p, r, sum) ((p) / (sum))
#endif

/* out_j = p_j / sum for j < n (a row with nothing kept: zeros; a NaN sum:
 * NaNs). */
static void SMF(row_write)(T *o, int64_t os, const T *p, int64_t n, SMF(norm) z)
{
    if (os == 1) {
        for (int64_t j = 0; j < n; j++) o[j] = SM_SCALE(p[j], z);
    } else {
        for (int64_t j = 0; j < n; j++) o[j * os] = SM_SCALE(p[j], z);
    }
}

/* Per-thread scratch of the softmax: the staging buffer and per-row state
 * (rows path: one entry per row of a batch; panel path: one per lane). */
#define SM_LANES_MAX (SM_PANEL_LANES + ATTN_MAX_LANES)
typedef struct {
    T buf[SM_CHUNK];
    T *o[SM_BATCH_ROWS];          /* rows path: the batch's output rows */
    T line[SM_LANES_MAX];         /* panel path */
    T pm[SM_LANES_MAX], pl[SM_LANES_MAX], plc[SM_LANES_MAX], palpha[SM_LANES_MAX];
    T pl2[SM_LANES_MAX], plc2[SM_LANES_MAX];
    int64_t plen[SM_LANES_MAX];
    T pshift[SM_LANES_MAX];
    T pzr[SM_LANES_MAX];
    double pzs[SM_LANES_MAX];
} SMF(sm_scratch);

/* out = p scaled by the row's normalisation (see norm_of): float32 the
 * level's scale_row by r = fl(1/sum); float64 row_write, a division. p may
 * be o when os == 1. */
static inline void SMF(row_scale)(const KTAB *kt, T *o, int64_t os, const T *p, int64_t n, SMF(norm) z)
{
#if IS_F32
    kt->scale_row(n, p, z.r, o, os);
#else
    (void)kt;
    SMF(row_write)(o, os, p, n, z);
#endif
}

/* One row of L contiguous scores s (staged, or x itself): its max (pass 1),
 * p = exp2(c fl(s - shift)) with the compensated sum in blocks of 128
 * (pass 2, the level's exp_sum_row; p may be s), then out = p scaled
 * (pass 3; p may be o when os == 1). */
static void SMF(row_direct)(const KTAB *kt, const T *s, int64_t L, T *p, T *o, int64_t os)
{
    T top = kt->row_max(L, s);
    T l = 0, lc = 0;
    kt->exp_sum_row(L, s, SMF(shift_of)(top), p, &l, &lc);
    SMF(row_scale)(kt, o, os, p, L, SMF(norm_of)(l, lc));
}

/* The sum of a row read in segments: the segments' sums (l, lc pairs) added
 * in segment order. float32 in double (16 terms at 1M entries: far below a
 * float's unit), handed to norm_of as hi + lo; float64 compensated. */
typedef struct {
    double sd;   /* float32 */
    T tl, tc;    /* float64 */
} SMF(seg_sum);

static inline void SMF(seg_add)(SMF(seg_sum) *a, T l, T lc)
{
#if IS_F32
    a->sd += (double)l - (double)lc;
#else
    T y = (l - lc) - a->tc, t = a->tl + y, c = (t - a->tl) - y;
    a->tc = c == c ? c : (T)0;
    a->tl = t;
#endif
}

static inline SMF(norm) SMF(seg_norm)(const SMF(seg_sum) *a)
{
#if IS_F32
    T hi = (T)a->sd, lo = (T)((double)hi - a->sd);
    return SMF(norm_of)(hi, lo);
#else
    return SMF(norm_of)(a->tl, a->tc);
#endif
}

/* A long row read in place (P->segs segments of SM_SEG entries) on one
 * thread: the numbers of softmax_split, bit for bit (its max is the max of
 * the segments' maxima, exact in any order; each segment's sum starts from
 * 0; the same combination). */
static void SMF(row_segmented)(const sm_plan *P, const KTAB *kt, const T *x, T *o)
{
    const int64_t L = P->d->L, ns = P->segs;
    const T shift = SMF(shift_of)(kt->row_max(L, x));
    SMF(seg_sum) a = {0, 0, 0};
    for (int64_t k = 0; k < ns; k++) {
        int64_t j0 = k * SM_SEG, n = attn_min64(SM_SEG, L - j0);
        T l = 0, lc = 0;
        kt->exp_sum_row(n, x + j0, shift, o + j0, &l, &lc);
        SMF(seg_add)(&a, l, lc);
    }
    SMF(row_scale)(kt, o, 1, o, L, SMF(seg_norm)(&a));
}

/* Rows staged in buf[nrec][L] (L <= SM_CHUNK), each by row_direct in place. */
static void SMF(flush)(const sm_plan *P, const KTAB *kt, SMF(sm_scratch) *S, int nrec)
{
    const attn_softmax_desc *d = P->d;
    const int64_t L = d->L;
    for (int k = 0; k < nrec; k++) SMF(row_direct)(kt, S->buf + k * L, L, S->buf + k * L, S->o[k], d->o_sl);
}

/* A row longer than the staging buffer that cannot be read in place
 * (masked, or strided), chunk by chunk through it: its max (pass 1), the
 * sum (pass 2), the same exponentials again, scaled into out (pass 3). x
 * is read three times, out written once. SM_CHUNK is a multiple of the
 * kernel's 128-entry sum blocks, so the sum is the one row_direct forms. */
static void SMF(row_long)(const sm_plan *P, const KTAB *kt, const SMF(row) *R, SMF(sm_scratch) *S)
{
    const attn_softmax_desc *d = P->d;
    const int64_t L = d->L, os = d->o_sl;
    T top = (T)-INFINITY;
    for (int64_t j0 = 0; j0 < L; j0 += SM_CHUNK) {
        int64_t n = attn_min64(SM_CHUNK, L - j0);
        SMF(row_stage)(P, R, j0, n, S->buf);
        top = SMF(max2)(top, kt->row_max(n, S->buf));
    }
    const T shift = SMF(shift_of)(top);
    T l = 0, lc = 0, l2 = 0, lc2 = 0;
    for (int64_t j0 = 0; j0 < L; j0 += SM_CHUNK) {
        int64_t n = attn_min64(SM_CHUNK, L - j0);
        SMF(row_stage)(P, R, j0, n, S->buf);
        kt->exp_sum_row(n, S->buf, shift, S->buf, &l, &lc);
    }
    SMF(norm) z = SMF(norm_of)(l, lc);
    for (int64_t j0 = 0; j0 < L; j0 += SM_CHUNK) {
        int64_t n = attn_min64(SM_CHUNK, L - j0);
        SMF(row_stage)(P, R, j0, n, S->buf);
        kt->exp_sum_row(n, S->buf, shift, S->buf, &l2, &lc2);
        SMF(row_scale)(kt, R->o + j0 * os, os, S->buf, n, z);
    }
}

/* The rows path's loop nest for one unit. Returns 1 if interrupted. */
static int SMF(rows_unit)(const sm_plan *P, const KTAB *kt, int64_t u, SMF(sm_scratch) *S)
{
    const attn_softmax_desc *d = P->d;
    const int64_t L = d->L;
    int64_t first = u * P->rows_per_unit;
    int64_t nrows = attn_min64(P->rows_per_unit, P->rows - first);
    sm_pos p;
    sm_pos_set(P, first, &p);
    const int direct = d->x_sl == 1 && d->o_sl == 1 && d->mask_kind == ATTN_MASK_NONE && !d->valid_lens;
    int nrec = 0;
    for (int64_t r = 0; r < nrows; r++, sm_pos_next(P, &p)) {
        if (attn_cancelled(d->cancellable, d->cancel_epoch)) return 1;
        SMF(row) R;
        SMF(row_at)(P, &p, 0, &R);
        if (direct) {   /* contiguous in x and out, nothing masked: no staging */
            if (P->segs)
                SMF(row_segmented)(P, kt, R.x, R.o);
            else
                SMF(row_direct)(kt, R.x, L, R.o, R.o, 1);
            continue;
        }
        if (L > SM_CHUNK) {   /* (then every row is long: no batch) */
            SMF(row_long)(P, kt, &R, S);
            continue;
        }
        if ((nrec + 1) * L > SM_CHUNK || nrec == SM_BATCH_ROWS) {
            SMF(flush)(P, kt, S, nrec);
            nrec = 0;
        }
        SMF(row_stage)(P, &R, 0, L, S->buf + nrec * L);
        S->o[nrec++] = R.o;
    }
    if (nrec) SMF(flush)(P, kt, S, nrec);
    return 0;
}

/* ---- softmax: the panel path ---- */

/* Line j of the panel (lanes = rows) staged for the kernel: lane r goes to
 * t[(r / NR) gs + r % NR] (gs = NR: one contiguous line), its score for
 * r < nl, -inf for the padding lanes up to the next multiple of NR. */
static void SMF(panel_line)(const sm_plan *P, const SMF(row) *R0, const int64_t *len, int64_t j,
                            int64_t nl, int64_t NR, int64_t gs, T *t)
{
    const attn_softmax_desc *d = P->d;
    const T *x = R0->x + j * d->x_sl;
    const int64_t xls = P->x_ls, mls = P->m_ls;
    const int general = R0->mb || R0->ma || d->valid_lens;
    const T tm = SMF(masked_value)(d);
    const unsigned char *mb = R0->mb ? R0->mb + j * d->m_sl : NULL;
    const T *ma = R0->ma ? R0->ma + j * d->m_sl : NULL;
    for (int64_t g = 0, r0 = 0; r0 < nl; g++, r0 += NR) {
        T *tg = t + g * gs;
        int64_t n = attn_min64(NR, nl - r0);
        if (general) {
            for (int64_t r = 0; r < n; r++) {
                int64_t lane = r0 + r;
                T v = x[lane * xls];
                if (ma) v = v + ma[lane * mls];
                if (j >= len[lane] || (mb && !mb[lane * mls])) v = tm;
                tg[r] = v;
            }
        } else if (xls == 1) {
            const T *xg = x + r0;
            for (int64_t r = 0; r < n; r++) tg[r] = xg[r];
        } else {
            for (int64_t r = 0; r < n; r++) tg[r] = x[(r0 + r) * xls];
        }
        for (int64_t r = n; r < NR; r++) tg[r] = (T)-INFINITY;
    }
}

/* Lines [j0, j0 + n) staged for the kernel, shifted by their lanes' maxima:
 * group g (lanes g NR .. g NR + NR) as St_g[jj][NR] at buf + g n NR. */
static void SMF(panel_stage)(const sm_plan *P, const SMF(row) *R0, const int64_t *len, int64_t j0, int64_t n,
                             int64_t nl, int64_t NR, const T *shift, T *buf)
{
    int64_t G = (nl + NR - 1) / NR;
    for (int64_t jj = 0; jj < n; jj++) SMF(panel_line)(P, R0, len, j0 + jj, nl, NR, n * NR, buf + jj * NR);
    for (int64_t g = 0; g < G; g++)
        for (int64_t jj = 0; jj < n; jj++) {
            T *t = buf + (g * n + jj) * NR;
            const T *sh = shift + g * NR;
            for (int64_t r = 0; r < NR; r++) t[r] -= sh[r];
        }
}

/*
 * The panel path's loop nest for one unit: W lanes (rows adjacent in
 * memory), G = ceil(W / NR) kernel panels, every pass streaming over whole
 * lines of the unit:
 *   pass 1: top[r] = max_j s_jr                      (reads x)
 *   pass 2: l[r] = sum_j exp2(c s_jr - c top[r])      (reads x; the kernel)
 *   pass 3: out_jr = exp2(c s_jr - c top[r]) / l[r]   (reads x, writes out)
 * The exponentials of pass 3 are those of pass 2, bit for bit (same
 * inputs, same preset max); x is read three times and out written once,
 * which costs less memory traffic than storing and rescaling them.
 */
static int SMF(panel_unit)(const sm_plan *P, const KTAB *kt, int64_t u, SMF(sm_scratch) *S)
{
    const attn_softmax_desc *d = P->d;
    const int64_t L = d->L, osl = d->o_sl, ols = P->o_ls, NR = kt->nr;
    const T c = (T)ATTN_LOG2E;
    int64_t outer = u / P->lane_blocks, l0 = (u % P->lane_blocks) * P->W;
    int64_t nl = attn_min64(P->W, P->lanes - l0);
    int64_t G = (nl + NR - 1) / NR, nt = G * NR;
    sm_pos p;
    sm_pos_set(P, outer, &p);
    SMF(row) R0;
    SMF(row_at)(P, &p, l0, &R0);   /* lane l0's row: the panel's base pointers */
    T *ob = R0.o;
    T *line = S->line, *m = S->pm, *l = S->pl, *lc = S->plc, *alpha = S->palpha;
    int64_t *len = S->plen;
    if (attn_cancelled(d->cancellable, d->cancel_epoch)) return 1;
    for (int64_t r = 0; r < nl; r++)
        len[r] = d->valid_lens ? attn_min64(attn_max64(d->valid_lens[p.ov + (l0 + r) * P->v_ls], 0), L) : L;

    /* pass 1: the lanes' maxima (elementwise over lanes: vectorised) */
    const int direct = !R0.mb && !R0.ma && !d->valid_lens && P->x_ls == 1;
    for (int64_t r = 0; r < nt; r++) m[r] = (T)-INFINITY;
    for (int64_t j = 0; j < L; j++) {
        const T *v = line;
        if (direct) v = R0.x + j * d->x_sl;   /* read in place */
        else SMF(panel_line)(P, &R0, len, j, nl, NR, NR, line);
        for (int64_t r = 0; r < nl; r++) m[r] = v[r] > m[r] ? v[r] : m[r];
    }
    T *shift = S->pshift;
    for (int64_t r = 0; r < nt; r++) {
        shift[r] = SMF(shift_of)(m[r]);
        m[r] = SMF(preset_of)(m[r]);
        l[r] = 0;
        lc[r] = 0;
    }

    /* pass 2: the sums (the kernel's rescaling factor is exactly 1: the max
     * is preset), lines of a block go to the kernel SM_PANEL_BLOCK at most */
    const int64_t jb = attn_max64(1, attn_min64(SM_PANEL_BLOCK, SM_CHUNK / nt));
    for (int64_t j0 = 0; j0 < L; j0 += jb) {
        if (attn_cancelled(d->cancellable, d->cancel_epoch)) return 1;
        int64_t n = attn_min64(jb, L - j0);
        SMF(panel_stage)(P, &R0, len, j0, n, nl, NR, shift, S->buf);
        for (int64_t g = 0; g < G; g++)
            kt->softmax_panel(n, S->buf + g * n * NR, c, NULL, m + g * NR, l + g * NR, lc + g * NR,
                              alpha + g * NR);
    }

    /* pass 3: the same exponentials again, normalised into out */
    T *zr = S->pzr;
    double *zs = S->pzs;
    for (int64_t r = 0; r < nl; r++) {
        SMF(norm) z = SMF(norm_of)(l[r], lc[r]);
        zr[r] = z.r;
        zs[r] = z.sum;
    }
    for (int64_t j0 = 0; j0 < L; j0 += jb) {
        if (attn_cancelled(d->cancellable, d->cancel_epoch)) return 1;
        int64_t n = attn_min64(jb, L - j0);
        SMF(panel_stage)(P, &R0, len, j0, n, nl, NR, shift, S->buf);
        for (int64_t g = 0; g < G; g++)   /* (its sums go to scratch: l is final) */
            kt->softmax_panel(n, S->buf + g * n * NR, c, NULL, m + g * NR, S->pl2 + g * NR,
                              S->plc2 + g * NR, alpha + g * NR);
        for (int64_t jj = 0; jj < n; jj++) {
            T *o = ob + (j0 + jj) * osl;
            for (int64_t g = 0; g < G; g++) {
                const T *e = S->buf + (g * n + jj) * NR;
                T *og = o + g * NR * ols;
                const T *zrg = zr + g * NR;
                const double *zsg = zs + g * NR;
                int64_t nr = attn_min64(NR, nl - g * NR);
                (void)zrg;
                (void)zsg;
                if (ols == 1) {
                    for (int64_t r = 0; r < nr; r++) og[r] = SM_PSCALE(e[r], zrg[r], zsg[r]);
                } else {
                    for (int64_t r = 0; r < nr; r++) og[r * ols] = SM_PSCALE(e[r], zrg[r], zsg[r]);
                }
            }
        }
    }
    return 0;
}

/* ---- softmax: long rows split into segments ---- */

/*
 * Rows of L >= SM_SPLIT_MIN entries, contiguous in x and out and not
 * masked, fewer than the threads (sm_choose_split), in segments of SM_SEG
 * entries (the last one shorter); a unit is one segment, so the threads
 * share a row. Three loops over the units, a barrier after each:
 *   1. M[u] = row_max of the segment                          (reads x)
 *   2. shift = the row's max over its segments' M (exact, in any order);
 *      exp_sum_row into out with its own sums l[u], lc[u]    (reads x)
 *   3. the row's sum: its segments' sums in segment order (seg_add); out
 *      scaled in place by the normalisation             (reads, writes out)
 * These are row_segmented's operations, so a row gets the same bits split
 * or not, for any thread count: the segments are fixed by L, and the sum's
 * 128-entry blocks are those of row_direct (SM_SEG is a multiple of 128),
 * only their compensated chain restarts at each segment.
 */
static attn_status SMF(softmax_split)(const sm_plan *P, const KTAB *kt, int nthreads)
{
    const attn_softmax_desc *d = P->d;
    const int64_t L = d->L, ns = P->segs, nu = P->units;
    T *st = (T *)attn_scratch_alloc_n(attn_mul_checked(nu, 3), sizeof(T));
    if (!st) return ATTN_ENOMEM;
    T *M = st, *l = st + nu, *lc = st + 2 * nu;
    int interrupted = 0;
    (void)nthreads; /* unused without OpenMP */
#ifdef _OPENMP
#pragma omp parallel num_threads(nthreads) if (nthreads > 1)
#endif
    for (int phase = 1; phase <= 3; phase++) {
#ifdef _OPENMP
#pragma omp for schedule(dynamic, 1)
#endif
        for (int64_t u = 0; u < nu; u++) {
            if (attn_flag_get(&interrupted)) continue;
            if (attn_cancelled(d->cancellable, d->cancel_epoch)) {
                attn_flag_set(&interrupted);
                continue;
            }
            const int64_t row = u / ns, seg = u % ns, j0 = seg * SM_SEG;
            const int64_t n = attn_min64(SM_SEG, L - j0);
            sm_pos p;
            sm_pos_set(P, row, &p);
            const T *x = (const T *)d->x + p.ox + j0;
            T *o = (T *)d->out + p.oo + j0;
            const int64_t u0 = row * ns;
            if (phase == 1) {
                M[u] = kt->row_max(n, x);
            } else if (phase == 2) {
                T top = (T)-INFINITY;
                for (int64_t k = u0; k < u0 + ns; k++) top = M[k] > top ? M[k] : top;
                l[u] = lc[u] = 0;
                kt->exp_sum_row(n, x, SMF(shift_of)(top), o, &l[u], &lc[u]);
            } else {
                SMF(seg_sum) a = {0, 0, 0};
                for (int64_t k = u0; k < u0 + ns; k++) SMF(seg_add)(&a, l[k], lc[k]);
                SMF(norm) z = SMF(seg_norm)(&a);
                SMF(row_scale)(kt, o, 1, o, n, z);
            }
        }
    }
    attn_scratch_free(st);
    return interrupted ? ATTN_EINTR : ATTN_OK;
}

/* ---- softmax: entry points ---- */

attn_status SMF(attn_softmax_plan)(const attn_softmax_desc *d, int isa, int num_threads,
                                   attn_softmax_plan_info *info)
{
    attn_status st = sm_check(d);
    if (st != ATTN_OK) return st;
    if (!info) return ATTN_EINVAL;
    const KTAB *kt = KTAB_GET(isa);
    if (!kt) return ATTN_EISA;
    sm_plan P;
    sm_make_plan(&P, d, kt->nr);
    sm_choose_split(&P, num_threads);
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
    if (kt->nr > ATTN_MAX_LANES || kt->nr > SM_BATCH_ROWS || kt->nr < 1) return ATTN_EISA;
    sm_plan P;
    sm_make_plan(&P, d, kt->nr);
    if (P.rows == 0 || d->L == 0) return ATTN_OK;

    sm_choose_split(&P, num_threads);
    int nthreads = attn_region_threads(num_threads, P.units, sm_work(&P));
    if (P.split) return SMF(softmax_split)(&P, kt, nthreads);
    int failed = 0, interrupted = 0;
    (void)nthreads; /* unused without OpenMP */
#ifdef _OPENMP
#pragma omp parallel num_threads(nthreads) if (nthreads > 1)
#endif
    {
        SMF(sm_scratch) *S = (SMF(sm_scratch) *)attn_scratch_alloc(sizeof(SMF(sm_scratch)));
        if (!S) attn_flag_set(&failed);
#ifdef _OPENMP
#pragma omp for schedule(dynamic, 1)
#endif
        for (int64_t u = 0; u < P.units; u++) {
            if (attn_flag_get(&failed) || attn_flag_get(&interrupted)) continue;
            int stop = P.panel ? SMF(panel_unit)(&P, kt, u, S) : SMF(rows_unit)(&P, kt, u, S);
            if (stop) attn_flag_set(&interrupted);
        }
        attn_scratch_free(S);
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
 * the kernel values themselves); -inf (0) where masked. */
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
    return 0;
}

/* Whether a score of the block is NaN (only asked when no score of the row
 * so far was above -inf: otherwise a NaN reaches the sums by itself). */
static int SMF(kr_any_nan)(const double *s, int64_t n)
{
    int nan = 0;
    for (int64_t jj = 0; jj < n; jj++) nan |= s[jj] != s[jj];
    return nan;
}

/* max of n scores, NaN ignored; -inf for n == 0 (eight independent chains) */
static double SMF(kr_max)(const double *s, int64_t n)
{
    double a[8] = {-INFINITY, -INFINITY, -INFINITY, -INFINITY, -INFINITY, -INFINITY, -INFINITY, -INFINITY};
    int64_t j = 0;
    for (; j + 8 <= n; j += 8)
        for (int k = 0; k < 8; k++) a[k] = s[j + k] > a[k] ? s[j + k] : a[k];
    for (; j < n; j++) a[0] = s[j] > a[0] ? s[j] : a[0];
    double m = a[0];
    for (int k = 1; k < 8; k++) m = a[k] > m ? a[k] : m;
    return m;
}

/* e_j (T) from the scores: exp2(s_j - m) (or the epanechnikov values) */
static void SMF(kr_exp)(const SMF(kr_plan) *K, const double *s, double m, int64_t n, T *e)
{
    if (K->d->kernel == ATTN_KR_EPANECHNIKOV) {
        for (int64_t jj = 0; jj < n; jj++) e[jj] = (T)s[jj];
        return;
    }
    /* t <= 0 in double (the difference exact), rounded once to T; below
     * float's range it becomes -inf (IEEE conversion), whose exp2 is 0 */
    for (int64_t jj = 0; jj < n; jj++) e[jj] = (T)(s[jj] - m);
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
        SMF(kr_scores)(K, xq, xk0, mb, ma, j0, n, tile->s);
        if (!epan) {
            double bm = SMF(kr_max)(tile->s, n);
            if (!(bm > m)) bm = m;
            if (bm == -INFINITY) {   /* nothing visible yet (or NaN) */
                nan |= SMF(kr_any_nan)(tile->s, n);
                continue;
            }
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
