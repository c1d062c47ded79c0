/*
 * AVX-512 (F, VL, BW, DQ) float32 kernels: the SIMD mapping for
 * csrc/kernels/tiles.inc.c. This file alone is compiled with
 * -mavx512f -mavx512vl -mavx512bw -mavx512dq (setup.py); dispatch
 * (csrc/dispatch/cpu_features.c) checks exactly these features at run time.
 *
 * Register budget (32 zmm): panel tiles are 8 x 2 vectors (16 accumulators,
 * 2 loads, 1 broadcast), i.e. 8 keys (or value columns) x 32 query lanes.
 */
#include <immintrin.h>
#include <math.h>
#include "../kernels/ktab.h"

/* The level this translation unit builds. kern_avx512bf16.c includes this
 * file with its own LEVEL (and its native bfloat16 entries), so one set of
 * AVX-512 kernels serves both levels under separate names. */
#ifndef LEVEL
#define LEVEL avx512
#define ISA_NAME "avx512"
#endif
#define LEVEL_CAT_(a, l, b) a##_##l##_##b
#define LEVEL_CAT(a, l, b) LEVEL_CAT_(a, l, b)
#include "../kernels/vmath.h"

typedef float T;
typedef __m512 vec;
#define VL 16
#define NV 2
#define MR_QK 8
#define MR_PV 8
#define ROWS_MAX 8
#define MR_ADD 4
/* Cache blocks (measured on Zen 4, 1 and 2 threads): key
 * blocks of 128 keep the 128 x 32 St tile (16 KiB) in L1 next to the Q panel;
 * 64 and 192-256 were 1-2% slower on the reference shapes. The rows path
 * streams longer blocks (decode is bound by memory bandwidth). GEMM: k-blocks
 * of 512 with 8 register tiles of rows per unit (190-200 GFLOP/s on Zen 4;
 * 128-256 ran at 145-185: each block reloads and stores the C tile). */
#define BK_PANEL 128
#define BK_ROWS 256
#define GEMM_KC 512
#define GEMM_MC 64
#define FN(name) LEVEL_CAT(name, LEVEL, f32)
#define KTAB_TYPE attn_ktab_f32
#define PREP_TYPE attn_prep_f32
#define KTAB_NAME LEVEL_CAT(attn_ktab, LEVEL, f32)

static inline __mmask16 lanes_(int n) { return n >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << n) - 1u); }
static inline vec v_load(const T *p) { return _mm512_loadu_ps(p); }
static inline void v_store(T *p, vec a) { _mm512_storeu_ps(p, a); }
static inline vec v_load_n(const T *p, int n) { return _mm512_maskz_loadu_ps(lanes_(n), p); }
static inline void v_store_n(T *p, vec a, int n) { _mm512_mask_storeu_ps(p, lanes_(n), a); }
static inline vec v_set1(T x) { return _mm512_set1_ps(x); }
static inline vec v_zero(void) { return _mm512_setzero_ps(); }
static inline vec v_add(vec a, vec b) { return _mm512_add_ps(a, b); }
static inline vec v_sub(vec a, vec b) { return _mm512_sub_ps(a, b); }
static inline vec v_mul(vec a, vec b) { return _mm512_mul_ps(a, b); }
static inline vec v_div(vec a, vec b) { return _mm512_div_ps(a, b); }
static inline vec v_fma(vec a, vec b, vec c) { return _mm512_fmadd_ps(a, b, c); }
static inline vec v_max(vec a, vec b) { return _mm512_max_ps(a, b); }
/* like v_max: the second operand when either is NaN */
static inline vec v_min(vec a, vec b) { return _mm512_min_ps(a, b); }
static inline T v_hsum(vec a) { return _mm512_reduce_add_ps(a); }
static inline T v_hmax(vec a) { return _mm512_reduce_max_ps(a); }
static inline vec v_neginf_to_zero(vec a)
{
    __mmask16 is_ninf = _mm512_cmp_ps_mask(a, _mm512_set1_ps(-INFINITY), _CMP_EQ_OQ);
    return _mm512_mask_blend_ps(is_ninf, a, _mm512_setzero_ps());
}
/* NaN lanes -> 0 */
static inline vec v_nan_to_zero(vec a) { return _mm512_maskz_mov_ps(_mm512_cmp_ps_mask(a, a, _CMP_ORD_Q), a); }
/* x where a != 0 (NaN included), else 0 */
static inline vec v_keep_nonzero(vec a, vec x)
{
    return _mm512_maskz_mov_ps(_mm512_cmp_ps_mask(a, _mm512_setzero_ps(), _CMP_NEQ_UQ), x);
}

/* exp2's polynomials (vmath.h): p6(f) ~ 2^f on [-1/2, 1/2], and
 * q5(f) ~ 2^(f - 1/2) on [0, 1). */
static inline vec exp2_p6(vec f)
{
    vec p = _mm512_set1_ps(ATTN_EXP2_C6);
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(ATTN_EXP2_C5));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(ATTN_EXP2_C4));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(ATTN_EXP2_C3));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(ATTN_EXP2_C2));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(ATTN_EXP2_C1));
    return _mm512_fmadd_ps(p, f, _mm512_set1_ps(ATTN_EXP2_C0));
}

static inline vec exp2_q5(vec f)
{
    vec q = _mm512_set1_ps(ATTN_EXP2H_E5);
    q = _mm512_fmadd_ps(q, f, _mm512_set1_ps(ATTN_EXP2H_E4));
    q = _mm512_fmadd_ps(q, f, _mm512_set1_ps(ATTN_EXP2H_E3));
    q = _mm512_fmadd_ps(q, f, _mm512_set1_ps(ATTN_EXP2H_E2));
    q = _mm512_fmadd_ps(q, f, _mm512_set1_ps(ATTN_EXP2H_E1));
    return _mm512_fmadd_ps(q, f, _mm512_set1_ps(ATTN_EXP2H_E0));
}

/* exp2 per csrc/kernels/vmath.h; scalef does the 2^n scaling for every n,
 * including overflow to +inf. */
static inline vec v_exp2(vec x)
{
    /* max/min return their second operand when either is NaN: NaN survives */
    vec xc = _mm512_min_ps(_mm512_set1_ps(128.0f), _mm512_max_ps(_mm512_set1_ps(-127.0f), x));
    vec n = _mm512_roundscale_ps(xc, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    vec r = _mm512_scalef_ps(exp2_p6(_mm512_sub_ps(xc, n)), n);
    /* x < -126 (and -inf) -> 0; NaN compares unordered and is kept */
    __mmask16 keep = _mm512_cmp_ps_mask(x, _mm512_set1_ps(-126.0f), _CMP_NLT_UQ);
    return _mm512_maskz_mov_ps(keep, r);
}

/* exp2 on the softmax's domain, x <= 0 or NaN (x = score - running max):
 * no upper clamp, and the lower clamp at -150 doubles as the -inf rule
 * (2^-150 rounds to 0). Results in (2^-150, 2^-126) are subnormal rather
 * than flushed; elsewhere identical to v_exp2. */
static inline vec v_exp2_nonpos(vec x)
{
    vec xc = _mm512_max_ps(_mm512_set1_ps(-150.0f), x);  /* NaN (2nd operand) survives */
    vec n = _mm512_roundscale_ps(xc, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    return _mm512_scalef_ps(exp2_p6(_mm512_sub_ps(xc, n)), n);
}

/* 1 / x: rcp14 (14 bits) and one Newton step (about 2^-28 relative error,
 * exact for powers of two). */
static inline vec v_recip(vec x)
{
    vec r = _mm512_rcp14_ps(x);
    return _mm512_mul_ps(r, _mm512_fnmadd_ps(x, r, _mm512_set1_ps(2.0f)));
}

/* 1 / (1 + 2^(x - INV1P_SHIFT)), the core of tanh (vmath.h). The caller
 * adds INV1P_SHIFT = 1/2 to x (for free, to a broadcast scalar), which lets
 * the range reduction be a single vreduceps: f = x - floor(x) in [0, 1) and
 * scalef(q5(f), x) = q5(f) 2^floor(x) = 2^(x - 1/2). x is clamped to
 * [-63.5, 64.5] first, which keeps +-inf exact (r = 0 or 1); NaN survives the
 * clamps and every step. */
#define INV1P_SHIFT 0.5f
static inline vec v_inv1p_exp2_shifted(vec x)
{
    vec xc = _mm512_min_ps(_mm512_set1_ps(64.5f), _mm512_max_ps(_mm512_set1_ps(-63.5f), x));
    vec f = _mm512_reduce_ps(xc, _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC);
    return v_recip(_mm512_add_ps(_mm512_set1_ps(1.0f), _mm512_scalef_ps(exp2_q5(f), xc)));
}

/* In-register 16 x 16 transpose: on return x[i] holds element i of every
 * input vector (x[i][r] = x_in[r][i]). */
static inline __attribute__((always_inline)) void transpose16(__m512 x[16])
{
    __m512 t[16];
#pragma GCC unroll 16
    for (int i = 0; i < 16; i += 2) {
        t[i] = _mm512_unpacklo_ps(x[i], x[i + 1]);
        t[i + 1] = _mm512_unpackhi_ps(x[i], x[i + 1]);
    }
#pragma GCC unroll 16
    for (int i = 0; i < 16; i += 4) {
        x[i] = _mm512_shuffle_ps(t[i], t[i + 2], 0x44);
        x[i + 1] = _mm512_shuffle_ps(t[i], t[i + 2], 0xEE);
        x[i + 2] = _mm512_shuffle_ps(t[i + 1], t[i + 3], 0x44);
        x[i + 3] = _mm512_shuffle_ps(t[i + 1], t[i + 3], 0xEE);
    }
#pragma GCC unroll 4
    for (int i = 0; i < 4; i++) {
        t[i] = _mm512_shuffle_f32x4(x[i], x[i + 4], 0x88);
        t[i + 4] = _mm512_shuffle_f32x4(x[i], x[i + 4], 0xDD);
        t[i + 8] = _mm512_shuffle_f32x4(x[i + 8], x[i + 12], 0x88);
        t[i + 12] = _mm512_shuffle_f32x4(x[i + 8], x[i + 12], 0xDD);
    }
#pragma GCC unroll 4
    for (int i = 0; i < 4; i++) {
        x[i] = _mm512_shuffle_f32x4(t[i], t[i + 8], 0x88);
        x[i + 8] = _mm512_shuffle_f32x4(t[i], t[i + 8], 0xDD);
        x[i + 4] = _mm512_shuffle_f32x4(t[i + 4], t[i + 12], 0x88);
        x[i + 12] = _mm512_shuffle_f32x4(t[i + 4], t[i + 12], 0xDD);
    }
}

/* Panel staging and output in 16 x 16 blocks (tiles.inc.c's pack_qt /
 * unpack_ot use these when V_HAS_TRANSPOSE is defined):
 *   v_transpose:   dst[i * ld + r] = scale * rows[r][d0 + i]
 *   v_untranspose: rows[r][c0 + i] = src[i * ld + r] * inv[r]        */
#define V_HAS_TRANSPOSE 1
static inline void v_transpose(const T *const *rows, int64_t d0, T scale, T *dst, int64_t ld)
{
    __m512 x[16];
#pragma GCC unroll 16
    for (int i = 0; i < 16; i++) x[i] = _mm512_loadu_ps(rows[i] + d0);
    transpose16(x);
    __m512 sv = _mm512_set1_ps(scale);
#pragma GCC unroll 16
    for (int i = 0; i < 16; i++) _mm512_storeu_ps(dst + i * ld, _mm512_mul_ps(x[i], sv));
}

static inline void v_untranspose(const T *src, int64_t ld, const T *inv, T *const *rows, int64_t c0)
{
    __m512 x[16];
#pragma GCC unroll 16
    for (int i = 0; i < 16; i++) x[i] = _mm512_loadu_ps(src + i * ld);
    transpose16(x);
#pragma GCC unroll 16
    for (int i = 0; i < 16; i++) _mm512_storeu_ps(rows[i] + c0, _mm512_mul_ps(x[i], _mm512_set1_ps(inv[i])));
}

/* Mask a 16 x 16 block of a score panel: rows[r] + j0 holds 16 mask values
 * of query r (uint8 for ATTN_MASK_BOOL, float for ATTN_MASK_ADD); after the
 * transpose x[i] holds key j0 + i's mask for the 16 queries of dst[i * ld]. */
static inline void v_mask_block(int kind, const void *const *rows, int64_t j0, T *dst, int64_t ld)
{
    __m512 x[16];
    if (kind == ATTN_MASK_BOOL) {
#pragma GCC unroll 16
        for (int i = 0; i < 16; i++) {
            __m128i bytes = _mm_loadu_si128((const __m128i *)((const uint8_t *)rows[i] + j0));
            x[i] = _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(bytes));
        }
    } else {
#pragma GCC unroll 16
        for (int i = 0; i < 16; i++) x[i] = _mm512_loadu_ps((const float *)rows[i] + j0);
    }
    transpose16(x);
    if (kind == ATTN_MASK_BOOL) {
        __m512 ninf = _mm512_set1_ps(-INFINITY);
#pragma GCC unroll 16
        for (int i = 0; i < 16; i++) {
            __mmask16 hidden = _mm512_cmp_ps_mask(x[i], _mm512_setzero_ps(), _CMP_EQ_OQ);
            _mm512_storeu_ps(dst + i * ld, _mm512_mask_mov_ps(_mm512_loadu_ps(dst + i * ld), hidden, ninf));
        }
    } else {
        __m512 log2e = _mm512_set1_ps((float)ATTN_LOG2E);
#pragma GCC unroll 16
        for (int i = 0; i < 16; i++)
            /* a multiply, then an add: as the scalar pass (tiles.inc.c), so a
             * score's bits do not depend on the mask's layout or the row's place */
            _mm512_storeu_ps(dst + i * ld, _mm512_add_ps(_mm512_loadu_ps(dst + i * ld), _mm512_mul_ps(x[i], log2e)));
    }
}

/* Lanes past n take `fill` (a masked load with pass-through: p[n..] is never
 * touched, so a row ending at an unreadable page is safe). */
#define V_HAS_LOAD_NF 1
static inline vec v_load_nf(const T *p, int n, T fill) { return _mm512_mask_loadu_ps(_mm512_set1_ps(fill), lanes_(n), p); }

#include "../kernels/tiles.inc.c"

/* The rows path's QK block (tiles_io.inc.c): 4 rows x 4 keys, reduced by one
 * shuffle/add tree: 16 vectors -> their 16 horizontal sums, in order, in 45
 * operations (16 separate reductions take about 130). Level by level, lane
 * (L, e) = 128-bit lane L, element e:
 *   b_k  = lo(a_2k, a_2k+1) + hi(...)      -> partial sums of element pairs
 *   c_m  = 0x44 + 0xEE shuffles of b_2m, b_2m+1 -> c_m[L, e] = sum over lane L of a_4m+e
 *   d, f = 128-bit lane shuffles adding lanes -> f[4L + e] = total of a_4L+e */
#define QK_ROWS 4
#define QK_KEYS 4
/* The tree, written once for any 32-bit lane type: V the vector type, ADD
 * its lane add, LO32/HI32 the in-lane unpacks of 32-bit elements, LO64/HI64
 * the 0x44/0xEE two-source shuffles, X128 the 128-bit lane shuffle.
 * kern_avx512vnni.c instantiates it on int32 lanes (exact int32 adds) with
 * its own integer shuffles: float-domain shuffles between integer adds made
 * GCC add register copies (int8 decode 3% slower on one thread). */
#define DEFINE_HSUM_TREE16(name, V, ADD, LO32, HI32, LO64, HI64, X128)                        \
    static inline V name(const V a[16])                                                         \
    {                                                                                           \
        V b[8], c[4], d0, d1;                                                                   \
        _Pragma("GCC unroll 8") for (int k = 0; k < 8; k++)                                     \
            b[k] = ADD(LO32(a[2 * k], a[2 * k + 1]), HI32(a[2 * k], a[2 * k + 1]));             \
        _Pragma("GCC unroll 4") for (int m = 0; m < 4; m++)                                     \
            c[m] = ADD(LO64(b[2 * m], b[2 * m + 1]), HI64(b[2 * m], b[2 * m + 1]));             \
        d0 = ADD(X128(c[0], c[1], 0x88), X128(c[0], c[1], 0xDD));                               \
        d1 = ADD(X128(c[2], c[3], 0x88), X128(c[2], c[3], 0xDD));                               \
        return ADD(X128(d0, d1, 0x88), X128(d0, d1, 0xDD));                                     \
    }

static inline __m512 shuffle_lo64_ps(__m512 a, __m512 b) { return _mm512_shuffle_ps(a, b, 0x44); }
static inline __m512 shuffle_hi64_ps(__m512 a, __m512 b) { return _mm512_shuffle_ps(a, b, 0xEE); }
DEFINE_HSUM_TREE16(hsum_tree16_ps, __m512, _mm512_add_ps, _mm512_unpacklo_ps, _mm512_unpackhi_ps, shuffle_lo64_ps,
                   shuffle_hi64_ps, _mm512_shuffle_f32x4)

static inline void v_hsum_block(const vec a[16], T *out) { _mm512_storeu_ps(out, hsum_tree16_ps(a)); }

/* ---- the input/output tables (csrc/kernels/tiles_io.inc.c) ---- */

/* float32 inputs: read directly */
#define IT float
#define IO_SAME 1
#define v_load_in(p) v_load(p)
#define v_load_in_n(p, n) v_load_n((p), (n))
#define in_to_T(x) (x)
#define T_to_out(x) (x)
#define FNIO(name) LEVEL_CAT(name, LEVEL, io_f32)
#define KIO_TYPE attn_kio_f32
#define KIO_NAME LEVEL_CAT(attn_kio, LEVEL, f32)
#define IO_DTYPE "float32"
#include "../kernels/tiles_io.inc.c"

/* VL float32 -> bfloat16 patterns as attn_f32_to_bf16 (nearest even, NaN
 * quieted), each in the low half of its 32-bit lane */
static inline __m512i bf16_bits(vec x)
{
    __m512i b = _mm512_castps_si512(x);
    __m512i r = _mm512_add_epi32(b, _mm512_add_epi32(_mm512_set1_epi32(0x7fff),
                                                     _mm512_and_si512(_mm512_srli_epi32(b, 16), _mm512_set1_epi32(1))));
    r = _mm512_srli_epi32(r, 16);
    __mmask16 nan = _mm512_cmpgt_epu32_mask(_mm512_and_si512(b, _mm512_set1_epi32(0x7fffffff)), _mm512_set1_epi32(0x7f800000));
    return _mm512_mask_mov_epi32(r, nan, _mm512_or_si512(_mm512_srli_epi32(b, 16), _mm512_set1_epi32(0x40)));
}
/* ... stored at p: the output transpose's stores */
static inline void store16_bf16(uint16_t *p, vec x)
{
    _mm256_storeu_si256((__m256i *)(void *)p, _mm512_cvtepi32_epi16(bf16_bits(x)));
}

/* bfloat16: the top half of a float32 -- widen the 16-bit lanes and shift */
static inline vec bf16_widen(__m256i h) { return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16)); }
static inline vec v_load_bf16(const uint16_t *p) { return bf16_widen(_mm256_loadu_si256((const __m256i *)p)); }
static inline vec v_load_bf16_n(const uint16_t *p, int n) { return bf16_widen(_mm256_maskz_loadu_epi16(lanes_(n), p)); }
#define IT uint16_t
#define IO_SAME 0
#define v_load_in(p) v_load_bf16(p)
#define v_load_in_n(p, n) v_load_bf16_n((p), (n))
#define in_to_T(x) attn_bf16_to_f32(x)
#define T_to_out(x) attn_f32_to_bf16(x)
#define v_store_out(p, x) store16_bf16((p), (x))
#define FNIO(name) LEVEL_CAT(name, LEVEL, io_bf16)
#ifdef BF16_NATIVE_ENTRIES
#define KIO_EXTRA BF16_NATIVE_ENTRIES
#endif
#define KIO_TYPE attn_kio_bf16
#define KIO_NAME LEVEL_CAT(attn_kio, LEVEL, bf16)
#define IO_DTYPE "bfloat16"
#include "../kernels/tiles_io.inc.c"

/* float16: vcvtph2ps (AVX512F) */
static inline vec v_load_f16(const uint16_t *p) { return _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)p)); }
static inline vec v_load_f16_n(const uint16_t *p, int n) { return _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(lanes_(n), p)); }
#define IT uint16_t
#define IO_SAME 0
#define v_load_in(p) v_load_f16(p)
#define v_load_in_n(p, n) v_load_f16_n((p), (n))
#define in_to_T(x) attn_f16_to_f32(x)
#define T_to_out(x) attn_f32_to_f16(x)
#define v_store_out(p, x) _mm256_storeu_si256((__m256i *)(void *)(p), _mm512_cvtps_ph((x), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC))
#define FNIO(name) LEVEL_CAT(name, LEVEL, io_f16)
#define KIO_TYPE attn_kio_f16
#define KIO_NAME LEVEL_CAT(attn_kio, LEVEL, f16)
#define IO_DTYPE "float16"
#include "../kernels/tiles_io.inc.c"

/* int8 keys/values of the quantized KV cache (scales applied by the entries) */
static inline vec v_load_i8(const int8_t *p) { return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)p))); }
static inline vec v_load_i8_n(const int8_t *p, int n) { return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_maskz_loadu_epi8(lanes_(n), p))); }
#define IT int8_t
#define IO_SAME 0
#define IO_KV_ONLY 1
#define v_load_in(p) v_load_i8(p)
#define v_load_in_n(p, n) v_load_i8_n((p), (n))
#define in_to_T(x) ((T)(x))
#define T_to_out(x) ((int8_t)0)   /* unused: no int8 outputs */
#define FNIO(name) LEVEL_CAT(name, LEVEL, io_i8)
#ifdef I8_QK_ROWS   /* the level's own int8 products (kern_avx512vnni.c) */
#define KIO_QK_ROWS I8_QK_ROWS
#define KIO_PV_ROWS I8_PV_ROWS
#define KIO_EXTRA .int8_integer = 1,
#endif
#define KIO_TYPE attn_kio_i8
#define KIO_NAME LEVEL_CAT(attn_kio, LEVEL, i8)
#define IO_DTYPE "int8"
#include "../kernels/tiles_io.inc.c"
