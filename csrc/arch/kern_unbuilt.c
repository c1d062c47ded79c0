/*
 * The tables of a level this build could not compile (setup.py compiles
 * this file once per such level, with ATTN_UNBUILT_LEVEL set to its name,
 * e.g. amxbf16, and no ISA flags). They are all zeros: the dispatch
 * (csrc/dispatch/cpu_features.c) lists every level's tables, and a NULL
 * isa name is how it knows that this one is absent. Nothing here is ever
 * called.
 */
#include "../kernels/ktab.h"

#ifndef ATTN_UNBUILT_LEVEL
#error "setup.py defines ATTN_UNBUILT_LEVEL (the level's name) for this file"
#endif
#define UNBUILT_CAT_(a, l, b) a##_##l##_##b
#define UNBUILT_CAT(a, l, b) UNBUILT_CAT_(a, l, b)

const attn_ktab_f32 UNBUILT_CAT(attn_ktab, ATTN_UNBUILT_LEVEL, f32) = {0};
const attn_kio_f32 UNBUILT_CAT(attn_kio, ATTN_UNBUILT_LEVEL, f32) = {0};
const attn_kio_bf16 UNBUILT_CAT(attn_kio, ATTN_UNBUILT_LEVEL, bf16) = {0};
const attn_kio_f16 UNBUILT_CAT(attn_kio, ATTN_UNBUILT_LEVEL, f16) = {0};
const attn_kio_i8 UNBUILT_CAT(attn_kio, ATTN_UNBUILT_LEVEL, i8) = {0};
