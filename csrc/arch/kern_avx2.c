/*
 * AVX2 + FMA float32 kernels: the SIMD mapping for csrc/kernels/tiles.inc.c.
 * This file alone is compiled with -mavx2 -mfma (setup.py); dispatch checks
 * AVX, AVX2, FMA and the OS's ymm state at run time.
 *
 * Register budget (16 ymm): panel tiles are 6 x 2 vectors (12 accumulators,
 * 2 loads, 1 broadcast), i.e. 6 keys (or value columns) x 16 query lanes.
 */
#include <immintrin.h>
#include <math.h>
#include <string.h>
#include "../kernels/ktab.h"
#include "../kernels/vmath.h"

typedef float T;
typedef __m256 vec;
#define VL 8
#define NV 2
#define MR_QK 6
#define MR_PV 6
/* 8 stacked rows (a GQA group of 8 at decode) on the rows path, two register
 * blocks of 4 over each key block (the second finds the keys in L1/L2): on
 * Zen 3 that was 1.4x (float32) to 2.0x (int8) faster than the half-empty
 * 16-lane panels the 4-row limit sent them to, for long contexts. */
#define ROWS_MAX 8
/* decode's P V tile: 4 rows x 3 vectors (tiles_io.inc.c: 16 registers) */
#define PV_ROWS_VECS 3
#define MR_ADD 3
/* Cache blocks: the values measured on Zen 3 when they were global (128 keys
 * rounded up to whole 6-row tiles; St is 132 x 16, 8.25 KiB). */
#define BK_PANEL 132
#define BK_ROWS 256
#define GEMM_KC 512
#define GEMM_MC 48
#define FN(name) name##_avx2_f32
#define KTAB_TYPE attn_ktab_f32
#define PREP_TYPE attn_prep_f32
#define KTAB_NAME attn_ktab_avx2_f32
#define ISA_NAME "avx2"

static inline __m256i lanes_(int n)
{
    __m256i idx = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    return _mm256_cmpgt_epi32(_mm256_set1_epi32(n), idx);
}
static inline vec v_load(const T *p) { return _mm256_loadu_ps(p); }
static inline void v_store(T *p, vec a) { _mm256_storeu_ps(p, a); }
static inline vec v_load_n(const T *p, int n) { return _mm256_maskload_ps(p, lanes_(n)); }
static inline void v_store_n(T *p, vec a, int n) { _mm256_maskstore_ps(p, lanes_(n), a); }
static inline vec v_set1(T x) { return _mm256_set1_ps(x); }
static inline vec v_zero(void) { return _mm256_setzero_ps(); }
static inline vec v_add(vec a, vec b) { return _mm256_add_ps(a, b); }
static inline vec v_sub(vec a, vec b) { return _mm256_sub_ps(a, b); }
static inline vec v_mul(vec a, vec b) { return _mm256_mul_ps(a, b); }
static inline vec v_div(vec a, vec b) { return _mm256_div_ps(a, b); }
static inline vec v_fma(vec a, vec b, vec c) { return _mm256_fmadd_ps(a, b, c); }
static inline vec v_max(vec a, vec b) { return _mm256_max_ps(a, b); }
/* like v_max: the second operand when either is NaN */
static inline vec v_min(vec a, vec b) { return _mm256_min_ps(a, b); }
static inline T v_hsum(vec a)
{
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}
static inline T v_hmax(vec a)
{
    __m128 s = _mm_max_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
    s = _mm_max_ps(s, _mm_movehl_ps(s, s));
    s = _mm_max_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}
static inline vec v_neginf_to_zero(vec a)
{
    vec is_ninf = _mm256_cmp_ps(a, _mm256_set1_ps(-INFINITY), _CMP_EQ_OQ);
    return _mm256_andnot_ps(is_ninf, a);
}
/* NaN lanes -> 0 */
static inline vec v_nan_to_zero(vec a) { return _mm256_and_ps(_mm256_cmp_ps(a, a, _CMP_ORD_Q), a); }
/* x where a != 0 (NaN included), else 0 */
static inline vec v_keep_nonzero(vec a, vec x)
{
    return _mm256_and_ps(_mm256_cmp_ps(a, _mm256_setzero_ps(), _CMP_NEQ_UQ), x);
}

/* exp2's polynomials (vmath.h): p6(f) ~ 2^f on [-1/2, 1/2], p5 likewise
 * with one degree less (the tanh core's accuracy needs no more). */
static inline vec exp2_p6(vec f)
{
    vec p = _mm256_set1_ps(ATTN_EXP2_C6);
    p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(ATTN_EXP2_C5));
    p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(ATTN_EXP2_C4));
    p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(ATTN_EXP2_C3));
    p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(ATTN_EXP2_C2));
    p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(ATTN_EXP2_C1));
    return _mm256_fmadd_ps(p, f, _mm256_set1_ps(ATTN_EXP2_C0));
}

static inline vec exp2_p5(vec f)
{
    vec p = _mm256_set1_ps(ATTN_EXP2_D5);
    p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(ATTN_EXP2_D4));
    p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(ATTN_EXP2_D3));
    p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(ATTN_EXP2_D2));
    p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(ATTN_EXP2_D1));
    return _mm256_fmadd_ps(p, f, _mm256_set1_ps(ATTN_EXP2_D0));
}

/* 2^n for integral n in [-126, 127], from exponent bits. */
static inline vec pow2i(__m256i n)
{
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(n, _mm256_set1_epi32(127)), 23));
}

/* exp2 per csrc/kernels/vmath.h. 2^n is built from exponent bits in two
 * halves so that every n in [-127, 128] (and overflow to +inf) is exact. */
static inline vec v_exp2(vec x)
{
    vec xc = _mm256_min_ps(_mm256_set1_ps(128.0f), _mm256_max_ps(_mm256_set1_ps(-127.0f), x));
    vec n = _mm256_round_ps(xc, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    vec p = exp2_p6(_mm256_sub_ps(xc, n));
    __m256i ni = _mm256_cvtps_epi32(n);
    __m256i half = _mm256_srai_epi32(ni, 1);
    vec r = _mm256_mul_ps(_mm256_mul_ps(p, pow2i(half)), pow2i(_mm256_sub_epi32(ni, half)));
    /* x < -126 (and -inf) -> 0; NaN compares unordered and is kept */
    vec keep = _mm256_cmp_ps(x, _mm256_set1_ps(-126.0f), _CMP_NLT_UQ);
    return _mm256_and_ps(keep, r);
}

/* 1 / x by exact division (rcp's 12 bits plus one Newton step would miss
 * tanh's exact values at 0 and +-inf). */
static inline vec v_recip(vec x) { return _mm256_div_ps(_mm256_set1_ps(1.0f), x); }

/* 1 / (1 + 2^x), the core of tanh (vmath.h); see the AVX-512 version.
 * For x in [-64, 64] 2^n is a normal float built from exponent bits. */
#define INV1P_SHIFT 0.0f
static inline vec v_inv1p_exp2_shifted(vec x)
{
    vec xc = _mm256_min_ps(_mm256_set1_ps(64.0f), _mm256_max_ps(_mm256_set1_ps(-64.0f), x));
    vec n = _mm256_round_ps(xc, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    vec p = exp2_p5(_mm256_sub_ps(xc, n));
    return v_recip(_mm256_fmadd_ps(p, pow2i(_mm256_cvtps_epi32(n)), _mm256_set1_ps(1.0f)));
}

/* exp2 on the softmax's domain, x <= 0 or NaN (x = score - running max,
 * which rounding can put up to half an ulp of the max above 0): for n in
 * [-126, 127] 2^n is one normal float, so one multiply replaces v_exp2's
 * two. The result is bitwise v_exp2's for x < 127.5: p 2^n is the same
 * exact product, rounded once either way (p 2^half is exact, a
 * power-of-two scaling of a normal number). From 127.5 up it is +inf (the
 * clamp at 128 makes 2^n inf instead of wrapping the exponent bits).
 * x < -126 (and -inf) -> 0; NaN survives min and max (2nd operand). */
static inline vec v_exp2_nonpos(vec x)
{
    vec xc = _mm256_min_ps(_mm256_set1_ps(128.0f), _mm256_max_ps(_mm256_set1_ps(-127.0f), x));
    vec n = _mm256_round_ps(xc, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    vec r = _mm256_mul_ps(exp2_p6(_mm256_sub_ps(xc, n)), pow2i(_mm256_cvtps_epi32(n)));
    vec keep = _mm256_cmp_ps(x, _mm256_set1_ps(-126.0f), _CMP_NLT_UQ);
    return _mm256_and_ps(keep, r);
}

/* In-register 8 x 8 transpose: on return x[i] holds element i of every
 * input vector. */
static inline __attribute__((always_inline)) void transpose8(__m256 x[8])
{
    __m256 t[8];
#pragma GCC unroll 8
    for (int i = 0; i < 8; i += 2) {
        t[i] = _mm256_unpacklo_ps(x[i], x[i + 1]);
        t[i + 1] = _mm256_unpackhi_ps(x[i], x[i + 1]);
    }
#pragma GCC unroll 8
    for (int i = 0; i < 8; i += 4) {
        x[i] = _mm256_shuffle_ps(t[i], t[i + 2], 0x44);
        x[i + 1] = _mm256_shuffle_ps(t[i], t[i + 2], 0xEE);
        x[i + 2] = _mm256_shuffle_ps(t[i + 1], t[i + 3], 0x44);
        x[i + 3] = _mm256_shuffle_ps(t[i + 1], t[i + 3], 0xEE);
    }
#pragma GCC unroll 4
    for (int i = 0; i < 4; i++) {
        t[i] = _mm256_permute2f128_ps(x[i], x[i + 4], 0x20);
        t[i + 4] = _mm256_permute2f128_ps(x[i], x[i + 4], 0x31);
    }
#pragma GCC unroll 8
    for (int i = 0; i < 8; i++) x[i] = t[i];
}

/* Panel staging, output and masks in 8 x 8 blocks (see the AVX-512 file):
 *   v_transpose:   dst[i * ld + r] = scale * rows[r][d0 + i]
 *   v_untranspose: rows[r][c0 + i] = src[i * ld + r] * inv[r]
 *   v_mask_block:  mask a block of a score panel from 8 mask rows */
#define V_HAS_TRANSPOSE 1
static inline void v_transpose(const T *const *rows, int64_t d0, T scale, T *dst, int64_t ld)
{
    __m256 x[8];
#pragma GCC unroll 8
    for (int i = 0; i < 8; i++) x[i] = _mm256_loadu_ps(rows[i] + d0);
    transpose8(x);
    __m256 sv = _mm256_set1_ps(scale);
#pragma GCC unroll 8
    for (int i = 0; i < 8; i++) _mm256_storeu_ps(dst + i * ld, _mm256_mul_ps(x[i], sv));
}

static inline void v_untranspose(const T *src, int64_t ld, const T *inv, T *const *rows, int64_t c0)
{
    __m256 x[8];
#pragma GCC unroll 8
    for (int i = 0; i < 8; i++) x[i] = _mm256_loadu_ps(src + i * ld);
    transpose8(x);
#pragma GCC unroll 8
    for (int i = 0; i < 8; i++) _mm256_storeu_ps(rows[i] + c0, _mm256_mul_ps(x[i], _mm256_set1_ps(inv[i])));
}

static inline void v_mask_block(int kind, const void *const *rows, int64_t j0, T *dst, int64_t ld)
{
    __m256 x[8];
    if (kind == ATTN_MASK_BOOL) {
#pragma GCC unroll 8
        for (int i = 0; i < 8; i++) {
            __m128i bytes = _mm_loadl_epi64((const __m128i *)((const uint8_t *)rows[i] + j0));
            x[i] = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(bytes));
        }
    } else {
#pragma GCC unroll 8
        for (int i = 0; i < 8; i++) x[i] = _mm256_loadu_ps((const float *)rows[i] + j0);
    }
    transpose8(x);
    if (kind == ATTN_MASK_BOOL) {
        __m256 ninf = _mm256_set1_ps(-INFINITY);
#pragma GCC unroll 8
        for (int i = 0; i < 8; i++) {
            __m256 hidden = _mm256_cmp_ps(x[i], _mm256_setzero_ps(), _CMP_EQ_OQ);
            _mm256_storeu_ps(dst + i * ld, _mm256_blendv_ps(_mm256_loadu_ps(dst + i * ld), ninf, hidden));
        }
    } else {
        __m256 log2e = _mm256_set1_ps((float)ATTN_LOG2E);
#pragma GCC unroll 8
        for (int i = 0; i < 8; i++)
            /* a multiply, then an add: as the scalar pass (tiles.inc.c), so a
             * score's bits do not depend on the mask's layout or the row's place */
            _mm256_storeu_ps(dst + i * ld, _mm256_add_ps(_mm256_loadu_ps(dst + i * ld), _mm256_mul_ps(x[i], log2e)));
    }
}

/* Lanes past n take `fill`: vmaskmovps never touches the masked-off
 * elements (no fault past the end of a row), then a blend. */
#define V_HAS_LOAD_NF 1
static inline vec v_load_nf(const T *p, int n, T fill)
{
    __m256i m = lanes_(n);
    return _mm256_blendv_ps(_mm256_set1_ps(fill), _mm256_maskload_ps(p, m), _mm256_castsi256_ps(m));
}

#include "../kernels/tiles.inc.c"

/* The rows path's QK block: 4 rows x 3 keys, 12 sums, with the 3 key
 * vectors and one query vector at a time: all 16 registers in its loop
 * (qk_rows loads the keys first, then each query row). 4 x 2 kept its FMA
 * loop at 75% of the FMA peak on Zen 3 with everything in L1 (8 chains for
 * 2 pipes of latency 4: no slack), 4 x 3 at 90%. 12 vectors -> their 12 horizontal
 * sums, in order; every sum takes the same tree, ((l0 + l2) + (l1 + l3)) +
 * ((l4 + l6) + (l5 + l7)) over its lanes l (the AVX-512 file's tree with
 * two 128-bit lanes), so a score's bits do not depend on its slot. */
#define QK_ROWS 4
#define QK_KEYS 3
/* lanes 4 m .. 4 m + 3 of c: the partial tree of a[0 .. 3] per 128-bit lane */
static inline __m256 hsum_quad_(const vec a[4])
{
    __m256 b0 = _mm256_add_ps(_mm256_unpacklo_ps(a[0], a[1]), _mm256_unpackhi_ps(a[0], a[1]));
    __m256 b1 = _mm256_add_ps(_mm256_unpacklo_ps(a[2], a[3]), _mm256_unpackhi_ps(a[2], a[3]));
    return _mm256_add_ps(_mm256_shuffle_ps(b0, b1, 0x44), _mm256_shuffle_ps(b0, b1, 0xEE));
}
static inline void v_hsum_block(const vec a[12], T *out)
{
    __m256 c0 = hsum_quad_(a), c1 = hsum_quad_(a + 4), c2 = hsum_quad_(a + 8);
    _mm256_storeu_ps(out, _mm256_add_ps(_mm256_permute2f128_ps(c0, c1, 0x20),
                                        _mm256_permute2f128_ps(c0, c1, 0x31)));
    _mm_storeu_ps(out + 8, _mm_add_ps(_mm256_castps256_ps128(c2), _mm256_extractf128_ps(c2, 1)));
}

/* ---- the input/output tables (csrc/kernels/tiles_io.inc.c) ---- */

/* float32 inputs: read directly */
#define IT float
#define IO_SAME 1
#define v_load_in(p) v_load(p)
#define v_load_in_n(p, n) v_load_n((p), (n))
#define in_to_T(x) (x)
#define T_to_out(x) (x)
#define FNIO(name) name##_avx2_io_f32
#define KIO_TYPE attn_kio_f32
#define KIO_NAME attn_kio_avx2_f32
#define IO_DTYPE "float32"
#include "../kernels/tiles_io.inc.c"

/* 8 lanes of 16-bit inputs; a partial vector goes through a zeroed local
 * copy (AVX2 has no 16-bit masked loads), so nothing past p + n is read */
static inline __m128i load8_u16(const uint16_t *p) { return _mm_loadu_si128((const __m128i *)p); }
static inline __m128i load8_u16_n(const uint16_t *p, int n)
{
    uint16_t tmp[8] = {0};
    for (int i = 0; i < n; i++) tmp[i] = p[i];
    return _mm_loadu_si128((const __m128i *)tmp);
}

/* VL float32 -> 16-bit patterns at p, as attn_f32_to_bf16 / attn_f32_to_f16
 * (round to nearest even, NaN quieted): the output transpose's stores */
static inline void store8_bf16(uint16_t *p, vec x)
{
    __m256i b = _mm256_castps_si256(x);
    __m256i r = _mm256_add_epi32(b, _mm256_add_epi32(_mm256_set1_epi32(0x7fff),
                                                     _mm256_and_si256(_mm256_srli_epi32(b, 16), _mm256_set1_epi32(1))));
    r = _mm256_srli_epi32(r, 16);
    __m256i nan = _mm256_cmpgt_epi32(_mm256_and_si256(b, _mm256_set1_epi32(0x7fffffff)), _mm256_set1_epi32(0x7f800000));
    r = _mm256_blendv_epi8(r, _mm256_or_si256(_mm256_srli_epi32(b, 16), _mm256_set1_epi32(0x40)), nan);
    _mm_storeu_si128((__m128i *)(void *)p, _mm_packus_epi32(_mm256_castsi256_si128(r), _mm256_extracti128_si256(r, 1)));
}
static inline void store8_f16(uint16_t *p, vec x)
{
    _mm_storeu_si128((__m128i *)(void *)p, _mm256_cvtps_ph(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
}

/* bfloat16: widen the 16-bit lanes and shift */
static inline vec bf16_widen(__m128i h) { return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16)); }
#define IT uint16_t
#define IO_SAME 0
#define v_load_in(p) bf16_widen(load8_u16(p))
#define v_load_in_n(p, n) bf16_widen(load8_u16_n((p), (n)))
#define in_to_T(x) attn_bf16_to_f32(x)
#define T_to_out(x) attn_f32_to_bf16(x)
#define v_store_out(p, x) store8_bf16((p), (x))
#define FNIO(name) name##_avx2_io_bf16
#define KIO_TYPE attn_kio_bf16
#define KIO_NAME attn_kio_avx2_bf16
#define IO_DTYPE "bfloat16"
#include "../kernels/tiles_io.inc.c"

/* float16: F16C (part of this level's flags and checked at run time) */
#define IT uint16_t
#define IO_SAME 0
#define v_load_in(p) _mm256_cvtph_ps(load8_u16(p))
#define v_load_in_n(p, n) _mm256_cvtph_ps(load8_u16_n((p), (n)))
#define in_to_T(x) attn_f16_to_f32(x)
#define T_to_out(x) attn_f32_to_f16(x)
#define v_store_out(p, x) store8_f16((p), (x))
#define FNIO(name) name##_avx2_io_f16
#define KIO_TYPE attn_kio_f16
#define KIO_NAME attn_kio_avx2_f16
#define IO_DTYPE "float16"
#include "../kernels/tiles_io.inc.c"

/* int8 keys/values of the quantized KV cache (scales applied by the entries) */
static inline vec v_load_i8(const int8_t *p) { return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)p))); }
static inline vec v_load_i8_n(const int8_t *p, int n)
{
    int8_t tmp[8] = {0};
    for (int i = 0; i < n; i++) tmp[i] = p[i];
    return v_load_i8(tmp);
}
#include "../kernels/i8dot.h"
/* the decode (rows) entries multiply in integers: defined below */
static void qk_rows_i8_avx2(int64_t D, const float *qs, int64_t ldq, int nr, const int8_t *k, int64_t ldk,
                            int64_t nk, const float *kscale, float *s, int64_t lds);
static void pv_rows_i8_avx2(int64_t nk, float *p, int64_t ldp, int nr, const int8_t *v, int64_t ldv, int64_t Dv,
                            const float *vscale, const float *alpha, float *o, float *oc, int64_t ldo);
#define IT int8_t
#define IO_SAME 0
#define IO_KV_ONLY 1
#define v_load_in(p) v_load_i8(p)
#define v_load_in_n(p, n) v_load_i8_n((p), (n))
#define in_to_T(x) ((T)(x))
#define T_to_out(x) ((int8_t)0)   /* unused: no int8 outputs */
#define FNIO(name) name##_avx2_io_i8
#define KIO_QK_ROWS qk_rows_i8_avx2
#define KIO_PV_ROWS pv_rows_i8_avx2
/* 512-key blocks (two of pv_rows' weight sub-blocks; where they divide the
 * split's key chunks, sdpa.inc.c): the per-block work (Q rounded, O's
 * compensated update, the sums' setup) halves; Zen 3 S6 int8 decode
 * 1.02-1.07x (1024: 1.02-1.04x more, but it would split Lk = 2048 into
 * half as many chunks) */
#define KIO_EXTRA .int8_integer = 1, .bk_rows = 2 * I8DOT_PV_SUB,
#define KIO_TYPE attn_kio_i8
#define KIO_NAME attn_kio_avx2_i8
#define IO_DTYPE "int8"
#include "../kernels/tiles_io.inc.c"

/* ---- The int8 cache's decode in integers (csrc/kernels/i8dot.h) ----
 *
 * Why: widening each int8 element to float32 (vpmovsxbd + vcvtdq2ps per 8)
 * and one FMA per query row kept the FMA pipes full, so a decode step over
 * an int8 cache ran at about twice its memory time (Zen 3: 1.30 ms against
 * 2.94 ms from float32 at S6). Here each query row is rounded once to int16
 * and vpmaddwd multiplies it with the keys widened to int16 (one vpmovsxbw
 * per 16): 16 exact products summed in pairs, plus one vpaddd, per row and
 * 16 elements. P V does the same with the weights rounded to int16 and two
 * value rows interleaved. The integers, their rounding and their conversion
 * are those of the VNNI levels (i8dot.h), so both give the same bits for
 * the same key block (here 512 keys, there 256: the online softmax's
 * blocks, and with them the weights, differ).
 */

#define I8_ROWS 4   /* query rows per register block */

/* max |x[i] (* scale[i])| for i < n (n >= 1), the products stored in out
 * when scale is not NULL (out may be x: one pass over the row for both);
 * *bad set when some value is a NaN or an infinity */
static inline __attribute__((always_inline)) float i8_absmax_impl(const float *x, const float *scale, float *out,
                                                                  int64_t n, int *bad)
{
    const __m256 absmask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
    __m256 amax = _mm256_setzero_ps(), nonfinite = _mm256_setzero_ps();
    for (int64_t i = 0; i < n; i += 8) {
        const int left = n - i >= 8 ? 8 : (int)(n - i);
        __m256 xi = left == 8 ? v_load(x + i) : v_load_n(x + i, left);
        if (scale) {
            xi = _mm256_mul_ps(xi, left == 8 ? v_load(scale + i) : v_load_n(scale + i, left));
            if (left == 8)   /* (masked stores only at the tail: vmaskmovps stores are slow on AMD) */
                v_store(out + i, xi);
            else
                v_store_n(out + i, xi, left);
        }
        __m256 a = _mm256_and_ps(absmask, xi);
        nonfinite = _mm256_or_ps(nonfinite, _mm256_cmp_ps(a, _mm256_set1_ps(3.40282347e38f), _CMP_NLE_UQ));
        amax = _mm256_max_ps(amax, a);
    }
    *bad = _mm256_movemask_ps(nonfinite) != 0;
    return v_hmax(amax);
}

/* max |x[i]| for i < n (n >= 1); *bad set when some x[i] is a NaN or an infinity */
static inline float i8_row_absmax(const float *x, int64_t n, int *bad) { return i8_absmax_impl(x, NULL, NULL, n, bad); }

/* x[i] *= scale[i] for i < n (n >= 1), returning max |x[i]| after it, in
 * one pass; *bad as for i8_row_absmax */
static inline float i8_scale_absmax(float *x, const float *scale, int64_t n, int *bad)
{
    return i8_absmax_impl(x, scale, x, n, bad);
}

/* a (8 floats) then b (8 floats), rounded to the nearest even integer
 * whatever MXCSR says, as 16 saturated int16 in order (the callers keep
 * |x| <= 32767 (1 + 2^-23), which rounds to <= 32767) */
static inline __m256i i8_round16(__m256 a, __m256 b)
{
    __m256i ia = _mm256_cvttps_epi32(_mm256_round_ps(a, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
    __m256i ib = _mm256_cvttps_epi32(_mm256_round_ps(b, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
    return _mm256_permute4x64_epi64(_mm256_packs_epi32(ia, ib), 0xD8);   /* packs interleaves 128-bit lanes */
}

/* 16 int8 values widened to int16; the _n form reads only the first n (0..16) */
static inline __m256i i8_load16(const int8_t *p) { return _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)p)); }
static inline __m256i i8_load16_n(const int8_t *p, int n)
{
    int8_t tmp[16] = {0};
    for (int i = 0; i < n; i++) tmp[i] = p[i];
    return i8_load16(tmp);
}

/*
 * Rounds rows q[0..rows) (D floats each) to int16 in q16 (rows of D16,
 * zero-padded to the next 16) and stores their dequantization scales
 * max |q| / qmax in qscale. A row holding a NaN or an infinity gets the
 * scale NaN: every score of it is NaN, and so is its output, as with
 * float32 arithmetic.
 */
static void i8_quantize_rows(int rows, int64_t D, const float *qs, int64_t ldq, int qmax, int16_t *q16,
                             int64_t D16, float *qscale)
{
    for (int r = 0; r < rows; r++) {
        const float *q = qs + r * ldq;
        int16_t *dst = q16 + r * D16;
        int bad;
        float factor, pre;
        float m = i8_row_absmax(q, D, &bad);
        qscale[r] = i8dot_query_rounding(m, bad, qmax, &factor, &pre);
        if (factor == 0) {
            for (int64_t d = 0; d < D16; d++) dst[d] = 0;
            continue;
        }
        const __m256 inv = _mm256_set1_ps(factor), prev = _mm256_set1_ps(pre);
        for (int64_t d = 0; d < D16; d += 16) {
            int n0 = D - d >= 8 ? 8 : (int)(D - d), n1 = D - d >= 16 ? 8 : D - d > 8 ? (int)(D - d - 8) : 0;
            __m256 x0 = _mm256_mul_ps(_mm256_mul_ps(v_load_n(q + d, n0), prev), inv);
            __m256 x1 = _mm256_mul_ps(_mm256_mul_ps(v_load_n(q + d + 8, n1), prev), inv);
            _mm256_storeu_si256((__m256i *)(void *)(dst + d), i8_round16(x0, x1));
        }
    }
}

/* acc + the 8 sums of adjacent int16 products of a and b (vpmaddwd, then
 * vpaddd). Inline asm because GCC 12 keeps each product in a fresh register
 * and copies it back to the accumulator (one extra move per pair, measured:
 * 8 moves per 8 products in the QK loop), as with kern_avx512vnni.c's
 * dpwssd. a may come from memory. */
static inline __m256i madd_acc(__m256i acc, __m256i a, __m256i b)
{
    __m256i t;
    __asm__("vpmaddwd %2, %3, %1\n\tvpaddd %1, %0, %0" : "+x"(acc), "=&x"(t) : "xm"(a), "x"(b));
    return acc;
}

/* v_hsum_block's tree on int32 lanes: lane i of the result is the (exact)
 * sum of a[i]'s 8 lanes */
static inline __m256i i8_hsum8(const __m256i a[8])
{
    __m256i b[4], c[2];
#pragma GCC unroll 4
    for (int k = 0; k < 4; k++)
        b[k] = _mm256_add_epi32(_mm256_unpacklo_epi32(a[2 * k], a[2 * k + 1]),
                                _mm256_unpackhi_epi32(a[2 * k], a[2 * k + 1]));
#pragma GCC unroll 2
    for (int m = 0; m < 2; m++)
        c[m] = _mm256_add_epi32(_mm256_unpacklo_epi64(b[2 * m], b[2 * m + 1]),
                                _mm256_unpackhi_epi64(b[2 * m], b[2 * m + 1]));
    return _mm256_add_epi32(_mm256_permute2x128_si256(c[0], c[1], 0x20), _mm256_permute2x128_si256(c[0], c[1], 0x31));
}

/*
 * One register block: the exact int32 dot products of `rows` int16 query
 * rows with `nload` int8 keys, in lane rr * keys + jj (rows * keys <= 8;
 * other lanes 0), along D (query rows zero-padded to 16, key rows read
 * with a copied tail). Inlined with constant rows/keys, so the loops unroll.
 */
static inline __attribute__((always_inline)) __m256i i8_qk_block(int rows, int keys, int nload, int64_t D,
                                                                const int16_t *q16, int64_t D16,
                                                                const int8_t *kb, int64_t ldk)
{
    __m256i acc[8];
#pragma GCC unroll 8
    for (int i = 0; i < 8; i++) acc[i] = _mm256_setzero_si256();
    int64_t d = 0;
    for (; d + 16 <= D; d += 16) {
        __m256i qv[I8_ROWS];
#pragma GCC unroll 4
        for (int rr = 0; rr < rows; rr++) qv[rr] = _mm256_load_si256((const __m256i *)(const void *)(q16 + rr * D16 + d));
#pragma GCC unroll 8
        for (int jj = 0; jj < nload; jj++) {
            __m256i kv = i8_load16(kb + jj * ldk + d);
#pragma GCC unroll 4
            for (int rr = 0; rr < rows; rr++)
                acc[rr * keys + jj] = madd_acc(acc[rr * keys + jj], qv[rr], kv);
        }
    }
    if (d < D) {   /* (unrolled too: an accumulator indexed at run time would live in memory in every block) */
        int n = (int)(D - d);
#pragma GCC unroll 8
        for (int jj = 0; jj < nload; jj++) {
            __m256i kv = i8_load16_n(kb + jj * ldk + d, n);
#pragma GCC unroll 4
            for (int rr = 0; rr < rows; rr++) {
                __m256i qv = _mm256_load_si256((const __m256i *)(const void *)(q16 + rr * D16 + d));
                acc[rr * keys + jj] = madd_acc(acc[rr * keys + jj], qv, kv);
            }
        }
    }
    return i8_hsum8(acc);
}

/* s[rr][jj] = lane rr * keys + jj of x, for a whole block (rows * keys
 * = 8, or 6 for 3 rows): each row's keys are adjacent lanes, stored as one
 * piece (no trip through memory to scatter them) */
static inline __attribute__((always_inline)) void i8_store_block(int rows, int keys, __m256 x, float *s, int64_t lds)
{
    const __m128 lo = _mm256_castps256_ps128(x), hi = _mm256_extractf128_ps(x, 1);
    if (keys == 8) {
        _mm256_storeu_ps(s, x);
    } else if (keys == 4) {
        _mm_storeu_ps(s, lo);
        if (rows > 1) _mm_storeu_ps(s + lds, hi);
    } else {   /* keys == 2: a row's pair is a half of a 128-bit lane */
        _mm_storel_pi((__m64 *)(void *)s, lo);
        if (rows > 1) _mm_storeh_pi((__m64 *)(void *)(s + lds), lo);
        if (rows > 2) _mm_storel_pi((__m64 *)(void *)(s + 2 * lds), hi);
        if (rows > 3) _mm_storeh_pi((__m64 *)(void *)(s + 3 * lds), hi);
    }
}

/* keys per register block for `rows` query rows: 8 accumulators in all */
static inline int i8_block_keys(int rows) { return rows == 1 ? 8 : rows == 2 ? 4 : 2; }

/*
 * S[r][j] for one group of `rows` (<= 4) query rows over all nk keys:
 * S = (float)sum * (qscale[r] * kscale[j]). The scale vector's lane
 * rr * keys + jj is qscale[rr] times the block's key scale jj.
 */
static inline __attribute__((always_inline)) void i8_qk_group(int rows, int64_t D, const int16_t *q16, int64_t D16,
                                                              const float *qscale, const int8_t *k, int64_t ldk,
                                                              int64_t nk, const float *kscale, float *s,
                                                              int64_t lds, int prefetch)
{
    const int keys = i8_block_keys(rows);
    float qsl[8], ksl[8], out[8];
    for (int i = 0; i < 8; i++) qsl[i] = i / keys < rows ? qscale[i / keys] : 0.0f;
    const __m256 qsv = _mm256_loadu_ps(qsl);
    const int64_t pf = rows_ahead_avx2_io_i8(ldk, keys);   /* keys ahead to prefetch */
    int64_t j = 0;
    for (; j + keys <= nk; j += keys) {
        if (prefetch) prefetch_rows_avx2_io_i8(k, j + pf, keys, ldk, D);
        __m256i sum = i8_qk_block(rows, keys, keys, D, q16, D16, k + j * ldk, ldk);
        __m256 ks;   /* lane rr * keys + jj: kscale[j + jj] */
        if (!kscale) {
            ks = _mm256_set1_ps(1.0f);
        } else if (keys == 2) {
            double two;   /* the two scales as one 8-byte pattern (kscale + j need not be 8-byte aligned) */
            memcpy(&two, kscale + j, sizeof two);
            ks = _mm256_castpd_ps(_mm256_set1_pd(two));
        } else if (keys == 4) {
            ks = _mm256_broadcast_ps((const __m128 *)(const void *)(kscale + j));
        } else {
            ks = _mm256_loadu_ps(kscale + j);
        }
        i8_store_block(rows, keys, _mm256_mul_ps(_mm256_cvtepi32_ps(sum), _mm256_mul_ps(qsv, ks)), s + j, lds);
    }
    if (j < nk) {   /* fewer keys left than a block: the same arithmetic, missing keys' lanes unused */
        int left = (int)(nk - j);
        __m256i sum = i8_qk_block(rows, keys, left, D, q16, D16, k + j * ldk, ldk);
        for (int i = 0; i < 8; i++) ksl[i] = i % keys < left && kscale ? kscale[j + i % keys] : 1.0f;
        _mm256_storeu_ps(out, _mm256_mul_ps(_mm256_cvtepi32_ps(sum), _mm256_mul_ps(qsv, _mm256_loadu_ps(ksl))));
        for (int rr = 0; rr < rows; rr++)
            for (int jj = 0; jj < left; jj++) s[rr * lds + j + jj] = out[rr * keys + jj];
    }
}

static void qk_rows_i8_avx2(int64_t D, const float *qs, int64_t ldq, int nr, const int8_t *k, int64_t ldk,
                            int64_t nk, const float *kscale, float *s, int64_t lds)
{
    if (D > I8DOT_MAX_D) {   /* int16 rows would lose bits: the float32 kernel */
        qk_rows_avx2_io_i8(D, qs, ldq, nr, k, ldk, nk, kscale, s, lds);
        return;
    }
    const int64_t D16 = (D + 15) & ~(int64_t)15;
    int16_t q16[I8_ROWS * I8DOT_MAX_D] __attribute__((aligned(32)));
    float qscale[I8_ROWS];
    const int qmax = i8dot_qmax(D);
    for (int r = 0; r < nr; r += I8_ROWS) {
        int rows = nr - r < I8_ROWS ? nr - r : I8_ROWS;
        i8_quantize_rows(rows, D, qs + r * ldq, ldq, qmax, q16, D16, qscale);
        float *sr = s + r * lds;
        int pf = r == 0;   /* the first group streams the keys from memory */
        /* At the common head sizes the group runs with D a constant, its d
         * loop unrolled whole (Zen 3, harness: Q K 1.06-1.16x at D 128 and
         * 64, 1 and 4 rows) */
#define I8_QK_GROUP_ARMS(DD, LD)                                                              \
    switch (rows) {                                                                           \
    case 4: i8_qk_group(4, DD, q16, LD, qscale, k, ldk, nk, kscale, sr, lds, pf); break;      \
    case 3: i8_qk_group(3, DD, q16, LD, qscale, k, ldk, nk, kscale, sr, lds, pf); break;      \
    case 2: i8_qk_group(2, DD, q16, LD, qscale, k, ldk, nk, kscale, sr, lds, pf); break;      \
    default: i8_qk_group(1, DD, q16, LD, qscale, k, ldk, nk, kscale, sr, lds, pf); break;     \
    }
        if (D == 128)
            I8_QK_GROUP_ARMS(128, 128)
        else if (D == 64)
            I8_QK_GROUP_ARMS(64, 64)
        else
            I8_QK_GROUP_ARMS(D, D16)
#undef I8_QK_GROUP_ARMS
    }
}

/* ---- P V in integers ----
 *
 * Each row's weights for a sub-block of I8DOT_PV_SUB keys, times the value
 * rows' scales (p'_j = p_j vscale_j >= 0), are rounded to int16 against the
 * sub-block's largest: P16_j = round(p'_j / ps), ps = max_j p'_j / 32767
 * (a key block of 512 is rounded as two sub-blocks, as the VNNI levels'
 * blocks of 256 are: the same integers, and the same bound). A key pair
 * (j, j + 1) is one vpmaddwd operand: the row's P16 pair broadcast as an
 * int32, against the two value rows widened to int16 and interleaved. The
 * int32 sums are exact; every I8DOT_PV_SUB keys they are converted (times
 * ps) into float32 block sums, which join O with the same compensated
 * update as the float32 kernel.
 */

/* sum + (float)cols x ps, where ps is a weights' scale in units of 1 / unit
 * (i8dot_weight_rounding): unit 1 (all but tiny sub-blocks) is one FMA;
 * otherwise the product is taken back by unit (a power of two) */
static inline __m256 i8_add_scaled(__m256 sum, __m256i cols, __m256 ps, float unit)
{
    __m256 x = _mm256_cvtepi32_ps(cols);
    if (unit == 1.0f) return _mm256_fmadd_ps(x, ps, sum);
    return _mm256_fmadd_ps(_mm256_mul_ps(x, ps), _mm256_set1_ps(unit), sum);
}

/* The most sub-blocks one i8_pv_group pass takes (pv_rows splits longer
 * blocks): the rows path's blocks are two. */
#define I8_PV_MAX_SUBS 4

/* n weights ws[j] rounded to int16 as ws[j] x pre x factor (pre 1: no
 * multiply, x 1 being exact), written in place as int32 pairs: pair jp =
 * (ws[2jp], ws[2jp + 1]) at int32 index jp (an odd last weight pairs with 0) */
static inline __attribute__((always_inline)) void i8_round_weight_pairs(float *ws, int64_t n, float factor,
                                                                        float pre)
{
    const int scaled = pre != 1.0f;
    const __m256 inv = _mm256_set1_ps(factor), prev = _mm256_set1_ps(pre);
    int32_t *pairs = (int32_t *)(void *)ws;
    for (int64_t j = 0; j < n; j += 16) {   /* 16 weights -> 8 pairs, in place */
        int n0 = n - j >= 8 ? 8 : (int)(n - j), n1 = n - j >= 16 ? 8 : n - j > 8 ? (int)(n - j - 8) : 0;
        __m256 x0 = n0 == 8 ? v_load(ws + j) : v_load_n(ws + j, n0);
        __m256 x1 = n1 == 8 ? v_load(ws + j + 8) : v_load_n(ws + j + 8, n1);
        if (scaled) x0 = _mm256_mul_ps(x0, prev), x1 = _mm256_mul_ps(x1, prev);
        x0 = _mm256_mul_ps(x0, inv), x1 = _mm256_mul_ps(x1, inv);
        int np = (int)((n - j + 1) / 2 < 8 ? (n - j + 1) / 2 : 8);
        /* int16 of weights j..j+15 in order: adjacent int16 pairs are the int32 pairs */
        __m256i w16 = i8_round16(x0, x1);
        if (np == 8)
            _mm256_storeu_si256((__m256i *)(void *)(pairs + j / 2), w16);
        else
            _mm256_maskstore_epi32(pairs + j / 2, lanes_(np), w16);
    }
}

/* P2[r][jp] = the int16 pair (P16[r][2jp], P16[r][2jp+1]) as one int32, for
 * keys j < nk (<= I8_PV_MAX_SUBS sub-blocks), each sub-block rounded on its
 * own: sub-block b's pairs start at float index b * I8DOT_PV_SUB, written
 * over row r of p itself (its pair jp lands at float index jp of the
 * sub-block, which the loop has already read), its scale ps at
 * pscale[r * I8_PV_MAX_SUBS + b] in units of 1 / punit[same] (NaN for a
 * sub-block holding a NaN or an infinity: the row's output is NaN, as in
 * float32; punit 1 except for tiny sub-blocks, i8dot_weight_rounding). */
static void i8_pack_weight_pairs(int rows, int64_t nk, float *p, int64_t ldp, const float *vscale, float *pscale,
                                 float *punit)
{
    for (int r = 0; r < rows; r++) {
        float *w = p + r * ldp;
        for (int64_t j0 = 0; j0 < nk; j0 += I8DOT_PV_SUB) {
            const int64_t n = nk - j0 < I8DOT_PV_SUB ? nk - j0 : I8DOT_PV_SUB;
            float *ws = w + j0;
            int bad;
            float factor, pre;
            /* p' = p vscale (when the values have scales), and its max */
            float m = vscale ? i8_scale_absmax(ws, vscale + j0, n, &bad) : i8_row_absmax(ws, n, &bad);
            pscale[r * I8_PV_MAX_SUBS + j0 / I8DOT_PV_SUB] = i8dot_weight_rounding(m, bad, &factor, &pre);
            punit[r * I8_PV_MAX_SUBS + j0 / I8DOT_PV_SUB] = 1.0f / pre;   /* (a power of two: exact) */
            if (pre == 1.0f)   /* (a constant: the common arm has no multiply by pre) */
                i8_round_weight_pairs(ws, n, factor, 1.0f);
            else
                i8_round_weight_pairs(ws, n, factor, pre);
        }
    }
}

/* One key pair, 16 columns: value rows a (key 2jp) and b (key 2jp + 1)
 * widened to int16, interleaved, times each row's weight pair. Lanes of
 * acc[rr][0] hold columns 0-3 and 8-11, of acc[rr][1] columns 4-7 and 12-15. */
static inline __attribute__((always_inline)) void i8_pv_pair(int rows, __m256i a, __m256i b,
                                                             const int32_t *const *p2, int64_t jp,
                                                             __m256i acc[4][2])
{
    __m256i lo = _mm256_unpacklo_epi16(a, b), hi = _mm256_unpackhi_epi16(a, b);
#pragma GCC unroll 4
    for (int rr = 0; rr < rows; rr++) {
        __m256i w = _mm256_set1_epi32(p2[rr][jp]);
        acc[rr][0] = madd_acc(acc[rr][0], w, lo);
        acc[rr][1] = madd_acc(acc[rr][1], w, hi);
    }
}

/*
 * P V walks the block's keys in chunks of I8_PV_CHUNK and, per chunk, every
 * column tile of 16 (up to I8_PV_TILES of them; their int32 sums wait in
 * memory between chunks): a chunk's value rows (8 KiB at Dv = 128) stay in
 * L1 for all the tiles, and each tile of the first pass asks for its share
 * of the rows a chunk (plus ROWS_PF_BYTES) ahead, so the memory stream is
 * spread over the whole computation and the inner loop has no prefetch
 * test. (Tile by tile over the whole block, the first tile waited on memory
 * alone: P V took 44% of a one-thread int8 decode. Chunks of 64 keys
 * instead of 32 halve the sums' trips to memory: P V 8% faster on Zen 3.)
 * The sums are exact integers, so the order changes no bit.
 */
#define I8_PV_TILES 8    /* column tiles of 16 per pass: 128 columns */
#define I8_PV_CHUNK 64   /* keys per pass over the tiles (even) */

/*
 * sums (one column tile's int32 sums: columns c0..c0+cn, cn <= 16, lanes
 * as i8_pv_pair leaves them) += P2 pairs times value pairs for keys
 * [ja, jb) of the block that starts at j0 (ja - j0 even; an odd last key
 * pairs with zeros).
 */
static inline __attribute__((always_inline)) void i8_pv_pairs(int rows, const int32_t *const *p2, int64_t j0,
                                                              int64_t ja, int64_t jb, const int8_t *v, int64_t ldv,
                                                              int64_t c0, int cn, __m256i sums[4][2])
{
    __m256i acc[4][2];
#pragma GCC unroll 4
    for (int rr = 0; rr < rows; rr++) acc[rr][0] = sums[rr][0], acc[rr][1] = sums[rr][1];
    const int8_t *vj = v + ja * ldv + c0;
    int64_t j = ja, jp = (ja - j0) / 2;   /* key, and its pair's index in the block */
    if (cn == 16) {   /* whole tiles of whole pairs: no branch in the loop */
        /* counted from 0 to a bound fixed before the loop: with the key j
         * as the counter and Python's -fwrapv, GCC rebuilt the bound from
         * the pair index at every step (six integer ops per key pair
         * instead of three, next to 24 vector ops; Zen 3 int8 decode
         * 1.05x without them) */
        const int64_t npairs = (jb - j) / 2;
        for (int64_t i = 0; i < npairs; i++, vj += 2 * ldv)
            i8_pv_pair(rows, i8_load16(vj), i8_load16(vj + ldv), p2, jp + i, acc);
        j += 2 * npairs, jp += npairs;
    }
    for (; j < jb; j += 2, jp++, vj += 2 * ldv) {   /* partial tiles, and an odd last key */
        int partner = j + 1 < jb;
        i8_pv_pair(rows, i8_load16_n(vj, cn), partner ? i8_load16_n(vj + ldv, cn) : _mm256_setzero_si256(), p2, jp,
                   acc);
    }
#pragma GCC unroll 4
    for (int rr = 0; rr < rows; rr++) sums[rr][0] = acc[rr][0], sums[rr][1] = acc[rr][1];
}

static inline __attribute__((always_inline)) void i8_pv_group(int rows, int64_t nk, float *p, int64_t ldp,
                                                              const int8_t *v, int64_t ldv, int64_t Dv,
                                                              const float *pscale, const float *punit,
                                                              const float *alpha, float *o, float *oc, int64_t ldo,
                                                              int prefetch)
{
    const int64_t pf = rows_ahead_avx2_io_i8(ldv, I8_PV_CHUNK);   /* value rows ahead */
    /* the prefetches of a chunk, spread over its first pass's tiles */
    const int64_t first_tiles = (Dv + 15) / 16 < I8_PV_TILES ? (Dv + 15) / 16 : I8_PV_TILES;
    const int64_t pf_share = (I8_PV_CHUNK + first_tiles - 1) / first_tiles;   /* rows per tile */
    for (int64_t cg = 0; cg < Dv; cg += 16 * I8_PV_TILES) {
        const int64_t tiles_left = (Dv - cg + 15) / 16;
        const int ntiles = tiles_left < I8_PV_TILES ? (int)tiles_left : I8_PV_TILES;
        __m256 sum[I8_PV_TILES][4][2];   /* float32 sums of the blocks, per tile, row, lane half */
        __m256i isum[I8_PV_TILES][4][2];  /* the current block's int32 sums */
        for (int t = 0; t < ntiles; t++)
            for (int rr = 0; rr < rows; rr++) sum[t][rr][0] = sum[t][rr][1] = _mm256_setzero_ps();
        for (int64_t j0 = 0; j0 < nk; j0 += I8DOT_PV_SUB) {
            int64_t j1 = nk - j0 < I8DOT_PV_SUB ? nk : j0 + I8DOT_PV_SUB;
            const int32_t *p2s[4];   /* the sub-block's pairs (i8_pack_weight_pairs) */
            for (int rr = 0; rr < rows; rr++) p2s[rr] = (const int32_t *)(const void *)(p + rr * ldp + j0);
            for (int t = 0; t < ntiles; t++)
                for (int rr = 0; rr < rows; rr++) isum[t][rr][0] = isum[t][rr][1] = _mm256_setzero_si256();
            for (int64_t ja = j0; ja < j1; ja += I8_PV_CHUNK) {
                int64_t jb = j1 - ja < I8_PV_CHUNK ? j1 : ja + I8_PV_CHUNK;
                for (int t = 0; t < ntiles; t++) {
                    int64_t c0 = cg + 16 * t;
                    int cn = Dv - c0 < 16 ? (int)(Dv - c0) : 16;
                    if (prefetch && cg == 0) {   /* tile t asks for its share of the value rows pf ahead */
                        const int64_t ra = ja + t * pf_share, rb = ra + pf_share < jb ? ra + pf_share : jb;
                        if (ra < rb) prefetch_rows_avx2_io_i8(v, ra + pf, rb - ra, ldv, Dv);
                    }
                    i8_pv_pairs(rows, p2s, j0, ja, jb, v, ldv, c0, cn, isum[t]);
                }
            }
            for (int t = 0; t < ntiles; t++)
                for (int rr = 0; rr < rows; rr++) {
                    const int at = rr * I8_PV_MAX_SUBS + (int)(j0 / I8DOT_PV_SUB);
                    __m256 ps = _mm256_set1_ps(pscale[at]);
                    __m256i cols0_7 = _mm256_permute2x128_si256(isum[t][rr][0], isum[t][rr][1], 0x20);
                    __m256i cols8_15 = _mm256_permute2x128_si256(isum[t][rr][0], isum[t][rr][1], 0x31);
                    sum[t][rr][0] = i8_add_scaled(sum[t][rr][0], cols0_7, ps, punit[at]);
                    sum[t][rr][1] = i8_add_scaled(sum[t][rr][1], cols8_15, ps, punit[at]);
                }
        }
        for (int t = 0; t < ntiles; t++) {
            int64_t c0 = cg + 16 * t;
            int nvec = Dv - c0 > 8 ? 2 : 1;
            for (int rr = 0; rr < rows; rr++) {
                __m256 a = _mm256_set1_ps(alpha[rr]);
                for (int u = 0; u < nvec; u++) {
                    /* O rows are padded to whole vectors (ldo), so full loads are safe */
                    float *po = o + rr * ldo + c0 + u * 8, *pc = oc + rr * ldo + c0 + u * 8;
                    __m256 total = _mm256_loadu_ps(po), comp = _mm256_loadu_ps(pc);
                    kahan_update_avx2_f32(a, sum[t][rr][u], &total, &comp);
                    _mm256_storeu_ps(po, total);
                    _mm256_storeu_ps(pc, comp);
                }
            }
        }
    }
}

static void pv_rows_i8_avx2(int64_t nk, float *p, int64_t ldp, int nr, const int8_t *v, int64_t ldv, int64_t Dv,
                            const float *vscale, const float *alpha, float *o, float *oc, int64_t ldo)
{
    const int64_t most = I8_PV_MAX_SUBS * I8DOT_PV_SUB;   /* keys per pass */
    static const float keep[I8_ROWS] = {1, 1, 1, 1};      /* later passes add to O as it is */
    float pscale[I8_ROWS * I8_PV_MAX_SUBS], punit[I8_ROWS * I8_PV_MAX_SUBS];
    for (int r = 0; r < nr; r += I8_ROWS) {
        int rows = nr - r < I8_ROWS ? nr - r : I8_ROWS;
        float *orow = o + r * ldo, *crow = oc + r * ldo;
        for (int64_t j = 0; j < nk; j += most) {
            const int64_t n = nk - j < most ? nk - j : most;
            float *pr = p + r * ldp + j;
            const int8_t *vj = v + j * ldv;
            const float *a = j == 0 ? alpha + r : keep;
            i8_pack_weight_pairs(rows, n, pr, ldp, vscale ? vscale + j : NULL, pscale, punit);
            int pf = r == 0;   /* the first group streams the values from memory */
            switch (rows) {
            case 4: i8_pv_group(4, n, pr, ldp, vj, ldv, Dv, pscale, punit, a, orow, crow, ldo, pf); break;
            case 3: i8_pv_group(3, n, pr, ldp, vj, ldv, Dv, pscale, punit, a, orow, crow, ldo, pf); break;
            case 2: i8_pv_group(2, n, pr, ldp, vj, ldv, Dv, pscale, punit, a, orow, crow, ldo, pf); break;
            default: i8_pv_group(1, n, pr, ldp, vj, ldv, Dv, pscale, punit, a, orow, crow, ldo, pf); break;
            }
        }
    }
}
