/*
 * Fused scaled-dot-product attention driver, one instance per dtype
 * (sdpa.c includes this file with T = float and T = double). A driver is a
 * loop nest over a plan; every operation on a tile is a kernel-table entry
 * (csrc/kernels/ktab.h).
 *
 * Loop nest (one OpenMP region per call):
 *
 *   for unit u in (b, kv head, key chunk, row group, row panel)   <- omp for, dynamic
 *       stage the unit's queries                     pack_qt / stage_rows
 *       m = -inf, l = 0, O = 0 (and their compensations)
 *       for key block [j0, j0 + Bk) inside the chunk and the causal limit
 *           S  = Q K^T  (raw dot products)           qk_panel / qk_rows
 *              (additive: sum_h w tanh(.), log2)     additive_panel_*
 *           prep: log2 units, mask, causal/valid     prep_panel / prep_rows
 *                 limits, recorded weights           (only where present)
 *           online softmax on S -> P                 softmax_*
 *           P *= dropout                             dropout_tile (p > 0)
 *           O  = alpha O + P V  (compensated)        pv_*
 *       finalise O / l, lse (or store the chunk's    finish_*
 *       partial O, m, l)
 *   if keys were split into chunks: merge the partials in chunk order  <- omp for
 *
 * Panel groups. When a kv head's K and V outgrow L2, a work item is up to
 * group_panels units (panels) of the head, and the key-block loop runs
 * outside the panels (block b of each unit, then block b + 1), each unit in
 * its own state; every unit still runs exactly the operations above.
 *
 * Units. Query rows are processed in panels of W rows: W = NR lanes on the
 * panel path, ROWS_MAX rows on the rows path (decode: taken when all G * Lq
 * rows of a kv head fit one unit). The G = Hq / Hkv query heads that share a
 * kv head are one row group when Lq is small (their rows are stacked so that
 * short queries still fill a panel and K/V are streamed once for all of
 * them), or G groups of Lq rows each when Lq >= NR.
 *
 * Determinism. Every output element is computed by exactly one unit with a
 * fixed sequence of operations; the key chunking depends only on the problem
 * size, and chunks are merged in a fixed order. Results are therefore bitwise
 * identical for any thread count.
 *
 * Interrupts. A cancellable call polls the SIGINT count before each key
 * block and stops with ATTN_EINTR (outputs incomplete) once it changed.
 *
 * Kernel preconditions (see csrc/kernels/tiles.inc.c) are established here:
 * scratch tiles are padded to the kernels' register-tile multiples, and
 * every pointer handed to a kernel points inside its array.
 */

#define SDPA_CAT_(a, b) a##_##b
#define SDPA_CAT(a, b) SDPA_CAT_(a, b)
#define SDPA_FN(name) SDPA_CAT(name, TAG)

typedef struct {
    const QT *q;       /* query row */
    QT *out;           /* output row */
    T *w;              /* weights row, or NULL */
    T *lse;            /* lse element, or NULL */
    const char *mrow;  /* mask row base (bytes), or NULL */
    int64_t pos;       /* last visible key (causal, window, valid_lens, Lk_b), else INT64_MAX */
    int64_t first;     /* first visible key (window), else 0 */
    int64_t qpos;      /* the query's key position p_i (ALiBi) */
    T alibi;           /* -log2e * its head's ALiBi slope, or 0 */
    T sink;            /* its head's sink logit in log2 units, or -inf */
    uint64_t counter;  /* dropout counter of (row, key 0) */
    int64_t flat;      /* the row's index in (B, Hq, Lq) */
} SDPA_FN(row_ref);

#ifndef KV_PAIRS
#define KV_PAIRS 0
#endif

typedef struct {
    const attn_sdpa_desc *d;
    const KTAB *kt;
    const KIO_Q *kio_q;   /* reads the queries / writes the output (QT) */
    const KIO_KV *kio_kv; /* reads the keys and values (KVT, maybe with scales) */
    const KIO_T *kio_t;   /* the output entries for T: split-K partials */
    int rows_path;     /* 1: decode-shaped rows path; 0: panel path */
    int pairs;         /* panel path on the level's native 16-bit dot products
                        * (kio_kv->qk_panel2 / pv_panel2), K and V read as they are */
    int limited;       /* rows have a key range (causal, window, valid_lens, varlen) */
    int windowed;      /* rows have a first visible key (a window's left side) */
    int prep_always;   /* every block needs a prep pass (masks, weights, ALiBi, softcap) */
    int sigmoid;       /* sigmoid attention: weights sigmoid(score + b), not a softmax */
    int hard;          /* hard attention: each row's top-k keys, gathered */
    T sigmoid_shift;   /* its b in log2 units */
    int prep_log2;     /* the prep pass takes scores to log2 units (additive
                        * masks and recorded weights need them; -inf fills
                        * do not, and leaving the scaling to the softmax's
                        * FMA saves a rounding) */
    int64_t G;         /* query heads per kv head */
    int64_t W;         /* rows per unit */
    int64_t rows_per_group, ngroups, npanels;
    int64_t nchunks, chunk_len, bk;
    int64_t nbase;     /* units before key splitting */
    int half;              /* panel path: the half-panel kernels run the units of at
                            * most W / 2 rows (the level has them; dot scores on T) */
    int64_t group_panels;  /* panel path: panels of one kv head a work item runs
                            * block by block together (panel_units) */
    int64_t nitems;    /* work items: units, or groups of group_panels units */
    int64_t item_run;  /* items the threads take at a time (consecutive: one kv head's) */
    T qsign;           /* dot: sign of the scale times qmag (exact); additive: 2 log2(e) */
    T qmag;            /* dot: a power of two (4, 8, ...) where |scale| log2(e) passes T's range, else 1 */
    T csoft;           /* dot: |scale| log2(e), taken by the softmax; additive: 1 */
    int additive_form; /* ATTN_ADDITIVE_* */
    T *wneg;           /* additive: -2 log2(e) w_score (D values) */
    T score_c;         /* additive: log2(e) sum_h w_score[h] */
    T *fk;             /* additive, product form: e^(2 Kp), (B, Hkv, Lk, D) */
    T *partial;        /* nbase * nchunks * W * (Dv + 2) when nchunks > 1 */
    /* scratch layout (elements, each part 64-byte aligned): group_panels
     * blocks of one unit's state (Q at 0, then O, Oc, m, l, lc, alpha, L at
     * these offsets inside the block, state_elems apart), then the parts
     * every unit of the thread shares (S, colmax, ...) */
    int64_t ld_q, ld_s, ld_o;
    int64_t off_o, off_oc, off_m, off_l, off_lc, off_a, off_L, state_elems;
    int64_t off_s, off_c;
    int64_t off_kw, off_vw;   /* panel path: K widened to T (KVT != T) and V widened
                               * or in column tiles (value_tiles) */
    int wide_chunk;    /* ... kept for a whole key chunk per thread (wide_cache) */
    int value_tiles;   /* V in column tiles of mr_pv (widen_tiles), tiles ld_vt apart */
    int pair_vt;       /* (pairs) V transposed for the chunk (stage_vt2), rows ld_vt apart */
    int64_t ld_vt;
    int64_t off_wf;    /* the chunk's per-block "staged" flags (wide_chunk) */
    int64_t off_hv, off_hi, off_hn;   /* hard attention: top-k values, indices, NaN flags */
    int64_t scratch_elems;
} SDPA_FN(plan);

/* The rows and key range of one work unit. */
typedef struct {
    SDPA_FN(row_ref) rows[ATTN_MAX_LANES];
    int nr;
    int64_t ub, chunk;      /* base unit, key chunk */
    int64_t kbeg, kend;     /* keys this unit visits */
    int64_t minpos;         /* smallest last-visible key of its rows */
    int64_t maxfirst;       /* largest first-visible key of its rows */
    const KVT *kh, *vh;     /* K/V of its kv head, key 0 */
    const T *ksc, *vsc;     /* their scales (quantized K/V), or NULL */
    int64_t kvrow;          /* its kv head's key 0 in (B, Hkv, Lk) order */
} SDPA_FN(unit);

/* What a thread's staged K/V hold. wide_chunk: which kv head's key chunk
 * (consecutive units are panels of the same head, so a thread stages each
 * of its blocks once instead of once per panel). Otherwise: which block, so
 * that the panels of a group (panel_units) stage each block once. */
typedef struct {
    int64_t kvrow, chunk;   /* -1: nothing staged yet */
    int64_t j0, nk;         /* (block staging) the block's first key and length */
} SDPA_FN(wide_cache);

#define PLAN SDPA_FN(plan)
#define ROWREF SDPA_FN(row_ref)
#define UNIT SDPA_FN(unit)

static int64_t SDPA_FN(align_elems)(int64_t n) { return attn_round_up(n, ATTN_ALIGN / (int64_t)sizeof(T)); }

/* The rows of base unit `ub` (a unit before key splitting). Returns the
 * count (0 for a panel past the end of a short varlen sequence). */
static int SDPA_FN(build_rows)(const PLAN *P, int64_t ub, ROWREF *rows)
{
    const attn_sdpa_desc *d = P->d;
    int64_t panel = ub % P->npanels;
    int64_t t = ub / P->npanels;
    int64_t group = t % P->ngroups;
    t /= P->ngroups;
    int64_t hkv = t % d->Hkv;
    int64_t b = t / d->Hkv;
    int64_t first = panel * P->W;
    int64_t lq_b = d->seq_lq ? d->seq_lq[b] : d->Lq, lk_b = d->seq_lk ? d->seq_lk[b] : d->Lk;
    int64_t rows_in_group = d->seq_lq ? lq_b : P->rows_per_group;   /* varlen: never stacked */
    int64_t nr = attn_min64(P->W, rows_in_group - first);
    int64_t offset = d->offset_bottom_right ? lk_b - lq_b : d->causal_offset;
    size_t msize = d->mask_kind == ATTN_MASK_BOOL ? 1 : sizeof(T);

    for (int64_t r = 0; r < nr; r++) {
        int64_t row = first + r, g, i;
        /* (stacked heads: one group holds all G heads' rows; a 64-bit
         * division per row is worth avoiding when G == 1) */
        if (P->ngroups == 1 && P->G > 1) { g = row / d->Lq; i = row % d->Lq; }
        else { g = group; i = row; }
        int64_t hq = hkv * P->G + g;
        ROWREF *x = &rows[r];
        x->q = (const QT *)d->q + d->q_boff[b] + hq * d->q_sh + i * d->q_sl;
        x->out = (QT *)d->out + d->o_boff[b] + hq * d->o_sh + i * d->o_sl;
        int64_t flat = (b * d->Hq + hq) * d->Lq + i;
        x->w = d->weights ? (T *)d->weights + flat * d->Lk : NULL;
        x->lse = d->lse ? (T *)d->lse + flat : NULL;
        x->mrow = d->mask_kind != ATTN_MASK_NONE
                      ? (const char *)d->mask +
                            (d->m_boff[b] + hq * d->m_sh + i * d->m_si) * (int64_t)msize
                      : NULL;
        /* the row's visible key range [first, pos] */
        int64_t p = i + offset;
        x->qpos = p;
        x->pos = d->causal ? p : INT64_MAX;
        /* (p is negative for the first rows when Lq > Lk: a right bound past Lk
         * still hides keys from them; past Lk + Lq it hides none) */
        if (d->window_right >= 0 && d->window_right <= d->Lk + d->Lq)
            x->pos = attn_min64(x->pos, p + d->window_right);
        if (d->valid_lens)
            x->pos = attn_min64(x->pos, d->valid_lens[d->vl_boff[b] + hq * d->vl_sh + i * d->vl_si] - 1);
        if (lk_b < d->Lk) x->pos = attn_min64(x->pos, lk_b - 1);
        x->first = d->window_left >= 0 && d->window_left <= d->Lk + d->Lq ? attn_max64(p - d->window_left, 0) : 0;
        x->alibi = d->alibi ? (T)(-ATTN_LOG2E) * ((const T *)d->alibi)[d->al_boff[b] + hq * d->al_sh] : 0;
        x->sink = d->sinks ? (T)ATTN_LOG2E * ((const T *)d->sinks)[hq * d->sk_sh] : (T)-INFINITY;
        x->counter = (uint64_t)flat * (uint64_t)d->Lk;
        x->flat = flat;
    }
    return nr > 0 ? (int)nr : 0;
}

/* Rows, K/V and the key range of unit u. */
static void SDPA_FN(build_unit)(const PLAN *P, int64_t u, UNIT *U)
{
    const attn_sdpa_desc *d = P->d;
    /* units run kv head by kv head, and inside a head chunk by chunk, so
     * that consecutive units (a thread's, under the dynamic schedule) share
     * the head's staged chunk (wide_cache) */
    int64_t reuse = P->ngroups * P->npanels, in_head = u % (P->nchunks * reuse);
    U->chunk = in_head / reuse;
    U->ub = u / (P->nchunks * reuse) * reuse + in_head % reuse;
    U->nr = SDPA_FN(build_rows)(P, U->ub, U->rows);
    int64_t t = U->ub / P->npanels / P->ngroups;   /* = b * Hkv + hkv */
    int64_t hkv = t % d->Hkv, b = t / d->Hkv;
    U->kvrow = t * d->Lk;
    U->kh = d->Lk > 0 ? (const KVT *)d->k + d->k_boff[b] + hkv * d->k_sh : NULL;
    U->vh = d->Lk > 0 ? (const KVT *)d->v + d->v_boff[b] + hkv * d->v_sh : NULL;
    U->ksc = d->k_scale ? (const T *)d->k_scale + d->ks_boff[b] + hkv * d->ks_sh : NULL;
    U->vsc = d->v_scale ? (const T *)d->v_scale + d->vs_boff[b] + hkv * d->vs_sh : NULL;

    /* its chunk, cut after the last key any of its rows can see */
    U->kbeg = U->chunk * P->chunk_len;
    U->kend = attn_min64(d->Lk, U->kbeg + P->chunk_len);
    U->minpos = INT64_MAX;
    U->maxfirst = 0;
    if (P->limited) {
        /* the union of the rows' key ranges: blocks outside it are never visited */
        int64_t maxpos = INT64_MIN, minfirst = INT64_MAX;
        for (int r = 0; r < U->nr; r++) {
            maxpos = attn_max64(maxpos, U->rows[r].pos);
            U->minpos = attn_min64(U->minpos, U->rows[r].pos);
            minfirst = attn_min64(minfirst, U->rows[r].first);
            U->maxfirst = attn_max64(U->maxfirst, U->rows[r].first);
        }
        if (maxpos != INT64_MAX) U->kend = attn_min64(U->kend, maxpos + 1);   /* (no overflow) */
        if (U->nr > 0) U->kbeg = attn_max64(U->kbeg, minfirst);
    }
}

/* Whether block [j0, j0 + nk) needs a prep pass: masks, weights, ALiBi and
 * soft-capping always; key-range limits only in blocks that cross a row's
 * last key or (window) first key. */
static int SDPA_FN(needs_prep)(const PLAN *P, const UNIT *U, int64_t j0, int64_t nk)
{
    return P->prep_always || (P->limited && (j0 + nk - 1 > U->minpos || j0 < U->maxfirst));
}

/* The prep pass's description of block [j0, j0 + nk); the per-row arrays
 * have W entries (lanes past nr are padding). */
typedef struct {
    const void *mrows[ATTN_MAX_LANES];
    int64_t lo[ATTN_MAX_LANES], lim[ATTN_MAX_LANES];
    T alibi_m[ATTN_MAX_LANES], alibi_p[ATTN_MAX_LANES];
    T *wrows[ATTN_MAX_LANES];
} SDPA_FN(prep_rows_buf);

static void SDPA_FN(describe_prep)(const PLAN *P, const UNIT *U, int64_t j0, int64_t nk, PREP *x,
                                   SDPA_FN(prep_rows_buf) *buf)
{
    const attn_sdpa_desc *d = P->d;
    size_t msize = d->mask_kind == ATTN_MASK_BOOL ? 1 : sizeof(T);
    x->nr = U->nr;
    x->nk = nk;
    x->half = 0;
    x->c = P->prep_log2 ? P->csoft : (T)1;
    x->capx = x->capl = 0;
    if (d->softcap > 0) {
        x->capx = (T)(fabs(d->scale) / (double)P->qmag / d->softcap);   /* (Q holds qmag) */
        x->capl = (T)(d->softcap * ATTN_LOG2E);
    }
    x->mask_kind = d->mask_kind;
    x->msj = d->m_sj;
    x->mrows = NULL;
    x->lo = x->lim = NULL;
    x->alibi_m = x->alibi_p = NULL;
    x->wrows = NULL;
    if (d->mask_kind != ATTN_MASK_NONE) {
        for (int r = 0; r < U->nr; r++) buf->mrows[r] = U->rows[r].mrow + j0 * d->m_sj * (int64_t)msize;
        x->mrows = buf->mrows;
    }
    if (P->limited) {
        for (int r = 0; r < U->nr; r++)
            buf->lim[r] = U->rows[r].pos == INT64_MAX ? INT64_MAX : U->rows[r].pos + 1 - j0;
        x->lim = buf->lim;
    }
    if (P->windowed) {
        for (int r = 0; r < U->nr; r++) buf->lo[r] = U->rows[r].first - j0;
        x->lo = buf->lo;
    }
    if (d->alibi) {
        for (int64_t r = 0; r < P->W; r++) {
            buf->alibi_m[r] = r < U->nr ? U->rows[r].alibi : (T)0;
            buf->alibi_p[r] = r < U->nr ? (T)(U->rows[r].qpos - j0) : (T)0;
        }
        x->alibi_m = buf->alibi_m;
        x->alibi_p = buf->alibi_p;
    }
    if (d->weights && !P->sigmoid) {   /* (sigmoid: copied once the weights are final) */
        for (int r = 0; r < U->nr; r++) buf->wrows[r] = U->rows[r].w + j0;
        x->wrows = buf->wrows;
    }
}

/* Sigmoid attention: copy a block's final weights (after dropout) into the
 * weights rows, with the prep entry reduced to its copy step. */
static void SDPA_FN(copy_weights)(const PLAN *P, const UNIT *U, int64_t j0, int64_t nk,
                                  SDPA_FN(prep_rows_buf) *buf, T *tile)
{
    PREP x;
    memset(&x, 0, sizeof x);
    x.nr = U->nr;
    x.nk = nk;
    x.c = 1;
    x.mask_kind = ATTN_MASK_NONE;
    for (int r = 0; r < U->nr; r++) buf->wrows[r] = U->rows[r].w + j0;
    x.wrows = buf->wrows;
    if (P->rows_path)
        P->kt->prep_rows(&x, tile, P->ld_s);
    else
        P->kt->prep_panel(&x, tile);
}

/* The online softmax's starting state: m = -inf, l = 0 -- or, with
 * attention sinks, the sink logit as if it were one more key whose value
 * is zero (m = sink, l = 1), counted once: in the first key chunk. */
static void SDPA_FN(softmax_start)(const PLAN *P, const UNIT *U, T *m, T *l, T *lc, T *alpha)
{
    for (int64_t r = 0; r < P->W; r++) {
        int sink = P->d->sinks && U->chunk == 0 && r < U->nr && U->rows[r].sink != -INFINITY;
        m[r] = sink ? U->rows[r].sink : (T)-INFINITY;
        l[r] = sink ? (T)1 : (T)0;
        lc[r] = 0;
        alpha[r] = 1;
    }
}

static void SDPA_FN(dropout)(const PLAN *P, const UNIT *U, T *p, int64_t rs, int64_t js, int64_t j0,
                             int64_t nk)
{
    const attn_sdpa_desc *d = P->d;
    uint64_t counter[ATTN_MAX_LANES];
    for (int r = 0; r < U->nr; r++) counter[r] = U->rows[r].counter + (uint64_t)j0;
    P->kt->dropout_tile(U->nr, nk, p, rs, js, counter, attn_mix64(d->drop_seed), d->drop_threshold,
                        (T)d->drop_scale);
}

/* Turn the recorded log2 scores of one row into its final weights. */
static void SDPA_FN(finish_weights)(const PLAN *P, const ROWREF *row, T m, T L, int64_t kbeg,
                                    int64_t kend)
{
    const attn_sdpa_desc *d = P->d;
    T *w = row->w;
    for (int64_t j = 0; j < kbeg && j < d->Lk; j++) w[j] = 0;
    for (int64_t j = attn_max64(kend, 0); j < d->Lk; j++) w[j] = 0;
    if (kend <= kbeg) return;
    P->kt->weights_row(kend - kbeg, w + kbeg, m == -INFINITY ? (T)0 : m, L == 0 ? (T)0 : (T)1 / L);
    if (d->drop_threshold) {
        uint64_t counter = row->counter + (uint64_t)kbeg;
        P->kt->dropout_tile(1, kend - kbeg, w + kbeg, 0, 1, &counter, attn_mix64(d->drop_seed),
                            d->drop_threshold, (T)d->drop_scale);
    }
}

/* Hard attention: the unit's top-k state, empty. */
static void SDPA_FN(hard_start)(const PLAN *P, T *scratch)
{
    int64_t n = P->W * P->d->hard_k;
    T *vals = scratch + P->off_hv;
    int64_t *idx = (int64_t *)(void *)(scratch + P->off_hi);
    int *nan = (int *)(void *)(scratch + P->off_hn);
    for (int64_t i = 0; i < n; i++) { vals[i] = -INFINITY; idx[i] = -1; }
    for (int64_t r = 0; r < P->W; r++) nan[r] = 0;
}

/* Hard attention: fold block [j0, j0 + nk) into the rows' top-k. */
static void SDPA_FN(hard_select)(const PLAN *P, const UNIT *U, T *scratch, const T *s, int64_t rs,
                                 int64_t js, int64_t j0, int64_t nk)
{
    const attn_sdpa_desc *d = P->d;
    uint64_t counter[ATTN_MAX_LANES];
    for (int r = 0; r < U->nr; r++) counter[r] = U->rows[r].counter + (uint64_t)j0;
    /* a stream apart from dropout's (the reference mixes the same constant) */
    uint64_t seed = d->hard_sample ? attn_mix64(d->hard_seed ^ 0x6A09E667F3BCC909ull) | 1u : 0;
    P->kt->select_topk(U->nr, nk, s, rs, js, j0, (int)d->hard_k, seed, counter, scratch + P->off_hv,
                       (int64_t *)(void *)(scratch + P->off_hi), (int *)(void *)(scratch + P->off_hn));
}

/* Hard attention: gather the output rows (and the kept indices). */
static void SDPA_FN(hard_finish)(const PLAN *P, const UNIT *U, T *scratch)
{
    const attn_sdpa_desc *d = P->d;
    const int64_t k = d->hard_k;
    const int64_t *idx = (const int64_t *)(const void *)(scratch + P->off_hi);
    T *rows[ATTN_MAX_LANES];
    for (int r = 0; r < U->nr; r++) rows[r] = (T *)U->rows[r].out;
    P->kt->gather_rows(U->nr, d->Dv, (int)k, scratch + P->off_hv, idx,
                       (const int *)(const void *)(scratch + P->off_hn), d->hard_softmax,
                       (const T *)U->vh, d->v_sl, rows);
    /* a row with a NaN score is NaN and keeps no key (indices -1, as in the
     * reference): the keys select_topk ranked around the NaN are not its
     * output's */
    const int *nan = (const int *)(const void *)(scratch + P->off_hn);
    if (d->hard_indices)
        for (int r = 0; r < U->nr; r++)
            for (int64_t t = 0; t < k; t++)
                d->hard_indices[U->rows[r].flat * k + t] = nan[r] ? -1 : idx[r * k + t];
}

/* Natural-log log-sum-exp from the running max (log2 units) and sum. */
static inline T SDPA_FN(lse_of)(T m, T L)
{
    if (L == 0) return -INFINITY;
    return (T)(((double)m + log2((double)L)) * ATTN_LN2);
}

/*
 * After the key loop: a split unit stores its partial (O - Oc, m, L) for the
 * merge; otherwise the rows are normalised into the output, with lse and
 * weights. finish(rows) writes (O - Oc) / L (or without L) to row pointers.
 */
static void SDPA_FN(finish_unit)(const PLAN *P, const UNIT *U, const T *m, const T *l, const T *lc,
                                 T *L, T *o, T *oc)
{
    const attn_sdpa_desc *d = P->d;
    const int nr = U->nr;
    for (int r = 0; r < nr; r++) L[r] = l[r] - lc[r];
    if (P->nchunks > 1) {
        /* the chunk's partial (O - Oc, m, L), in T, for merge_unit */
        T *dst[ATTN_MAX_LANES];
        T *part = P->partial + (U->ub * P->nchunks + U->chunk) * P->W * (d->Dv + 2);
        for (int r = 0; r < nr; r++) {
            dst[r] = part + r * (d->Dv + 2);
            dst[r][d->Dv] = m[r];
            dst[r][d->Dv + 1] = L[r];
        }
        if (P->rows_path)
            P->kio_t->finish_rows(nr, d->Dv, o, oc, P->ld_o, NULL, dst);
        else
            P->kio_t->finish_panel(nr, d->Dv, o, oc, NULL, dst);
        return;
    }
    QT *dst[ATTN_MAX_LANES];
    for (int r = 0; r < nr; r++) dst[r] = U->rows[r].out;
    const T *Lnorm = P->sigmoid ? NULL : L;   /* sigmoid weights are not normalised */
    if (P->rows_path)
        P->kio_q->finish_rows(nr, d->Dv, o, oc, P->ld_o, Lnorm, dst);
    else
        P->kio_q->finish_panel(nr, d->Dv, o, oc, Lnorm, dst);
    for (int r = 0; r < nr; r++) {
        if (U->rows[r].lse) *U->rows[r].lse = SDPA_FN(lse_of)(m[r], L[r]);
        if (!U->rows[r].w) continue;
        if (P->sigmoid) {   /* keys outside the visited range have weight 0 */
            T *w = U->rows[r].w;
            for (int64_t j = 0; j < U->kbeg && j < d->Lk; j++) w[j] = 0;
            for (int64_t j = attn_max64(U->kend, U->kbeg); j < d->Lk; j++) w[j] = 0;
        } else {
            SDPA_FN(finish_weights)(P, &U->rows[r], m[r], L[r], U->kbeg, U->kend);
        }
    }
}

/* wide_chunk: the block at key j0 (nk keys) in the thread's staged chunk:
 * its first key's place there (*at, keys from the chunk's start), and
 * whether it must be staged (1) or an earlier unit of the same head and
 * chunk already staged at least these keys of the block (0). */
static int SDPA_FN(chunk_slot)(const PLAN *P, const UNIT *U, int64_t j0, int64_t nk, T *scratch,
                               SDPA_FN(wide_cache) *wc, int64_t *at)
{
    T *flags = scratch + P->off_wf;
    int64_t c0 = U->chunk * P->chunk_len, blk = (j0 - c0) / P->bk;
    if (wc->kvrow != U->kvrow || wc->chunk != U->chunk) {
        for (int64_t i = 0; i * P->bk < P->chunk_len; i++) flags[i] = 0;
        wc->kvrow = U->kvrow;
        wc->chunk = U->chunk;
    }
    *at = j0 - c0;
    /* blocks start at chunk start + a multiple of bk, or at a window's
     * first key: only the aligned ones are shared (the others rewrite the
     * same values). A flag holds how many of the block's keys are staged:
     * a causal unit may have cut the block short. */
    int aligned = (j0 - c0) % P->bk == 0;
    int fresh = !aligned || flags[blk] < (T)nk;
    if (aligned && fresh) flags[blk] = (T)nk;
    return fresh;
}

/*
 * The K and V block at key j0 (nk keys) as the panel kernels read them:
 *   K: in place (KVT == T), or widened to T with rows D apart;
 *   V: in place, widened to T with rows Dv apart, or (value_tiles) in column
 *      tiles of mr_pv, tiles ld_vt apart (*ldv is then 0).
 * Staged parts go into the block scratch, or (wide_chunk) into their place in
 * the thread's staged chunk -- key j of the chunk always lands at the same
 * place, whichever block staged it -- skipped when an earlier unit of the
 * same head and chunk already staged at least these keys of the block.
 */
static void SDPA_FN(staged_block)(const PLAN *P, const UNIT *U, int64_t j0, int64_t nk, T *scratch,
                                  SDPA_FN(wide_cache) *wc, const T **kb, int64_t *ldk, const T **vb,
                                  int64_t *ldv)
{
    const attn_sdpa_desc *d = P->d;
    T *kwide = scratch + P->off_kw, *vwide = scratch + P->off_vw;
    int fresh = 1;
    int64_t at = 0;   /* the block's first key in the staging buffers */
    if (P->wide_chunk) {
        fresh = SDPA_FN(chunk_slot)(P, U, j0, nk, scratch, wc, &at);
    } else {
        /* the block scratch still holds at least these keys of this block */
        fresh = !(wc->kvrow == U->kvrow && wc->j0 == j0 && wc->nk >= nk);
        if (fresh) {
            wc->kvrow = U->kvrow;
            wc->j0 = j0;
            wc->nk = nk;
        }
    }
#if KV_SAME
    (void)kwide;
    *kb = U->kh + j0 * d->k_sl;
    *ldk = d->k_sl;
#else
    kwide += at * d->D;
    if (fresh) P->kio_kv->widen(nk, d->D, U->kh + j0 * d->k_sl, d->k_sl, U->ksc ? U->ksc + j0 : NULL, kwide, d->D);
    *kb = kwide;
    *ldk = d->D;
#endif
    if (P->value_tiles) {
        vwide += at * P->kt->mr_pv;
        if (fresh)
            P->kio_kv->widen_tiles(nk, d->Dv, U->vh + j0 * d->v_sl, d->v_sl, U->vsc ? U->vsc + j0 : NULL,
                                   vwide, P->ld_vt);
        *vb = vwide;
        *ldv = 0;
        return;
    }
#if KV_SAME
    *vb = U->vh + j0 * d->v_sl;
    *ldv = d->v_sl;
#else
    vwide += at * d->Dv;
    if (fresh) P->kio_kv->widen(nk, d->Dv, U->vh + j0 * d->v_sl, d->v_sl, U->vsc ? U->vsc + j0 : NULL, vwide, d->Dv);
    *vb = vwide;
    *ldv = d->Dv;
#endif
}

/* pair_vt: the block's V transposed in the thread's staged chunk (stage_vt2
 * once per block and chunk), key j0 in column 0, rows ld_vt apart. */
static const KVT *SDPA_FN(staged_vt)(const PLAN *P, const UNIT *U, int64_t j0, int64_t nk, T *scratch,
                                     SDPA_FN(wide_cache) *wc)
{
    const attn_sdpa_desc *d = P->d;
    int64_t at;
    KVT *vt = (KVT *)(void *)(scratch + P->off_vw);
    if (SDPA_FN(chunk_slot)(P, U, j0, nk, scratch, wc, &at))
        P->kio_kv->stage_vt2(nk, U->vh + j0 * d->v_sl, d->v_sl, d->Dv, vt + at, P->ld_vt);
    return vt + at;
}

/* One unit's state on the panel path: state block g of the scratch (the
 * plan's layout). */
typedef struct {
    T *q, *o, *oc, *m, *l, *lc, *alpha, *L;
    int fresh;   /* no P V yet: o and oc hold nothing (pv_panel's fresh) */
} SDPA_FN(panel_state);

static SDPA_FN(panel_state) SDPA_FN(state_at)(const PLAN *P, T *scratch, int64_t g)
{
    T *b = scratch + g * P->state_elems;
    SDPA_FN(panel_state) S = {b,             b + P->off_o,  b + P->off_oc, b + P->off_m,
                              b + P->off_l,  b + P->off_lc, b + P->off_a,  b + P->off_L, 0};
    return S;
}

/* Asks for the lines of each row's first `bytes` bytes (query rows before
 * pack_qt stages them, output rows before finish_unit writes them). The
 * rows are mostly in L3 or memory, and the staging loops would wait for
 * their lines a few at a time (an 8 x 8 transpose touches 8 rows);
 * requested together, the misses overlap (benchmarks/NOTES.md). A hint:
 * it never faults and changes no result. */
static void SDPA_FN(prefetch_rows)(const UNIT *U, int out, int64_t bytes)
{
    for (int r = 0; r < U->nr; r++) {
        uintptr_t b = (uintptr_t)(out ? (const void *)U->rows[r].out : (const void *)U->rows[r].q);
        attn_prefetch_bytes(b, b + (uintptr_t)bytes);
    }
}

/* O = 0 and its compensation too (pv_panel's fresh does it without this). */
static void SDPA_FN(clear_o)(const PLAN *P, const SDPA_FN(panel_state) *S)
{
    size_t bytes = (size_t)(attn_round_up(attn_max64(P->d->Dv, 1), P->kt->mr_pv) * P->W) * sizeof(T);
    memset(S->o, 0, bytes);
    memset(S->oc, 0, bytes);
}

/* A unit's start: its queries staged, O = 0, the online softmax's m, l. */
static void SDPA_FN(panel_start)(const PLAN *P, const UNIT *U, SDPA_FN(panel_state) *S,
                                 T *scratch)
{
    const attn_sdpa_desc *d = P->d;
    const QT *qrows[ATTN_MAX_LANES];
    for (int r = 0; r < U->nr; r++) qrows[r] = U->rows[r].q;
    SDPA_FN(prefetch_rows)(U, 0, d->D * (int64_t)sizeof(QT));
    if (P->pairs)   /* (QT is KVT here) */
        P->kio_kv->pack_qt2(U->nr, d->D, (const KVT *const *)qrows, P->qsign, (KVT *)S->q);
    else
        P->kio_q->pack_qt(U->nr, d->D, qrows, P->qsign, S->q);
    if (P->fk) P->kt->exp2(d->D * P->W, S->q, S->q);   /* Et = e^(2 (Qp + b)) */
    /* O and its compensation start at zero: written by the first P V
     * (pv_panel's fresh), cleared here only for the pairs' kernels, and at
     * the end if no block ran (SDPA_FN(panel_end)) */
    S->fresh = !P->pairs;
    if (!S->fresh) SDPA_FN(clear_o)(P, S);
    SDPA_FN(softmax_start)(P, U, S->m, S->l, S->lc, S->alpha);
    if (P->hard) SDPA_FN(hard_start)(P, scratch);
}

/* Key block [j0, j0 + nk) of a unit, nk = min(bk, kend - j0). */
static void SDPA_FN(panel_block)(const PLAN *P, const UNIT *U, SDPA_FN(panel_state) *S,
                                 int64_t j0, T *scratch, SDPA_FN(wide_cache) *wc)
{
    const attn_sdpa_desc *d = P->d;
    const KTAB *kt = P->kt;
    const int64_t W = P->W, D = d->D, Dv = d->Dv;
    T *sbuf = scratch + P->off_s, *cmax = scratch + P->off_c;
    SDPA_FN(prep_rows_buf) pbuf;
    int64_t nk = attn_min64(P->bk, U->kend - j0);
    /* K and V blocks as T: read in place, or staged once (widened from
     * 16-bit and quantized storage, scales applied there; V in column
     * tiles) */
    const T *kb = NULL, *vb = NULL;
    const KVT *vt = NULL;   /* (pair_vt) */
    int64_t ldk = 0, ldv = 0;
    if (!P->pairs)
        SDPA_FN(staged_block)(P, U, j0, nk, scratch, wc, &kb, &ldk, &vb, &ldv);
    else if (P->pair_vt)
        vt = SDPA_FN(staged_vt)(P, U, j0, nk, scratch, wc);
    int prep = SDPA_FN(needs_prep)(P, U, j0, nk);
    /* rows that fit half a panel (a head's last rows: Lq = 24 on avx2 is
     * 16 + 8) run the half-panel kernels, same bits for half the work */
    int half = P->half && 2 * U->nr <= W;
    /* the QK kernel can fold the column maxima on the way out unless a
     * prep pass still changes this block */
    T *colmax = NULL;
    if (!prep && P->additive_form == ATTN_ADDITIVE_NONE) {
        colmax = cmax;
        for (int64_t r = 0; r < W; r++) colmax[r] = -INFINITY;
    }
    if (P->additive_form == ATTN_ADDITIVE_PRODUCT)
        kt->additive_panel_exp(D, P->fk + (U->kvrow + j0) * D, D, nk, S->q, P->wneg, P->score_c, sbuf);
    else if (P->additive_form == ATTN_ADDITIVE_TANH)
        kt->additive_panel_tanh(D, kb, ldk, nk, S->q, P->wneg, P->score_c, sbuf);
    else if (P->pairs)
        P->kio_kv->qk_panel2(D, U->kh + j0 * d->k_sl, d->k_sl, nk, (const KVT *)S->q, sbuf, colmax);
    else if (half)
        kt->qk_panel_half(D, kb, ldk, nk, S->q, sbuf, colmax);
    else
        kt->qk_panel(D, kb, ldk, nk, S->q, sbuf, W, 0, colmax);

    T c = P->csoft;
    if (prep) {
        PREP x;
        SDPA_FN(describe_prep)(P, U, j0, nk, &x, &pbuf);
        x.half = half;
        kt->prep_panel(&x, sbuf);
        if (P->prep_log2) c = 1;
    }
    if (P->hard) {   /* no softmax and no P V: the rows' top-k */
        SDPA_FN(hard_select)(P, U, scratch, sbuf, 1, W, j0, nk);
        return;
    }
    if (P->sigmoid && half)   /* (elementwise: a half panel's lanes of each key) */
        for (int64_t j = 0; j < nk; j++) kt->sigmoid(W / 2, sbuf + j * W, P->sigmoid_shift);
    else if (P->sigmoid)
        kt->sigmoid(nk * W, sbuf, P->sigmoid_shift);   /* alpha stays 1 */
    else
        (half ? kt->softmax_panel_half : kt->softmax_panel)(nk, sbuf, c, colmax, S->m, S->l, S->lc,
                                                            S->alpha);
    if (d->drop_threshold) SDPA_FN(dropout)(P, U, sbuf, 1, W, j0, nk);
    if (P->sigmoid && d->weights) SDPA_FN(copy_weights)(P, U, j0, nk, &pbuf, sbuf);
    if (P->pairs)   /* V packed by the kernel in the widening scratch, or staged (vt) */
        P->kio_kv->pv_panel2(nk, U->vh + j0 * d->v_sl, d->v_sl, Dv, sbuf, S->alpha, S->o, S->oc,
                             (KVT *)(scratch + P->off_vw), vt, P->ld_vt);
    else if (P->value_tiles)   /* one contiguous tile of mr_pv columns at a time */
        for (int64_t c0 = 0; c0 < Dv; c0 += kt->mr_pv)
            (half ? kt->pv_panel_half : kt->pv_panel)(nk, vb + c0 / kt->mr_pv * P->ld_vt, kt->mr_pv,
                                                      kt->mr_pv, sbuf, S->alpha, S->o + c0 * W,
                                                      S->oc + c0 * W, S->fresh);
    else
        (half ? kt->pv_panel_half : kt->pv_panel)(nk, vb, ldv, Dv, sbuf, S->alpha, S->o, S->oc,
                                                  S->fresh);
    S->fresh = 0;
}

static void SDPA_FN(panel_end)(const PLAN *P, const UNIT *U, const SDPA_FN(panel_state) *S, T *scratch)
{
    if (S->fresh && !P->hard) SDPA_FN(clear_o)(P, S);   /* no block ran P V: O = 0 */
    if (P->hard)
        SDPA_FN(hard_finish)(P, U, scratch);
    else
        SDPA_FN(finish_unit)(P, U, S->m, S->l, S->lc, S->L, S->o, S->oc);
}

/* The panel path's loop nest for n units (n > 1: a panel group, one kv
 * head's panels) run block by block -- block b of every unit, then block
 * b + 1 -- so that a block of K and V is read into L2 once for them all.
 * Each unit runs exactly the operations it runs alone, in its state block g.
 * Returns 1 if interrupted. */
static int SDPA_FN(panel_units)(const PLAN *P, const UNIT *units, int64_t n, T *scratch,
                                SDPA_FN(wide_cache) *wc)
{
    SDPA_FN(panel_state) S[ATTN_PANEL_GROUP];
    int64_t nblocks = 0;
    for (int64_t g = 0; g < n; g++) {
        S[g] = SDPA_FN(state_at)(P, scratch, g);
        SDPA_FN(panel_start)(P, &units[g], &S[g], scratch);
        if (units[g].kend > units[g].kbeg)
            nblocks = attn_max64(nblocks, (units[g].kend - units[g].kbeg + P->bk - 1) / P->bk);
    }
    for (int64_t b = 0; b < nblocks; b++) {
        if (attn_cancelled(P->d->cancellable, P->d->cancel_epoch)) return 1;
        if (b == nblocks - 1 && P->nchunks == 1)   /* the output rows arrive during the last block */
            for (int64_t g = 0; g < n; g++) SDPA_FN(prefetch_rows)(&units[g], 1, P->d->Dv * (int64_t)sizeof(QT));
        for (int64_t g = 0; g < n; g++) {
            int64_t j0 = units[g].kbeg + b * P->bk;
            if (j0 < units[g].kend) SDPA_FN(panel_block)(P, &units[g], &S[g], j0, scratch, wc);
        }
    }
    for (int64_t g = 0; g < n; g++) SDPA_FN(panel_end)(P, &units[g], &S[g], scratch);
    return 0;
}

/* The units of work item `item`: unit `item` alone, or (panel groups) up to
 * group_panels units of one kv head. Returns how many. */
static int64_t SDPA_FN(item_units)(const PLAN *P, int64_t item, UNIT *units)
{
    if (P->group_panels == 1) {
        SDPA_FN(build_unit)(P, item, units);
        return 1;
    }
    int64_t reuse = P->ngroups * P->npanels, gp = P->group_panels;
    int64_t per_head = (reuse + gp - 1) / gp;
    int64_t i = item % per_head, first = item / per_head * reuse + i * gp;
    int64_t n = attn_min64(gp, reuse - i * gp);
    for (int64_t g = 0; g < n; g++)
        SDPA_FN(build_unit)(P, first + g, &units[g]);   /* (one chunk: unit = base unit) */
    return n;
}

/* The rows path's loop nest for one unit. Returns 1 if interrupted. */
static int SDPA_FN(rows_unit)(const PLAN *P, const UNIT *U, T *scratch)
{
    const attn_sdpa_desc *d = P->d;
    const KTAB *kt = P->kt;
    const int64_t D = d->D, Dv = d->Dv;
    T *qbuf = scratch, *sbuf = scratch + P->off_s, *obuf = scratch + P->off_o;
    T *ocbuf = scratch + P->off_oc, *m = scratch + P->off_m, *l = scratch + P->off_l;
    T *lc = scratch + P->off_lc, *alpha = scratch + P->off_a;
    SDPA_FN(prep_rows_buf) pbuf;
    const QT *qrows[ATTN_MAX_LANES];

    for (int r = 0; r < U->nr; r++) qrows[r] = U->rows[r].q;
    P->kio_q->stage_rows(U->nr, D, qrows, P->qsign, qbuf, P->ld_q);
    memset(obuf, 0, (size_t)(P->W * P->ld_o) * sizeof(T));
    memset(ocbuf, 0, (size_t)(P->W * P->ld_o) * sizeof(T));
    SDPA_FN(softmax_start)(P, U, m, l, lc, alpha);
    if (P->hard) SDPA_FN(hard_start)(P, scratch);

    for (int64_t j0 = U->kbeg; j0 < U->kend; j0 += P->bk) {
        if (attn_cancelled(d->cancellable, d->cancel_epoch)) return 1;
        int64_t nk = attn_min64(P->bk, U->kend - j0);
        const KVT *kb = U->kh + j0 * d->k_sl, *vb = U->vh + j0 * d->v_sl;
        P->kio_kv->qk_rows(D, qbuf, P->ld_q, U->nr, kb, d->k_sl, nk, U->ksc ? U->ksc + j0 : NULL,
                           sbuf, P->ld_s);
        T c = P->csoft;
        if (SDPA_FN(needs_prep)(P, U, j0, nk)) {
            PREP x;
            SDPA_FN(describe_prep)(P, U, j0, nk, &x, &pbuf);
            kt->prep_rows(&x, sbuf, P->ld_s);
            if (P->prep_log2) c = 1;
        }
        if (P->hard) {
            SDPA_FN(hard_select)(P, U, scratch, sbuf, P->ld_s, 1, j0, nk);
            continue;
        }
        if (P->sigmoid)
            for (int r = 0; r < U->nr; r++) kt->sigmoid(nk, sbuf + r * P->ld_s, P->sigmoid_shift);
        else
            kt->softmax_rows(U->nr, nk, sbuf, P->ld_s, c, m, l, lc, alpha);
        if (d->drop_threshold) SDPA_FN(dropout)(P, U, sbuf, P->ld_s, 1, j0, nk);
        if (P->sigmoid && d->weights) SDPA_FN(copy_weights)(P, U, j0, nk, &pbuf, sbuf);
        P->kio_kv->pv_rows(nk, sbuf, P->ld_s, U->nr, vb, d->v_sl, Dv, U->vsc ? U->vsc + j0 : NULL,
                           alpha, obuf, ocbuf, P->ld_o);
    }
    if (P->hard)
        SDPA_FN(hard_finish)(P, U, scratch);
    else
        SDPA_FN(finish_unit)(P, U, m, l, lc, scratch + P->off_L, obuf, ocbuf);
    return 0;
}

/* Combine the key chunks of base unit ub, in chunk order (the algebra of
 * merge_attention), accumulating in double: the nchunks partials are read
 * once and the merged row is rounded once. */
static void SDPA_FN(merge_unit)(const PLAN *P, int64_t ub)
{
    const attn_sdpa_desc *d = P->d;
    ROWREF rows[ATTN_MAX_LANES];
    int nr = SDPA_FN(build_rows)(P, ub, rows);
    const int64_t Dv = d->Dv, stride = P->W * (Dv + 2);
    const T *base = P->partial + ub * P->nchunks * stride;
    double wgt[ATTN_MAX_CHUNKS];
    if (P->sigmoid) {   /* unnormalised: the chunks' outputs add */
        for (int r = 0; r < nr; r++)
            for (int64_t k = 0; k < Dv; k++) {
                double acc = 0;
                for (int64_t c = 0; c < P->nchunks; c++) acc += (double)base[c * stride + r * (Dv + 2) + k];
                rows[r].out[k] = QT_FROM_T((T)acc);
            }
        return;
    }
    for (int r = 0; r < nr; r++) {
        T mmax = -INFINITY;
        for (int64_t c = 0; c < P->nchunks; c++) {
            T mc = base[c * stride + r * (Dv + 2) + Dv];
            if (mc > mmax) mmax = mc;
        }
        double shift = mmax == -INFINITY ? 0.0 : (double)mmax;
        double lsum = 0;
        for (int64_t c = 0; c < P->nchunks; c++) {
            const T *pr = base + c * stride + r * (Dv + 2);
            wgt[c] = exp2((double)pr[Dv] - shift);
            lsum += wgt[c] * (double)pr[Dv + 1];
        }
        QT *out = rows[r].out;
        for (int64_t k = 0; k < Dv; k++) {
            double acc = 0;
            for (int64_t c = 0; c < P->nchunks; c++) acc += wgt[c] * (double)base[c * stride + r * (Dv + 2) + k];
            out[k] = QT_FROM_T(lsum == 0 ? (T)0 : (T)(acc / lsum));
        }
        if (rows[r].lse)
            *rows[r].lse = lsum == 0 ? (T)-INFINITY : (T)((shift + log2(lsum)) * ATTN_LN2);
    }
}

/* Whether |x| <= limit for every element of a (B, H, L, D) tensor; NaN fails. */
/* Quantized storage needs both scales; other storage takes none. */
static int SDPA_FN(scales_wrong)(const attn_sdpa_desc *d)
{
    int have = d->k_scale != NULL && d->v_scale != NULL && d->ks_boff && d->vs_boff;
    int none = d->k_scale == NULL && d->v_scale == NULL;
    return KV_SCALED ? (d->Lk > 0 && !have) : !none;
}

static int SDPA_FN(all_within)(const T *base, const int64_t *boff, int64_t sh, int64_t sl,
                               int64_t B, int64_t H, int64_t L, int64_t D, double limit)
{
    for (int64_t b = 0; b < B; b++)
        for (int64_t h = 0; h < H; h++)
            for (int64_t i = 0; i < L; i++) {
                const T *x = base + boff[b] + h * sh + i * sl;
                for (int64_t c = 0; c < D; c++)
                    if (!(fabs((double)x[c]) <= limit)) return 0;
            }
    return 1;
}

/* Whether every additive input is small enough for the product form:
 * e^(2x) stays in [2^-63, 2^63] for |x| <= 63 / (2 log2 e), so products of
 * a query and a key term never leave the float range. */
static int SDPA_FN(additive_in_range)(const attn_sdpa_desc *d)
{
    const double limit = 63.0 / (2.0 * ATTN_LOG2E);
    return SDPA_FN(all_within)((const T *)d->q, d->q_boff, d->q_sh, d->q_sl, d->B, d->Hq, d->Lq,
                               d->D, limit) &&
           SDPA_FN(all_within)((const T *)d->k, d->k_boff, d->k_sh, d->k_sl, d->B, d->Hkv, d->Lk,
                               d->D, limit);
}

/* F = e^(2 Kp) for key row t of (B, Hkv, Lk) order. */
static void SDPA_FN(additive_key_exp)(const PLAN *P, int64_t t)
{
    const attn_sdpa_desc *d = P->d;
    int64_t j = t % d->Lk, bh = t / d->Lk, h = bh % d->Hkv, b = bh / d->Hkv;
    const T *x = (const T *)d->k + d->k_boff[b] + h * d->k_sh + j * d->k_sl;
    T *f = P->fk + t * d->D;
    for (int64_t c = 0; c < d->D; c++) f[c] = x[c] * (T)(2.0 * ATTN_LOG2E);
    P->kt->exp2(d->D, f, f);
}

/* The plan of a call. num_threads only sizes the panel groups (which never
 * change a bit of the results). */
/* Whether Q holding the power of two p still leaves the softmax's factor
 * |scale| log2 e / p, or with a soft-cap |scale| / p / cap (as describe_prep
 * forms capx), past T's range (make_plan) */
static int SDPA_FN(factor_overflows)(const attn_sdpa_desc *d, double p)
{
    return isinf((T)(fabs(d->scale) * (ATTN_LOG2E / p))) ||
           (d->softcap > 0 && isinf((T)(fabs(d->scale) / p / d->softcap)));
}

static attn_status SDPA_FN(make_plan)(PLAN *P, const attn_sdpa_desc *d, const KTAB *kt,
                                      const KIO_Q *kio_q, const KIO_KV *kio_kv, const KIO_T *kio_t,
                                      int num_threads)
{
    memset(P, 0, sizeof *P);
    P->d = d;
    P->kt = kt;
    P->kio_q = kio_q;
    P->kio_kv = kio_kv;
    P->kio_t = kio_t;
    P->G = d->Hq / d->Hkv;
    P->windowed = d->window_left >= 0;
    P->limited = d->causal || d->valid_lens != NULL || d->seq_lk != NULL || P->windowed ||
                 d->window_right >= 0;
    P->sigmoid = d->weighting == ATTN_WEIGHTS_SIGMOID;
    P->hard = d->weighting == ATTN_WEIGHTS_HARD;
    P->sigmoid_shift = (T)(d->sigmoid_bias * ATTN_LOG2E);
    /* every score changes (and sigmoid weights come from log2-unit scores) */
    int biased = d->alibi != NULL || d->softcap > 0 || P->sigmoid || P->hard;
    P->prep_always = d->mask_kind != ATTN_MASK_NONE || d->weights != NULL || biased;
    P->prep_log2 = d->mask_kind == ATTN_MASK_ADD || d->weights != NULL || biased;
    if (d->score_kind == ATTN_SCORE_ADDITIVE) {
        P->qsign = (T)(2.0 * ATTN_LOG2E);
        P->qmag = 1;
        P->csoft = 1;
        P->additive_form = d->D > 0 && d->Lk > 0 && SDPA_FN(additive_in_range)(d)
                               ? ATTN_ADDITIVE_PRODUCT : ATTN_ADDITIVE_TANH;
    } else {
        /* the sign goes into Q (exact); |scale| log2 e into the softmax's FMA.
         * A finite scale whose |scale| log2 e (or, with a soft-cap, whose
         * |scale| / cap) passes T's range (float32: |scale| >= 2.36e38)
         * puts a power of two p into Q as well, the least from 4 up that
         * brings c = |scale| log2 e / p (and |scale| / p / cap) into range
         * (float32: 4 up to |scale| 9.4e38, 8 up to 1.9e39, ...; exact while
         * |q| < FLT_MAX / p): c (p Q) K gives the same products
         * (docs/numerics.md, Range). p stops at 2^64 (float32: |scale| up
         * to about 4.3e57); past it c is left inf, as any scale past T's
         * range was before. */
        double p = 1;
        if (isfinite(d->scale) && SDPA_FN(factor_overflows)(d, p))
            for (p = 4; SDPA_FN(factor_overflows)(d, p) && p < 0x1p64; p *= 2) {}
        P->qmag = (T)p;
        P->csoft = (T)(fabs(d->scale) * (ATTN_LOG2E / p));
        P->qsign = d->scale < 0 ? -P->qmag : P->qmag;
        if (d->scale != d->scale) P->csoft = (T)NAN;
        P->additive_form = ATTN_ADDITIVE_NONE;
        /* the softmax multiplies masked (-inf) scores by c: with c = 0 that is
         * 0 * -inf = NaN, so scale the scores before the masks instead */
        if (!(P->csoft > 0)) P->prep_log2 = 1;
    }

    /* Decode-shaped problems (all rows of a kv head fit one rows-path unit)
     * take the rows path; everything else takes panels. (The rows path
     * computes dot-product scores only.) */
    /* (varlen batches never stack heads: a row block is one head's rows of
     * one sequence) */
    int64_t stacked_rows = d->seq_lq ? d->Lq : P->G * d->Lq;
    P->rows_path = stacked_rows <= kt->rows_max && d->score_kind == ATTN_SCORE_DOT;
    if (P->rows_path) {
        P->W = kt->rows_max;
        P->rows_per_group = stacked_rows;
        P->ngroups = d->seq_lq ? P->G : 1;
        P->bk = kt->bk_rows;   /* (the K/V entries' own block may replace it below) */
    } else {
        P->W = kt->nr;
        int stack = d->Lq < kt->nr && !d->seq_lq;
        P->rows_per_group = stack ? stacked_rows : d->Lq;
        P->ngroups = stack ? 1 : P->G;
        P->bk = kt->bk_panel;
    }
    /* (the pair kernels stage Q with the scale's sign only, not qmag's
     * power of two: a scale past T's range takes the widened path) */
    P->pairs = KV_PAIRS && !P->rows_path && kio_kv->qk_panel2 != NULL &&
               P->additive_form == ATTN_ADDITIVE_NONE && P->qmag == 1;
    P->npanels = (P->rows_per_group + P->W - 1) / P->W;
    P->half = !P->rows_path && kt->qk_panel_half != NULL && !P->pairs &&
              P->additive_form == ATTN_ADDITIVE_NONE;
    P->nbase = d->B * d->Hkv * P->ngroups * P->npanels;

    /* Split the keys when there are too few units to occupy the machine
     * (decode): a function of the problem size only, never of the thread
     * count, so the result is the same for any thread count. */
    P->nchunks = 1;
    if (!d->weights && !P->hard && P->nbase < ATTN_SPLIT_MIN_UNITS && d->Lk >= 2 * ATTN_SPLIT_MIN_KEYS) {
        int64_t want = (ATTN_SPLIT_TARGET_UNITS + P->nbase - 1) / P->nbase;
        int64_t most = d->Lk / ATTN_SPLIT_MIN_KEYS;
        P->nchunks = attn_min64(want, most);
    }
    P->chunk_len = d->Lk > 0 ? attn_round_up((d->Lk + P->nchunks - 1) / P->nchunks, P->bk) : 1;
    P->nchunks = d->Lk > 0 ? (d->Lk + P->chunk_len - 1) / P->chunk_len : 1;
    if (P->nchunks > ATTN_MAX_CHUNKS) return ATTN_EINVAL;   /* cannot happen: want <= TARGET */
    /* The K/V entries' own (longer) rows-path block, where it divides the
     * chunks: the split stays the one the level's block gives (rounding the
     * chunks up to the longer block would leave fewer or unequal units) */
    if (P->rows_path && P->kio_kv->bk_rows && P->chunk_len % P->kio_kv->bk_rows == 0)
        P->bk = P->kio_kv->bk_rows;

    int64_t D1 = attn_max64(d->D, 1), Dv1 = attn_max64(d->Dv, 1), o_elems, q_elems, s_elems;
    int64_t reuse = P->ngroups * P->npanels;
    /* scratch: group_panels x (Q, O, Oc, then m, l, lc, alpha, L: W each),
     * then S and colmax (W) */
    if (P->rows_path) {
        P->ld_q = attn_round_up(D1, kt->vlen);
        P->ld_s = attn_round_up(P->bk, kt->vlen);
        P->ld_o = attn_round_up(Dv1, kt->vlen);
        q_elems = P->W * P->ld_q;
        s_elems = P->W * P->ld_s;
        o_elems = SDPA_FN(align_elems)(P->W * P->ld_o);
    } else {
        q_elems = D1 * P->W;
        s_elems = attn_round_up(P->bk, kt->mr_qk) * P->W;
        o_elems = SDPA_FN(align_elems)(attn_round_up(Dv1, kt->mr_pv) * P->W);
    }
    int64_t lane_elems = SDPA_FN(align_elems)(P->W);
    P->off_o = SDPA_FN(align_elems)(q_elems);
    P->off_oc = P->off_o + o_elems;
    P->off_m = P->off_oc + o_elems;
    P->off_l = P->off_m + lane_elems;
    P->off_lc = P->off_l + lane_elems;
    P->off_a = P->off_lc + lane_elems;
    P->off_L = P->off_a + lane_elems;
    P->state_elems = P->off_L + lane_elems;
    /* Panel groups: when a kv head's K and V (as the kernels read them)
     * outgrow half the L2 cache, each pass of one panel over the keys
     * streams them from L3 or memory; a work item then runs up to
     * ATTN_PANEL_GROUP panels of the head block by block, so each block is
     * read from outside L2 once per group (benchmarks/NOTES.md), as many as
     * keep the panels' states (Q, O, Oc) within ATTN_PANEL_GROUP_STATE_BYTES
     * next to the blocks. Every panel still runs exactly its own sequence
     * of operations: results are bitwise those of one panel per item, and
     * the group size may depend on the thread count: groups shrink until
     * every thread has at least two items. (Not with split keys, whose
     * units of one panel are consecutive, nor hard attention, whose top-k
     * state is per thread.) */
    double kv_bytes = (double)d->Lk * (double)(D1 + Dv1) * sizeof(T);
    P->group_panels = 1;
    if (!P->rows_path && !P->hard && P->nchunks == 1 && kv_bytes > ATTN_PANEL_GROUP_MIN_BYTES)
        P->group_panels = attn_max64(1, attn_min64(attn_min64(reuse, ATTN_PANEL_GROUP),
                                                   (int64_t)(ATTN_PANEL_GROUP_STATE_BYTES /
                                                             ((double)P->state_elems * sizeof(T)))));
    int64_t threads = num_threads > 0 ? num_threads : 1;
    while (P->group_panels > 1 &&
           d->B * d->Hkv * ((reuse + P->group_panels - 1) / P->group_panels) < 2 * threads)
        P->group_panels--;
    /* items never straddle kv heads: each head's panels split into groups
     * (group_panels == 1: nitems = nbase * nchunks, one unit each) */
    int64_t per_head = (reuse + P->group_panels - 1) / P->group_panels;
    P->nitems = d->B * d->Hkv * per_head * P->nchunks;
    /* Panel-path items go to the threads in runs of one kv head's items (or
     * an equal part of them when heads are too few to keep the threads
     * balanced): a thread then stages each K/V chunk once, where items dealt
     * one by one had every thread widen and tile every head's K and V (at
     * two threads, the 1-2% by which bfloat16 and float16 trailed float32 at
     * S1; benchmarks/NOTES.md). Which thread runs a unit never changes what
     * the unit computes. */
    P->item_run = 1;
    if (!P->rows_path) {
        int64_t heads = d->B * d->Hkv, per_kv = per_head * P->nchunks, parts = 1;
        while (heads * parts < 4 * threads && parts < per_kv) parts++;
        P->item_run = (per_kv + parts - 1) / parts;
    }

    P->off_s = P->group_panels * P->state_elems;
    P->off_c = P->off_s + SDPA_FN(align_elems)(s_elems);
    P->off_hv = P->off_c + lane_elems;
    int64_t hk = P->hard ? P->W * d->hard_k : 0;   /* (an int64 index takes two floats) */
    P->off_hi = P->off_hv + SDPA_FN(align_elems)(hk);
    P->off_hn = P->off_hi + SDPA_FN(align_elems)(hk * (int64_t)(sizeof(int64_t) / sizeof(T)));
    P->off_kw = P->off_vw = P->off_hn + SDPA_FN(align_elems)(P->hard ? P->W : 0);
    /* (hard attention reads float32/float64 K/V in place: other storage
     * types are refused before planning, so it stages nothing) */
    if (!P->rows_path && !P->hard) {
        /* Staged K/V for a whole chunk when several panels of a kv head
         * would otherwise stage the same blocks again (and it fits): K
         * widened to T (KVT != T), V in column tiles, whose P V reads one
         * contiguous stream (benchmarks/NOTES.md). Without that reuse, V is
         * read in place or widened block by block as it is stored. */
        /* (pairs: K is read in place; V, when the level reads it
         * transposed (stage_vt2), is staged transposed, 16-column tiles) */
        int64_t dv_tiles = attn_round_up(Dv1, kt->mr_pv);
        double bytes = P->pairs ? (double)P->chunk_len * (double)attn_round_up(Dv1, 16) * sizeof(KVT)
                                : (double)P->chunk_len * (double)((KV_SAME ? 0 : D1) + dv_tiles) * sizeof(T);
        P->wide_chunk = (!P->pairs || kio_kv->stage_vt2 != NULL) && reuse >= ATTN_WIDE_CHUNK_MIN_PANELS &&
                        bytes <= ATTN_WIDE_CHUNK_MAX_BYTES;
        /* (the K/V table comes from the same level as kt: same tile width) */
        P->value_tiles = P->wide_chunk && !P->pairs && kio_kv->tile_width == kt->mr_pv;
        P->pair_vt = P->wide_chunk && P->pairs;
        int64_t keys = P->wide_chunk ? P->chunk_len : P->bk;
        P->ld_vt = P->pairs ? keys : keys * kt->mr_pv;
        /* K widened (KVT != T); V in tiles, or widened, or (pairs) packed
         * by pv_panel2 into its vpairs (ktab.h), or staged transposed */
        int64_t k_elems = KV_SAME || P->pairs ? 0 : keys * D1;
        int64_t v_elems = P->value_tiles ? keys * dv_tiles : KV_SAME ? 0 : keys * Dv1;
        if (P->pairs)   /* (KVT elements, as T: twice the room needed) */
            v_elems = P->pair_vt ? keys * attn_round_up(Dv1, 16)
                                 : attn_round_up(keys, 32) * attn_round_up(Dv1, 16);
        P->off_vw = P->off_kw + SDPA_FN(align_elems)(k_elems);
        P->off_wf = P->off_vw + SDPA_FN(align_elems)(v_elems);
        P->scratch_elems = P->off_wf + SDPA_FN(align_elems)(P->wide_chunk ? (P->chunk_len + P->bk - 1) / P->bk : 0);
        return ATTN_OK;
    }
    P->scratch_elems = P->off_kw;
    return ATTN_OK;
}

/* Multiply-adds of the call (scores and P V; the additive terms count as
 * one each): what decides how many threads it is worth. */
static double SDPA_FN(work)(const PLAN *P)
{
    const attn_sdpa_desc *d = P->d;
    return (double)d->B * d->Hq * d->Lq * (double)d->Lk * (double)(d->D + d->Dv + 1);
}

static void SDPA_FN(fill_info)(const PLAN *P, int num_threads, attn_plan_info *info)
{
    info->path = P->rows_path ? ATTN_PATH_ROWS : ATTN_PATH_PANEL;
    info->native_pairs = P->pairs;
    info->amx_tiles = P->pairs && P->kio_kv->amx_tiles;
    info->widened_chunks = P->wide_chunk && !KV_SAME && !P->pairs;
    info->value_tiles = P->value_tiles || P->pair_vt;
    info->int8_integer = P->rows_path && P->kio_kv->int8_integer;
    info->additive_form = P->additive_form;
    info->rows_per_unit = P->W;
    info->units = P->nbase * P->nchunks;
    info->chunks = P->nchunks;
    info->chunk_len = P->chunk_len;
    info->key_block = P->bk;
    info->group_panels = P->group_panels;
    int64_t last_rows = P->rows_per_group - (P->npanels - 1) * P->W;
    info->half_panels = P->half && (P->d->seq_lq != NULL || (P->npanels > 0 && 2 * last_rows <= P->W));
    info->threads = attn_plan_threads(num_threads, P->nitems, SDPA_FN(work)(P));
    /* the blocks each unit's loop nest would visit */
    info->key_blocks = 0;
    for (int64_t u = 0; u < info->units; u++) {
        UNIT U;
        SDPA_FN(build_unit)(P, u, &U);
        if (U.nr > 0 && U.kend > U.kbeg) info->key_blocks += (U.kend - U.kbeg + P->bk - 1) / P->bk;
    }
}

attn_status SDPA_FN(attn_sdpa_plan)(const attn_sdpa_desc *d, int isa, int num_threads,
                                    attn_plan_info *info)
{
    attn_status st = attn_sdpa_check(d);
    if (st != ATTN_OK || !info) return st != ATTN_OK ? st : ATTN_EINVAL;
    if (!(Q_SAME && KV_SAME) && d->score_kind != ATTN_SCORE_DOT) return ATTN_EINVAL;
    if (SDPA_FN(scales_wrong)(d)) return ATTN_EINVAL;
    const KTAB *kt = KTAB_GET(isa);
    const KIO_Q *kio_q = KIO_Q_GET(isa);
    const KIO_KV *kio_kv = KIO_KV_GET(isa);
    const KIO_T *kio_t = KIO_T_GET(isa);
    if (!kt || !kio_q || !kio_kv || !kio_t) return ATTN_EISA;
    memset(info, 0, sizeof *info);
    if (d->B == 0 || d->Hq == 0 || d->Lq == 0) return ATTN_OK;
    PLAN P;
    st = SDPA_FN(make_plan)(&P, d, kt, kio_q, kio_kv, kio_t, num_threads);
    if (st == ATTN_OK) SDPA_FN(fill_info)(&P, num_threads, info);
    return st;
}

static void SDPA_FN(free_plan)(PLAN *P)
{
    attn_scratch_free(P->partial);
    attn_scratch_free(P->wneg);
    attn_scratch_free(P->fk);
}

/* The plan's shared buffers: additive weights and key exponentials, split-K
 * partials. */
static attn_status SDPA_FN(alloc_plan)(PLAN *P)
{
    const attn_sdpa_desc *d = P->d;
    if (d->score_kind == ATTN_SCORE_ADDITIVE) {
        P->wneg = (T *)attn_scratch_alloc_n(attn_max64(d->D, 1), sizeof(T));
        if (!P->wneg) return ATTN_ENOMEM;
        double sum = 0;
        for (int64_t h = 0; h < d->D; h++) {
            T w = ((const T *)d->w_score)[h];
            P->wneg[h] = (T)(-2.0 * ATTN_LOG2E) * w;
            sum += (double)w;
        }
        P->score_c = (T)(ATTN_LOG2E * sum);
        if (P->additive_form == ATTN_ADDITIVE_PRODUCT) {
            int64_t n = attn_mul_checked(attn_mul_checked(d->B * d->Hkv, d->Lk), d->D);
            P->fk = (T *)attn_scratch_alloc_n(n, sizeof(T));
            if (!P->fk) return ATTN_ENOMEM;
        }
    }
    if (P->nchunks > 1) {
        int64_t n = attn_mul_checked(attn_mul_checked(P->nbase, P->nchunks), P->W * (d->Dv + 2));
        P->partial = (T *)attn_scratch_alloc_n(n, sizeof(T));
        if (!P->partial) return ATTN_ENOMEM;
    }
    return ATTN_OK;
}

attn_status SDPA_FN(attn_sdpa)(const attn_sdpa_desc *d, int isa, int num_threads)
{
    attn_status st = attn_sdpa_check(d);
    if (st != ATTN_OK) return st;
    /* other storage types: dot-product scores, softmax or sigmoid weights */
    if (!(Q_SAME && KV_SAME) && (d->score_kind != ATTN_SCORE_DOT || d->weighting == ATTN_WEIGHTS_HARD))
        return ATTN_EINVAL;
    if (SDPA_FN(scales_wrong)(d)) return ATTN_EINVAL;
    const KTAB *kt = KTAB_GET(isa);
    const KIO_Q *kio_q = KIO_Q_GET(isa);
    const KIO_KV *kio_kv = KIO_KV_GET(isa);
    const KIO_T *kio_t = KIO_T_GET(isa);
    if (!kt || !kio_q || !kio_kv || !kio_t) return ATTN_EISA;
    if (d->B == 0 || d->Hq == 0 || d->Lq == 0) return ATTN_OK;

    PLAN P;
    st = SDPA_FN(make_plan)(&P, d, kt, kio_q, kio_kv, kio_t, num_threads);
    if (st == ATTN_OK) st = SDPA_FN(alloc_plan)(&P);
    if (st != ATTN_OK) {
        SDPA_FN(free_plan)(&P);
        return st;
    }

    int nthreads = attn_region_threads(num_threads, P.nitems, SDPA_FN(work)(&P));
    int failed = 0, interrupted = 0;
    (void)nthreads; /* unused without OpenMP */
#ifdef _OPENMP
#pragma omp parallel num_threads(nthreads) if (nthreads > 1)
#endif
    {
        T *scratch = (T *)attn_scratch_alloc_n(P.scratch_elems, sizeof(T));
        /* a work item's units (about 6 KiB each: kept off the stack) */
        UNIT *units = (UNIT *)attn_scratch_alloc_n(P.group_panels, sizeof(UNIT));
        if (!scratch || !units) attn_flag_set(&failed);
        SDPA_FN(wide_cache) wc = {-1, -1, -1, -1};
        if (P.fk) {
#ifdef _OPENMP
#pragma omp for schedule(static)
#endif
            for (int64_t t = 0; t < d->B * d->Hkv * d->Lk; t++) SDPA_FN(additive_key_exp)(&P, t);
            /* (implicit barrier: F is complete) */
        }
#ifdef _OPENMP
#pragma omp for schedule(dynamic, P.item_run)
#endif
        for (int64_t it = 0; it < P.nitems; it++) {
            if (attn_flag_get(&failed) || attn_flag_get(&interrupted)) continue;
            int64_t n = SDPA_FN(item_units)(&P, it, units);
            int stop = P.rows_path ? SDPA_FN(rows_unit)(&P, units, scratch)
                                   : SDPA_FN(panel_units)(&P, units, n, scratch, &wc);
            if (stop) attn_flag_set(&interrupted);
        }
        /* (implicit barrier) */
        if (P.nchunks > 1) {
#ifdef _OPENMP
#pragma omp for schedule(static)
#endif
            for (int64_t ub = 0; ub < P.nbase; ub++)
                if (!attn_flag_get(&failed) && !attn_flag_get(&interrupted)) SDPA_FN(merge_unit)(&P, ub);
        }
        attn_scratch_free(units);
        attn_scratch_free(scratch);
    }
    SDPA_FN(free_plan)(&P);
    if (failed) return ATTN_ENOMEM;
    return interrupted ? ATTN_EINTR : ATTN_OK;
}

#undef PLAN
#undef ROWREF
#undef UNIT
#undef SDPA_FN
#undef SDPA_CAT
#undef SDPA_CAT_
#undef KV_PAIRS
/* the includer's parameters: ready for the next instance */
#undef QT
#undef KVT
#undef Q_SAME
#undef KV_SAME
#undef KV_SCALED
#undef QT_FROM_T
#undef TAG
#undef KIO_Q
#undef KIO_Q_GET
#undef KIO_KV
#undef KIO_KV_GET
