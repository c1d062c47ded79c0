/*
 * The avx512bf16emu level: kern_avx512bf16.c with its two AVX512-BF16
 * instructions emulated bit for bit in AVX-512F, compiled with the AVX-512
 * flags only. Never chosen automatically (dispatch); the tests run it on any
 * AVX-512 CPU so that the native bfloat16 layouts are checked everywhere.
 */
#define ATTN_BF16_EMULATED 1
#define LEVEL avx512bf16emu
#define ISA_NAME "avx512bf16emu"
#include "kern_avx512bf16.c"
