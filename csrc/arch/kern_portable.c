/*
 * Portable kernels (no ISA flags): float32 and float64 instances of
 * csrc/kernels/tiles.inc.c over the generic mapping in simd_generic.h.
 * float32 uses the same exp2 algorithm as the vector ISAs (vmath.h);
 * float64 uses the C library's exp2, correctly rounded to within 1 ulp.
 */
#include <math.h>
#include "../kernels/ktab.h"
#include "../kernels/vmath.h"

static inline double attn_inv1p_exp2_f64(double x) { return 1.0 / (1.0 + exp2(x)); }

/* ---- float32 ---- */
#define T float
#define VL 4
#define NV 2
#define MR_QK 4
#define MR_PV 4
#define ROWS_MAX 2
#define MR_ADD 4
#define INV1P_SHIFT 0.0f
#define SCALAR_EXP2 attn_exp2_f32
#define SCALAR_INV1P_EXP2 attn_inv1p_exp2_f32
#define FN(name) name##_portable_f32
#define KTAB_TYPE attn_ktab_f32
#define KTAB_NAME attn_ktab_portable_f32
#define ISA_NAME "portable"
#define vec vec_f32
#include "simd_generic.h"
#include "../kernels/tiles.inc.c"
#undef T
#undef VL
#undef NV
#undef MR_QK
#undef MR_PV
#undef ROWS_MAX
#undef SCALAR_EXP2
#undef SCALAR_INV1P_EXP2
#undef INV1P_SHIFT
#undef FN
#undef KTAB_TYPE
#undef KTAB_NAME
#undef vec

/* ---- float64 ---- */
#define T double
#define VL 4
#define NV 2
#define MR_QK 4
#define MR_PV 4
#define ROWS_MAX 2
#define SCALAR_EXP2 exp2
#define INV1P_SHIFT 0.0
#define SCALAR_INV1P_EXP2 attn_inv1p_exp2_f64
#define FN(name) name##_portable_f64
#define KTAB_TYPE attn_ktab_f64
#define KTAB_NAME attn_ktab_portable_f64
#define vec vec_f64
#define v_load v64_load
#define v_store v64_store
#define v_load_n v64_load_n
#define v_store_n v64_store_n
#define v_set1 v64_set1
#define v_zero v64_zero
#define v_add v64_add
#define v_sub v64_sub
#define v_mul v64_mul
#define v_fma v64_fma
#define v_max v64_max
#define v_hsum v64_hsum
#define v_hmax v64_hmax
#define v_neginf_to_zero v64_neginf_to_zero
#define v_exp2 v64_exp2
#define v_inv1p_exp2_shifted v64_inv1p_exp2_shifted
#define v_recip v64_recip
#include "simd_generic.h"
#include "../kernels/tiles.inc.c"
