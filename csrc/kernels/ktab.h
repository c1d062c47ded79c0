/*
 * The kernel context: what one ISA translation unit (csrc/arch/kern_*.c)
 * offers the drivers (csrc/driver/), BLIS style. Drivers own loops,
 * blocking, threads and scratch; kernels do the math on one tile and never
 * allocate, thread or fail. One table per (ISA level, dtype) holds the
 * level's register-tile geometry, its cache blocks (measured on that level)
 * and every tile operation the drivers call. csrc/kernels/tiles.inc.c
 * supplies a default for every entry, written once against the SIMD mapping;
 * a level overrides an entry by defining ATTN_HAVE_<entry> and its own
 * FN(<entry>) before including tiles.inc.c.
 *
 * Two tile shapes serve attention:
 *
 *  panel path (prefill: many query rows per kv head). A panel holds NR query
 *    rows as vector lanes. Tiles are stored transposed, lanes = queries:
 *      Qt[d][r]  the panel's queries (times the sign of the scale)
 *      St[j][r]  raw scores of key j for query lane r (log2 units once a
 *                block's prep pass has run, see below)
 *      Ot[c][r]  unnormalised output column c, Ct[c][r] its compensation
 *    so the online softmax runs down columns with plain vector max/add (no
 *    horizontal reductions) and both products are the same register-blocked
 *    micro-kernel shape: C[MR][NR] (+)= A(broadcast scalars) * B[k][NR].
 *
 *  rows path (decode: a handful of query rows, long keys). Vectors run along
 *    the head dimension; each score is a dot product, each output row an axpy
 *    over the value rows, so no lane is wasted when there are 1..8 queries.
 *
 * Units of the scores. The QK kernels produce raw dot products s = q . k.
 * The softmax takes s to log2 units inside its exponent, exp2(c s - m) with
 * c = |scale| log2(e), as one FMA: one rounding instead of the two that
 * folding the scale into Q and subtracting the max would cost. A block that
 * needs a prep pass (masks, the causal diagonal, recorded weights) is taken
 * to log2 units there first and its softmax runs with c = 1.
 *
 * Long key ranges. Each key block's P V and row sum start from zero and are
 * added to the running O and l with Kahan compensation (Ct, lc): the
 * accumulated rounding error stays at a few ulp of the block sums instead
 * of growing with the number of blocks (docs/numerics.md).
 */
#ifndef ATTNCORE_KTAB_H
#define ATTNCORE_KTAB_H

#include <stdint.h>
#include "attncore/attn.h"

#define ATTN_LOG2E 1.44269504088896340736
#define ATTN_LN2 0.69314718055994530942

/* Asks for the cache lines of the bytes at addresses [b, e), from b's line
 * on. The addresses are integers: they may lie past an array's end, where
 * pointer arithmetic would be undefined, and a prefetch never faults. */
static inline void attn_prefetch_bytes(uintptr_t b, uintptr_t e)
{
    for (b &= ~(uintptr_t)63; b < e; b += 64) __builtin_prefetch((const void *)b, 0, 3);
}

/* The widest unit any level may use (panel NR or rows-path rows): the
 * drivers' per-unit row arrays are this long. Every table asserts it. */
#define ATTN_MAX_LANES 64
/* The most keys hard attention keeps per row (its top-k). */
#define ATTN_MAX_HARD_K 64

#define ATTN_DECLARE_KTAB(T, TAG)                                              \
    /* What a block's prep pass does to its score tile, in this order:      */ \
    /*  soft-cap (cap > 0: s -> capl tanh(s * capx), to log2 units) or       */ \
    /*  multiply by c (if c != 1), apply the mask, add the ALiBi ramp, hide  */ \
    /*  keys j < lo[r] and j >= lim[r] (window, causal limit, valid length, */ \
    /*  relative to the block's first key), copy the log2-unit scores to    */ \
    /*  wrows[r] (recorded weights).                                        */ \
    typedef struct {                                                           \
        int nr;                   /* rows in the unit                       */ \
        int64_t nk;               /* keys in the block                      */ \
        int half;                 /* prep_panel: a half panel (its lanes    */ \
                                  /* past NR / 2 are neither read nor       */ \
                                  /* written)                               */ \
        T c;                      /* |scale| log2 e, or 1                   */ \
        T capx, capl;             /* soft-cap: |scale| / cap, cap log2 e    */ \
        int mask_kind;            /* ATTN_MASK_*                            */ \
        const void *const *mrows; /* per row: mask of the block's key 0     */ \
        int64_t msj;              /* mask stride along keys (elements)      */ \
        const int64_t *lo;        /* per row: first visible key, or NULL    */ \
        const int64_t *lim;       /* per row: first hidden key, or NULL     */ \
        /* ALiBi, or NULL: per row, log2e * (-slope) and the key (relative  */ \
        /* to the block's first) at the query's position: the ramp is       */ \
        /* alibi_m[r] * |j - alibi_p[r]|                                    */ \
        const T *alibi_m; const T *alibi_p;                                    \
        T *const *wrows;          /* per row: weights of key 0, or NULL     */ \
    } attn_prep_##TAG;                                                         \
                                                                               \
    typedef struct {                                                           \
        const char *isa;                                                       \
        /* register tiles */                                                   \
        int nr;       /* query lanes in a panel                             */ \
        int mr_qk;    /* St rows are padded to a multiple of this           */ \
        int mr_pv;    /* Ot rows are padded to a multiple of this           */ \
        int vlen;     /* lanes per vector; rows-path buffers pad to it      */ \
        int rows_max; /* most query rows the rows path takes per unit       */ \
        /* cache blocks, measured on this level                             */ \
        int bk_panel; /* keys per block, panel path (a multiple of mr_qk)   */ \
        int bk_rows;  /* keys per block, rows path                          */ \
        int gemm_kc;  /* GEMM k-block                                        */ \
        int gemm_mc;  /* GEMM rows per unit (a multiple of mr_qk)           */ \
                                                                               \
        /* ---- panel path ---- */                                             \
        /* St[j][:] (+)= sum_d K[j][d] * Qt[d][:], j < nk (+= if accumulate)*/ \
        /* St rows ldst apart (NR in attention; the C tile in the GEMM).    */ \
        /* colmax (NR values, or NULL): folded with the tile's column maxima*/ \
        /* This is also the GEMM's micro-kernel.                            */ \
        void (*qk_panel)(int64_t D, const T *k, int64_t ldk, int64_t nk,      \
                         const T *qt, T *st, int64_t ldst, int accumulate,     \
                         T *colmax);                                           \
        /* the block's prep pass on St[nk][NR] (see attn_prep)              */ \
        void (*prep_panel)(const attn_prep_##TAG *x, T *st);                   \
        /* online softmax down the columns of St: St = exp2(c St - m_new);   */ \
        /* m, l (+ compensation lc), alpha = exp2(m_old - m_new) updated.   */ \
        /* colmax: the raw tile's column maxima if known, else NULL         */ \
        void (*softmax_panel)(int64_t nk, T *st, T c, const T *colmax, T *m,   \
                              T *l, T *lc, T *alpha);                          \
        /* Ot[c][:] = alpha Ot[c][:] + sum_j V[j][c] Pt[j][:], compensated  */ \
        /* (fresh: Ot, Ct read as zeros, the unit's first block)             */ \
        void (*pv_panel)(int64_t nk, const T *v, int64_t ldv, int64_t Dv,      \
                         const T *pt, const T *alpha, T *ot, T *ct, int fresh);\
        /* the same three on the first NR / 2 lanes only (a panel's last    */ \
        /* rows when they fit half of it), the other lanes untouched, same  */ \
        /* bits per lane; all NULL when the level has none (NV odd)         */ \
        void (*qk_panel_half)(int64_t D, const T *k, int64_t ldk, int64_t nk, \
                              const T *qt, T *st, T *colmax);                  \
        void (*softmax_panel_half)(int64_t nk, T *st, T c, const T *colmax,    \
                                   T *m, T *l, T *lc, T *alpha);               \
        void (*pv_panel_half)(int64_t nk, const T *v, int64_t ldv, int64_t Dv, \
                              const T *pt, const T *alpha, T *ot, T *ct,       \
                              int fresh);                                      \
        /* additive scores c + log2e sum_h w_h tanh(q_h + k_h) in log2     */ \
        /* units, wneg = -2 log2e w, c = log2e sum_h w_h (tiles.inc.c):     */ \
        /* _exp takes Et = e^(2 Qp) and F = e^(2 Kp) (inputs in range),     */ \
        /* _tanh takes Qt = 2 log2e Qp and Kp itself (any inputs)           */ \
        void (*additive_panel_exp)(int64_t H, const T *f, int64_t ldf,        \
                                   int64_t nk, const T *et, const T *wneg,    \
                                   T c, T *st);                                \
        void (*additive_panel_tanh)(int64_t H, const T *k, int64_t ldk,       \
                                    int64_t nk, const T *qt, const T *wneg,   \
                                    T c, T *st);                               \
                                                                               \
        /* ---- rows path ---- */                                              \
        /* the block's prep pass on S[nr][lds] (see attn_prep)              */ \
        void (*prep_rows)(const attn_prep_##TAG *x, T *s, int64_t lds);        \
        /* online softmax along the rows of S[nr][nk]                        */ \
        void (*softmax_rows)(int nr, int64_t nk, T *s, int64_t lds, T c,       \
                             T *m, T *l, T *lc, T *alpha);                     \
                                                                               \
        /* ---- both paths ---- */                                             \
        /* Dropout on P: element (r, j) at p[r * rs + j * js] is kept when   */ \
        /* attn_dropout_draw(seed_mixed, counter[r] + j) >= threshold, and  */ \
        /* kept ones are multiplied by keep_scale.                          */ \
        void (*dropout_tile)(int nr, int64_t nk, T *p, int64_t rs, int64_t js, \
                             const uint64_t *counter, uint64_t seed_mixed,     \
                             uint32_t threshold, T keep_scale);                \
        /* w[i] = exp2(w[i] - shift) * scale (w[i] - shift <= 0 or NaN)      */ \
        void (*weights_row)(int64_t n, T *w, T shift, T scale);                \
        /* hard attention: fold a block's scores into each row's top-k.     */ \
        /* Score (r, j) is s[r * rs + j * js] (log2 units, -inf hidden),    */ \
        /* key j0 + j; with seed_mixed != 0 Gumbel noise keyed by           */ \
        /* counter[r] + j is added first (gumbel_log2 in tiles.inc.c). Row  */ \
        /* r's best k (descending; ties: the smaller key) live in           */ \
        /* vals[r*k..], idx[r*k..]; nan[r] is set by a NaN score.           */ \
        void (*select_topk)(int nr, int64_t nk, const T *s, int64_t rs,        \
                            int64_t js, int64_t j0, int k,                     \
                            uint64_t seed_mixed, const uint64_t *counter,      \
                            T *vals, int64_t *idx, int *nan);                  \
        /* hard attention's output: rows[r][c] = sum_t w_t V[idx_t][c] over  */ \
        /* the row's kept keys (idx >= 0), w = softmax of their vals        */ \
        /* (softmax) or 1 / k; zeros with no key; NaN rows when nan[r]       */ \
        void (*gather_rows)(int nr, int64_t Dv, int k, const T *vals,          \
                            const int64_t *idx, const int *nan, int softmax,   \
                            const T *v, int64_t ldv, T *const *rows);          \
        /* sigmoid attention's weights from log2-unit scores:               */ \
        /* x[i] = 1 / (1 + 2^-(x[i] + shift)), exactly 0 at -inf, 1 at +inf */ \
        void (*sigmoid)(int64_t n, T *x, T shift);                             \
        /* ---- row softmax (csrc/driver/softmax.c), contiguous rows ----   */ \
        /* max of x[0..n), NaN ignored, -inf for n == 0 (a NaN score still   */ \
        /* makes its row NaN: its exp2 reaches the sum)                     */ \
        T (*row_max)(int64_t n, const T *x);                                   \
        /* p[j] = exp2(fl(x[j] - shift) * log2e) for j < n (shift >= every   */ \
        /* x[j], or 0 when none is above -inf); l += sum p in blocks of 128, */ \
        /* Kahan-compensated in lc (sum = l - lc). p may be x.              */ \
        void (*exp_sum_row)(int64_t n, const T *x, T shift, T *p, T *l,       \
                            T *lc);                                            \
        /* out[j * os] = p[j] * r for j < n; p may be out (os == 1)          */ \
        void (*scale_row)(int64_t n, const T *p, T r, T *out, int64_t os);     \
        /* y = exp2(x), the softmax's vector exp (also for tests)           */ \
        void (*exp2)(int64_t n, const T *x, T *y);                             \
        /* y = tanh(x), the additive score's vector tanh (for tests)         */ \
        void (*tanh)(int64_t n, const T *x, T *y);                             \
    } attn_ktab_##TAG;

ATTN_DECLARE_KTAB(float, f32)
ATTN_DECLARE_KTAB(double, f64)

/*
 * The entries that read the inputs (Q, K, V: element type IT) or write the
 * output (IT), one table per (level, IT) (csrc/kernels/tiles_io.inc.c).
 * Compute stays in T (float for IT = float, bfloat16, float16; double for
 * float64). bfloat16 and float16 are their 16-bit patterns (uint16_t):
 * widened in the loads (a shift; F16C / vcvtph2ps), the output rounded to
 * nearest-even once.
 */
#define ATTN_DECLARE_KIO(T, IT, TAG)                                           \
    typedef struct {                                                           \
        const char *dtype;                                                     \
        /* Qt[d][r] = sign * rows[r][d] (lanes >= nr zeroed; panel path)     */ \
        void (*pack_qt)(int nr, int64_t D, const IT *const *rows, T sign,      \
                        T *qt);                                                \
        /* dst[j][c] = src[j][c] (* scale[j] if scale) for j < n, c < D: a   */ \
        /* K or V block in T for the panel path's micro-kernels (NULL when   */ \
        /* IT is T: read in place)                                          */ \
        void (*widen)(int64_t n, int64_t D, const IT *src, int64_t lds,        \
                      const T *scale, T *dst, int64_t ldd);                    \
        /* V staged for pv_panel in column tiles of mr_pv: element (j, c)   */ \
        /* at dst[(c / mr_pv) * ldt + j * mr_pv + c % mr_pv] = src[j][c]    */ \
        /* (* scale[j] if scale), 0 for c in [D, D rounded up to mr_pv),    */ \
        /* j < n. Each tile is then one contiguous stream of mr_pv-wide     */ \
        /* rows, which pv_panel reads as a block with Dv = ldv = mr_pv.     */ \
        void (*widen_tiles)(int64_t n, int64_t D, const IT *src, int64_t lds,  \
                            const T *scale, T *dst, int64_t ldt);              \
        int tile_width;   /* widen_tiles' mr_pv (its level's ktab's)        */ \
        /* rows[r][c] = (Ot - Ct)[c][r] / L[r] (0 where L[r] == 0), or       */ \
        /* without the division when L is NULL; Ot is overwritten           */ \
        void (*finish_panel)(int nr, int64_t Dv, T *ot, const T *ct,           \
                             const T *L, IT *const *rows);                     \
        /* Qs[r][:] = sign * rows[r][:D], zero-padded to ldq (rows path)     */ \
        void (*stage_rows)(int nr, int64_t D, const IT *const *rows, T sign,   \
                           T *qs, int64_t ldq);                                \
        /* S[r][j] = (Qs[r] . K[j]) (* kscale[j] if kscale) for r < nr,      */ \
        /* j < nk (Qs padded to vlen)                                       */ \
        void (*qk_rows)(int64_t D, const T *qs, int64_t ldq, int nr,           \
                        const IT *k, int64_t ldk, int64_t nk,                  \
                        const T *kscale, T *s, int64_t lds);                   \
        /* 1 when qk_rows / pv_rows multiply int8 K/V in integers (i8dot.h): */ \
        /* query rows and weights rounded to int16 (docs/numerics.md (10)) */ \
        int int8_integer;                                                      \
        /* keys per block on the rows path when these entries read K/V (0:  */ \
        /* the level's ktab bk_rows; taken where it divides the key chunks) */ \
        int bk_rows;                                                           \
        /* O[r][:] = alpha[r] O[r][:] + sum_j P[r][j] (vscale[j]) V[j][:],   */ \
        /* compensated; P is scratch afterwards (scaled or packed in place) */ \
        void (*pv_rows)(int64_t nk, T *p, int64_t ldp, int nr,                 \
                        const IT *v, int64_t ldv, int64_t Dv,                  \
                        const T *vscale, const T *alpha, T *o, T *oc,          \
                        int64_t ldo);                                          \
        /* rows[r][c] = (O - Oc)[r][c] / L[r] (0 where L[r] == 0; no         */ \
        /* division when L is NULL)                                         */ \
        void (*finish_rows)(int nr, int64_t Dv, const T *o, const T *oc,       \
                            int64_t ldo, const T *L, IT *const *rows);         \
                                                                               \
        /* ---- panel path on native 16-bit dot products (NULL unless the  */ \
        /* level multiplies IT pairs itself: AVX512-BF16's vdpbf16ps) ----  */ \
        /* Q2[p][r] = the pair (sign Q_r[2p], sign Q_r[2p+1]) (0 past D; 0   */ \
        /* lanes past nr), p < ceil(D / 2), sign = +-1 (exact; the plan    */ \
        /* takes the widened path when Q holds a power of two, qmag)       */ \
        void (*pack_qt2)(int nr, int64_t D, const IT *const *rows, T sign,     \
                         IT *q2);                                              \
        /* St[j][:] = sum_d K[j][d] Q2[d / 2][:] for j < nk (St rows NR      */ \
        /* apart, colmax as in qk_panel), reading the IT rows of K in place;*/ \
        /* rows nk..round_up(nk, 16) may be written too (St's padding)      */ \
        void (*qk_panel2)(int64_t D, const IT *k, int64_t ldk, int64_t nk,    \
                          const IT *q2, T *st, T *colmax);                     \
        /* pv_panel on P = St rounded to IT (St is overwritten) and the IT   */ \
        /* rows of V, packed into vpairs (room: round_up(nk, 32) x           */ \
        /* round_up(Dv, 16) IT elements; St has round_up(nk, 16) rows), or, */ \
        /* when vt is not NULL, V already transposed by stage_vt2 (key 0 of */ \
        /* the block in column 0, rows ldvt apart)                          */ \
        void (*pv_panel2)(int64_t nk, const IT *v, int64_t ldv, int64_t Dv,   \
                          T *st, const T *alpha, T *ot, T *ct, IT *vpairs,     \
                          const IT *vt, int64_t ldvt);                         \
        /* vt[c][j] = V[j][c] for j < nk, c < round_up(Dv, 16) (0 past Dv),  */ \
        /* rows ldvt apart: V staged once per key chunk for pv_panel2 (NULL */ \
        /* unless the level's pv_panel2 reads V transposed: amxbf16)        */ \
        void (*stage_vt2)(int64_t nk, const IT *v, int64_t ldv, int64_t Dv,   \
                          IT *vt, int64_t ldvt);                               \
        int amx_tiles;    /* 1 when qk_panel2 / pv_panel2 run on AMX tiles  */ \
    } attn_kio_##TAG;

ATTN_DECLARE_KIO(float, float, f32)
ATTN_DECLARE_KIO(double, double, f64)
ATTN_DECLARE_KIO(float, uint16_t, bf16)
ATTN_DECLARE_KIO(float, uint16_t, f16)
/* int8 keys/values with a float32 scale per (batch, head, position): the
 * quantized KV cache. Only the K/V entries (widen, qk_rows, pv_rows) exist;
 * Q and the output are float32 (attn_kio_f32). */
ATTN_DECLARE_KIO(float, int8_t, i8)

/* Every level's tables (ATTN_ISA_LEVELS): csrc/arch/kern_<name>.c defines
 * them, or, for a level this build could not compile, kern_unbuilt.c
 * defines them zeroed (a NULL isa name), so that the dispatch can list
 * every level's tables without a preprocessor test per level. float64 runs
 * the portable kernels on every level. */
#define ATTN_DECLARE_LEVEL_TABLES_(NAME, name, auto_)     \
    extern const attn_ktab_f32 attn_ktab_##name##_f32;    \
    extern const attn_kio_f32 attn_kio_##name##_f32;      \
    extern const attn_kio_bf16 attn_kio_##name##_bf16;    \
    extern const attn_kio_f16 attn_kio_##name##_f16;      \
    extern const attn_kio_i8 attn_kio_##name##_i8;
ATTN_ISA_LEVELS(ATTN_DECLARE_LEVEL_TABLES_)
#undef ATTN_DECLARE_LEVEL_TABLES_
extern const attn_ktab_f64 attn_ktab_portable_f64;
extern const attn_kio_f64 attn_kio_portable_f64;

/* The tables for a supported ISA level (csrc/dispatch), or NULL. */
const attn_ktab_f32 *attn_ktab_get_f32(int isa);
const attn_ktab_f64 *attn_ktab_get_f64(int isa);
const attn_kio_f32 *attn_kio_get_f32(int isa);
const attn_kio_f64 *attn_kio_get_f64(int isa);
const attn_kio_bf16 *attn_kio_get_bf16(int isa);
const attn_kio_f16 *attn_kio_get_f16(int isa);
const attn_kio_i8 *attn_kio_get_i8(int isa);

#endif /* ATTNCORE_KTAB_H */
