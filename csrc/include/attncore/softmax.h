/*
 * attncore C API, row softmax and Nadaraya-Watson kernel regression (plain
 * C99): attncore.softmax, attncore.masked_softmax, attncore.kernel_regression.
 *
 * Conventions as in attncore/attn.h: status codes (attn_status), one entry
 * per (operation, dtype), descriptors filled by the Cython layer from
 * validated arrays, outputs allocated by the caller, strides and offsets in
 * elements (any sign; 0 for broadcast dimensions), int64 index math, no
 * allocation that Python sees, no abort.
 */
#ifndef ATTNCORE_SOFTMAX_H
#define ATTNCORE_SOFTMAX_H

#include <stddef.h>
#include <stdint.h>
#include "attncore/attn.h"   /* attn_status, ATTN_MASK_* */

#ifdef __cplusplus
extern "C" {
#endif

/* The most dimensions a softmax problem may have besides its axis. */
#define ATTN_SOFTMAX_MAX_DIMS 32

/*
 * Softmax along one axis of an N-d array.
 *
 * The problem is a set of rows indexed by the `ndim` dimensions other than
 * the axis (sizes shape[0..ndim)); row r = (i_0, ..., i_{ndim-1}) is the L
 * elements x[sum_k i_k x_st[k] + j x_sl], j < L. Every array has its own
 * strides for the row dimensions (*_st) and along the axis (*_sl).
 *
 * For each row, with s_j = x_j (+ mask_j for an additive mask):
 *   entry j is masked when a bool mask is 0 there or j >= the row's valid
 *   length; then s_j = fill if fill_masked, else the entry gets weight 0.
 *   out_j = exp(s_j - m) / sum_k exp(s_k - m),  m = max_k s_k over entries
 *   not masked out (-inf scores also get weight exactly 0).
 * A row with no entry left (all masked, or all -inf) gives zeros; a NaN in a
 * kept entry (or +inf, as inf - inf) gives a row of NaN.
 * out may be x itself (same address and strides): every element of x is
 * read before the element of out at the same place is written.
 */
typedef struct {
    int ndim;                                /* row dimensions, 0..ATTN_SOFTMAX_MAX_DIMS */
    int64_t shape[ATTN_SOFTMAX_MAX_DIMS];    /* their sizes */
    int64_t L;                               /* length of the softmax axis */

    const void *x;  int64_t x_st[ATTN_SOFTMAX_MAX_DIMS];  int64_t x_sl;
    void *out;      int64_t o_st[ATTN_SOFTMAX_MAX_DIMS];  int64_t o_sl;

    int mask_kind;  /* ATTN_MASK_NONE, _BOOL (uint8, nonzero = keep), _ADD (the dtype) */
    const void *mask; int64_t m_st[ATTN_SOFTMAX_MAX_DIMS]; int64_t m_sl;

    /* Row r keeps entries j < valid_lens[sum_k i_k vl_st[k]] (values in
     * [0, L]); NULL for none. */
    const int64_t *valid_lens; int64_t vl_st[ATTN_SOFTMAX_MAX_DIMS];

    int fill_masked;   /* 0: masked entries get weight 0; 1: their score is `fill` */
    double fill;       /* d2l's masked_softmax: -1e6 */

    int cancellable;   /* Ctrl-C, as in attn_sdpa_desc */
    uint64_t cancel_epoch;
} attn_softmax_desc;

attn_status attn_softmax_f32(const attn_softmax_desc *desc, int isa, int num_threads);
attn_status attn_softmax_f64(const attn_softmax_desc *desc, int isa, int num_threads);

/* How a softmax call would run (tests assert the path they name). */
enum {
    ATTN_SOFTMAX_PATH_ROWS = 0,    /* one row at a time, read along the axis */
    ATTN_SOFTMAX_PATH_PANEL = 1    /* a panel of rows adjacent in memory (the axis is
                                    * strided, another dimension has unit stride):
                                    * lanes = rows, read a line of the panel at a time */
};
typedef struct {
    int path;              /* ATTN_SOFTMAX_PATH_* */
    int64_t lanes;         /* panel path: size of the lane dimension, else 0 */
    int64_t rows;          /* rows of the problem */
    int64_t units;         /* work units */
    int64_t rows_per_unit; /* rows (rows path) or lanes (panel path) per unit */
    int64_t chunk;         /* elements one exp2 call takes at most */
    int threads;           /* threads the region would use */
    int64_t segments;      /* rows path: segments a long row is read in, in place (0: none) */
    int split;             /* rows path: a unit is one segment (the threads share rows) */
} attn_softmax_plan_info;

attn_status attn_softmax_plan_f32(const attn_softmax_desc *desc, int isa, int num_threads,
                                  attn_softmax_plan_info *info);
attn_status attn_softmax_plan_f64(const attn_softmax_desc *desc, int isa, int num_threads,
                                  attn_softmax_plan_info *info);

/*
 * Nadaraya-Watson kernel regression (attention pooling with a distance
 * kernel), for a flattened batch of B problems:
 *
 *   r_ij^2 = sum_c (xq[b,i,c] - xk[b,j,c])^2      (the difference first)
 *   score  = -r^2 / (2 h^2)      gaussian
 *            -r / h              laplace
 *   w_ij   = softmax_j(score_ij + mask_ij) over the keys j not masked out
 *            (epanechnikov: w_ij = K_ij / sum_j K_ij with K = max(1 - r^2/h^2, 0);
 *             bool masks and valid lengths only)
 *   out[b,i,:] = sum_j w_ij y[b,j,:]
 *
 * xq (B, Lq, D), xk (B, Lk, D), y (B, Lk, Dy), out (B, Lq, Dy): element 0 of
 * batch b at *_boff[b], then a stride per point (*_sl) and unit stride along
 * D / Dy. A query whose keys are all masked (or all of weight 0) gives zeros.
 */
enum {
    ATTN_KR_GAUSSIAN = 0,
    ATTN_KR_LAPLACE = 1,
    ATTN_KR_EPANECHNIKOV = 2
};

typedef struct {
    int64_t B, Lq, Lk, D, Dy;
    int kernel;          /* ATTN_KR_* */
    double bandwidth;    /* h > 0, finite */

    const void *xq; const int64_t *xq_boff; int64_t xq_sl;
    const void *xk; const int64_t *xk_boff; int64_t xk_sl;
    const void *y;  const int64_t *y_boff;  int64_t y_sl;
    void *out;      const int64_t *o_boff;  int64_t o_sl;

    int mask_kind;  /* ATTN_MASK_*; additive masks: gaussian and laplace only */
    const void *mask; const int64_t *m_boff; int64_t m_si, m_sj;

    /* Query i of batch b sees keys j < valid_lens[vl_boff[b] + i * vl_si]
     * (values in [0, Lk]); NULL for none. */
    const int64_t *valid_lens; const int64_t *vl_boff; int64_t vl_si;

    void *weights;       /* NULL, or contiguous (B, Lq, Lk) of the dtype */

    int cancellable;
    uint64_t cancel_epoch;
} attn_kreg_desc;

attn_status attn_kernel_regression_f32(const attn_kreg_desc *desc, int isa, int num_threads);
attn_status attn_kernel_regression_f64(const attn_kreg_desc *desc, int isa, int num_threads);

#ifdef __cplusplus
}
#endif
#endif /* ATTNCORE_SOFTMAX_H */
