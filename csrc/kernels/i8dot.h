/*
 * The int8 KV cache's decode in integers: the numerics that every level
 * with its own int8 rows kernels shares (kern_avx2.c: vpmaddwd;
 * kern_avx512vnni.c: vpdpwssd). docs/numerics.md (10).
 *
 * QK: each query row q is rounded once to int16, q ~ qs * round(q / qs),
 * qs = max_d |q_d| / qmax, and multiplied with the int8 keys exactly in
 * int32; the score is (float)sum * (qs * kscale_j).
 * P V: each row's weights for a sub-block of I8DOT_PV_SUB keys (a level's
 * key block is one or more), times the value rows' scales, are rounded to
 * int16 against the sub-block's largest (scale max / 32767); the products
 * with the int8 values are exact in int32 and are converted once per
 * sub-block.
 *
 * Both kernels compute the same integers, so a level's choice of register
 * block or instruction cannot change a result bit (for the same key block:
 * it sets the online softmax's blocks, and so the weights).
 */
#ifndef ATTN_I8DOT_H
#define ATTN_I8DOT_H

#include <math.h>
#include <stdint.h>

/* the longest query row taken in int16 (4 staged rows: 16 KiB); past it
 * the level's float32 kernel runs */
#define I8DOT_MAX_D 2048
/* keys per int32 sum of P V: 256 * 32767 * 128 < 2^31 */
#define I8DOT_PV_SUB 256

/* The largest int16 query magnitude whose D products with int8 keys
 * (|k| <= 128) cannot overflow an int32 sum. */
static inline int i8dot_qmax(int64_t D)
{
    int64_t lim = (int64_t)2147483647 / (128 * (D > 0 ? D : 1));
    return lim < 32767 ? (int)lim : 32767;
}

/* For rounding values of magnitude <= m (> 0) to int16 within +-qmax: the
 * factor qmax / (m pre), where pre is 2^64 for a tiny m (< 2^-60) and 1
 * otherwise; the values are multiplied by pre first (exact), so that the
 * factor stays finite. */
static inline float i8dot_factor(float m, int qmax, float *pre)
{
    *pre = m < 0x1p-60f ? 0x1p64f : 1.0f;
    return (float)qmax / (m * *pre);
}

/*
 * A query row's rounding, from its max |q| (m) and whether it holds a NaN
 * or an infinity (bad). Returns the row's dequantization scale
 * max |q| / qmax: NaN for a bad row (its scores are NaN, as in float32), 0
 * for an all-zero one. *factor and *pre: what the values are multiplied by
 * before rounding (x pre, then x factor); *factor is 0 exactly when the
 * row rounds to zeros (bad or all-zero).
 */
static inline float i8dot_query_rounding(float m, int bad, int qmax, float *factor, float *pre)
{
    *factor = 0.0f;
    *pre = 1.0f;
    if (bad || m == 0) return bad ? NAN : 0.0f;
    *factor = i8dot_factor(m, qmax, pre);
    return m * *pre / (float)qmax / *pre;
}

/* A row of P V weights' rounding to int16 (within +-32767), likewise: the
 * scale max / 32767 in units of 1 / pre, i.e. max x pre / 32767 (NaN for a
 * bad row), and *factor 0 for a bad or all-zero row. The caller multiplies
 * the converted int32 sums by it, then by 1 / pre where pre is not 1: for a
 * tiny max (values below about 1e-31) max / 32767 itself would be
 * subnormal, with too few bits (or 0), and the output off by percents. */
static inline float i8dot_weight_rounding(float m, int bad, float *factor, float *pre)
{
    *pre = 1.0f;
    *factor = bad || m == 0 ? 0.0f : i8dot_factor(m, 32767, pre);
    return bad ? NAN : m * *pre / 32767.0f;
}

#endif
