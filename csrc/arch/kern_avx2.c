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
#include "../kernels/ktab.h"
#include "../kernels/vmath.h"

typedef float T;
typedef __m256 vec;
#define VL 8
#define NV 2
#define MR_QK 6
#define MR_PV 6
#define ROWS_MAX 4
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
            _mm256_storeu_ps(dst + i * ld, _mm256_fmadd_ps(x[i], log2e, _mm256_loadu_ps(dst + i * ld)));
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

/* The rows path's QK block: 4 rows x 2 keys; 8 vectors -> their 8
 * horizontal sums, in order (the AVX-512 file's tree with two 128-bit
 * lanes: c_m[L, e] = sum over lane L of a_4m+e; then one lane swap). */
#define QK_ROWS 4
#define QK_KEYS 2
static inline void v_hsum_block(const vec a[8], T *out)
{
    __m256 b[4], c[2];
#pragma GCC unroll 4
    for (int k = 0; k < 4; k++)
        b[k] = _mm256_add_ps(_mm256_unpacklo_ps(a[2 * k], a[2 * k + 1]), _mm256_unpackhi_ps(a[2 * k], a[2 * k + 1]));
#pragma GCC unroll 2
    for (int m = 0; m < 2; m++)
        c[m] = _mm256_add_ps(_mm256_shuffle_ps(b[2 * m], b[2 * m + 1], 0x44),
                             _mm256_shuffle_ps(b[2 * m], b[2 * m + 1], 0xEE));
    _mm256_storeu_ps(out, _mm256_add_ps(_mm256_permute2f128_ps(c[0], c[1], 0x20),
                                        _mm256_permute2f128_ps(c[0], c[1], 0x31)));
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
#define IT int8_t
#define IO_SAME 0
#define IO_KV_ONLY 1
#define v_load_in(p) v_load_i8(p)
#define v_load_in_n(p, n) v_load_i8_n((p), (n))
#define in_to_T(x) ((T)(x))
#define T_to_out(x) ((int8_t)0)   /* unused: no int8 outputs */
#define FNIO(name) name##_avx2_io_i8
#define KIO_TYPE attn_kio_i8
#define KIO_NAME attn_kio_avx2_i8
#define IO_DTYPE "int8"
#include "../kernels/tiles_io.inc.c"
