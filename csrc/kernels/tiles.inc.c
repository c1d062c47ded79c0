/*
 * Tile math for attention: the default entries of the kernel context
 * (ktab.h), written once against the SIMD mapping layer and compiled once
 * per ISA (csrc/arch/kern_<isa>.c includes this file after defining the
 * mapping). A level replaces an entry by defining ATTN_HAVE_<entry> and its
 * own FN(<entry>) before the include.
 *
 * The including file defines:
 *   T, vec, VL           element type, vector type, lanes per vector
 *   NV                   vectors per panel row (panel width NR = NV * VL)
 *   MR_QK, MR_PV         register-tile heights of the two panel products
 *   MR_ADD               register-tile height of the additive scores
 *   ROWS_MAX             most rows the rows path takes at once
 *   BK_PANEL, BK_ROWS, GEMM_KC, GEMM_MC   the level's cache blocks
 *   FN(name)             the ISA/dtype-suffixed function name
 *   KTAB_TYPE, PREP_TYPE, KTAB_NAME, ISA_NAME   the table this unit exports
 *   v_load v_store v_load_n v_store_n v_set1 v_zero v_add v_sub v_mul v_div
 *   v_fma v_max v_hsum v_hmax v_neginf_to_zero v_nan_to_zero v_keep_nonzero
 *   v_exp2
 *   v_load_nf (optional, with V_HAS_LOAD_NF): lanes past n take a fill value
 *   v_exp2_nonpos        exp2 for x <= 0 or NaN (may equal v_exp2); also
 *                        right for x up to 1/2 (the softmax's x can exceed 0
 *                        by half an ulp of the running max, kept
 *                        below 1/2 by score_huge's rule), and +inf (never a
 *                        wrapped value) for large x
 *   v_inv1p_exp2_shifted, INV1P_SHIFT
 *                        x -> 1 / (1 + 2^(x - INV1P_SHIFT)), the core of tanh
 *                        (vmath.h); callers add the shift to a scalar for free
 *   v_recip              1 / x to float precision
 *   v_transpose, v_untranspose, v_mask_block (optional, with
 *                        V_HAS_TRANSPOSE): VL x VL block transposes between
 *                        row pointers and a panel
 *
 * Preconditions shared by all kernels (the drivers guarantee them):
 *   - feature dimensions (D, Dv) have unit stride; row strides are arbitrary;
 *     every element pointer is aligned to its type;
 *   - kernels read and write only elements inside the arrays they are given
 *     (partial vectors use v_load_n / v_store_n or scalar tails);
 *   - panel buffers are contiguous with row length NR; St has room for nk
 *     rounded up to MR_QK rows, Ot and Ct for Dv rounded up to MR_PV rows;
 *   - rows-path Qs and S rows are padded with zeros / room to a multiple of VL.
 */
#include <float.h>
#include "../driver/dropout.h"

#define NR (NV * VL)

_Static_assert(NR <= ATTN_MAX_LANES, "panel wider than the drivers' per-unit row arrays");
_Static_assert(ROWS_MAX <= ATTN_MAX_LANES, "rows-path unit larger than the drivers' row arrays");
_Static_assert(MR_QK % MR_ADD == 0,
               "additive tiles store whole MR_ADD rows: they must end inside St's MR_QK padding");
_Static_assert(BK_PANEL % MR_QK == 0, "panel key blocks are whole QK register tiles");
_Static_assert(GEMM_MC % MR_QK == 0, "GEMM row blocks are whole QK register tiles");
_Static_assert(BK_ROWS % VL == 0, "rows-path key blocks are whole vectors");

/* total = alpha * total + x with Kahan compensation (comp holds the lost low
 * part: the sum is total - comp). A non-finite total clears comp, so that
 * Inf and NaN propagate as they would through a plain sum: t - t is 0 for a
 * finite t and NaN otherwise, so comp + (t - t) is comp or NaN, and NaN
 * becomes 0. (A total that overflowed to inf had left comp = inf, and the
 * result total - comp was inf - inf = NaN.) */
static inline void FN(kahan_update)(vec alpha, vec x, vec *total, vec *comp)
{
    vec o = v_mul(alpha, *total);
    vec y = v_sub(x, v_mul(alpha, *comp));
    vec t = v_add(o, y);
    *comp = v_nan_to_zero(v_add(v_sub(v_sub(t, o), y), v_sub(t, t)));
    *total = t;
}

static inline T FN(kahan_update_scalar)(T alpha, T x, T *total, T *comp)
{
    T o = alpha * *total;
    T y = x - alpha * *comp;
    T t = o + y;
    T c = (t - o) - y;
    *comp = c == c && t - t == 0 ? c : (T)0;
    *total = t;
    return t;
}

/*
 * Huge scores. The softmax's exponent exp2(c s - m) runs as one FMA on the
 * exact product c s, with m = c * (the top raw score) rounded: the top
 * score's argument exceeds 0 by up to half an ulp of m. Below |m| = 2 / eps
 * (2^24 in float, 2^53 in double) that is at most 1/2 (weights up to
 * 2^(1/2), harmless). Above it half an ulp is 1 or more and grows with m:
 * the exp2 overflows from 2^31 in float (scores of about 1e9, from inputs
 * of magnitude 1e4 at D = 64) and the row turns to inf and NaN. A lane
 * whose c * top is that large takes the scores to log2 units first,
 * rounded (s' = c s, as a prep pass does), and its exponent is s' - m with
 * m = max s': every argument <= 0 exactly, as in torch's formulation.
 * Other lanes keep the FMA, bit for bit.
 */
static inline int FN(score_huge)(T ct)
{
    const T eps = sizeof(T) == sizeof(float) ? (T)FLT_EPSILON : (T)DBL_EPSILON;
    T a = ct < 0 ? -ct : ct;
    return a >= (T)2 / eps && a - a == 0;   /* (not inf, not NaN) */
}

/* Column group v0 of St[nk][NR] (VL lanes), whose c * top is ct: lanes
 * with huge scores are scaled by c in place. Returns the exponent's factor
 * per lane: 1 for those, c for the others. */
static vec FN(log2_huge_lanes)(int64_t nk, T *st, vec ct, T c)
{
    T lane[VL], scale[VL], factor[VL];
    v_store(lane, ct);
    for (int i = 0; i < VL; i++) {
        int huge = FN(score_huge)(lane[i]);
        scale[i] = huge ? c : (T)1;   /* (times 1: exact) */
        factor[i] = huge ? (T)1 : c;
    }
    vec sv = v_load(scale);
    for (int64_t j = 0; j < nk; j++) v_store(st + j * NR, v_mul(v_load(st + j * NR), sv));
    return v_load(factor);
}

static inline int FN(any_huge)(vec ct)
{
    T lane[VL];
    v_store(lane, ct);
    int any = 0;
    for (int i = 0; i < VL; i++) any |= FN(score_huge)(lane[i]);
    return any;
}

/* tanh(x) = 1 - 2 / (1 + 2^(2 log2e x)), exactly as additive_panel computes it
 * (also the soft-cap of the prep passes). */
static inline vec FN(tanh_vec)(vec x)
{
    vec r = v_inv1p_exp2_shifted(v_fma(x, v_set1((T)(2.0 * ATTN_LOG2E)), v_set1((T)INV1P_SHIFT)));
    return v_fma(v_set1((T)-2), r, v_set1((T)1));
}

#ifndef V_HAS_TANH_SOFTCAP
/* tanh with a relative error bound, for soft-capping (vmath.h): x P(x^2) /
 * Q(x^2) on x clamped to [-9, 9] (NaN kept: it is the clamps' second
 * operand) */
static inline vec FN(tanh_softcap)(vec x)
{
    const vec xc = v_max(v_set1((T)-ATTN_TANH_CLAMP), v_min(v_set1((T)ATTN_TANH_CLAMP), x));
    const vec y = v_mul(xc, xc);
    vec p = v_set1((T)ATTN_TANH_P4), q = v_set1((T)ATTN_TANH_Q4);
    p = v_fma(p, y, v_set1((T)ATTN_TANH_P3));
    q = v_fma(q, y, v_set1((T)ATTN_TANH_Q3));
    p = v_fma(p, y, v_set1((T)ATTN_TANH_P2));
    q = v_fma(q, y, v_set1((T)ATTN_TANH_Q2));
    p = v_fma(p, y, v_set1((T)ATTN_TANH_P1));
    q = v_fma(q, y, v_set1((T)ATTN_TANH_Q1));
    p = v_fma(p, y, v_set1((T)1));
    q = v_fma(q, y, v_set1((T)1));
    return v_div(v_mul(xc, p), q);
}
#else
static inline vec FN(tanh_softcap)(vec x) { return v_tanh_softcap(x); }
#endif

/* ------------------------------------------------------------------------ */
/* panel path                                                                */
/* ------------------------------------------------------------------------ */

#ifndef ATTN_HAVE_qk_panel
/* One register tile of qk_panel (below): keys krow[0..MR_QK), St rows
 * c + m * ldst, the first mstore of them stored. Always inlined, so that
 * attention's call (ldst == NR, whole tiles, no accumulate) runs with
 * constant row offsets and no per-row store branches around the two
 * chains' parking (the general form kept the offsets on the stack: 1.5% of
 * S1 on Zen 3, benchmarks/NOTES.md). */
static inline __attribute__((always_inline)) void FN(qk_tile)(int64_t D, const T *const *krow,
                                                              const T *qt, T *c, int64_t ldst,
                                                              int mstore, int accumulate, T *colmax,
                                                              int nvu)
{
    vec acc[MR_QK][NV];
#pragma GCC unroll 16
    for (int m = 0; m < MR_QK; m++)
#pragma GCC unroll 4
        for (int v = 0; v < nvu; v++)
            acc[m][v] = accumulate && m < mstore ? v_load(c + m * ldst + v * VL) : v_zero();

    const T *b = qt;
    const int64_t dsplit = D >= 8 ? D / 2 : D;
    for (int half = 0; half < 2; half++) {
        int64_t dend = half ? D : dsplit;
        if (half) {
            if (dsplit == D) break;
            /* park the first chain in St (rows >= mstore are never used) */
#pragma GCC unroll 16
            for (int m = 0; m < MR_QK; m++)
#pragma GCC unroll 4
                for (int v = 0; v < nvu; v++) {
                    if (m < mstore) v_store(c + m * ldst + v * VL, acc[m][v]);
                    acc[m][v] = v_zero();
                }
        }
#pragma GCC unroll 2
        for (int64_t d = half ? dsplit : 0; d < dend; d++, b += NR) {
            vec bv[NV];
#pragma GCC unroll 4
            for (int v = 0; v < nvu; v++) bv[v] = v_load(b + v * VL);
#pragma GCC unroll 16
            for (int m = 0; m < MR_QK; m++) {
                vec a = v_set1(krow[m][d]);
#pragma GCC unroll 4
                for (int v = 0; v < nvu; v++) acc[m][v] = v_fma(a, bv[v], acc[m][v]);
            }
        }
    }
#pragma GCC unroll 16
    for (int m = 0; m < MR_QK; m++)
        if (m < mstore)
#pragma GCC unroll 4
            for (int v = 0; v < nvu; v++) {
                if (dsplit < D) acc[m][v] = v_add(acc[m][v], v_load(c + m * ldst + v * VL));
                v_store(c + m * ldst + v * VL, acc[m][v]);
            }
    if (colmax) {
        /* rows past nk repeat row nk - 1, so they cannot raise the max */
#pragma GCC unroll 4
        for (int v = 0; v < nvu; v++) {
            vec cm = v_load(colmax + v * VL);
#pragma GCC unroll 16
            for (int m = 0; m < MR_QK; m++) cm = v_max(cm, acc[m][v]);
            v_store(colmax + v * VL, cm);
        }
    }
}

/*
 * St[j][:] = sum_{d<D} K[j][d] * Qt[d][:]      for j < nk, rows ldst apart
 * (St[j][:] += ... when accumulate is nonzero: the GEMM's blocks over D)
 *
 * Register tile: MR_QK keys x NV vectors of queries. Each step over d loads
 * NV vectors of Qt and broadcasts one element of each of the MR_QK key rows.
 * Rows past nk repeat the last key row (their St rows are never read), so the
 * inner loop has no edge cases. With colmax (NR values), the column maxima of
 * the tile are folded into it on the way out, saving the softmax a pass.
 *
 * Accuracy: the sum over d runs as two chains, d < D/2 and d >= D/2, the
 * first parked in St while the second starts from zero. The scores' rounding
 * error, which dominates attention's float32 error, is about halved (two
 * chains of D/2 instead of one of D; docs/numerics.md) for one extra store,
 * load and add per accumulator.
 */
static void FN(qk_panel)(int64_t D, const T *k, int64_t ldk, int64_t nk,
                         const T *qt, T *st, int64_t ldst, int accumulate, T *colmax)
{
    for (int64_t j0 = 0; j0 < nk; j0 += MR_QK) {
        const T *krow[MR_QK];
        for (int m = 0; m < MR_QK; m++) {
            int64_t j = j0 + m < nk ? j0 + m : nk - 1;
            krow[m] = k + j * ldk;
        }
        T *c = st + j0 * ldst;
        if (ldst == NR && !accumulate) {   /* attention's score tile */
            FN(qk_tile)(D, krow, qt, c, NR, MR_QK, 0, colmax, NV);
        } else {
            /* rows past nk are computed but not stored when they would fall
             * outside the caller's tile (ldst != NR: a GEMM writing its output) */
            int mstore = ldst == NR || j0 + MR_QK <= nk ? MR_QK : (int)(nk - j0);
            FN(qk_tile)(D, krow, qt, c, ldst, mstore, accumulate, colmax, NV);
        }
    }
}

#if NV % 2 == 0
/* qk_panel's attention tile (ldst NR, no accumulate) on the first NR / 2
 * queries only: a panel's last rows when they fit half of it (Lq = 24 on
 * avx2 is 16 + 8 rows). Lanes past NR / 2 are neither read nor written;
 * the others get qk_panel's bits. */
static void FN(qk_panel_half)(int64_t D, const T *k, int64_t ldk, int64_t nk, const T *qt, T *st,
                              T *colmax)
{
    for (int64_t j0 = 0; j0 < nk; j0 += MR_QK) {
        const T *krow[MR_QK];
        for (int m = 0; m < MR_QK; m++) krow[m] = k + (j0 + m < nk ? j0 + m : nk - 1) * ldk;
        FN(qk_tile)(D, krow, qt, st + j0 * NR, NR, MR_QK, 0, colmax, NV / 2);
    }
}
#define QK_PANEL_HALF FN(qk_panel_half)
#endif
#endif

#ifndef ATTN_HAVE_prep_panel
/*
 * A block's prep pass on St[nk][NR] (attn_prep in ktab.h): to log2 units
 * (soft-capped or scaled), then the mask, the ALiBi ramp, the per-row key
 * range (window start lo, limit lim) and a copy into the weights rows.
 *   bool mask (uint8):  St[j][r] = m ? St[j][r] : -inf
 *   additive mask (T):  St[j][r] += log2(e) * m
 *   ALiBi:              St[j][r] += alibi_m[r] * |j - alibi_p[r]|
 * Full VL x VL blocks of contiguous mask rows go through the register
 * transpose when the ISA has one.
 */
static void FN(prep_panel)(const PREP_TYPE *x, T *st)
{
    const int nr = x->nr;
    const int64_t nk = x->nk;
    const int nvu = x->half ? NV / 2 : NV;   /* vectors of a key's lanes in use */
    /* the lanes in use as runs of `span` elements NR apart: the whole tile
     * as one run, or a half panel's NR / 2 lanes of each key */
    const int64_t runs = x->half ? nk : 1, span = x->half ? NR / 2 : nk * NR;
    if (x->capx != (T)0) {
        vec cx = v_set1(x->capx), cl = v_set1(x->capl);
        for (int64_t j = 0; j < runs; j++)
            for (int64_t i = j * NR; i < j * NR + span; i += VL)
                v_store(st + i, v_mul(cl, FN(tanh_softcap)(v_mul(cx, v_load(st + i)))));
    } else if (x->c != (T)1) {
        vec cv = v_set1(x->c);
        for (int64_t j = 0; j < runs; j++)
            for (int64_t i = j * NR; i < j * NR + span; i += VL) v_store(st + i, v_mul(cv, v_load(st + i)));
    }
    if (x->mask_kind != ATTN_MASK_NONE) {
        const T log2e = (T)ATTN_LOG2E;
        const int64_t sj = x->msj;
        int64_t j0 = 0;
        int rfull = 0;   /* rows [0, rfull) done up to key j0 */
#ifdef V_HAS_TRANSPOSE
        /* whole VL-row blocks (a half or partial panel's too) */
        if (sj == 1) {
            rfull = nr / VL * VL;
            if (rfull > 0)
                for (; j0 + VL <= nk; j0 += VL)
                    for (int r0 = 0; r0 < rfull; r0 += VL)
                        v_mask_block(x->mask_kind, x->mrows + r0, j0, st + j0 * NR + r0, NR);
        }
#endif
        for (int r = 0; r < nr; r++) {
            T *col = st + r;
            int64_t jr = r < rfull ? j0 : 0;
            if (x->mask_kind == ATTN_MASK_BOOL) {
                const uint8_t *m = (const uint8_t *)x->mrows[r];
                for (int64_t j = jr; j < nk; j++)
                    col[j * NR] = m[j * sj] ? col[j * NR] : (T)-INFINITY;
            } else {
                const T *m = (const T *)x->mrows[r];
                for (int64_t j = jr; j < nk; j++) col[j * NR] += log2e * m[j * sj];
            }
        }
    }
    if (x->alibi_m) {
        /* alibi_m / alibi_p hold NR values (lanes past nr padded) */
        for (int u = 0; u < nvu; u++) {
            vec mv = v_load(x->alibi_m + u * VL), pv = v_load(x->alibi_p + u * VL);
            for (int64_t j = 0; j < nk; j++) {
                vec dist = v_sub(v_set1((T)j), pv);
                dist = v_max(dist, v_sub(v_zero(), dist));
                T *p = st + j * NR + u * VL;
                v_store(p, v_fma(mv, dist, v_load(p)));
            }
        }
    }
    if (x->lo)
        for (int r = 0; r < nr; r++)
            for (int64_t j = 0; j < nk && j < x->lo[r]; j++) st[j * NR + r] = -INFINITY;
    if (x->lim)
        for (int r = 0; r < nr; r++)
            for (int64_t j = x->lim[r] > 0 ? x->lim[r] : 0; j < nk; j++) st[j * NR + r] = -INFINITY;
    if (x->wrows) {
        /* weights rows = St^T, through the output transpose */
        T ones[ATTN_MAX_LANES];
        for (int r = 0; r < NR; r++) ones[r] = 1;
        T *const *w = x->wrows;
#ifdef V_HAS_TRANSPOSE
        if (nr == NR) {
            int64_t j0 = 0;
            for (; j0 + VL <= nk; j0 += VL)
                for (int r0 = 0; r0 < NR; r0 += VL)
                    v_untranspose(st + j0 * NR + r0, NR, ones + r0, w + r0, j0);
            for (int r = 0; r < nr; r++)
                for (int64_t j = j0; j < nk; j++) w[r][j] = st[j * NR + r];
            return;
        }
#endif
        for (int r = 0; r < nr; r++)
            for (int64_t j = 0; j < nk; j++) w[r][j] = st[j * NR + r];
    }
}
#endif

#ifndef ATTN_HAVE_softmax_panel
/*
 * Online softmax down the columns of St[nk][NR]:
 *   m_new = max(m, c * max_j St[j])  (max_j St[j] given as colmax when the
 *                                     QK kernel already folded it; huge
 *                                     scores: see score_huge);
 *   alpha = exp2(m - m_new);  St[j] = exp2(c St[j] - m_new)  (one FMA);
 *   l = alpha l + sum_j St[j]  (compensated);  m = m_new.
 * A column that has seen only -inf keeps m = -inf; it is shifted by 0 instead
 * of -inf so that exp2(-inf - (-inf)) never produces NaN: its p and alpha are
 * exactly 0 and its l stays 0 (the driver turns l == 0 into a zero row).
 * (c > 0 or NaN, so c * max_j St[j] = max_j c St[j].)
 */
static inline __attribute__((always_inline)) void FN(softmax_lanes)(int64_t nk, T *st, T c,
                                                                    const T *colmax, T *m, T *l,
                                                                    T *lc, T *alpha, int nvu)
{
    const vec cv = v_set1(c);
#pragma GCC unroll 4
    for (int v = 0; v < nvu; v++) {
        vec m_old = v_load(m + v * VL);
        vec top;
        if (colmax) {
            top = v_load(colmax + v * VL);
        } else {
            top = v_set1((T)-INFINITY);
            for (int64_t j = 0; j < nk; j++) top = v_max(top, v_load(st + j * NR + v * VL));
        }
        /* c == 1 leaves top unchanged, so -inf never meets a 0 * inf */
        vec ctop = c == (T)1 ? top : v_mul(cv, top);
        vec m_new = v_max(m_old, ctop);
        vec cj = cv;   /* the exponent's factor: c, or 1 for lanes of huge scores */
        if (c != (T)1 && FN(any_huge)(ctop)) cj = FN(log2_huge_lanes)(nk, st + v * VL, ctop, c);
        vec shift = v_neginf_to_zero(m_new);
        vec nshift = v_sub(v_zero(), shift);
        vec a = v_exp2(v_sub(m_old, shift));
        vec sum0 = v_zero(), sum1 = v_zero();
        int64_t j = 0;
        for (; j + 1 < nk; j += 2) {
            vec p0 = v_exp2_nonpos(v_fma(v_load(st + j * NR + v * VL), cj, nshift));
            vec p1 = v_exp2_nonpos(v_fma(v_load(st + (j + 1) * NR + v * VL), cj, nshift));
            v_store(st + j * NR + v * VL, p0);
            v_store(st + (j + 1) * NR + v * VL, p1);
            sum0 = v_add(sum0, p0);
            sum1 = v_add(sum1, p1);
        }
        if (j < nk) {
            vec p0 = v_exp2_nonpos(v_fma(v_load(st + j * NR + v * VL), cj, nshift));
            v_store(st + j * NR + v * VL, p0);
            sum0 = v_add(sum0, p0);
        }
        vec lt = v_load(l + v * VL), lct = v_load(lc + v * VL);
        FN(kahan_update)(a, v_add(sum0, sum1), &lt, &lct);
        v_store(l + v * VL, lt);
        v_store(lc + v * VL, lct);
        v_store(m + v * VL, m_new);
        v_store(alpha + v * VL, a);
    }
}

static void FN(softmax_panel)(int64_t nk, T *st, T c, const T *colmax, T *m, T *l, T *lc,
                              T *alpha)
{
    FN(softmax_lanes)(nk, st, c, colmax, m, l, lc, alpha, NV);
}

#if NV % 2 == 0
/* softmax_panel on the first NR / 2 lanes (see qk_panel_half) */
static void FN(softmax_panel_half)(int64_t nk, T *st, T c, const T *colmax, T *m, T *l, T *lc,
                                   T *alpha)
{
    FN(softmax_lanes)(nk, st, c, colmax, m, l, lc, alpha, NV / 2);
}
#define SOFTMAX_PANEL_HALF FN(softmax_panel_half)
#endif
#endif

#ifndef ATTN_HAVE_pv_panel
/*
 * Ot[c][:] = alpha[:] * Ot[c][:] + sum_{j<nk} V[j][c] * Pt[j][:]   for c < Dv
 * (fresh: Ot and Ct taken as zeros, not read: the unit's first block, so
 * that they need no clearing; the same operations, so the same bits)
 *
 * Register tile: MR_PV value columns x NV vectors of queries. Each step over
 * j loads NV vectors of Pt and broadcasts MR_PV consecutive elements of value
 * row j. The block's sum starts from zero in registers and is added to the
 * running Ot (rescaled by alpha, the online softmax's correction) with Kahan
 * compensation in Ct, so the rounding error does not grow with Lk.
 */
static inline __attribute__((always_inline)) void FN(pv_lanes)(int64_t nk, const T *v, int64_t ldv,
                                                               int64_t Dv, const T *pt,
                                                               const T *alpha, T *ot, T *ct,
                                                               int fresh, int nvu)
{
    vec al[NV];
#pragma GCC unroll 4
    for (int u = 0; u < nvu; u++) al[u] = v_load(alpha + u * VL);

    for (int64_t c0 = 0; c0 < Dv; c0 += MR_PV) {
        /* column offsets inside a value row; past Dv they repeat the last
         * column so that nothing is read beyond the row (Ot has room) */
        int64_t col[MR_PV];
        for (int m = 0; m < MR_PV; m++) col[m] = c0 + m < Dv ? c0 + m : Dv - 1;
        int full = c0 + MR_PV <= Dv;

        vec acc[MR_PV][NV];
#pragma GCC unroll 16
        for (int m = 0; m < MR_PV; m++)
#pragma GCC unroll 4
            for (int u = 0; u < nvu; u++) acc[m][u] = v_zero();

        const T *b = pt;
        if (full) {
            const T *a = v + c0;
#pragma GCC unroll 2
            for (int64_t j = 0; j < nk; j++, b += NR, a += ldv) {
                vec bv[NV];
#pragma GCC unroll 4
                for (int u = 0; u < nvu; u++) bv[u] = v_load(b + u * VL);
#pragma GCC unroll 16
                for (int m = 0; m < MR_PV; m++) {
                    vec s = v_set1(a[m]);
#pragma GCC unroll 4
                    for (int u = 0; u < nvu; u++) acc[m][u] = v_fma(s, bv[u], acc[m][u]);
                }
            }
        } else {
            const T *row = v;
            for (int64_t j = 0; j < nk; j++, b += NR, row += ldv) {
                vec bv[NV];
#pragma GCC unroll 4
                for (int u = 0; u < nvu; u++) bv[u] = v_load(b + u * VL);
#pragma GCC unroll 16
                for (int m = 0; m < MR_PV; m++) {
                    vec s = v_set1(row[col[m]]);
#pragma GCC unroll 4
                    for (int u = 0; u < nvu; u++) acc[m][u] = v_fma(s, bv[u], acc[m][u]);
                }
            }
        }
        T *o = ot + c0 * NR, *oc = ct + c0 * NR;
#pragma GCC unroll 16
        for (int m = 0; m < MR_PV; m++)
#pragma GCC unroll 4
            for (int u = 0; u < nvu; u++) {
                T *po = o + m * NR + u * VL, *pc = oc + m * NR + u * VL;
                /* fresh: the unit's first P V, Ot and Ct not yet written (as zeros) */
                vec total = fresh ? v_zero() : v_load(po), comp = fresh ? v_zero() : v_load(pc);
                FN(kahan_update)(al[u], acc[m][u], &total, &comp);
                v_store(po, total);
                v_store(pc, comp);
            }
    }
}

static void FN(pv_panel)(int64_t nk, const T *v, int64_t ldv, int64_t Dv, const T *pt,
                         const T *alpha, T *ot, T *ct, int fresh)
{
    FN(pv_lanes)(nk, v, ldv, Dv, pt, alpha, ot, ct, fresh, NV);
}

#if NV % 2 == 0
/* pv_panel on the first NR / 2 lanes (see qk_panel_half) */
static void FN(pv_panel_half)(int64_t nk, const T *v, int64_t ldv, int64_t Dv, const T *pt,
                              const T *alpha, T *ot, T *ct, int fresh)
{
    FN(pv_lanes)(nk, v, ldv, Dv, pt, alpha, ot, ct, fresh, NV / 2);
}
#define PV_PANEL_HALF FN(pv_panel_half)
#endif
#endif

/* ------------------------------------------------------------------------ */
/* rows path                                                                 */
/* ------------------------------------------------------------------------ */

#ifndef ATTN_HAVE_prep_rows
/* A block's prep pass on S[nr][lds] (see prep_panel; rows instead of lanes). */
static void FN(prep_rows)(const PREP_TYPE *x, T *s, int64_t lds)
{
    const int nr = x->nr;
    const int64_t nk = x->nk;
    const T log2e = (T)ATTN_LOG2E;
    for (int r = 0; r < nr; r++) {
        T *row = s + r * lds;
        /* whole vectors: S rows have room up to a multiple of VL */
        if (x->capx != (T)0) {
            vec cx = v_set1(x->capx), cl = v_set1(x->capl);
            for (int64_t j = 0; j < nk; j += VL)
                v_store(row + j, v_mul(cl, FN(tanh_softcap)(v_mul(cx, v_load(row + j)))));
        } else if (x->c != (T)1) {
            vec cv = v_set1(x->c);
            for (int64_t j = 0; j < nk; j += VL) v_store(row + j, v_mul(cv, v_load(row + j)));
        }
        if (x->mask_kind == ATTN_MASK_BOOL) {
            const uint8_t *m = (const uint8_t *)x->mrows[r];
            for (int64_t j = 0; j < nk; j++) row[j] = m[j * x->msj] ? row[j] : (T)-INFINITY;
        } else if (x->mask_kind == ATTN_MASK_ADD) {
            const T *m = (const T *)x->mrows[r];
            for (int64_t j = 0; j < nk; j++) row[j] += log2e * m[j * x->msj];
        }
        if (x->alibi_m) {
            T mr = x->alibi_m[r], pr = x->alibi_p[r];
            for (int64_t j = 0; j < nk; j++) {
                T dist = (T)j - pr;
                row[j] += mr * (dist < 0 ? -dist : dist);
            }
        }
        if (x->lo)
            for (int64_t j = 0; j < nk && j < x->lo[r]; j++) row[j] = -INFINITY;
        if (x->lim)
            for (int64_t j = x->lim[r] > 0 ? x->lim[r] : 0; j < nk; j++) row[j] = -INFINITY;
        if (x->wrows)
            for (int64_t j = 0; j < nk; j++) x->wrows[r][j] = row[j];
    }
}
#endif

#ifndef ATTN_HAVE_softmax_rows
/* Online softmax along each row of S[nr][nk]; see softmax_panel. */
static void FN(softmax_rows)(int nr, int64_t nk, T *s, int64_t lds, T c, T *m, T *l, T *lc,
                             T *alpha)
{
    const vec cv = v_set1(c);
    for (int r = 0; r < nr; r++) {
        T *row = s + r * lds;
        vec mx = v_set1((T)-INFINITY);
        int64_t j = 0;
        for (; j + VL <= nk; j += VL) mx = v_max(mx, v_load(row + j));
        T top = v_hmax(mx);
        for (; j < nk; j++) top = row[j] > top ? row[j] : top;
        /* a NaN score must reach l; the max may drop it, the sum keeps it */
        T ctop = c == (T)1 ? top : c * top;
        T crow = c;   /* the exponent's factor: c, or 1 for huge scores */
        if (c != (T)1 && FN(score_huge)(ctop)) {   /* see score_huge */
            for (j = 0; j + VL <= nk; j += VL) v_store(row + j, v_mul(v_load(row + j), cv));
            for (; j < nk; j++) row[j] *= c;
            crow = 1;
        }
        T m_new = ctop > m[r] ? ctop : m[r];
        T shift = m_new == -INFINITY ? (T)0 : m_new;
        vec nshift = v_set1(-shift), cr = v_set1(crow);
        vec sum = v_zero();
        for (j = 0; j + VL <= nk; j += VL) {
            vec p = v_exp2_nonpos(v_fma(v_load(row + j), cr, nshift));
            v_store(row + j, p);
            sum = v_add(sum, p);
        }
        if (j < nk) {
            int n = (int)(nk - j);
            vec p = v_exp2_nonpos(v_fma(v_load_n(row + j, n), cr, nshift));
            /* lanes past nk computed exp2(-shift); drop them */
            v_store_n(row + j, p, n);
            sum = v_add(sum, v_load_n(row + j, n));
        }
        T a_vec[VL];
        v_store(a_vec, v_exp2(v_set1(m[r] - shift)));
        T a = a_vec[0];
        FN(kahan_update_scalar)(a, v_hsum(sum), &l[r], &lc[r]);
        m[r] = m_new;
        alpha[r] = a;
    }
}
#endif

/* ------------------------------------------------------------------------ */
/* both paths                                                                */
/* ------------------------------------------------------------------------ */

#ifndef ATTN_HAVE_dropout_tile
static void FN(dropout_tile)(int nr, int64_t nk, T *p, int64_t rs, int64_t js,
                             const uint64_t *counter, uint64_t seed_mixed, uint32_t threshold,
                             T keep_scale)
{
    for (int r = 0; r < nr; r++) {
        T *pr = p + r * rs;
        for (int64_t j = 0; j < nk; j++) {
            int keep = attn_dropout_draw(seed_mixed, counter[r] + (uint64_t)j) >= threshold;
            pr[j * js] = keep ? pr[j * js] * keep_scale : (T)0;
        }
    }
}
#endif

/* ------------------------------------------------------------------------ */
/* additive (Bahdanau) scores                                                */
/* ------------------------------------------------------------------------ */

#ifndef ATTN_HAVE_additive_panel_exp
/*
 * St[j][:] = c + sum_{h<H} wneg[h] * 1 / (1 + Et[h][:] * F[j][h])
 *
 * With Et = e^(2 (Qp + b)), F = e^(2 Kp), wneg = -2 log2e w and
 * c = log2e sum_h w_h this is log2e * sum_h w_h tanh(Qp + b + Kp), the
 * additive score in log2 units, because tanh(x) = 1 - 2 / (1 + e^(2x)) and
 * e^(2(a + b)) = e^(2a) e^(2b): the exponentials are taken once per query
 * and once per key (O((Lq + Lk) H)), and each of the Lq Lk H terms costs one
 * FMA, a reciprocal and the accumulating FMA. The driver uses this form when
 * every |Qp + b| and |Kp| is small enough for the products to stay inside
 * the float range, else additive_panel_tanh. The (Lq, Lk, H) tensor exists
 * only in registers: one MR_ADD x NV tile of it per step over h.
 */
static void FN(additive_panel_exp)(int64_t H, const T *f, int64_t ldf, int64_t nk,
                                   const T *et, const T *wneg, T c, T *st)
{
    const vec one = v_set1((T)1);
    for (int64_t j0 = 0; j0 < nk; j0 += MR_ADD) {
        const T *frow[MR_ADD];
        for (int m = 0; m < MR_ADD; m++) {
            int64_t j = j0 + m < nk ? j0 + m : nk - 1;
            frow[m] = f + j * ldf;
        }
        vec acc[MR_ADD][NV];
#pragma GCC unroll 8
        for (int m = 0; m < MR_ADD; m++)
#pragma GCC unroll 4
            for (int v = 0; v < NV; v++) acc[m][v] = v_set1(c);
        const T *b = et;
        for (int64_t h = 0; h < H; h++, b += NR) {
            vec ev[NV];
#pragma GCC unroll 4
            for (int v = 0; v < NV; v++) ev[v] = v_load(b + v * VL);
            vec w = v_set1(wneg[h]);
#pragma GCC unroll 8
            for (int m = 0; m < MR_ADD; m++) {
                vec fb = v_set1(frow[m][h]);
#pragma GCC unroll 4
                for (int v = 0; v < NV; v++)
                    acc[m][v] = v_fma(w, v_recip(v_fma(ev[v], fb, one)), acc[m][v]);
            }
        }
        /* whole MR_ADD rows: they end inside St's MR_QK padding (asserted above) */
        T *out = st + j0 * NR;
#pragma GCC unroll 8
        for (int m = 0; m < MR_ADD; m++)
#pragma GCC unroll 4
            for (int v = 0; v < NV; v++) v_store(out + m * NR + v * VL, acc[m][v]);
    }
}
#endif

#ifndef ATTN_HAVE_additive_panel_tanh
/*
 * The same scores for any inputs (large, infinite or NaN included):
 * St[j][:] = c + sum_{h<H} wneg[h] * 1 / (1 + 2^(Qt[h][:] + kscale * K[j][h]))
 * with Qt = 2 log2e (Qp + b) and kscale = 2 log2e, evaluating
 * 1 / (1 + 2^x) per term with the vector tanh core (vmath.h).
 */
static void FN(additive_panel_tanh)(int64_t H, const T *k, int64_t ldk, int64_t nk,
                                    const T *qt, const T *wneg, T c, T *st)
{
    const T kscale = (T)(2.0 * ATTN_LOG2E), shift = (T)INV1P_SHIFT;
    for (int64_t j0 = 0; j0 < nk; j0 += MR_ADD) {
        const T *krow[MR_ADD];
        for (int m = 0; m < MR_ADD; m++) {
            int64_t j = j0 + m < nk ? j0 + m : nk - 1;
            krow[m] = k + j * ldk;
        }
        vec acc[MR_ADD][NV];
#pragma GCC unroll 8
        for (int m = 0; m < MR_ADD; m++)
#pragma GCC unroll 4
            for (int v = 0; v < NV; v++) acc[m][v] = v_set1(c);
        const T *b = qt;
        for (int64_t h = 0; h < H; h++, b += NR) {
            vec qv[NV];
#pragma GCC unroll 4
            for (int v = 0; v < NV; v++) qv[v] = v_load(b + v * VL);
            vec w = v_set1(wneg[h]);
#pragma GCC unroll 8
            for (int m = 0; m < MR_ADD; m++) {
                vec kb = v_set1(krow[m][h] * kscale + shift);
#pragma GCC unroll 4
                for (int v = 0; v < NV; v++)
                    acc[m][v] = v_fma(w, v_inv1p_exp2_shifted(v_add(qv[v], kb)), acc[m][v]);
            }
        }
        T *out = st + j0 * NR;
#pragma GCC unroll 8
        for (int m = 0; m < MR_ADD; m++)
#pragma GCC unroll 4
            for (int v = 0; v < NV; v++) v_store(out + m * NR + v * VL, acc[m][v]);
    }
}
#endif

/* ------------------------------------------------------------------------ */
/* vector math entries                                                       */
/* ------------------------------------------------------------------------ */

static void FN(tanh_array)(int64_t n, const T *x, T *y)
{
    int64_t i = 0;
    for (; i + VL <= n; i += VL) v_store(y + i, FN(tanh_vec)(v_load(x + i)));
    if (i < n) v_store_n(y + i, FN(tanh_vec)(v_load_n(x + i, (int)(n - i))), (int)(n - i));
}

#ifndef ATTN_HAVE_weights_row
/* Weights of one row from its recorded log2 scores: w = exp2(w - shift) * scale. */
static void FN(weights_row)(int64_t n, T *w, T shift, T scale)
{
    vec sh = v_set1(shift), sc = v_set1(scale);
    int64_t i = 0;
    for (; i + VL <= n; i += VL) v_store(w + i, v_mul(v_exp2_nonpos(v_sub(v_load(w + i), sh)), sc));
    if (i < n) {
        int rest = (int)(n - i);
        v_store_n(w + i, v_mul(v_exp2_nonpos(v_sub(v_load_n(w + i, rest), sh)), sc), rest);
    }
}
#endif

#ifndef ATTN_HAVE_sigmoid
/*
 * Sigmoid attention's weights, from scores t = x + shift in log2 units:
 *   sigmoid = 2^min(t, 0) / (1 + 2^-|t|)
 * Both exponents are <= 0, so nothing overflows; t = -inf (a masked key)
 * gives exactly 0 and t = +inf exactly 1; NaN propagates (the max
 * instructions return their second operand for NaN). Relative error: that
 * of two exp2s and a division, a few ulp.
 */
static inline vec FN(sigmoid_vec)(vec t)
{
    vec neg = v_sub(v_zero(), t);
    vec num = v_exp2(v_sub(v_zero(), v_max(v_zero(), neg)));    /* 2^min(t, 0) */
    vec den = v_add(v_set1((T)1), v_exp2(v_sub(v_zero(), v_max(t, neg))));   /* 1 + 2^-|t| */
    return v_div(num, den);
}

static void FN(sigmoid)(int64_t n, T *x, T shift)
{
    vec sh = v_set1(shift);
    int64_t i = 0;
    for (; i + VL <= n; i += VL) v_store(x + i, FN(sigmoid_vec)(v_add(v_load(x + i), sh)));
    if (i < n) {
        int rest = (int)(n - i);
        v_store_n(x + i, FN(sigmoid_vec)(v_add(v_load_n(x + i, rest), sh)), rest);
    }
}
#endif

/* ------------------------------------------------------------------------ */
/* hard attention                                                            */
/* ------------------------------------------------------------------------ */

/*
 * Gumbel noise in log2 units for a draw from the softmax (the Gumbel-max
 * trick: argmax_j (s_j + G_j) with G = -ln(-ln U) is distributed as
 * softmax(s)). U in (0, 1) from 53 bits of the counter RNG; attncore's
 * reference computes the same value in Python.
 */
static inline double FN(gumbel_log2)(uint64_t seed_mixed, uint64_t counter)
{
    double u = ((double)(attn_mix64(seed_mixed ^ counter) >> 11) + 0.5) * (1.0 / 9007199254740992.0);
    return -log(-log(u)) * ATTN_LOG2E;
}

#ifndef ATTN_HAVE_select_topk
static void FN(select_topk)(int nr, int64_t nk, const T *s, int64_t rs, int64_t js, int64_t j0, int k,
                            uint64_t seed_mixed, const uint64_t *counter, T *vals, int64_t *idx,
                            int *nan)
{
    for (int r = 0; r < nr; r++) {
        T *vr = vals + (int64_t)r * k;
        int64_t *ir = idx + (int64_t)r * k;
        for (int64_t j = 0; j < nk; j++) {
            T t = s[r * rs + j * js];
            if (t == -INFINITY) continue;               /* hidden key */
            if (t != t) { nan[r] = 1; continue; }
            if (seed_mixed) t = (T)((double)t + FN(gumbel_log2)(seed_mixed, counter[r] + (uint64_t)j));
            /* keys arrive in increasing order, so a tie never displaces */
            if (ir[k - 1] >= 0 && !(t > vr[k - 1])) continue;
            int pos = k - 1;
            while (pos > 0 && (ir[pos - 1] < 0 || t > vr[pos - 1])) {
                vr[pos] = vr[pos - 1];
                ir[pos] = ir[pos - 1];
                pos--;
            }
            vr[pos] = t;
            ir[pos] = j0 + j;
        }
    }
}
#endif

#ifndef ATTN_HAVE_gather_rows
static void FN(gather_rows)(int nr, int64_t Dv, int k, const T *vals, const int64_t *idx,
                            const int *nan, int softmax, const T *v, int64_t ldv, T *const *rows)
{
    for (int r = 0; r < nr; r++) {
        const T *vr = vals + (int64_t)r * k;
        const int64_t *ir = idx + (int64_t)r * k;
        T *out = rows[r];
        for (int64_t c = 0; c < Dv; c++) out[c] = nan[r] ? (T)NAN : (T)0;
        if (nan[r] || ir[0] < 0) continue;
        double w[ATTN_MAX_HARD_K], total = 0;
        int n = 0;
        for (; n < k && ir[n] >= 0; n++) {
            w[n] = softmax ? exp2((double)vr[n] - (double)vr[0]) : 1.0;   /* vr[0] is the max */
            total += w[n];
        }
        for (int t = 0; t < n; t++) {
            const T *vrow = v + ir[t] * ldv;
            T wt = (T)(w[t] / total);
            for (int64_t c = 0; c < Dv; c++) out[c] += wt * vrow[c];
        }
    }
}
#endif

/* ------------------------------------------------------------------------ */
/* row softmax (csrc/driver/softmax.c)                                       */
/* ------------------------------------------------------------------------ */

#ifndef V_HAS_LOAD_NF
/* Lanes i < n from p, the others `fill`; p[n..] is never read. (A level
 * with masked loads that take a pass-through value defines V_HAS_LOAD_NF
 * and its own v_load_nf.) */
static inline vec v_load_nf(const T *p, int n, T fill)
{
    T t[VL];
    for (int i = 0; i < VL; i++) t[i] = i < n ? p[i] : fill;
    return v_load(t);
}
#endif

/* Entries per compensated block of exp_sum_row: the plain sum of a block
 * stays within a few ulp of its value, and the blocks are added with Kahan
 * compensation, so the row sum's error does not grow with the row length. */
#define SOFTMAX_SUM_BLOCK 128

#ifndef ATTN_HAVE_row_max
/*
 * max of x[0..n); -inf when n == 0. NaN entries are ignored (each step is
 * v_max(x, running), which keeps the running max when x is NaN, on every
 * level): the softmax does not need them here, because exp2 of a NaN score
 * reaches the row sum and makes the whole row NaN. Four accumulators, so
 * the loads and not the max latency set the pace.
 */
static T FN(row_max)(int64_t n, const T *x)
{
    const vec ninf = v_set1((T)-INFINITY);
    vec m0 = ninf, m1 = ninf, m2 = ninf, m3 = ninf;
    int64_t j = 0;
    for (; j + 4 * VL <= n; j += 4 * VL) {
        m0 = v_max(v_load(x + j), m0);
        m1 = v_max(v_load(x + j + VL), m1);
        m2 = v_max(v_load(x + j + 2 * VL), m2);
        m3 = v_max(v_load(x + j + 3 * VL), m3);
    }
    for (; j + VL <= n; j += VL) m0 = v_max(v_load(x + j), m0);
    /* the tail: lanes past n are -inf, which cannot raise the max */
    if (j < n) m1 = v_max(v_load_nf(x + j, (int)(n - j), (T)-INFINITY), m1);
    return v_hmax(v_max(v_max(m0, m1), v_max(m2, m3)));
}
#endif

#ifndef ATTN_HAVE_exp_sum_row
/*
 * p[j] = exp2(c (x[j] - shift)) for j < n, c = fl(log2 e); l (with its
 * compensation lc: the sum is l - lc) += sum_j p[j]. p may be x.
 *
 * The exponent is fl(fl(x - shift) * c): the difference rounded once, as in
 * every x - max formula, then one multiply. Not fma(x, c, -fl(c shift)): the
 * rounding of c shift is an absolute error of u |c shift|, which for a row
 * far from 0 (|shift| above 2^24 in float32) exceeds a unit of the exponent
 * and would scale every weight of the row by up to 2^(u |c shift|)
 * (docs/numerics.md, S1: no term in |x|). shift is the row's max, or 0
 * when nothing is above -inf, so the exponents are <= 0 or NaN:
 * v_exp2_nonpos. Sums: blocks of SOFTMAX_SUM_BLOCK entries in
 * two vector accumulators, each block added to l with Kahan compensation.
 */
static void FN(exp_sum_row)(int64_t n, const T *x, T shift, T *p, T *l, T *lc)
{
    const vec cv = v_set1((T)ATTN_LOG2E), sh = v_set1(shift);
    for (int64_t b0 = 0; b0 < n; b0 += SOFTMAX_SUM_BLOCK) {
        const int64_t b1 = b0 + SOFTMAX_SUM_BLOCK < n ? b0 + SOFTMAX_SUM_BLOCK : n;
        vec s0 = v_zero(), s1 = v_zero();
        int64_t j = b0;
        for (; j + 2 * VL <= b1; j += 2 * VL) {
            vec p0 = v_exp2_nonpos(v_mul(v_sub(v_load(x + j), sh), cv));
            vec p1 = v_exp2_nonpos(v_mul(v_sub(v_load(x + j + VL), sh), cv));
            v_store(p + j, p0);
            v_store(p + j + VL, p1);
            s0 = v_add(s0, p0);
            s1 = v_add(s1, p1);
        }
        if (j + VL <= b1) {
            vec p0 = v_exp2_nonpos(v_mul(v_sub(v_load(x + j), sh), cv));
            v_store(p + j, p0);
            s0 = v_add(s0, p0);
            j += VL;
        }
        if (j < b1) {
            /* lanes past the end are -inf: (-inf - shift) c = -inf, whose
             * exp2 is exactly 0, so they add nothing to the sum */
            int rest = (int)(b1 - j);
            vec p0 = v_exp2_nonpos(v_mul(v_sub(v_load_nf(x + j, rest, (T)-INFINITY), sh), cv));
            v_store_n(p + j, p0, rest);
            s1 = v_add(s1, p0);
        }
        FN(kahan_update_scalar)((T)1, v_hsum(v_add(s0, s1)), l, lc);
    }
}
#endif

#ifndef ATTN_HAVE_scale_row
/* out[j * os] = p[j] * r for j < n; p may be out (os == 1). */
static void FN(scale_row)(int64_t n, const T *p, T r, T *out, int64_t os)
{
    if (os != 1) {
        for (int64_t j = 0; j < n; j++) out[j * os] = p[j] * r;
        return;
    }
    const vec rv = v_set1(r);
    int64_t j = 0;
    for (; j + 2 * VL <= n; j += 2 * VL) {
        vec a = v_mul(v_load(p + j), rv), b = v_mul(v_load(p + j + VL), rv);
        v_store(out + j, a);
        v_store(out + j + VL, b);
    }
    for (; j + VL <= n; j += VL) v_store(out + j, v_mul(v_load(p + j), rv));
    if (j < n) v_store_n(out + j, v_mul(v_load_n(p + j, (int)(n - j)), rv), (int)(n - j));
}
#endif

static void FN(exp2_array)(int64_t n, const T *x, T *y)
{
    int64_t i = 0;
    for (; i + VL <= n; i += VL) v_store(y + i, v_exp2(v_load(x + i)));
    if (i < n) v_store_n(y + i, v_exp2(v_load_n(x + i, (int)(n - i))), (int)(n - i));
}

/* the half-panel kernels (a level without them: NULL, full panels only) */
#ifndef QK_PANEL_HALF
#define QK_PANEL_HALF NULL
#endif
#ifndef SOFTMAX_PANEL_HALF
#define SOFTMAX_PANEL_HALF NULL
#endif
#ifndef PV_PANEL_HALF
#define PV_PANEL_HALF NULL
#endif

const KTAB_TYPE KTAB_NAME = {
    .isa = ISA_NAME,
    .nr = NR,
    .mr_qk = MR_QK,
    .mr_pv = MR_PV,
    .vlen = VL,
    .rows_max = ROWS_MAX,
    .bk_panel = BK_PANEL,
    .bk_rows = BK_ROWS,
    .gemm_kc = GEMM_KC,
    .gemm_mc = GEMM_MC,
    .qk_panel = FN(qk_panel),
    .prep_panel = FN(prep_panel),
    .softmax_panel = FN(softmax_panel),
    .pv_panel = FN(pv_panel),
    .qk_panel_half = QK_PANEL_HALF,
    .softmax_panel_half = SOFTMAX_PANEL_HALF,
    .pv_panel_half = PV_PANEL_HALF,
    .additive_panel_exp = FN(additive_panel_exp),
    .additive_panel_tanh = FN(additive_panel_tanh),
    .prep_rows = FN(prep_rows),
    .softmax_rows = FN(softmax_rows),
    .dropout_tile = FN(dropout_tile),
    .weights_row = FN(weights_row),
    .sigmoid = FN(sigmoid),
    .select_topk = FN(select_topk),
    .gather_rows = FN(gather_rows),
    .row_max = FN(row_max),
    .exp_sum_row = FN(exp_sum_row),
    .scale_row = FN(scale_row),
    .exp2 = FN(exp2_array),
    .tanh = FN(tanh_array),
};

#undef NR
