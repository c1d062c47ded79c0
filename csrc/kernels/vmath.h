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

#endif /* ATTNCORE_VMATH_H */
