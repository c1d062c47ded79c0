"""Build attncore's C/Cython extension.

- attncore._core is compiled from attncore/_core.pyx, the drivers, the
  dispatch file and the portable kernels with baseline flags, -O3 and OpenMP.
- Each per-ISA kernel file (csrc/arch/kern_<isa>.c) is compiled separately
  with exactly its ISA's flags, after a probe shows the compiler can build
  that ISA's intrinsics; it is then linked in. For a level it cannot build,
  csrc/arch/kern_unbuilt.c (zeroed tables under the level's names) is linked
  instead, which tells the dispatch the level is absent. ISA flags never
  reach any other file, and nothing is built with -march=native or
  -ffast-math, so the package runs on any x86-64 CPU and picks its kernels
  at run time.

Environment:
  ATTNCORE_FAIL_NO_OPENMP=1   make a missing OpenMP an error (CI sets it)
  ATTNCORE_CYTHON_CHECKS=1    compile Cython with bounds/wraparound checks on
  ATTNCORE_DISABLE_ISA=avx512[,avx2]   skip building those kernel levels
  ATTNCORE_EXTRA_CFLAGS="..."  space-separated flags appended to the compile of
                               every file and probe (e.g. sanitizers: tools/sanitize.sh)
  ATTNCORE_EXTRA_LDFLAGS="..." space-separated flags appended to the extension's
                               and the OpenMP probe's link
"""
import os
import sys
import tempfile
import textwrap

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

HERE = os.path.dirname(os.path.abspath(__file__))

ISA_FLAGS = {
    "avx2": ["-mavx2", "-mfma", "-mf16c"],
    "avx512": ["-mavx512f", "-mavx512vl", "-mavx512bw", "-mavx512dq"],
    "avx512vnni": ["-mavx512f", "-mavx512vl", "-mavx512bw", "-mavx512dq", "-mavx512vnni"],
    "avx512bf16": ["-mavx512f", "-mavx512vl", "-mavx512bw", "-mavx512dq", "-mavx512vnni", "-mavx512bf16"],
    # avx512bf16 with its BF16 instructions emulated: tests its layouts on any AVX-512 CPU
    "avx512bf16emu": ["-mavx512f", "-mavx512vl", "-mavx512bw", "-mavx512dq"],
    "amxbf16": ["-mavx512f", "-mavx512vl", "-mavx512bw", "-mavx512dq", "-mavx512vnni", "-mavx512bf16",
                "-mamx-tile", "-mamx-bf16"],
    # amxbf16 with its AMX and BF16 instructions emulated: tests its tile layouts on any AVX-512 CPU
    "amxbf16emu": ["-mavx512f", "-mavx512vl", "-mavx512bw", "-mavx512dq"],
}
ISA_PROBES = {
    "avx2": """
        #include <immintrin.h>
        int main(void) {
            __m256 a = _mm256_set1_ps(1.0f);
            a = _mm256_fmadd_ps(a, a, a);
            __m256i m = _mm256_cmpgt_epi32(_mm256_set1_epi32(3), _mm256_setzero_si256());
            float out[8];
            _mm256_maskstore_ps(out, m, a);
            __m128i h = _mm256_cvtps_ph(a, 0);            /* F16C */
            return (int)out[0] + _mm_extract_epi16(h, 0);
        }""",
    "avx512": """
        #include <immintrin.h>
        int main(void) {
            __m512 a = _mm512_set1_ps(1.0f);
            a = _mm512_fmadd_ps(a, a, a);
            a = _mm512_scalef_ps(a, _mm512_roundscale_ps(a, _MM_FROUND_TO_NEAREST_INT));
            float out[16];
            _mm512_mask_storeu_ps(out, (__mmask16)3, a);
            return (int)_mm512_reduce_add_ps(a) + (int)out[0];
        }""",
    "avx512vnni": """
        #include <immintrin.h>
        int main(void) {
            __m512i a = _mm512_set1_epi16(3);
            a = _mm512_dpwssd_epi32(a, a, _mm512_cvtepi8_epi16(_mm256_set1_epi8(-2)));
            return _mm512_reduce_add_epi32(a) > 0 ? 0 : 1;
        }""",
    "avx512bf16": """
        #include <immintrin.h>
        int main(void) {
            __m512i v = _mm512_dpwssd_epi32(_mm512_set1_epi16(3), _mm512_set1_epi16(3), _mm512_set1_epi16(3));
            __m512 a = _mm512_cvtepi32_ps(v);
            __m512bh b = _mm512_cvtne2ps_pbh(a, a);
            a = _mm512_dpbf16_ps(a, b, b);
            return (int)_mm512_reduce_add_ps(a);
        }""",
}
ISA_PROBES["amxbf16"] = """
    #include <immintrin.h>
    int main(void) {
        unsigned char cfg[64] = {1};
        float out[16 * 16];
        __m512 a = _mm512_dpbf16_ps(_mm512_setzero_ps(), _mm512_cvtne2ps_pbh(_mm512_set1_ps(1), _mm512_set1_ps(1)),
                                    _mm512_cvtne2ps_pbh(_mm512_set1_ps(1), _mm512_set1_ps(1)));
        for (int t = 0; t < 3; t++) { cfg[16 + 2 * t] = 64; cfg[48 + t] = 16; }
        _tile_loadconfig(cfg);
        _tile_zero(0);
        _tile_zero(1);
        _tile_zero(2);
        _tile_dpbf16ps(0, 1, 2);
        _tile_stored(0, out, 64);
        _tile_release();
        return (int)out[0] + (int)_mm512_reduce_add_ps(a);
    }"""
ISA_PROBES["avx512bf16emu"] = ISA_PROBES["avx512"]
ISA_PROBES["amxbf16emu"] = ISA_PROBES["avx512"]
OPENMP_PROBE = """
    #include <omp.h>
    int main(void) {
        int n = 0;
    #pragma omp parallel reduction(+:n)
        n += 1;
        return n > 0 ? 0 : 1;
    }"""

# -ffp-contract=off: the compiler must not fuse a * b + c on its own. The
# kernels ask for FMAs explicitly where they want them; an implicit fusion
# would break the compensated (Kahan) sums and make results depend on the
# compiler version.
BASE_FLAGS = ["-O3", "-fno-strict-aliasing", "-ffp-contract=off", "-Wall", "-Wno-unused-function"]
OPENMP_FLAGS = ["-fopenmp"]
EXTRA_CFLAGS = os.environ.get("ATTNCORE_EXTRA_CFLAGS", "").split()
EXTRA_LDFLAGS = os.environ.get("ATTNCORE_EXTRA_LDFLAGS", "").split()
INCLUDE_DIRS = [os.path.join("csrc", "include")]
C_SOURCES = [
    "csrc/dispatch/cpu_features.c",
    "csrc/driver/workspace.c",
    "csrc/driver/interrupt.c",
    "csrc/driver/sdpa.c",
    "csrc/driver/gemm.c",
    "csrc/driver/softmax.c",
    "csrc/driver/vision.c",
    "csrc/arch/kern_portable.c",
    "csrc/arch/kern_portable_f64.c",
]


def _warn(msg):
    print(f"attncore build: WARNING: {msg}", file=sys.stderr)


class BuildExt(build_ext):
    """build_ext that probes OpenMP and each ISA, compiling ISA files apart."""

    def _try_build(self, source, flags, link=False, link_flags=()):
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "probe.c")
            with open(path, "w") as f:
                f.write(textwrap.dedent(source))
            try:
                objs = self.compiler.compile([path], output_dir=tmp,
                                             extra_postargs=list(flags) + EXTRA_CFLAGS)
                if link:
                    self.compiler.link_executable(
                        objs, "probe", output_dir=tmp,
                        extra_postargs=list(link_flags) + EXTRA_LDFLAGS)
            except Exception:  # CompileError, LinkError
                return False
        return True

    def _compile_unbuilt(self, isa):
        """The zeroed tables that stand for a level this build skips."""
        return self.compiler.compile(
            [os.path.join("csrc", "arch", "kern_unbuilt.c")],
            output_dir=os.path.join(self.build_temp, "unbuilt", isa),   # one object per level
            include_dirs=INCLUDE_DIRS,
            macros=[("ATTN_UNBUILT_LEVEL", isa)],
            extra_postargs=BASE_FLAGS + EXTRA_CFLAGS,
        )

    def build_extensions(self):
        openmp = self._try_build(OPENMP_PROBE, OPENMP_FLAGS, link=True, link_flags=OPENMP_FLAGS)
        if not openmp:
            if os.environ.get("ATTNCORE_FAIL_NO_OPENMP") == "1":
                raise RuntimeError("attncore: the compiler cannot build OpenMP code "
                                   "(ATTNCORE_FAIL_NO_OPENMP=1)")
            _warn("OpenMP not available: building a single-threaded attncore")

        disabled = {s.strip() for s in os.environ.get("ATTNCORE_DISABLE_ISA", "").split(",") if s.strip()}
        for ext in self.extensions:
            ext.extra_compile_args = BASE_FLAGS + (OPENMP_FLAGS if openmp else []) + EXTRA_CFLAGS
            ext.extra_link_args = (OPENMP_FLAGS if openmp else []) + EXTRA_LDFLAGS
            for isa, flags in ISA_FLAGS.items():
                if isa in disabled:
                    _warn(f"{isa} kernels disabled by ATTNCORE_DISABLE_ISA")
                    objects = self._compile_unbuilt(isa)
                elif not self._try_build(ISA_PROBES[isa], flags):
                    _warn(f"the compiler cannot build {isa} intrinsics with {' '.join(flags)}; "
                          f"skipping the {isa} kernels")
                    objects = self._compile_unbuilt(isa)
                else:
                    objects = self.compiler.compile(
                        [os.path.join("csrc", "arch", f"kern_{isa}.c")],
                        output_dir=self.build_temp,
                        include_dirs=INCLUDE_DIRS,
                        extra_postargs=BASE_FLAGS + flags + EXTRA_CFLAGS,
                    )
                ext.extra_objects = list(ext.extra_objects or []) + objects
        super().build_extensions()


def extensions():
    from Cython.Build import cythonize

    checks = os.environ.get("ATTNCORE_CYTHON_CHECKS") == "1"
    ext = Extension(
        "attncore._core",
        sources=["attncore/_core.pyx"] + C_SOURCES,
        include_dirs=INCLUDE_DIRS,
        depends=[os.path.join(root, f) for root, _, files in os.walk("csrc") for f in files]
        + [os.path.join("attncore", f) for f in os.listdir("attncore") if f.endswith((".pxi", ".pxd"))],
    )
    return cythonize(
        [ext],
        compiler_directives={
            "language_level": 3,
            "boundscheck": checks,
            "wraparound": checks,
            "cdivision": True,
            "initializedcheck": checks,
        },
    )


os.chdir(HERE)
setup(ext_modules=extensions(), cmdclass={"build_ext": BuildExt})
