/*
 * Linear layer GEMM, one instance per dtype (gemm.c includes this file with
 * T = float and T = double):  Y[m][n] = sum_k X[m][k] W[n][k] + bias[n].
 *
 * It runs on the attention kernels' register-blocked micro-kernel (qk_panel:
 * C[rows][NR] (+)= A rows x B[k][NR]) so that projections need no BLAS and
 * no second thread pool: BLAS worker threads keep spinning after a call and,
 * on a small machine, slow down the attention region that follows.
 *
 * Loop nest (one OpenMP region):
 *   pack W into column panels Wt[p][k][r] = W[p*NR + r][k]   <- omp for
 *   for unit (column panel p, block of gemm_mc rows)          <- omp for, dynamic
 *       for k-block of gemm_kc
 *           C (+)= X[m0 : m0 + mb, k-block] Wt[p][k-block]     (kernel qk_panel)
 *       Y[m][p*NR + r] = C[m][r] + bias
 * Each output element is computed by one unit with a fixed order over k, so
 * the result does not depend on the thread count.
 */

#define GEMM_CAT_(a, b) a##_##b
#define GEMM_CAT(a, b) GEMM_CAT_(a, b)
#define GEMM_FN(name) GEMM_CAT(name, TAG)

static void GEMM_FN(pack_panel)(const attn_linear_desc *d, const KTAB *kt, const KIO *kio, int64_t panel,
                               T *wt)
{
    const int64_t nr = kt->nr;
    const T *w = (const T *)d->w;
    int64_t n0 = panel * nr, nn = attn_min64(nr, d->N - n0);
    if (d->w_sk == 1) {
        /* the attention's query staging: register transposes of W's rows */
        const T *rows[ATTN_MAX_LANES];
        for (int64_t r = 0; r < nn; r++) rows[r] = w + (n0 + r) * d->w_sn;
        kio->pack_qt((int)nn, d->K, rows, (T)1, wt);
        return;
    }
    for (int64_t r = 0; r < nn; r++) {
        const T *wr = w + (n0 + r) * d->w_sn;
        for (int64_t k = 0; k < d->K; k++) wt[k * nr + r] = wr[k * d->w_sk];
    }
    for (int64_t k = 0; k < d->K; k++)
        for (int64_t r = nn; r < nr; r++) wt[k * nr + r] = 0;
}

static void GEMM_FN(linear_unit)(const attn_linear_desc *d, const KTAB *kt, int64_t u,
                                 int64_t npanels, const T *packed, T *c)
{
    const int64_t nr = kt->nr;
    int64_t panel = u % npanels, mblock = u / npanels;
    int64_t n0 = panel * nr, nn = attn_min64(nr, d->N - n0);
    const int64_t rows_per_unit = kt->gemm_mc;
    int64_t m0 = mblock * rows_per_unit, mb = attn_min64(rows_per_unit, d->M - m0);
    const T *x = (const T *)d->x + m0 * d->x_sm, *bias = (const T *)d->bias;
    const T *wt = packed + panel * d->K * nr;

    /* Accumulate in the contiguous scratch tile c: Y's own rows are N apart,
     * which for N a multiple of 1024 puts a whole tile in one L1 set. */
    for (int64_t k0 = 0; k0 < d->K; k0 += kt->gemm_kc) {
        int64_t kc = attn_min64(kt->gemm_kc, d->K - k0);
        kt->qk_panel(kc, x + k0, d->x_sm, mb, wt + k0 * nr, c, nr, k0 > 0, NULL);
    }
    T *y = (T *)d->y;
    for (int64_t m = 0; m < mb; m++) {
        T *yr = y + (m0 + m) * d->y_sm + n0;
        const T *cr = c + m * nr;
        if (bias)
            for (int64_t r = 0; r < nn; r++) yr[r] = cr[r] + bias[n0 + r];
        else
            for (int64_t r = 0; r < nn; r++) yr[r] = cr[r];
    }
}

/*
 * Few rows (decode steps, GEMV-like): no packing -- y rows are dot products
 * of the (zero-padded) x rows with W's rows, ATTN_GEMM_ROWS_N outputs per
 * unit, on the rows-path kernel qk_rows. W is read once, in order.
 */
static void GEMM_FN(linear_rows_unit)(const attn_linear_desc *d, const KIO *kio, int64_t u,
                                      const T *xpad, int64_t ldx)
{
    int64_t n0 = u * ATTN_GEMM_ROWS_N, nn = attn_min64(ATTN_GEMM_ROWS_N, d->N - n0);
    T *y = (T *)d->y + n0;
    const T *bias = (const T *)d->bias;
    kio->qk_rows(d->K, xpad, ldx, (int)d->M, (const T *)d->w + n0 * d->w_sn, d->w_sn, nn, NULL, y,
                 d->y_sm);
    if (bias)
        for (int64_t m = 0; m < d->M; m++)
            for (int64_t r = 0; r < nn; r++) y[m * d->y_sm + r] += bias[n0 + r];
}

static attn_status GEMM_FN(linear_rows)(const attn_linear_desc *d, const KTAB *kt, const KIO *kio,
                                        int num_threads)
{
    int64_t ldx = attn_round_up(d->K, kt->vlen);
    T *xpad = (T *)attn_scratch_alloc_n(attn_mul_checked(d->M, ldx), sizeof(T));
    if (!xpad) return ATTN_ENOMEM;
    for (int64_t m = 0; m < d->M; m++) {
        const T *x = (const T *)d->x + m * d->x_sm;
        for (int64_t k = 0; k < ldx; k++) xpad[m * ldx + k] = k < d->K ? x[k] : (T)0;
    }
    int64_t nunits = (d->N + ATTN_GEMM_ROWS_N - 1) / ATTN_GEMM_ROWS_N;
    int nthreads = attn_region_threads(num_threads, nunits, (double)d->M * d->N * d->K);
    (void)nthreads; /* unused without OpenMP */
#ifdef _OPENMP
#pragma omp parallel for num_threads(nthreads) if (nthreads > 1) schedule(static)
#endif
    for (int64_t u = 0; u < nunits; u++) GEMM_FN(linear_rows_unit)(d, kio, u, xpad, ldx);
    attn_scratch_free(xpad);
    return ATTN_OK;
}

static int GEMM_FN(dims_ok)(const attn_linear_desc *d)
{
    if (d->M < 0 || d->N < 0 || d->K < 0) return 0;
    /* every product the driver forms (packed W, padded X, Y offsets) fits */
    return attn_mul_checked(attn_round_up(d->N, ATTN_MAX_LANES), d->K) >= 0 &&
           attn_mul_checked(d->M, attn_round_up(d->K, ATTN_MAX_LANES)) >= 0 &&
           attn_mul_checked(d->M, d->N) >= 0;
}

/* The path a problem takes (the one decision attn_linear and
 * attn_linear_plan share, so a test that asserts a path asserts the truth). */
static int GEMM_FN(takes_rows)(const attn_linear_desc *d)
{
    return d->M <= ATTN_GEMM_ROWS_MAX_M && d->w_sk == 1;
}

attn_status GEMM_FN(attn_linear_plan)(const attn_linear_desc *d, int isa, int num_threads,
                                      attn_linear_plan_info *info)
{
    if (!d || !info || !GEMM_FN(dims_ok)(d)) return ATTN_EINVAL;
    const KTAB *kt = KTAB_GET(isa);
    if (!kt || !KIO_GET(isa)) return ATTN_EISA;
    memset(info, 0, sizeof *info);
    if (d->M == 0 || d->N == 0 || d->K == 0) {
        info->path = ATTN_LINEAR_PATH_NONE;
        return ATTN_OK;
    }
    double work = (double)d->M * d->N * d->K;
    if (GEMM_FN(takes_rows)(d)) {
        info->path = ATTN_LINEAR_PATH_ROWS;
        info->units = (d->N + ATTN_GEMM_ROWS_N - 1) / ATTN_GEMM_ROWS_N;
    } else {
        info->path = d->w_sk == 1 ? ATTN_LINEAR_PATH_PACKED_ROWS : ATTN_LINEAR_PATH_PACKED_STRIDED;
        info->units = (d->N + kt->nr - 1) / kt->nr * ((d->M + kt->gemm_mc - 1) / kt->gemm_mc);
    }
    info->threads = attn_plan_threads(num_threads, info->units, work);
    return ATTN_OK;
}

attn_status GEMM_FN(attn_linear)(const attn_linear_desc *d, int isa, int num_threads)
{
    if (!d || !GEMM_FN(dims_ok)(d)) return ATTN_EINVAL;
    if (d->M == 0 || d->N == 0) return ATTN_OK;
    if (!d->x || !d->w || !d->y) return ATTN_EINVAL;
    const KTAB *kt = KTAB_GET(isa);
    const KIO *kio = KIO_GET(isa);
    if (!kt || !kio) return ATTN_EISA;
    if (d->K == 0) {
        const T *bias = (const T *)d->bias;
        for (int64_t m = 0; m < d->M; m++)
            for (int64_t n = 0; n < d->N; n++) ((T *)d->y)[m * d->y_sm + n] = bias ? bias[n] : 0;
        return ATTN_OK;
    }
    if (GEMM_FN(takes_rows)(d)) return GEMM_FN(linear_rows)(d, kt, kio, num_threads);
    const int64_t nr = kt->nr;
    int64_t npanels = (d->N + nr - 1) / nr;
    const int64_t rows_per_unit = kt->gemm_mc;
    int64_t nblocks = (d->M + rows_per_unit - 1) / rows_per_unit;
    int64_t nunits = npanels * nblocks;
    T *packed = (T *)attn_scratch_alloc_n(attn_mul_checked(npanels * nr, d->K), sizeof(T));
    if (!packed) return ATTN_ENOMEM;
    int64_t c_elems = rows_per_unit * nr;
    int nthreads = attn_region_threads(num_threads, nunits, (double)d->M * d->N * d->K);
    int failed = 0, interrupted = 0;
    (void)nthreads; /* unused without OpenMP */
#ifdef _OPENMP
#pragma omp parallel num_threads(nthreads) if (nthreads > 1)
#endif
    {
        T *c = (T *)attn_scratch_alloc_n(c_elems, sizeof(T));
        if (!c) {
            attn_flag_set(&failed);
        }
#ifdef _OPENMP
#pragma omp for schedule(static)
#endif
        for (int64_t p = 0; p < npanels; p++) GEMM_FN(pack_panel)(d, kt, kio, p, packed + p * d->K * nr);
        /* (implicit barrier: every panel is packed) */
#ifdef _OPENMP
#pragma omp for schedule(dynamic, 1)
#endif
        for (int64_t u = 0; u < nunits; u++) {
            if (attn_flag_get(&failed) || attn_flag_get(&interrupted)) continue;
            if (attn_cancelled(d->cancellable, d->cancel_epoch)) {
                attn_flag_set(&interrupted);
                continue;
            }
            GEMM_FN(linear_unit)(d, kt, u, npanels, packed, c);
        }
        attn_scratch_free(c);
    }
    attn_scratch_free(packed);
    if (failed) return ATTN_ENOMEM;
    return interrupted ? ATTN_EINTR : ATTN_OK;
}

#undef GEMM_FN
#undef GEMM_CAT
#undef GEMM_CAT_
