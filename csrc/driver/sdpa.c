/*
 * Scaled-dot-product attention entry points: attn_sdpa_f32 / attn_sdpa_f64
 * and their plan introspection attn_sdpa_plan_*. The algorithm lives in
 * sdpa.inc.c (instantiated once per dtype below); this file holds the
 * problem-level policies (key splitting) and the descriptor check. Block
 * sizes belong to each kernel level's table (csrc/arch/kern_*.c).
 */
#include <math.h>
#include <stdint.h>
#include <string.h>
#include "../kernels/ktab.h"
#include "../kernels/vmath.h"
#include "dropout.h"
#include "workspace.h"

/* Key splitting (decode): when fewer than ATTN_SPLIT_MIN_UNITS units exist,
 * split the keys into chunks of at least ATTN_SPLIT_MIN_KEYS so that about
 * ATTN_SPLIT_TARGET_UNITS units exist. ATTN_MAX_CHUNKS bounds the merge's
 * per-row weights (the split never makes more than TARGET chunks). */
#define ATTN_SPLIT_MIN_UNITS 16
#define ATTN_SPLIT_TARGET_UNITS 32
#define ATTN_SPLIT_MIN_KEYS 512
#define ATTN_MAX_CHUNKS ATTN_SPLIT_TARGET_UNITS
#define ATTN_MAX_HEAD_DIM ((int64_t)1 << 40)
/* 16-bit and int8 K/V on the panel path: a thread keeps a whole key chunk
 * widened to float32 (instead of widening each block for every panel) when
 * a kv head has at least this many panels and the chunk's K and V fit in
 * this many bytes (per thread). Measured: widening per panel cost S3 in
 * bfloat16 about 10% against float32. */
#define ATTN_WIDE_CHUNK_MIN_PANELS 4
#define ATTN_WIDE_CHUNK_MAX_BYTES (4.0 * 1024 * 1024)
/* Panel groups (sdpa.inc.c, make_plan): a work item runs up to
 * ATTN_PANEL_GROUP panels of one kv head block by block when the head's K
 * and V, as the kernels read them, exceed ATTN_PANEL_GROUP_MIN_BYTES (half
 * of a 1 MiB L2), as many as keep their states within
 * ATTN_PANEL_GROUP_STATE_BYTES (with a key block of K and V, within a
 * 512 KiB L2). Measured in benchmarks/NOTES.md. */
#define ATTN_PANEL_GROUP 8
#define ATTN_PANEL_GROUP_MIN_BYTES (512.0 * 1024)
#define ATTN_PANEL_GROUP_STATE_BYTES (384.0 * 1024)

uint32_t attn_dropout_bits(uint64_t seed, uint64_t counter)
{
    return attn_dropout_draw(attn_mix64(seed), counter);
}

static attn_status attn_sdpa_check(const attn_sdpa_desc *d)
{
    if (!d) return ATTN_EINVAL;
    if (d->B < 0 || d->Hq < 0 || d->Hkv < 0 || d->Lq < 0 || d->Lk < 0 || d->D < 0 || d->Dv < 0)
        return ATTN_EINVAL;
    if (d->B == 0 || d->Hq == 0 || d->Lq == 0) return ATTN_OK;
    if (d->Hkv < 1 || d->Hq % d->Hkv != 0) return ATTN_EINVAL;
    if (!d->q || !d->out || !d->q_boff || !d->o_boff) return ATTN_EINVAL;
    if (d->Lk > 0 && (!d->k || !d->v || !d->k_boff || !d->v_boff)) return ATTN_EINVAL;
    if (d->mask_kind < ATTN_MASK_NONE || d->mask_kind > ATTN_MASK_ADD) return ATTN_EINVAL;
    if (d->mask_kind != ATTN_MASK_NONE && (!d->mask || !d->m_boff)) return ATTN_EINVAL;
    if (d->causal != 0 && d->causal != 1) return ATTN_EINVAL;
    if (d->valid_lens && !d->vl_boff) return ATTN_EINVAL;
    if (d->score_kind != ATTN_SCORE_DOT && d->score_kind != ATTN_SCORE_ADDITIVE) return ATTN_EINVAL;
    if (d->score_kind == ATTN_SCORE_ADDITIVE && d->D > 0 && !d->w_score) return ATTN_EINVAL;
    if (d->window_left < -1 || d->window_right < -1 || !(d->softcap >= 0)) return ATTN_EINVAL;
    if (d->alibi && !d->al_boff) return ATTN_EINVAL;
    if (d->weighting < ATTN_WEIGHTS_SOFTMAX || d->weighting > ATTN_WEIGHTS_HARD) return ATTN_EINVAL;
    if (d->weighting == ATTN_WEIGHTS_HARD &&
        (d->hard_k < 1 || d->hard_k > ATTN_MAX_HARD_K || d->lse || d->weights || d->sinks ||
         d->drop_threshold || d->score_kind != ATTN_SCORE_DOT))
        return ATTN_EINVAL;
    if (d->weighting == ATTN_WEIGHTS_SIGMOID && (d->lse || d->sinks || d->score_kind != ATTN_SCORE_DOT))
        return ATTN_EINVAL;   /* no lse, sinks or additive scores for sigmoid weights */
    if ((d->seq_lq == NULL) != (d->seq_lk == NULL)) return ATTN_EINVAL;
    if (d->seq_lq)
        for (int64_t b = 0; b < d->B; b++)
            if (d->seq_lq[b] < 0 || d->seq_lq[b] > d->Lq || d->seq_lk[b] < 0 || d->seq_lk[b] > d->Lk)
                return ATTN_EINVAL;
    /* every size product the driver forms must fit in int64 */
    int64_t rows = attn_mul_checked(attn_mul_checked(d->B, d->Hq), d->Lq);
    if (rows < 0 || attn_mul_checked(rows, d->Lk) < 0) return ATTN_EINVAL;
    int64_t kv_rows = attn_mul_checked(attn_mul_checked(d->B, d->Hkv), d->Lk);
    if (kv_rows < 0 || attn_mul_checked(kv_rows, attn_max64(d->D, 1)) < 0) return ATTN_EINVAL;
    /* head sizes of real arrays are far below this; it keeps every scratch
     * size (a head size times the lanes and blocks of a unit) inside int64 */
    if (d->D > ATTN_MAX_HEAD_DIM || d->Dv > ATTN_MAX_HEAD_DIM) return ATTN_EINVAL;
    return ATTN_OK;
}

/* One driver per (compute type T, query/output type QT, key/value storage
 * type KVT): float64; float32; bfloat16 and float16 throughout (computed in
 * float32); and float32 queries over a bfloat16, float16 or int8 (with
 * scales) KV cache. Each instance defines its own QT, KVT, Q_SAME, KV_SAME,
 * KV_SCALED, QT_FROM_T, TAG, KIO_Q(_GET) and KIO_KV(_GET) (and KV_PAIRS when
 * it has them), which sdpa.inc.c undefines at its end; T, KTAB, PREP,
 * KTAB_GET and KIO_T(_GET) hold for every instance of a compute type. */
#define T double
#define QT double
#define KVT double
#define Q_SAME 1
#define KV_SAME 1
#define KV_SCALED 0
#define QT_FROM_T(x) (x)
#define TAG f64
#define KTAB attn_ktab_f64
#define PREP attn_prep_f64
#define KTAB_GET attn_ktab_get_f64
#define KIO_Q attn_kio_f64
#define KIO_Q_GET attn_kio_get_f64
#define KIO_KV attn_kio_f64
#define KIO_KV_GET attn_kio_get_f64
#define KIO_T attn_kio_f64
#define KIO_T_GET attn_kio_get_f64
#include "sdpa.inc.c"
#undef T
#undef KTAB
#undef PREP
#undef KTAB_GET
#undef KIO_T
#undef KIO_T_GET

/* everything below computes in float32 */
#define T float
#define KTAB attn_ktab_f32
#define PREP attn_prep_f32
#define KTAB_GET attn_ktab_get_f32
#define KIO_T attn_kio_f32
#define KIO_T_GET attn_kio_get_f32

/* float32 */
#define QT float
#define KVT float
#define Q_SAME 1
#define KV_SAME 1
#define KV_SCALED 0
#define QT_FROM_T(x) (x)
#define TAG f32
#define KIO_Q attn_kio_f32
#define KIO_Q_GET attn_kio_get_f32
#define KIO_KV attn_kio_f32
#define KIO_KV_GET attn_kio_get_f32
#include "sdpa.inc.c"

/* bfloat16 throughout */
#define QT uint16_t
#define KVT uint16_t
#define Q_SAME 0
#define KV_SAME 0
#define KV_SCALED 0
#define QT_FROM_T(x) attn_f32_to_bf16(x)
#define KV_PAIRS 1   /* the panel path may multiply bfloat16 pairs natively */
#define TAG bf16
#define KIO_Q attn_kio_bf16
#define KIO_Q_GET attn_kio_get_bf16
#define KIO_KV attn_kio_bf16
#define KIO_KV_GET attn_kio_get_bf16
#include "sdpa.inc.c"

/* float16 throughout */
#define QT uint16_t
#define KVT uint16_t
#define Q_SAME 0
#define KV_SAME 0
#define KV_SCALED 0
#define QT_FROM_T(x) attn_f32_to_f16(x)
#define TAG f16
#define KIO_Q attn_kio_f16
#define KIO_Q_GET attn_kio_get_f16
#define KIO_KV attn_kio_f16
#define KIO_KV_GET attn_kio_get_f16
#include "sdpa.inc.c"

/* float32 queries over a bfloat16, float16 or int8 KV cache */
#define QT float
#define Q_SAME 1
#define QT_FROM_T(x) (x)
#define KIO_Q attn_kio_f32
#define KIO_Q_GET attn_kio_get_f32
#define KVT uint16_t
#define KV_SAME 0
#define KV_SCALED 0
#define TAG f32_kvbf16
#define KIO_KV attn_kio_bf16
#define KIO_KV_GET attn_kio_get_bf16
#include "sdpa.inc.c"

#define QT float
#define Q_SAME 1
#define QT_FROM_T(x) (x)
#define KIO_Q attn_kio_f32
#define KIO_Q_GET attn_kio_get_f32
#define KVT uint16_t
#define KV_SAME 0
#define KV_SCALED 0
#define TAG f32_kvf16
#define KIO_KV attn_kio_f16
#define KIO_KV_GET attn_kio_get_f16
#include "sdpa.inc.c"

#define QT float
#define Q_SAME 1
#define QT_FROM_T(x) (x)
#define KIO_Q attn_kio_f32
#define KIO_Q_GET attn_kio_get_f32
#define KVT int8_t
#define KV_SAME 0
#define KV_SCALED 1
#define TAG f32_kvi8
#define KIO_KV attn_kio_i8
#define KIO_KV_GET attn_kio_get_i8
#include "sdpa.inc.c"
