/*
 * The kernel table: what one ISA translation unit (csrc/arch/kern_*.c) offers
 * the drivers (csrc/driver/). Drivers own loops, blocking, threads and
 * scratch; kernels do the math on one tile and never allocate, thread or fail.
 *
 * Two tile shapes serve attention:
 *
 *  panel path (prefill: many query rows per kv head). A panel holds NR query
 *    rows as vector lanes. Tiles are stored transposed, lanes = queries:
 *      Qt[d][r]  the panel's queries, pre-multiplied by scale*log2(e)
 *      St[j][r]  scores of key j for query lane r, in log2 units
 *      Ot[c][r]  unnormalised output column c
 *    so the online softmax runs down columns with plain vector max/add (no
 *    horizontal reductions) and both products are the same register-blocked
 *    micro-kernel shape: C[MR][NR] (+)= A(broadcast scalars) * B[k][NR].
 *
 *  rows path (decode: a handful of query rows, long keys). Vectors run along
 *    the head dimension; each score is a dot product, each output row an axpy
 *    over the value rows, so no lane is wasted when there are 1..8 queries.
 *
 * Scores are kept in log2 units so that the softmax needs exp2 only.
 */
#ifndef ATTNCORE_KTAB_H
#define ATTNCORE_KTAB_H

#include <stdint.h>
#include "attncore/attn.h"

#define ATTN_LOG2E 1.44269504088896340736
#define ATTN_LN2 0.69314718055994530942

#define ATTN_DECLARE_KTAB(T, TAG)                                              \
    typedef struct {                                                           \
        const char *isa;                                                       \
        int nr;       /* query lanes in a panel                             */ \
        int mr_qk;    /* St rows are padded to a multiple of this           */ \
        int mr_pv;    /* Ot rows are padded to a multiple of this           */ \
        int vlen;     /* lanes per vector; rows-path buffers pad to it      */ \
        int rows_max; /* most query rows the rows path takes per unit       */ \
        /* St[j][:] (+)= sum_d K[j][d] * Qt[d][:], j < nk (+= if accumulate)*/ \
        /* St rows ldst apart (NR in attention; the output rows in a GEMM)  */ \
        /* colmax (NR values, or NULL): folded with the tile's column maxima */ \
        void (*qk_panel)(int64_t D, const T *k, int64_t ldk, int64_t nk,      \
                         const T *qt, T *st, int64_t ldst, int accumulate,     \
                         T *colmax);                                           \
        /* online softmax down the columns of St[nk][NR]: updates m, l,     */ \
        /* writes alpha = exp2(m_old - m_new), overwrites St with exp2(s-m) */ \
        /* (colmax: the tile's column maxima if known, else NULL)           */ \
        void (*softmax_panel)(int64_t nk, T *st, T *m, T *l, T *alpha,         \
                              const T *colmax);                                \
        /* Ot[c][:] = alpha[:] * Ot[c][:] + sum_j V[j][c] * Pt[j][:], c < Dv */ \
        void (*pv_panel)(int64_t nk, const T *v, int64_t ldv, int64_t Dv,      \
                         const T *pt, const T *alpha, T *ot);                  \
        /* S[r][j] = Qs[r] . K[j] for r < nr, j < nk (Qs padded to vlen)     */ \
        void (*qk_rows)(int64_t D, const T *qs, int64_t ldq, int nr,           \
                        const T *k, int64_t ldk, int64_t nk, T *s,             \
                        int64_t lds);                                          \
        /* online softmax along the rows of S[nr][nk]                        */ \
        void (*softmax_rows)(int nr, int64_t nk, T *s, int64_t lds, T *m,      \
                             T *l, T *alpha);                                  \
        /* O[r][:] = alpha[r] * O[r][:] + sum_j P[r][j] * V[j][:], r < nr    */ \
        void (*pv_rows)(int64_t nk, const T *p, int64_t ldp, int nr,           \
                        const T *v, int64_t ldv, int64_t Dv, const T *alpha,   \
                        T *o, int64_t ldo);                                    \
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
        /* y = exp2(x), the softmax's vector exp (exposed for tests)        */ \
        void (*exp2)(int64_t n, const T *x, T *y);                             \
        /* y = tanh(x), the additive score's vector tanh (for tests)         */ \
        void (*tanh)(int64_t n, const T *x, T *y);                             \
        /* Qt[d][r] = scale * rows[r][d] (lanes >= nr zeroed)               */ \
        void (*pack_qt)(int nr, int64_t D, const T *const *rows, T scale,      \
                        T *qt);                                                \
        /* rows[r][c] = Ot[c][r] * inv[r]                                   */ \
        void (*unpack_ot)(int nr, int64_t Dv, const T *ot, const T *inv,       \
                          T *const *rows);                                     \
        /* mask a score panel (bool: -inf where 0; add: += log2e * m)       */ \
        void (*mask_panel)(int nr, int64_t nk, int kind,                       \
                           const void *const *mrows, int64_t sj, T *st);       \
        /* w[i] = exp2(w[i] - shift) * scale (w[i] - shift <= 0 or NaN)      */ \
        void (*weights_row)(int64_t n, T *w, T shift, T scale);                \
    } attn_ktab_##TAG;

ATTN_DECLARE_KTAB(float, f32)
ATTN_DECLARE_KTAB(double, f64)

/* One table per ISA translation unit; absent ones are not linked. */
extern const attn_ktab_f32 attn_ktab_portable_f32;
extern const attn_ktab_f64 attn_ktab_portable_f64;
#ifdef ATTN_BUILT_AVX2
extern const attn_ktab_f32 attn_ktab_avx2_f32;
#endif
#ifdef ATTN_BUILT_AVX512
extern const attn_ktab_f32 attn_ktab_avx512_f32;
#endif

/* The table for a supported ISA level (csrc/dispatch), or NULL. */
const attn_ktab_f32 *attn_ktab_get_f32(int isa);
const attn_ktab_f64 *attn_ktab_get_f64(int isa);

#endif /* ATTNCORE_KTAB_H */
