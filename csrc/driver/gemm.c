/* Linear-layer GEMM entry points attn_linear_f32 / attn_linear_f64
 * (the algorithm is in gemm.inc.c; its cache blocks, gemm_kc and gemm_mc,
 * come from each level's kernel table). */
#include <stdint.h>
#include <string.h>
#include "../kernels/ktab.h"
#include "workspace.h"

/* Up to this many rows, and with W's rows contiguous, skip the packing and
 * take dot products (linear_rows): packing W costs about as much as
 * multiplying a few dozen rows by it. Measured crossover (Zen 4, K = 768,
 * N = 2304): about 48 rows; 1 row (a decode step) is 13x faster than
 * packing. ATTN_GEMM_ROWS_N outputs per unit. */
#define ATTN_GEMM_ROWS_MAX_M 32
#define ATTN_GEMM_ROWS_N 64

#define T float
#define TAG f32
#define KTAB attn_ktab_f32
#define KTAB_GET attn_ktab_get_f32
#define KIO attn_kio_f32
#define KIO_GET attn_kio_get_f32
#include "gemm.inc.c"
#undef T
#undef TAG
#undef KTAB
#undef KTAB_GET
#undef KIO
#undef KIO_GET

#define T double
#define TAG f64
#define KTAB attn_ktab_f64
#define KTAB_GET attn_ktab_get_f64
#define KIO attn_kio_f64
#define KIO_GET attn_kio_get_f64
#include "gemm.inc.c"
#undef T
#undef TAG
#undef KTAB
#undef KTAB_GET
#undef KIO
#undef KIO_GET
