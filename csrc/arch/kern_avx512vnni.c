/*
 * The avx512vnni level: every AVX-512 kernel (kern_avx512.c, included below
 * under this level's names) plus the int8 KV cache's scores on AVX512-VNNI.
 * Compiled with the AVX-512 flags and -mavx512vnni (setup.py); dispatch
 * checks AVX512_VNNI at run time. kern_avx512bf16.c includes this file with
 * its own LEVEL (every AVX512-BF16 CPU has VNNI).
 *
 * Why: a decode step over an int8 cache reads a quarter of float32's bytes,
 * but widening each key to float32 (vpmovsxbd + vcvtdq2ps per 16 values)
 * and four FMAs for a GQA group of four queries fill both FMA ports, so the
 * step was bound by arithmetic, not memory. Here each query row is rounded
 * once to int16 and multiplied with the int8 keys by vpdpwssd: 32 products
 * per instruction, exact in int32, one vpmovsxbw per 32 key bytes.
 *
 * Numerics (docs/numerics.md (10)): the query row q is replaced by
 * qs * round(q / qs), qs = max_d |q_d| / QMAX: each element moves by at most
 * qs / 2 = max |q| / (2 QMAX). QMAX is 32767 while D 32767 * 128 < 2^31 (no
 * int32 overflow: |k| <= 128), else 2^31 / (128 D) rounded down; past
 * I8DOT_MAX_D the float32 kernel runs instead. A row holding a NaN or an
 * infinity scores NaN. The integer sums are exact, so a score does not depend on
 * the order of the additions, the block or the thread; it is then
 * (float)sum * (qs * kscale_j): three roundings (the conversion is exact
 * below 2^24).
 */
#include <stdint.h>
#include "../kernels/ktab.h"
#include "../kernels/i8dot.h"

#ifndef LEVEL
#define LEVEL avx512vnni
#define ISA_NAME "avx512vnni"
#endif

static void qk_rows_i8_vnni(int64_t D, const float *qs, int64_t ldq, int nr, const int8_t *k, int64_t ldk,
                            int64_t nk, const float *kscale, float *s, int64_t lds);
static void pv_rows_i8_vnni(int64_t nk, float *p, int64_t ldp, int nr, const int8_t *v, int64_t ldv, int64_t Dv,
                            const float *vscale, const float *alpha, float *o, float *oc, int64_t ldo);
#define I8_QK_ROWS qk_rows_i8_vnni
#define I8_PV_ROWS pv_rows_i8_vnni

#include "kern_avx512.c"

#define VNNI_ROWS 4   /* rows x keys per register block: QK_ROWS x QK_KEYS */

/* acc += the 16 sums of adjacent int16 products of a and b (vpdpwssd).
 * Inline asm because GCC 12 copies the accumulator to a fresh register
 * before and after every intrinsic call in a loop (two extra moves per
 * instruction, measured: the moves were half the loop). */
static inline __m512i dpwssd(__m512i acc, __m512i a, __m512i b)
{
    __asm__("vpdpwssd %2, %1, %0" : "+v"(acc) : "v"(a), "v"(b));
    return acc;
}

/* 32 int8 keys widened to int16; the _n form reads only the first n */
static inline __m512i k16_load(const int8_t *p) { return _mm512_cvtepi8_epi16(_mm256_loadu_si256((const __m256i *)p)); }
static inline __m512i k16_load_n(const int8_t *p, int n)
{
    return _mm512_cvtepi8_epi16(_mm256_maskz_loadu_epi8(n >= 32 ? ~(__mmask32)0 : (((__mmask32)1 << n) - 1), p));
}

/* v_hsum_block's shuffle/add tree (kern_avx512.c) on int32 lanes: lane i
 * of hsum_block_epi32(a) is the (exact) sum of a[i]'s 16 lanes */
static inline __m512i shuffle_lo64_epi32(__m512i a, __m512i b)
{
    return _mm512_castps_si512(_mm512_shuffle_ps(_mm512_castsi512_ps(a), _mm512_castsi512_ps(b), 0x44));
}
static inline __m512i shuffle_hi64_epi32(__m512i a, __m512i b)
{
    return _mm512_castps_si512(_mm512_shuffle_ps(_mm512_castsi512_ps(a), _mm512_castsi512_ps(b), 0xEE));
}
DEFINE_HSUM_TREE16(hsum_block_epi32, __m512i, _mm512_add_epi32, _mm512_unpacklo_epi32, _mm512_unpackhi_epi32,
                   shuffle_lo64_epi32, shuffle_hi64_epi32, _mm512_shuffle_i32x4)

/* max |x[i]| for i < n; *bad set when some x[i] is a NaN or an infinity */
static inline float row_absmax(const float *x, int64_t n, int *bad)
{
    __m512 amax = _mm512_setzero_ps();
    __mmask16 nonfinite = 0;
    for (int64_t i = 0; i < n; i += 16) {
        __m512 a = _mm512_abs_ps(v_load_n(x + i, n - i < 16 ? (int)(n - i) : 16));
        nonfinite |= _mm512_cmp_ps_mask(a, _mm512_set1_ps(3.40282347e38f), _CMP_NLE_UQ);
        amax = _mm512_max_ps(amax, a);
    }
    *bad = nonfinite != 0;
    return _mm512_reduce_max_ps(amax);
}

/*
 * Rounds rows q[0..rows) (D floats each) to int16 in q16 (rows of D32,
 * zero-padded to the next 32) and stores their dequantization scales
 * max |q| / qmax in qscale. A row holding a NaN or an infinity gets the
 * scale NaN: every score of it is NaN, and so is its output, as with
 * float32 arithmetic (where such a row's scores are +-inf or NaN).
 */
static void quantize_rows(int rows, int64_t D, const float *qs, int64_t ldq, int qmax, int16_t *q16,
                          int64_t D32, float *qscale)
{
    for (int r = 0; r < rows; r++) {
        const float *q = qs + r * ldq;
        int16_t *dst = q16 + r * D32;
        int bad;
        float factor, pre;
        float m = row_absmax(q, D, &bad);
        qscale[r] = i8dot_query_rounding(m, bad, qmax, &factor, &pre);
        if (factor == 0) {
            for (int64_t d = 0; d < D32; d++) dst[d] = 0;
            continue;
        }
        const __m512 inv = _mm512_set1_ps(factor);
        for (int64_t d = 0; d < D32; d += 16) {
            int n = D - d >= 16 ? 16 : D - d > 0 ? (int)(D - d) : 0;
            __m512 x = _mm512_mul_ps(v_load_n(q + d, n), _mm512_set1_ps(pre));
            /* nearest even (whatever MXCSR says); |x| inv <= qmax (1 + 2^-23) rounds to <= qmax */
            __m512i xi = _mm512_cvt_roundps_epi32(_mm512_mul_ps(x, inv), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
            _mm256_storeu_si256((__m256i *)(void *)(dst + d), _mm512_cvtsepi32_epi16(xi));
        }
    }
}

/*
 * One register block: the exact int32 dot products of `rows` int16 query
 * rows with `keys` int8 keys (lane rr * 4 + jj; other lanes 0), along D
 * (the query rows are zero-padded to 32, the key rows read with a masked
 * tail). Inlined with constant rows/keys, so the loops unroll.
 */
static inline __attribute__((always_inline)) __m512i vnni_block(int rows, int keys, int64_t D, const int16_t *q16,
                                                                int64_t D32, const int8_t *kb, int64_t ldk)
{
    __m512i acc[16];
#pragma GCC unroll 16
    for (int i = 0; i < 16; i++) acc[i] = _mm512_setzero_si512();
    int64_t d = 0;
    for (; d + 32 <= D; d += 32) {
        __m512i qv[VNNI_ROWS];
#pragma GCC unroll 4
        for (int rr = 0; rr < rows; rr++) qv[rr] = _mm512_loadu_si512(q16 + rr * D32 + d);
#pragma GCC unroll 4
        for (int jj = 0; jj < keys; jj++) {
            __m512i kv = k16_load(kb + jj * ldk + d);
#pragma GCC unroll 4
            for (int rr = 0; rr < rows; rr++) acc[rr * 4 + jj] = dpwssd(acc[rr * 4 + jj], qv[rr], kv);
        }
    }
    if (d < D) {
        int n = (int)(D - d);
        __m512i qv[VNNI_ROWS];
#pragma GCC unroll 4
        for (int rr = 0; rr < rows; rr++) qv[rr] = _mm512_loadu_si512(q16 + rr * D32 + d);
#pragma GCC unroll 4
        for (int jj = 0; jj < keys; jj++) {
            __m512i kv = k16_load_n(kb + jj * ldk + d, n);
#pragma GCC unroll 4
            for (int rr = 0; rr < rows; rr++) acc[rr * 4 + jj] = dpwssd(acc[rr * 4 + jj], qv[rr], kv);
        }
    }
    return hsum_block_epi32(acc);
}

/*
 * S[r][j] for one group of `rows` (<= 4) query rows over all nk keys, four
 * keys at a time: S = (float)sum * (qscale[r] * kscale[j]). The lanes of a
 * block's result are (row rr, key jj) = rr * 4 + jj, so the scale vector is
 * qscale broadcast per 4 lanes times the 4 key scales repeated.
 */
static inline __attribute__((always_inline)) void vnni_rows(int rows, int64_t D, const int16_t *q16, int64_t D32,
                                                            const float *qscale, const int8_t *k, int64_t ldk,
                                                            int64_t nk, const float *kscale, float *s,
                                                            int64_t lds, int prefetch)
{
    float qsl[16];
    for (int i = 0; i < 16; i++) qsl[i] = i / 4 < rows ? qscale[i / 4] : 0.0f;
    const __m512 qsv = _mm512_loadu_ps(qsl);
    const int64_t pf = LEVEL_CAT(rows_ahead, LEVEL, io_i8)(ldk, 4);   /* keys ahead to prefetch */
    int64_t j = 0;
    for (; j + 4 <= nk; j += 4) {
        if (prefetch)
            for (int jj = 0; jj < 4; jj++) LEVEL_CAT(prefetch_span, LEVEL, io_i8)(k, (j + pf + jj) * ldk, D);
        __m512i sum = vnni_block(rows, 4, D, q16, D32, k + j * ldk, ldk);
        __m512 ks = kscale ? _mm512_broadcast_f32x4(_mm_loadu_ps(kscale + j)) : _mm512_set1_ps(1.0f);
        __m512 out = _mm512_mul_ps(_mm512_cvtepi32_ps(sum), _mm512_mul_ps(qsv, ks));
        _mm_storeu_ps(s + j, _mm512_extractf32x4_ps(out, 0));
        if (rows > 1) _mm_storeu_ps(s + lds + j, _mm512_extractf32x4_ps(out, 1));
        if (rows > 2) _mm_storeu_ps(s + 2 * lds + j, _mm512_extractf32x4_ps(out, 2));
        if (rows > 3) _mm_storeu_ps(s + 3 * lds + j, _mm512_extractf32x4_ps(out, 3));
    }
    if (j < nk) {   /* 1-3 keys left: the same arithmetic, missing keys' lanes unused */
        int left = (int)(nk - j);
        __m512i sum = vnni_block(rows, left, D, q16, D32, k + j * ldk, ldk);
        __m128 k4 = kscale ? _mm_maskz_loadu_ps((__mmask8)((1u << left) - 1), kscale + j) : _mm_set1_ps(1.0f);
        __m512 out = _mm512_mul_ps(_mm512_cvtepi32_ps(sum), _mm512_mul_ps(qsv, _mm512_broadcast_f32x4(k4)));
        float o[16];
        _mm512_storeu_ps(o, out);
        for (int rr = 0; rr < rows; rr++)
            for (int jj = 0; jj < left; jj++) s[rr * lds + j + jj] = o[rr * 4 + jj];
    }
}

static void qk_rows_i8_vnni(int64_t D, const float *qs, int64_t ldq, int nr, const int8_t *k, int64_t ldk,
                            int64_t nk, const float *kscale, float *s, int64_t lds)
{
    const int64_t D32 = (D + 31) & ~(int64_t)31;
    int16_t q16[VNNI_ROWS * I8DOT_MAX_D] __attribute__((aligned(64)));
    float qscale[VNNI_ROWS];
    const int qmax = i8dot_qmax(D);
    for (int r = 0; r < nr; r += VNNI_ROWS) {
        int rows = nr - r < VNNI_ROWS ? nr - r : VNNI_ROWS;
        if (D > I8DOT_MAX_D) {   /* int16 rows would lose bits: the float32 kernel */
            LEVEL_CAT(qk_rows, LEVEL, io_i8)(D, qs + r * ldq, ldq, rows, k, ldk, nk, kscale, s + r * lds, lds);
            continue;
        }
        quantize_rows(rows, D, qs + r * ldq, ldq, qmax, q16, D32, qscale);
        float *sr = s + r * lds;
        int pf = r == 0;   /* the first group streams the keys from memory */
        switch (rows) {
        case 4: vnni_rows(4, D, q16, D32, qscale, k, ldk, nk, kscale, sr, lds, pf); break;
        case 3: vnni_rows(3, D, q16, D32, qscale, k, ldk, nk, kscale, sr, lds, pf); break;
        case 2: vnni_rows(2, D, q16, D32, qscale, k, ldk, nk, kscale, sr, lds, pf); break;
        default: vnni_rows(1, D, q16, D32, qscale, k, ldk, nk, kscale, sr, lds, pf); break;
        }
    }
}

/* ---- P V on VNNI ----
 *
 * Each row's weights for the block, times the value rows' scales
 * (p'_j = p_j vscale_j >= 0), are rounded to int16 against the row's
 * largest: P16_j = round(p'_j / ps), ps = max_j p'_j / 32767, so each
 * weight moves by at most ps / 2. Pairs of keys (j, j + 1) are then one
 * vpdpwssd operand: P16 pairs broadcast as int32, value pairs interleaved
 * from two int8 rows widened to int16. The int32 sums are exact; every
 * PV_SUB keys they are converted (times ps) into float32 block sums, which
 * join O with the same compensated update as the float32 kernel.
 */
#define PV_SUB I8DOT_PV_SUB

/* P2[r][jp] = the int16 pair (P16[r][2jp], P16[r][2jp+1]) as one int32,
 * written over row r of p itself (pair jp lands at float index jp, which
 * the loop has already read); returns the row's scale ps in pscale[r], in
 * units of 1 / punit[r] (NaN for a row holding a NaN or an infinity: its
 * output is NaN, as in float32; punit 1 except for tiny rows,
 * i8dot_weight_rounding). */
static void pack_weight_pairs(int rows, int64_t nk, float *p, int64_t ldp, const float *vscale, float *pscale,
                              float *punit)
{
    for (int r = 0; r < rows; r++) {
        float *w = p + r * ldp;
        if (vscale)
            for (int64_t j = 0; j < nk; j += 16) {
                int n = nk - j < 16 ? (int)(nk - j) : 16;
                v_store_n(w + j, _mm512_mul_ps(v_load_n(w + j, n), v_load_n(vscale + j, n)), n);
            }
        int bad;
        float factor, pre;
        float m = row_absmax(w, nk, &bad);
        pscale[r] = i8dot_weight_rounding(m, bad, &factor, &pre);
        punit[r] = 1.0f / pre;   /* (a power of two: exact) */
        const __m512 inv = _mm512_set1_ps(factor);
        int32_t *pairs = (int32_t *)(void *)w;
        for (int64_t j = 0; j < nk; j += 32) {   /* 32 weights -> 16 pairs, in place */
            int n0 = nk - j < 16 ? (int)(nk - j) : 16;
            int n1 = nk - j - 16 <= 0 ? 0 : nk - j - 16 < 16 ? (int)(nk - j - 16) : 16;
            __m512 x0 = _mm512_mul_ps(_mm512_mul_ps(v_load_n(w + j, n0), _mm512_set1_ps(pre)), inv);
            __m512 x1 = n1 ? _mm512_mul_ps(_mm512_mul_ps(v_load_n(w + j + 16, n1), _mm512_set1_ps(pre)), inv)
                           : _mm512_setzero_ps();
            /* int16 of weights j..j+31 in order; adjacent int16 pairs are the int32 pairs */
            __m256i lo = _mm512_cvtsepi32_epi16(_mm512_cvt_roundps_epi32(x0, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
            __m256i hi = _mm512_cvtsepi32_epi16(_mm512_cvt_roundps_epi32(x1, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
            int np = (int)((nk - j + 1) / 2 < 16 ? (nk - j + 1) / 2 : 16);
            __m512i both = _mm512_inserti64x4(_mm512_castsi256_si512(lo), hi, 1);
            _mm512_mask_storeu_epi32(pairs + j / 2, np >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << np) - 1), both);
        }
    }
}

/* 32 int8 values widened to int16: n of them (0 <= n <= 32; none read when 0) */
static inline __m512i v16_load(const int8_t *p, int n)
{
    if (n >= 32) return k16_load(p);
    return n > 0 ? k16_load_n(p, n) : _mm512_setzero_si512();
}

/* Lanes (L, e) of unpacklo/unpackhi_epi16 of two rows hold columns 8L + e
 * and 8L + 4 + e; these permutations put 16 columns back in order. */
static inline __m512i cols_lo(__m512i a, __m512i b)
{
    return _mm512_permutex2var_epi32(a, _mm512_setr_epi32(0, 1, 2, 3, 16, 17, 18, 19, 4, 5, 6, 7, 20, 21, 22, 23), b);
}
static inline __m512i cols_hi(__m512i a, __m512i b)
{
    return _mm512_permutex2var_epi32(a, _mm512_setr_epi32(8, 9, 10, 11, 24, 25, 26, 27, 12, 13, 14, 15, 28, 29, 30, 31), b);
}

/* One key pair: the value pairs of rows a (key 2jp) and b (key 2jp + 1),
 * 64 columns as two halves widened to int16, times each row's weight pair. */
static inline __attribute__((always_inline)) void pair_step(int rows, __m512i a0, __m512i a1, __m512i b0,
                                                            __m512i b1, const int32_t *const *p2, int64_t jp,
                                                            __m512i acc[4][4])
{
    __m512i x[4] = {_mm512_unpacklo_epi16(a0, b0), _mm512_unpackhi_epi16(a0, b0), _mm512_unpacklo_epi16(a1, b1),
                    _mm512_unpackhi_epi16(a1, b1)};
#pragma GCC unroll 4
    for (int rr = 0; rr < rows; rr++) {
        __m512i w = _mm512_set1_epi32(p2[rr][jp]);
#pragma GCC unroll 4
        for (int u = 0; u < 4; u++) acc[rr][u] = dpwssd(acc[rr][u], x[u], w);
    }
}

/* sum + (float)cols x ps, where ps is a weights' scale in units of 1 / unit
 * (i8dot_weight_rounding): unit 1 is one FMA; otherwise the product is
 * taken back by unit (a power of two) */
static inline __m512 add_scaled(__m512 sum, __m512i cols, __m512 ps, float unit)
{
    __m512 x = _mm512_cvtepi32_ps(cols);
    if (unit == 1.0f) return _mm512_fmadd_ps(x, ps, sum);
    return _mm512_fmadd_ps(_mm512_mul_ps(x, ps), _mm512_set1_ps(unit), sum);
}

/*
 * sum[rr][c] (float32, 64 columns c0..c0+cn) += the exact int32 sums of
 * P2 pairs times value pairs over keys [j0, j1) (j1 - j0 <= PV_SUB, even
 * j0), converted and scaled by pscale[rr] (times punit[rr] where that is
 * not 1).
 */
static inline __attribute__((always_inline)) void pv_vnni_tile(int rows, const int32_t *const *p2, int64_t j0,
                                                               int64_t j1, const int8_t *v, int64_t ldv,
                                                               int64_t c0, int64_t cn, const float *pscale,
                                                               const float *punit, __m512 sum[4][4], int prefetch)
{
    __m512i acc[4][4];
#pragma GCC unroll 4
    for (int rr = 0; rr < 4; rr++)
#pragma GCC unroll 4
        for (int u = 0; u < 4; u++) acc[rr][u] = _mm512_setzero_si512();
    const int n0 = cn >= 32 ? 32 : (int)cn, n1 = cn >= 64 ? 32 : cn > 32 ? (int)(cn - 32) : 0;
    const int64_t pf = LEVEL_CAT(rows_ahead, LEVEL, io_i8)(ldv, 2);   /* value rows ahead */
    const int64_t npairs = (j1 - j0) / 2;
    const int8_t *vj = v + j0 * ldv + c0;
    int64_t jp = 0;
    if (cn == 64)   /* whole tiles of whole pairs: no branch in the loop */
        for (; jp < npairs; jp++, vj += 2 * ldv) {
            if (prefetch) {
                LEVEL_CAT(prefetch_span, LEVEL, io_i8)(v, (j0 + 2 * jp + pf) * ldv + c0, 64);
                LEVEL_CAT(prefetch_span, LEVEL, io_i8)(v, (j0 + 2 * jp + pf + 1) * ldv + c0, 64);
            }
            pair_step(rows, k16_load(vj), k16_load(vj + 32), k16_load(vj + ldv), k16_load(vj + ldv + 32), p2, jp,
                      acc);
        }
    for (; j0 + 2 * jp < j1; jp++, vj += 2 * ldv) {   /* partial tiles; an odd last key pairs with zeros */
        int partner = j0 + 2 * jp + 1 < j1;
        if (prefetch) {
            LEVEL_CAT(prefetch_span, LEVEL, io_i8)(v, (j0 + 2 * jp + pf) * ldv + c0, cn);
            LEVEL_CAT(prefetch_span, LEVEL, io_i8)(v, (j0 + 2 * jp + pf + 1) * ldv + c0, cn);
        }
        pair_step(rows, v16_load(vj, n0), v16_load(vj + 32, n1), partner ? v16_load(vj + ldv, n0) : _mm512_setzero_si512(),
                  partner ? v16_load(vj + ldv + 32, n1) : _mm512_setzero_si512(), p2, jp, acc);
    }
#pragma GCC unroll 4
    for (int rr = 0; rr < rows; rr++) {
        __m512 ps = _mm512_set1_ps(pscale[rr]);
        __m512i c[4] = {cols_lo(acc[rr][0], acc[rr][1]), cols_hi(acc[rr][0], acc[rr][1]),
                        cols_lo(acc[rr][2], acc[rr][3]), cols_hi(acc[rr][2], acc[rr][3])};
#pragma GCC unroll 4
        for (int u = 0; u < 4; u++) sum[rr][u] = add_scaled(sum[rr][u], c[u], ps, punit[rr]);
    }
}

static inline __attribute__((always_inline)) void pv_vnni_rows(int rows, int64_t nk, float *p, int64_t ldp,
                                                               const int8_t *v, int64_t ldv, int64_t Dv,
                                                               const float *pscale, const float *punit,
                                                               const float *alpha, float *o, float *oc, int64_t ldo,
                                                               int prefetch)
{
    const int32_t *p2[4];
    for (int rr = 0; rr < rows; rr++) p2[rr] = (const int32_t *)(const void *)(p + rr * ldp);
    for (int64_t c0 = 0; c0 < Dv; c0 += 64) {
        int64_t cn = Dv - c0 < 64 ? Dv - c0 : 64;
        __m512 sum[4][4];
        for (int rr = 0; rr < 4; rr++)
            for (int u = 0; u < 4; u++) sum[rr][u] = _mm512_setzero_ps();
        for (int64_t j0 = 0; j0 < nk; j0 += PV_SUB) {
            int64_t j1 = nk - j0 < PV_SUB ? nk : j0 + PV_SUB;
            const int32_t *p2s[4];
            for (int rr = 0; rr < rows; rr++) p2s[rr] = p2[rr] + j0 / 2;
            pv_vnni_tile(rows, p2s, j0, j1, v, ldv, c0, cn, pscale, punit, sum, prefetch);
        }
        int nvec = (int)((cn + 15) / 16);
        for (int rr = 0; rr < rows; rr++) {
            __m512 a = _mm512_set1_ps(alpha[rr]);
            for (int u = 0; u < nvec; u++) {
                /* O rows are padded to whole vectors (ldo), so full loads are safe */
                float *po = o + rr * ldo + c0 + u * 16, *pc = oc + rr * ldo + c0 + u * 16;
                __m512 total = _mm512_loadu_ps(po), comp = _mm512_loadu_ps(pc);
                LEVEL_CAT(kahan_update, LEVEL, f32)(a, sum[rr][u], &total, &comp);
                _mm512_storeu_ps(po, total);
                _mm512_storeu_ps(pc, comp);
            }
        }
    }
}

static void pv_rows_i8_vnni(int64_t nk, float *p, int64_t ldp, int nr, const int8_t *v, int64_t ldv, int64_t Dv,
                            const float *vscale, const float *alpha, float *o, float *oc, int64_t ldo)
{
    float pscale[VNNI_ROWS], punit[VNNI_ROWS];
    for (int r = 0; r < nr; r += VNNI_ROWS) {
        int rows = nr - r < VNNI_ROWS ? nr - r : VNNI_ROWS;
        float *pr = p + r * ldp, *orow = o + r * ldo, *crow = oc + r * ldo;
        pack_weight_pairs(rows, nk, pr, ldp, vscale, pscale, punit);
        int pf = r == 0;   /* the first group streams the values from memory */
        switch (rows) {
        case 4: pv_vnni_rows(4, nk, pr, ldp, v, ldv, Dv, pscale, punit, alpha + r, orow, crow, ldo, pf); break;
        case 3: pv_vnni_rows(3, nk, pr, ldp, v, ldv, Dv, pscale, punit, alpha + r, orow, crow, ldo, pf); break;
        case 2: pv_vnni_rows(2, nk, pr, ldp, v, ldv, Dv, pscale, punit, alpha + r, orow, crow, ldo, pf); break;
        default: pv_vnni_rows(1, nk, pr, ldp, v, ldv, Dv, pscale, punit, alpha + r, orow, crow, ldo, pf); break;
        }
    }
}
