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

#define T double
#define TAG f64
#define KTAB attn_ktab_f64
#define PREP attn_prep_f64
#define KTAB_GET attn_ktab_get_f64
#include "sdpa.inc.c"
#undef T
#undef TAG
#undef KTAB
#undef PREP
#undef KTAB_GET

#define T float
#define TAG f32
#define KTAB attn_ktab_f32
#define PREP attn_prep_f32
#define KTAB_GET attn_ktab_get_f32
#include "sdpa.inc.c"
#undef T
#undef TAG
#undef KTAB
#undef PREP
#undef KTAB_GET
