/*
 * The amxbf16emu level: kern_amxbf16.c with its tile instructions and
 * kern_avx512bf16.c's two AVX512-BF16 instructions emulated, compiled with
 * the AVX-512 flags only. Never chosen automatically (dispatch); the tests
 * run it on any AVX-512 CPU so that the AMX layouts and edges are checked
 * everywhere.
 */
#define ATTN_BF16_EMULATED 1
#define ATTN_AMX_EMULATED 1
#define LEVEL amxbf16emu
#define ISA_NAME "amxbf16emu"
#include "kern_amxbf16.c"
