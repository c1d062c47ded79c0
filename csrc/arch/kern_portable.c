/*
 * Portable float32 kernels (no ISA flags): csrc/kernels/tiles.inc.c over the
 * generic mapping in simd_generic.h, which the compiler vectorises with the
 * baseline instruction set (SSE2 on x86-64). exp2 uses the same algorithm as
 * the vector ISAs (vmath.h). float64 is kern_portable_f64.c.
 */
#include <math.h>
#include "../kernels/ktab.h"
#include "../kernels/vmath.h"

typedef float T;
#define VL 4
#define NV 2
#define MR_QK 4
#define MR_PV 4
#define ROWS_MAX 2
#define MR_ADD 4
#define BK_PANEL 128
#define BK_ROWS 256
#define GEMM_KC 512
#define GEMM_MC 32
#define INV1P_SHIFT 0.0f
#define SCALAR_EXP2 attn_exp2_f32
#define SCALAR_INV1P_EXP2 attn_inv1p_exp2_f32
#define FN(name) name##_portable_f32
#define KTAB_TYPE attn_ktab_f32
#define PREP_TYPE attn_prep_f32
#define KTAB_NAME attn_ktab_portable_f32
#define ISA_NAME "portable"
#include "simd_generic.h"
#include "../kernels/tiles.inc.c"
