/*
 * Portable float64 kernels, used on every level (DESIGN.md: float64 needs no
 * intrinsics to be fast enough; it is the accuracy path). exp2 is the C
 * library's, within 1 ulp.
 */
#include <math.h>
#include "../kernels/ktab.h"

static inline double attn_inv1p_exp2_f64(double x) { return 1.0 / (1.0 + exp2(x)); }

typedef double T;
#define VL 4
#define NV 2
#define MR_QK 4
#define MR_PV 4
#define ROWS_MAX 2
#define PV_ROWS_VECS 3   /* 16 SSE registers (tiles_io.inc.c) */
#define MR_ADD 4
#define BK_PANEL 128
#define BK_ROWS 256
#define GEMM_KC 512
#define GEMM_MC 32
#define INV1P_SHIFT 0.0
#define SCALAR_EXP2 exp2
#define SCALAR_INV1P_EXP2 attn_inv1p_exp2_f64
#define SCALAR_TANH tanh
#define FN(name) name##_portable_f64
#define KTAB_TYPE attn_ktab_f64
#define PREP_TYPE attn_prep_f64
#define KTAB_NAME attn_ktab_portable_f64
#define ISA_NAME "portable"
#include "simd_generic.h"
#include "../kernels/tiles.inc.c"

/* The rows path's QK block: 4 rows x 1 key, plain horizontal sums. */
#define QK_ROWS 4
#define QK_KEYS 1
static inline void v_hsum_block(const vec a[4], T *out)
{
    for (int i = 0; i < 4; i++) out[i] = v_hsum(a[i]);
}

/* ---- the float64 input/output table ---- */
#define IT double
#define IO_SAME 1
#define v_load_in(p) v_load(p)
#define v_load_in_n(p, n) v_load_n((p), (n))
#define in_to_T(x) (x)
#define T_to_out(x) (x)
#define FNIO(name) name##_portable_io_f64
#define KIO_TYPE attn_kio_f64
#define KIO_NAME attn_kio_portable_f64
#define IO_DTYPE "float64"
#include "../kernels/tiles_io.inc.c"
