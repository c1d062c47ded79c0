/*
 * CPU detection and the kernel tables.
 *
 * Features are read once (cpuid + xgetbv) and cached. An ISA level
 * (ATTN_ISA_LEVELS, attn.h) is "supported" when it was built (setup.py
 * compiled csrc/arch/kern_<isa>.c with exactly that ISA's flags; for a level
 * it could not build it links kern_unbuilt.c's zeroed tables instead) and
 * the CPU and OS can run every instruction those flags allow (cpu_runs):
 *   avx2:   AVX, AVX2, FMA, F16C (+ OSXSAVE and the OS saving xmm/ymm state)
 *   avx512: AVX512 F, VL, BW, DQ (+ the OS saving opmask/zmm state)
 *   avx512vnni: avx512 + AVX512_VNNI
 *   avx512bf16: avx512vnni + AVX512_BF16 (every such CPU has VNNI)
 *   avx512bf16emu: as avx512 (the BF16 instructions are emulated); tests only
 *   amxbf16: avx512bf16 + AMX-TILE, AMX-BF16, the OS saving tile state
 *            (XCR0 bits 17, 18) and, on Linux, this process's permission
 *            to use it (arch_prctl ARCH_REQ_XCOMP_PERM, asked for the first
 *            time the level is considered: tile_permission)
 *   amxbf16emu: as avx512 (AMX and BF16 instructions emulated); tests only
 * The choice of level (ATTNCORE_ISA or the best supported) is made by the
 * Python layer at import and passed to every call, so tests can run every
 * level in one process.
 */
#include <string.h>
#include "../kernels/ktab.h"
#if defined(__linux__)
#include <sys/syscall.h>
#include <unistd.h>
#endif

#if defined(__x86_64__) || defined(__i386__) || defined(_M_X64)
#define ATTN_X86 1
#include <cpuid.h>
#endif

typedef struct {
    int init;
    int avx, avx2, fma, f16c, avx512f, avx512vl, avx512bw, avx512dq, avx512vnni, avx512bf16, amx_tile, amx_bf16;
    int os_ymm, os_zmm, os_tiles;
    char names[192];
} cpu_info;

static cpu_info g_cpu;

#ifdef ATTN_X86
static unsigned long long read_xcr0(void)
{
    unsigned int lo, hi;
    __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
    return ((unsigned long long)hi << 32) | lo;
}
#endif

/* Linux enables the 8 KiB tile data state per process, on request (since
 * 5.16): without it the first tile instruction raises SIGILL. The grant
 * lasts for the process and makes every later sigaltstack() need room for
 * the larger signal frame, so it is asked for only when the amxbf16 level
 * is built and the CPU could run it, on the first question about that
 * level (the answer is cached). Elsewhere XCR0 alone decides. */
#if defined(__linux__) && defined(SYS_arch_prctl)
static int tile_permission_query(void)
{
    const long ARCH_GET_XCOMP_PERM = 0x1022, ARCH_REQ_XCOMP_PERM = 0x1023, XFEATURE_XTILEDATA = 18;
    unsigned long long perm = 0;
    if (syscall(SYS_arch_prctl, ARCH_GET_XCOMP_PERM, &perm) == 0 && ((perm >> XFEATURE_XTILEDATA) & 1)) return 1;
    if (syscall(SYS_arch_prctl, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) != 0) return 0;
    perm = 0;
    if (syscall(SYS_arch_prctl, ARCH_GET_XCOMP_PERM, &perm) != 0) return 0;
    return (perm >> XFEATURE_XTILEDATA) & 1;
}
#else
static int tile_permission_query(void) { return 1; }
#endif

static int tile_permission(void)
{
    static int asked = 0, granted = 0;   /* (first asked at import, under the GIL) */
    if (!asked) {
        granted = tile_permission_query();
        asked = 1;
    }
    return granted;
}

static void append(char *buf, size_t size, const char *name, int present)
{
    if (!present) return;
    size_t len = strlen(buf);
    if (len + strlen(name) + 2 >= size) return;
    if (len) strcat(buf, ",");
    strcat(buf, name);
}

static void detect(cpu_info *c)
{
    memset(c, 0, sizeof *c);
#ifdef ATTN_X86
    unsigned int a, b, cx, d;
    if (__get_cpuid(1, &a, &b, &cx, &d)) {
        int osxsave = (cx >> 27) & 1;
        c->fma = (cx >> 12) & 1;
        c->avx = (cx >> 28) & 1;
        c->f16c = (cx >> 29) & 1;
        if (osxsave) {
            unsigned long long xcr0 = read_xcr0();
            c->os_ymm = (xcr0 & 0x6) == 0x6;      /* xmm + ymm state */
            c->os_zmm = (xcr0 & 0xe6) == 0xe6;    /* + opmask, zmm hi256, hi16 zmm */
            c->os_tiles = (xcr0 & 0x60000) == 0x60000;   /* XTILECFG + XTILEDATA */
        }
    }
    if (__get_cpuid_count(7, 0, &a, &b, &cx, &d)) {
        c->avx2 = (b >> 5) & 1;
        c->avx512f = (b >> 16) & 1;
        c->avx512dq = (b >> 17) & 1;
        c->avx512bw = (b >> 30) & 1;
        c->avx512vl = (b >> 31) & 1;
        c->avx512vnni = (cx >> 11) & 1;
        c->amx_bf16 = (d >> 22) & 1;
        c->amx_tile = (d >> 24) & 1;
    }
    if (__get_cpuid_count(7, 1, &a, &b, &cx, &d)) c->avx512bf16 = (a >> 5) & 1;
#endif
    size_t n = sizeof c->names;
    append(c->names, n, "avx", c->avx);
    append(c->names, n, "avx2", c->avx2);
    append(c->names, n, "fma", c->fma);
    append(c->names, n, "f16c", c->f16c);
    append(c->names, n, "avx512f", c->avx512f);
    append(c->names, n, "avx512vl", c->avx512vl);
    append(c->names, n, "avx512bw", c->avx512bw);
    append(c->names, n, "avx512dq", c->avx512dq);
    append(c->names, n, "avx512_vnni", c->avx512vnni);
    append(c->names, n, "avx512_bf16", c->avx512bf16);
    append(c->names, n, "amx_tile", c->amx_tile);
    append(c->names, n, "amx_bf16", c->amx_bf16);
    append(c->names, n, "os_ymm", c->os_ymm);
    append(c->names, n, "os_zmm", c->os_zmm);
    append(c->names, n, "os_tiles", c->os_tiles);
    c->init = 1;
}

static const cpu_info *cpu(void)
{
    /* Called first at import, under the GIL, so the lazy init cannot race. */
    if (!g_cpu.init) detect(&g_cpu);
    return &g_cpu;
}

const char *attn_cpu_features(void) { return cpu()->names; }

const char *attn_compiler(void)
{
#if defined(__clang__)
    return "clang " __clang_version__;
#elif defined(__GNUC__)
    return "gcc " __VERSION__;
#elif defined(_MSC_VER)
    return "msvc";
#else
    return "unknown";
#endif
}

/* Every level's tables, indexed by level (ATTN_ISA_LEVELS). */
typedef struct {
    const attn_ktab_f32 *ktab_f32;
    const attn_kio_f32 *kio_f32;
    const attn_kio_bf16 *kio_bf16;
    const attn_kio_f16 *kio_f16;
    const attn_kio_i8 *kio_i8;
    const char *name;
    int auto_pick;   /* attn_isa_best may choose it */
} level_tables;

#define LEVEL_TABLES_(NAME, name, auto_) \
    {&attn_ktab_##name##_f32, &attn_kio_##name##_f32, &attn_kio_##name##_bf16, &attn_kio_##name##_f16, \
     &attn_kio_##name##_i8, #name, auto_},
static const level_tables levels[ATTN_ISA_COUNT] = {ATTN_ISA_LEVELS(LEVEL_TABLES_)};
#undef LEVEL_TABLES_

/* A level whose kernel file was not compiled has kern_unbuilt.c's zeroed
 * tables: no isa name. */
int attn_isa_built(int isa) { return isa >= 0 && isa < ATTN_ISA_COUNT && levels[isa].ktab_f32->isa != NULL; }

static int cpu_runs(int isa)
{
    const cpu_info *c = cpu();
    switch (isa) {
    case ATTN_ISA_PORTABLE: return 1;
    case ATTN_ISA_AVX2: return c->avx && c->avx2 && c->fma && c->f16c && c->os_ymm;
    case ATTN_ISA_AVX512:
    case ATTN_ISA_AVX512BF16EMU:
    case ATTN_ISA_AMXBF16EMU:
        return c->avx512f && c->avx512vl && c->avx512bw && c->avx512dq && c->os_zmm;
    case ATTN_ISA_AVX512VNNI:
        return cpu_runs(ATTN_ISA_AVX512) && c->avx512vnni;
    case ATTN_ISA_AVX512BF16:
        return cpu_runs(ATTN_ISA_AVX512VNNI) && c->avx512bf16;
    case ATTN_ISA_AMXBF16:
        return attn_isa_built(ATTN_ISA_AMXBF16) && cpu_runs(ATTN_ISA_AVX512BF16) && c->amx_tile &&
               c->amx_bf16 && c->os_tiles && tile_permission();
    default: return 0;
    }
}

int attn_isa_supported(int isa) { return attn_isa_built(isa) && cpu_runs(isa); }

int attn_isa_best(void)
{
    for (int isa = ATTN_ISA_COUNT - 1; isa > 0; isa--)
        if (levels[isa].auto_pick && attn_isa_supported(isa)) return isa;
    return ATTN_ISA_PORTABLE;
}

const char *attn_isa_name(int isa) { return isa >= 0 && isa < ATTN_ISA_COUNT ? levels[isa].name : "unknown"; }

/* The tables of a supported level, or NULL. */
const attn_ktab_f32 *attn_ktab_get_f32(int isa) { return attn_isa_supported(isa) ? levels[isa].ktab_f32 : NULL; }
const attn_kio_f32 *attn_kio_get_f32(int isa) { return attn_isa_supported(isa) ? levels[isa].kio_f32 : NULL; }
const attn_kio_bf16 *attn_kio_get_bf16(int isa) { return attn_isa_supported(isa) ? levels[isa].kio_bf16 : NULL; }
const attn_kio_f16 *attn_kio_get_f16(int isa) { return attn_isa_supported(isa) ? levels[isa].kio_f16 : NULL; }
const attn_kio_i8 *attn_kio_get_i8(int isa) { return attn_isa_supported(isa) ? levels[isa].kio_i8 : NULL; }

/* float64 runs the portable kernels on every level (DESIGN.md). */
const attn_ktab_f64 *attn_ktab_get_f64(int isa)
{
    return attn_isa_supported(isa) ? &attn_ktab_portable_f64 : NULL;
}

const attn_kio_f64 *attn_kio_get_f64(int isa)
{
    return attn_isa_supported(isa) ? &attn_kio_portable_f64 : NULL;
}

attn_status attn_vexp2_f32(int isa, const float *x, float *y, int64_t n)
{
    const attn_ktab_f32 *kt = attn_ktab_get_f32(isa);
    if (!kt) return ATTN_EISA;
    kt->exp2(n, x, y);
    return ATTN_OK;
}

attn_status attn_vtanh_f32(int isa, const float *x, float *y, int64_t n)
{
    const attn_ktab_f32 *kt = attn_ktab_get_f32(isa);
    if (!kt) return ATTN_EISA;
    kt->tanh(n, x, y);
    return ATTN_OK;
}
