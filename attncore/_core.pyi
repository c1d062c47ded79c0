# Type stub for the compiled extension attncore._core (attncore/_core.pyx).
from typing import Any, Optional

SCORE_DOT: int
SCORE_ADDITIVE: int
MASK_NONE: int
MASK_BOOL: int
MASK_ADD: int
ISA_NAMES: tuple[str, ...]
PATH_NAMES: dict[int, str]
ADDITIVE_FORMS: dict[int, Optional[str]]
MAX_NDIM: int
IO_F32: int
IO_F64: int
IO_BF16: int
IO_F16: int
IO_F32_KVBF16: int
IO_F32_KVF16: int
IO_F32_KVI8: int

def sdpa(op: str, io: int, isa: int, num_threads: int, dims: tuple, batch: tuple, q: Any, k: Any,
         v: Any, out: Any, mask_kind: int, mask: Any, causal: int, causal_offset: int,
         valid_lens: Any, scale: float, drop_threshold: int, drop_seed: int, drop_scale: float,
         weights: Any, lse: Any, score_kind: int = ..., w_score: Any = ...,
         plan_only: bool = ..., k_scale: Any = ..., v_scale: Any = ...) -> Any: ...
def sdpa_fast(op: str, q: Any, k: Any, v: Any, is_causal: Any, scale: Any, enable_gqa: Any,
              num_threads: Any, isa: int, mask: Any = ...) -> Any: ...
def sdpa_fast_torch(op: str, q: Any, k: Any, v: Any, is_causal: Any, scale: Any, enable_gqa: Any,
                    num_threads: Any, isa: int, torch_dtypes: tuple, mask: Any = ...) -> Any: ...
def kv_attend_fast(op: str, q: Any, k: Any, v: Any, ks: Any, vs: Any, length: int, io: int,
                   is_causal: Any, scale: Any, num_threads: Any, isa: int) -> Any: ...
def linear(op: str, f64: bool, isa: int, num_threads: int, x: Any, w: Any, bias: Any, y: Any) -> None: ...
def simulate_sigint() -> None: ...
def dropout_bits(seed: int, counter: int) -> int: ...
def vexp2_f32(isa: int, x: Any, y: Any) -> None: ...
def vtanh_f32(isa: int, x: Any, y: Any) -> None: ...
def isa_built(isa: int) -> bool: ...
def isa_supported(isa: int) -> bool: ...
def isa_best() -> int: ...
def cpu_features() -> list[str]: ...
def compiler() -> str: ...
def default_threads() -> int: ...
def openmp_enabled() -> bool: ...
def single_threaded_after_fork() -> bool: ...

# attncore/_softmax.pxi
SOFTMAX_MAX_DIMS: int
SOFTMAX_PATH_NAMES: dict[int, str]
KR_KERNELS: dict[str, int]
def softmax(op: str, f64: bool, isa: int, num_threads: int, x: Any, out: Any, axis: int,
            mask_kind: int, mask: Any, valid_lens: Any, fill_masked: bool, fill: float,
            plan_only: bool = ...) -> Any: ...
def kernel_regression(op: str, f64: bool, isa: int, num_threads: int, dims: tuple, batch: tuple,
                      xq: Any, xk: Any, y: Any, out: Any, kernel: int, bandwidth: float,
                      mask_kind: int, mask: Any, valid_lens: Any, weights: Any) -> None: ...

# attncore/_vision.pxi
VISION_POOL_AVG: int
VISION_POOL_MAX: int
VISION_SPATIAL_NONE: int
VISION_SPATIAL_CONV: int
VISION_SPATIAL_LOGITS: int
VISION_NESTS: dict[int, str]
VISION_SCHEDULES: dict[int, str]
def vision(op: str, f64: bool, num_threads: int, x: Any, out: Any, pool: int, w1: Any, b1: Any,
           w2: Any, b2: Any, spatial: int, conv_w: Any, conv_b: float, logits: Any,
           plan_only: bool = ...) -> Any: ...
