/*
 * attncore C API: channel and spatial attention for images (plain C99).
 *
 * One descriptor for the four image operations -- SE / CBAM channel
 * attention, CBAM spatial attention, CBAM (both) and reverse attention --
 * and one entry point per dtype: attn_vision_<f32|f64>(). Status codes are
 * attn.h's; C never aborts and never allocates memory that Python sees.
 *
 * The image x is described in logical (N, C, H, W) order whatever its
 * memory order: the caller passes the element strides of the N, C, H and W
 * axes (any sign; a channels-last array has x_sc == 1). The driver picks its
 * loop nest from these strides (see csrc/driver/vision.c), so a channels-last
 * array is read as it is. out has x's shape and any strides.
 *
 * What is computed, for image n, channel c, pixel p = (h, w):
 *
 *   channel scale (pool != 0):
 *     a_c = mean_p x[n,c,p]            (if pool & ATTN_POOL_AVG)
 *     m_c = max_p x[n,c,p]             (if pool & ATTN_POOL_MAX; NaN if any x is NaN)
 *     mlp(v) = w2 relu(w1 v + b1) + b2,   w1 (Cr, C), w2 (C, Cr)
 *     s_c = sigmoid(mlp(a) + mlp(m))   (the terms of the enabled poolings)
 *     x1[n,c,p] = x[n,c,p] * s_c       (rounded to the dtype)      else x1 = x
 *   pixel scale:
 *     ATTN_SPATIAL_CONV:   maps M0[p] = mean_c x1[n,c,p], M1[p] = max_c x1[n,c,p];
 *                          t_p = sigmoid(conv_b + sum_{k,i,j} conv_w[k,i,j] M_k[h+i-KH/2, w+j-KW/2])
 *                          (zero padding: taps outside the image are left out)
 *     ATTN_SPATIAL_LOGITS: t_p = sigmoid(-logits[n,p])  (= 1 - sigmoid(logits))
 *     out[n,c,p] = x1[n,c,p] * t_p     (rounded to the dtype)      else out = x1
 *
 * Pooled values, the MLP, the maps and the convolution are computed in
 * double for both dtypes; sigmoid is exact at +-inf and propagates NaN.
 * Results are bitwise independent of num_threads.
 */
#ifndef ATTNCORE_VISION_H
#define ATTNCORE_VISION_H

#include <stddef.h>
#include <stdint.h>

#include "attncore/attn.h"

#ifdef __cplusplus
extern "C" {
#endif

/* attn_vision_desc.pool: bit flags (AVG | MAX = CBAM's channel module). */
enum { ATTN_POOL_NONE = 0, ATTN_POOL_AVG = 1, ATTN_POOL_MAX = 2 };

/* attn_vision_desc.spatial */
enum {
    ATTN_SPATIAL_NONE = 0,
    ATTN_SPATIAL_CONV = 1,     /* CBAM's spatial module */
    ATTN_SPATIAL_LOGITS = 2    /* reverse attention: x * (1 - sigmoid(logits)) */
};

typedef struct {
    int64_t N, C, H, W;
    const void *x;  int64_t x_sn, x_sc, x_sh, x_sw;    /* element strides */
    void *out;      int64_t o_sn, o_sc, o_sh, o_sw;    /* must not overlap x or logits */

    /* channel attention: the shared MLP, weights of the dtype, C-contiguous */
    int pool;               /* ATTN_POOL_* bits; 0: no channel scale */
    int64_t Cr;             /* hidden size (C / r) */
    const void *w1;         /* (Cr, C) */
    const void *b1;         /* (Cr,) or NULL */
    const void *w2;         /* (C, Cr) */
    const void *b2;         /* (C,) or NULL */

    /* pixel scale */
    int spatial;            /* ATTN_SPATIAL_* */
    int64_t KH, KW;         /* odd kernel sizes (CONV) */
    const void *conv_w;     /* (2, KH, KW) of the dtype, C-contiguous: [0] mean map, [1] max map */
    double conv_b;          /* the convolution's bias */
    const void *logits;     /* (LOGITS) of the dtype, logits[n*l_sn + h*l_sh + w*l_sw]; */
    int64_t l_sn, l_sh, l_sw;   /* strides 0 where logits broadcast */

    /* Ctrl-C: as in attn_sdpa_desc */
    int cancellable;
    uint64_t cancel_epoch;
} attn_vision_desc;

attn_status attn_vision_f32(const attn_vision_desc *desc, int num_threads);
attn_status attn_vision_f64(const attn_vision_desc *desc, int num_threads);

/* How a call would run (tests assert that they reach the path they name). */
enum { ATTN_VISION_PLANAR = 0, ATTN_VISION_CHANNELS_LAST = 1 };   /* loop nest */
enum { ATTN_VISION_FUSED = 0, ATTN_VISION_PHASED = 1 };           /* schedule */
typedef struct {
    int nest;                 /* ATTN_VISION_PLANAR / _CHANNELS_LAST */
    int schedule;             /* ATTN_VISION_FUSED: one image per unit; _PHASED: pool, MLP, bands */
    int64_t pool_chunk;       /* pixels per pooling chunk (problem size only) */
    int64_t pool_chunks;      /* pooling chunks per image */
    int64_t channel_blocks;   /* channel blocks per pooling chunk (phased) */
    int64_t band_rows;        /* rows per band of the pixel pass */
    int64_t bands;            /* bands per image */
    int threads;              /* threads the region would use */
} attn_vision_plan_info;

attn_status attn_vision_plan_f32(const attn_vision_desc *desc, int num_threads,
                                 attn_vision_plan_info *info);
attn_status attn_vision_plan_f64(const attn_vision_desc *desc, int num_threads,
                                 attn_vision_plan_info *info);

#ifdef __cplusplus
}
#endif
#endif /* ATTNCORE_VISION_H */
