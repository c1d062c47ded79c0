/*
 * Vector math shared by every ISA: the exp2 used by the online softmax.
 *
 * exp2(x) = 2^n * p(f),  n = round(x), f = x - n in [-1/2, 1/2],
 * p = degree-6 polynomial fitted (weighted least squares on 2000 Chebyshev
 * nodes, relative error) to 2^f on [-1/2, 1/2]; coefficients rounded to float.
 *
 * Error bound (float32, checked by tests/test_vmath.py on every ISA over a
 * dense grid of [-126, 128]): relative error <= 2 ulp (measured: under 1 ulp)
 * for -126 <= x <= 128.  Special values are exact:
 *   x <  -126 -> 0       (flushed: the true value is below 2^-126, which is
 *                          invisible next to the row maximum's weight of 1)
 *   x == -inf -> 0       (masked scores get weight exactly 0)
 *   x >= 128  -> +inf,   NaN -> NaN.
 * No -ffast-math anywhere: it would break the -inf and NaN rules above.
 */
#ifndef ATTNCORE_VMATH_H
#define ATTNCORE_VMATH_H

#include <math.h>
#include <stdint.h>
#include <string.h>

#define ATTN_EXP2_C0 1.0f
#define ATTN_EXP2_C1 0.6931471824645996f
#define ATTN_EXP2_C2 0.24022646248340607f
#define ATTN_EXP2_C3 0.05550329014658928f
#define ATTN_EXP2_C4 0.009618519805371761f
#define ATTN_EXP2_C5 0.0013399859890341759f
#define ATTN_EXP2_C6 0.00015337577497120947f

/*
 * tanh for the additive score: tanh(x) = 1 - 2 r with r = 1 / (1 + 2^(2 log2e x)).
 * 2^y uses the exp2 range reduction above with a degree-5 polynomial (fitted
 * like the degree-6 one, constant term fixed at 1) on y clamped to [-64, 64];
 * r is AVX-512's rcp14 refined by one Newton step (exact for the powers of
 * two that give tanh's exact values), an exact division elsewhere.
 * Error bound (float32, tests/test_vmath.py, every ISA): absolute error
 * <= 4e-7 over the whole real line (tanh's values are in [-1, 1], and the
 * score sums w_h tanh, so an absolute bound is the useful one; near 0 the
 * relative error is larger). Exact: tanh(+-inf) = tanh(|x| >= 23) = +-1,
 * tanh(0) = 0, NaN -> NaN.
 */
#define ATTN_EXP2_D0 1.0f   /* exact, so that tanh(0) = 0 exactly */
#define ATTN_EXP2_D1 0.6931468844413757f
#define ATTN_EXP2_D2 0.24022237956523895f
#define ATTN_EXP2_D3 0.05550893023610115f
#define ATTN_EXP2_D4 0.009671698324382305f
#define ATTN_EXP2_D5 0.0013218672247603536f

/*
 * tanh for soft-capping (cap tanh(s / cap), a score's own value, so a
 * relative bound is the useful one; the tanh above cancels near 0):
 * x P(y) / Q(y), y = x^2, P and Q of degree 4 with P(0) = Q(0) = 1, fitted
 * (iterated weighted least squares on Chebyshev nodes of [0, 9], relative
 * error of the quotient) to tanh(x) / x, on x clamped to [-9, 9] (tanh(9)
 * is 1 to 3e-8). No cancellation anywhere, and no exp2: 13 operations.
 * Error bound (float32): relative error <= 6 ulp on the whole real line
 * (measured 4.8, near |x| = 6; tests/test_variants.py checks the capped
 * scores to 12 ulp with the lse's own roundings); tanh(0) = 0, tiny x -> x,
 * NaN -> NaN; for |x| >= 9 (and +-inf) it is +-(1 - 2^-24), one ulp below
 * 1. The portable levels use the C library's tanhf / tanh.
 */
#define ATTN_TANH_CLAMP 9.0f
#define ATTN_TANH_P1 1.338100731e-01f
#define ATTN_TANH_P2 3.495567013e-03f
#define ATTN_TANH_P3 2.060876068e-05f
#define ATTN_TANH_P4 1.335426703e-08f
#define ATTN_TANH_Q1 4.671432376e-01f
#define ATTN_TANH_Q2 2.587690018e-02f
#define ATTN_TANH_Q3 3.285601560e-04f
#define ATTN_TANH_Q4 7.776386042e-07f

/* The same polynomial in f' = f + 1/2 in [0, 1): q(f') = 2^(f' - 1/2), for
 * range reductions that produce f - floor(f) (AVX-512's vreduceps). */
#define ATTN_EXP2H_E0 0.7071067094802856f
#define ATTN_EXP2H_E1 0.4901334345340729f
#define ATTN_EXP2H_E2 0.16981419920921326f
#define ATTN_EXP2H_E3 0.03947020322084427f
#define ATTN_EXP2H_E4 0.0063670300878584385f
#define ATTN_EXP2H_E5 0.0013218672247603536f

/* 2^e for an integer e in [-126, 127], built from its bit pattern. */
static inline float attn_pow2i_f32(int32_t e)
{
    uint32_t bits = (uint32_t)(e + 127) << 23;
    float r;
    memcpy(&r, &bits, sizeof r);
    return r;
}

/* Scalar exp2 with exactly the vector kernels' algorithm and rules. */
static inline float attn_exp2_f32(float x)
{
    if (x != x) return x;               /* NaN */
    if (x < -126.0f) return 0.0f;       /* includes -inf */
    if (x > 128.0f) x = 128.0f;         /* -> +inf below */
    /* round to nearest without libm: adding 1.5 * 2^23 drops the fraction */
    float n = (x + 12582912.0f) - 12582912.0f;
    float f = x - n;
    float p = ATTN_EXP2_C6;
    p = p * f + ATTN_EXP2_C5;
    p = p * f + ATTN_EXP2_C4;
    p = p * f + ATTN_EXP2_C3;
    p = p * f + ATTN_EXP2_C2;
    p = p * f + ATTN_EXP2_C1;
    p = p * f + ATTN_EXP2_C0;
    int32_t ni = (int32_t)n;            /* in [-126, 128] */
    int32_t half = ni / 2;              /* split so each factor is normal */
    return p * attn_pow2i_f32(half) * attn_pow2i_f32(ni - half);
}

/* Scalar 1 / (1 + 2^x), the portable float32 core of tanh. */
static inline float attn_inv1p_exp2_f32(float x)
{
    if (x != x) return x;
    if (x > 64.0f) x = 64.0f;
    if (x < -64.0f) x = -64.0f;
    float n = (x + 12582912.0f) - 12582912.0f;
    float f = x - n;
    float p = ATTN_EXP2_D5;
    p = p * f + ATTN_EXP2_D4;
    p = p * f + ATTN_EXP2_D3;
    p = p * f + ATTN_EXP2_D2;
    p = p * f + ATTN_EXP2_D1;
    p = p * f + ATTN_EXP2_D0;
    int32_t ni = (int32_t)n;   /* in [-64, 64]: 2^ni is a normal float */
    return 1.0f / (1.0f + p * attn_pow2i_f32(ni));
}

/*
 * 16-bit formats, scalar and exact (the vector loads in csrc/arch/ do the
 * same with shifts and F16C / vcvtph2ps). bfloat16 is the top half of a
 * float32; float16 has 5 exponent and 10 mantissa bits. Narrowing rounds to
 * nearest-even, overflows to +-inf, keeps NaN a (quiet) NaN, and produces
 * float16 subnormals below 2^-14.
 */
static inline float attn_bf16_to_f32(uint16_t h)
{
    uint32_t bits = (uint32_t)h << 16;
    float f;
    memcpy(&f, &bits, sizeof f);
    return f;
}

static inline uint16_t attn_f32_to_bf16(float f)
{
    uint32_t x;
    memcpy(&x, &f, sizeof x);
    if ((x & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((x >> 16) | 0x40u);   /* quiet NaN */
    x += 0x7fffu + ((x >> 16) & 1u);                                               /* to nearest even */
    return (uint16_t)(x >> 16);
}

static inline float attn_f16_to_f32(uint16_t h)
{
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16, exp = (h >> 10) & 0x1fu, man = h & 0x3ffu;
    uint32_t bits;
    if (exp == 0) {                       /* zero or subnormal: man * 2^-24, exact */
        float f = (float)man * 5.9604644775390625e-8f;
        return sign ? -f : f;
    }
    if (exp == 31)
        bits = sign | 0x7f800000u | (man << 13);             /* inf, NaN */
    else
        bits = sign | ((exp + 112u) << 23) | (man << 13);    /* rebias 15 -> 127 */
    float f;
    memcpy(&f, &bits, sizeof f);
    return f;
}

static inline uint16_t attn_f32_to_f16(float f)
{
    uint32_t x;
    memcpy(&x, &f, sizeof x);
    uint16_t sign = (uint16_t)((x >> 16) & 0x8000u);
    uint32_t ax = x & 0x7fffffffu;
    if (ax > 0x7f800000u) return (uint16_t)(sign | 0x7e00u | ((ax >> 13) & 0x3ffu));   /* NaN */
    if (ax >= 0x477ff000u) return (uint16_t)(sign | 0x7c00u);    /* >= 65520 rounds to inf */
    if (ax < 0x38800000u) {                                       /* below 2^-14: subnormal */
        float v;
        memcpy(&v, &ax, sizeof v);
        v *= 16777216.0f;                                          /* units of 2^-24, < 1024 */
        v = (v + 12582912.0f) - 12582912.0f;                       /* to nearest even */
        return (uint16_t)(sign | (uint16_t)v);                     /* 1024 = the smallest normal */
    }
    uint32_t r = ax - 0x38000000u;                                 /* rebias 127 -> 15 */
    r += 0xfffu + ((r >> 13) & 1u);                                /* to nearest even */
    return (uint16_t)(sign | (uint16_t)(r >> 13));
}

#endif /* ATTNCORE_VMATH_H */
