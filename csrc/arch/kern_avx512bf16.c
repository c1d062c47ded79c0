/*
 * The avx512bf16 level: every avx512vnni kernel (kern_avx512vnni.c and
 * kern_avx512.c, included below under this level's names) plus bfloat16
 * attention on the panel path that multiplies bfloat16 pairs natively with
 * AVX512-BF16's vdpbf16ps instead of widening K and V blocks to float32.
 * Compiled with the AVX-512 flags, -mavx512vnni and -mavx512bf16
 * (setup.py); dispatch checks AVX512_VNNI and AVX512_BF16 at run time.
 *
 * With ATTN_BF16_EMULATED defined (kern_avx512bf16emu.c, AVX-512 flags
 * only) the two AVX512-BF16 instructions used here are emulated with
 * AVX-512F, bit for bit (see dp2 and pair_bits below) except in corners no
 * attention input reaches: a sum that lands within 2^-150 below 2^-126
 * (the emulation flushes after rounding, the instruction before), and
 * which payload survives when both FMA operands are NaN. That level,
 * "avx512bf16emu", is never chosen automatically: it exists so that the
 * pair layouts, edges and driver wiring of this file are tested on every
 * AVX-512 CPU, while "avx512bf16" itself runs (and is tested) where the CPU
 * has the instructions.
 *
 * What changes against the widening levels (docs/numerics.md (4)): scores
 * are the same exact bfloat16 products summed in float32 (in pairs); the
 * softmax weights P are rounded to bfloat16 before P V (as AMX and
 * vdpbf16ps kernels do everywhere), which adds at most 2^-9 V to the output
 * before its own rounding to bfloat16. The row sums, the online softmax and
 * the accumulation stay in float32.
 *
 * Layouts (32-bit lanes holding a pair: element 2p in the low half):
 *   Q2[p][r]      queries r < NR, d = 2p, 2p + 1 (pack_qt2)
 *   K rows        read in place: K[j][2p..2p+1] is one 32-bit broadcast
 *   P2[jp][r]     keys 2jp, 2jp + 1 of query lane r (written over St)
 *   Vp[jp][c]     values of keys 2jp, 2jp + 1 in column c (vpairs)
 * A missing partner (odd D, odd nk) is +0.
 */
#include <stdint.h>
#include "../kernels/ktab.h"

#ifndef LEVEL
#define LEVEL avx512bf16
#define ISA_NAME "avx512bf16"
#endif

static void pack_qt2_native(int nr, int64_t D, const uint16_t *const *rows, float sign, uint16_t *q2);
static void qk_panel2_native(int64_t D, const uint16_t *k, int64_t ldk, int64_t nk, const uint16_t *q2,
                             float *st, float *colmax);
static void pv_panel2_native(int64_t nk, const uint16_t *v, int64_t ldv, int64_t Dv, float *st,
                             const float *alpha, float *ot, float *ct, uint16_t *vpairs,
                             const uint16_t *vt, int64_t ldvt);
#ifndef BF16_NATIVE_ENTRIES   /* (kern_amxbf16.c puts its tile products here) */
#define BF16_NATIVE_ENTRIES \
    .pack_qt2 = pack_qt2_native, .qk_panel2 = qk_panel2_native, .pv_panel2 = pv_panel2_native,
#endif

/* the real level also has kern_avx512vnni.c's int8 scores (every AVX512-BF16
 * CPU has VNNI); the emulated one stays on plain AVX-512 */
#ifdef ATTN_BF16_EMULATED
#include "kern_avx512.c"
#else
#include "kern_avx512vnni.c"
#endif

#define PNR (NV * VL)   /* query lanes of a panel (32) */

/* ---- the two AVX512-BF16 operations, native or emulated ---- */

#ifdef ATTN_BF16_EMULATED
/* bfloat16 halves (hi: element 2i+1, lo: element 2i) as float32, with
 * subnormals read as a zero of their sign, as the instruction's DAZ does */
static inline __m512 bf16_half_daz(__m512i bits)
{
    __mmask16 normal = _mm512_test_epi32_mask(bits, _mm512_set1_epi32(0x7F800000));
    return _mm512_castsi512_ps(
        _mm512_mask_mov_epi32(_mm512_and_si512(bits, _mm512_set1_epi32((int)0x80000000)), normal, bits));
}
static inline __m512 ftz(__m512 x)
{
    __m512i b = _mm512_castps_si512(x);
    __mmask16 normal = _mm512_test_epi32_mask(b, _mm512_set1_epi32(0x7F800000));
    return _mm512_castsi512_ps(_mm512_mask_mov_epi32(_mm512_and_si512(b, _mm512_set1_epi32((int)0x80000000)),
                                                     normal, b));
}
/* vdpbf16ps, per lane i: acc += a[2i+1] b[2i+1], then acc += a[2i] b[2i];
 * the products are exact in float32, so each step is one FMA rounding to
 * nearest even; subnormal inputs count as 0 and subnormal results flush */
static inline __m512 dp2(__m512 acc, __m512i a, __m512i b)
{
    const __m512i hi = _mm512_set1_epi32((int)0xFFFF0000);
    __m512 ah = bf16_half_daz(_mm512_and_si512(a, hi)), bh = bf16_half_daz(_mm512_and_si512(b, hi));
    __m512 al = bf16_half_daz(_mm512_slli_epi32(a, 16)), bl = bf16_half_daz(_mm512_slli_epi32(b, 16));
    acc = ftz(_mm512_fmadd_ps(ah, bh, acc));
    return ftz(_mm512_fmadd_ps(al, bl, acc));
}
/* float32 -> bfloat16 as vcvtne2ps2bf16: kern_avx512.c's nearest-even
 * bf16_bits, except that subnormal inputs give a zero of their sign; in the
 * low half of each 32-bit lane */
static inline __m512i bf16_round(__m512 x)
{
    __m512i b = _mm512_castps_si512(x);
    __mmask16 sub = _mm512_testn_epi32_mask(b, _mm512_set1_epi32(0x7F800000));
    return _mm512_mask_mov_epi32(bf16_bits(x), sub, _mm512_and_si512(_mm512_srli_epi32(b, 16), _mm512_set1_epi32(0x8000)));
}
/* the pairs (lo[i], hi[i]) of two float32 vectors, rounded to bfloat16 */
static inline __m512i pair_bits(__m512 lo, __m512 hi)
{
    return _mm512_or_si512(bf16_round(lo), _mm512_slli_epi32(bf16_round(hi), 16));
}
#else
static inline __m512 dp2(__m512 acc, __m512i a, __m512i b)
{
    return _mm512_dpbf16_ps(acc, (__m512bh)a, (__m512bh)b);
}
static inline __m512i pair_bits(__m512 lo, __m512 hi)
{
    /* cvtne2ps2bf16 gives lo's 16 values then hi's; interleave them */
    const __m512i idx = _mm512_set_epi16(31, 15, 30, 14, 29, 13, 28, 12, 27, 11, 26, 10, 25, 9, 24, 8,
                                         23, 7, 22, 6, 21, 5, 20, 4, 19, 3, 18, 2, 17, 1, 16, 0);
    return _mm512_permutexvar_epi16(idx, (__m512i)_mm512_cvtne2ps_pbh(hi, lo));
}
#endif

/* A pair of a K row as one 32-bit load: rows need not be 4-byte aligned, so
 * through a 1-aligned type (which still lets the broadcast read memory
 * directly, keeping it off the shuffle port). */
typedef int32_t unaligned_i32 __attribute__((aligned(1), may_alias));
static inline __m512i pair_bcast(const uint16_t *row, int64_t p)
{
    return _mm512_set1_epi32(*(const unaligned_i32 *)(const void *)(row + 2 * p));
}
/* the last pair of an odd-length row: element 2p, partner 0 */
static inline __m512i last_bcast(const uint16_t *row, int64_t p) { return _mm512_set1_epi32(row[2 * p]); }

static void pack_qt2_native(int nr, int64_t D, const uint16_t *const *rows, float sign, uint16_t *q2)
{
    const uint16_t flip = sign < 0 ? 0x8000 : 0;   /* sign = +-1: exact */
    const int64_t np = (D + 1) / 2;
    for (int64_t p = 0; p < np; p++) {
        uint16_t *lane = q2 + p * PNR * 2;
        for (int r = 0; r < PNR; r++) {
            uint16_t lo = 0, hi = 0;
            if (r < nr) {
                lo = rows[r][2 * p] ^ flip;
                if (2 * p + 1 < D) hi = rows[r][2 * p + 1] ^ flip;
            }
            lane[2 * r] = lo;
            lane[2 * r + 1] = hi;
        }
    }
}

/*
 * St[j][:] = sum_p K[j] pair p . Q2[p][:], as qk_panel: MR_QK keys x NV
 * vectors, rows past nk repeat the last key, two chains (pairs p < np/2 and
 * the rest) added at the end, column maxima folded into colmax.
 */
static void qk_panel2_native(int64_t D, const uint16_t *k, int64_t ldk, int64_t nk, const uint16_t *q2,
                             float *st, float *colmax)
{
    const int64_t np = (D + 1) / 2, whole = D / 2;
    const int64_t psplit = np >= 4 ? np / 2 : np;
    for (int64_t j0 = 0; j0 < nk; j0 += MR_QK) {
        const uint16_t *krow[MR_QK];
        for (int m = 0; m < MR_QK; m++) krow[m] = k + (j0 + m < nk ? j0 + m : nk - 1) * ldk;
        float *c = st + j0 * PNR;
        __m512 acc[MR_QK][NV];
        for (int m = 0; m < MR_QK; m++)
            for (int u = 0; u < NV; u++) acc[m][u] = _mm512_setzero_ps();
        for (int half = 0; half < 2; half++) {
            int64_t pbeg = half ? psplit : 0, pend = half ? np : psplit;
            if (half) {
                if (psplit == np) break;
                for (int m = 0; m < MR_QK; m++)   /* park the first chain in St */
                    for (int u = 0; u < NV; u++) {
                        _mm512_storeu_ps(c + m * PNR + u * VL, acc[m][u]);
                        acc[m][u] = _mm512_setzero_ps();
                    }
            }
            int64_t p = pbeg;
            for (; p < pend && p < whole; p++) {
                const uint16_t *b = q2 + p * PNR * 2;
                __m512i b0 = _mm512_loadu_si512(b), b1 = _mm512_loadu_si512(b + 2 * VL);
#pragma GCC unroll 16
                for (int m = 0; m < MR_QK; m++) {
                    __m512i a = pair_bcast(krow[m], p);
                    acc[m][0] = dp2(acc[m][0], a, b0);
                    acc[m][1] = dp2(acc[m][1], a, b1);
                }
            }
            if (p < pend) {   /* odd D: the last element, partner 0 */
                const uint16_t *b = q2 + p * PNR * 2;
                __m512i b0 = _mm512_loadu_si512(b), b1 = _mm512_loadu_si512(b + 2 * VL);
                for (int m = 0; m < MR_QK; m++) {
                    __m512i a = last_bcast(krow[m], p);
                    acc[m][0] = dp2(acc[m][0], a, b0);
                    acc[m][1] = dp2(acc[m][1], a, b1);
                }
            }
        }
        for (int m = 0; m < MR_QK; m++)
            for (int u = 0; u < NV; u++) {
                float *dst = c + m * PNR + u * VL;
                if (psplit < np) acc[m][u] = _mm512_add_ps(acc[m][u], _mm512_loadu_ps(dst));
                _mm512_storeu_ps(dst, acc[m][u]);
            }
        if (colmax)
            for (int u = 0; u < NV; u++) {
                __m512 cm = _mm512_loadu_ps(colmax + u * VL);
                for (int m = 0; m < MR_QK; m++) cm = _mm512_max_ps(cm, acc[m][u]);
                _mm512_storeu_ps(colmax + u * VL, cm);
            }
    }
}

/* Vp[jp][c] = (V[2jp][c], V[2jp+1][c]) for jp < ceil(nk/2), c < Dv */
static void pack_v_pairs(int64_t nk, const uint16_t *v, int64_t ldv, int64_t Dv, uint32_t *vp)
{
    for (int64_t j = 0; j < nk; j += 2) {
        const uint16_t *r0 = v + j * ldv, *r1 = j + 1 < nk ? r0 + ldv : NULL;
        uint32_t *dst = vp + (j / 2) * Dv;
        int64_t c = 0;
        for (; c < Dv; c += VL) {
            int n = Dv - c < VL ? (int)(Dv - c) : VL;
            __mmask16 mk = lanes_(n);
            __m512i lo = _mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(mk, r0 + c));
            __m512i hi = r1 ? _mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(mk, r1 + c)) : _mm512_setzero_si512();
            _mm512_mask_storeu_epi32(dst + c, mk, _mm512_or_si512(lo, _mm512_slli_epi32(hi, 16)));
        }
    }
}

/* St (float32 P, nk rows of NR) becomes P2, the weights' key pairs
 * rounded to bfloat16, in place: pair row jp (keys 2jp, 2jp + 1; partner 0
 * past nk) is written over St row jp after St rows 2jp and 2jp + 1 are
 * read. Returns P2. */
static uint32_t *p2_over_st(int64_t nk, float *st)
{
    const int64_t np = (nk + 1) / 2;
    uint32_t *p2 = (uint32_t *)(void *)st;
    for (int64_t jp = 0; jp < np; jp++) {
        int64_t j = 2 * jp;
        for (int u = 0; u < NV; u++) {
            __m512 lo = _mm512_loadu_ps(st + j * PNR + u * VL);
            __m512 hi = j + 1 < nk ? _mm512_loadu_ps(st + (j + 1) * PNR + u * VL) : _mm512_setzero_ps();
            _mm512_storeu_si512(p2 + jp * PNR + u * VL, pair_bits(lo, hi));
        }
    }
    return p2;
}

/* Ot[c][:] = alpha Ot[c][:] + sum_jp Vp[jp][c] . P2[jp][:], compensated as in
 * pv_panel, P2 = p2_over_st(St) */
static void pv_panel2_native(int64_t nk, const uint16_t *v, int64_t ldv, int64_t Dv, float *st,
                             const float *alpha, float *ot, float *ct, uint16_t *vpairs,
                             const uint16_t *vt, int64_t ldvt)
{
    (void)vt, (void)ldvt;   /* (no stage_vt2 here: always NULL) */
    const int64_t np = (nk + 1) / 2;
    uint32_t *p2 = p2_over_st(nk, st);
    uint32_t *vp = (uint32_t *)(void *)vpairs;
    pack_v_pairs(nk, v, ldv, Dv, vp);

    __m512 al[NV];
    for (int u = 0; u < NV; u++) al[u] = _mm512_loadu_ps(alpha + u * VL);
    for (int64_t c0 = 0; c0 < Dv; c0 += MR_PV) {
        int64_t col[MR_PV];   /* past Dv: repeat the last column (Ot has room) */
        for (int m = 0; m < MR_PV; m++) col[m] = c0 + m < Dv ? c0 + m : Dv - 1;
        __m512 acc[MR_PV][NV];
        for (int m = 0; m < MR_PV; m++)
            for (int u = 0; u < NV; u++) acc[m][u] = _mm512_setzero_ps();
        for (int64_t jp = 0; jp < np; jp++) {
            const uint32_t *prow = p2 + jp * PNR, *vrow = vp + jp * Dv;
            __m512i b0 = _mm512_loadu_si512(prow), b1 = _mm512_loadu_si512(prow + VL);
#pragma GCC unroll 16
            for (int m = 0; m < MR_PV; m++) {
                __m512i a = _mm512_set1_epi32((int)vrow[col[m]]);
                acc[m][0] = dp2(acc[m][0], a, b0);
                acc[m][1] = dp2(acc[m][1], a, b1);
            }
        }
        for (int m = 0; m < MR_PV; m++)
            for (int u = 0; u < NV; u++) {
                float *po = ot + (c0 + m) * PNR + u * VL, *pc = ct + (c0 + m) * PNR + u * VL;
                __m512 total = _mm512_loadu_ps(po), comp = _mm512_loadu_ps(pc);
                FN(kahan_update)(al[u], acc[m][u], &total, &comp);
                _mm512_storeu_ps(po, total);
                _mm512_storeu_ps(pc, comp);
            }
    }
}
