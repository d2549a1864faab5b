"""Host compilation of CUDA C kernel code for the simulated device: g++ builds one shared
library per translation unit (``gradcore.backends.host_compiler``: cached on disk per user and in
memory), and ctypes calls it.

The prelude makes CuPy's kernel dialect compile as host C++: ``__device__`` and friends vanish,
CUDA's ``max``/``min`` on floating point are ``fmax``/``fmin`` (a NaN operand is dropped), CuPy's
``float16`` is a class whose arithmetic yields float, and ``CArray`` gives raw parameters.
Launches of kernels without float64 run with the CPU's flush-to-zero and denormals-are-zero
modes on, as CuPy compiles every kernel with ``-ftz=true`` (which affects float32 only).
"""

from __future__ import annotations

import ctypes
import os
from pathlib import Path

from gradcore.backends import host_compiler
from gradcore.backends.host_compiler import CompileError, NoCompilerError, cache_root

__all__ = ["COMPILER", "CompileError", "build"]

COMPILER = os.environ.get("CXX", "g++")
FLAGS = ("-O1", "-shared", "-fPIC", "-std=c++17", "-fno-fast-math", "-w")

PRELUDE = r"""
#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#if defined(__x86_64__) || defined(__i386__)
#include <xmmintrin.h>
#define GRADCORE_SIM_FTZ_ON() const unsigned int _gradcore_csr = _mm_getcsr(); \
    _mm_setcsr(_gradcore_csr | 0x8040u)  /* flush-to-zero and denormals-are-zero */
#define GRADCORE_SIM_FTZ_OFF() _mm_setcsr(_gradcore_csr)
#else
#error "the CUDA simulator models -ftz=true only on x86 CPUs"
#endif

#define __device__
#define __host__
#define __global__
#define __forceinline__ inline
#define __noinline__
#define __restrict__ __restrict

// CUDA's max and min: fmax/fmin on floating point (a NaN operand is dropped), plain on integers
__device__ inline float max(float a, float b) { return fmaxf(a, b); }
__device__ inline float min(float a, float b) { return fminf(a, b); }
__device__ inline double max(double a, double b) { return fmax(a, b); }
__device__ inline double min(double a, double b) { return fmin(a, b); }
__device__ inline int max(int a, int b) { return a > b ? a : b; }
__device__ inline int min(int a, int b) { return a < b ? a : b; }
__device__ inline long long max(long long a, long long b) { return a > b ? a : b; }
__device__ inline long long min(long long a, long long b) { return a < b ? a : b; }
__device__ inline unsigned int max(unsigned int a, unsigned int b) { return a > b ? a : b; }
__device__ inline unsigned int min(unsigned int a, unsigned int b) { return a < b ? a : b; }

// CUDA math functions that the C library lacks
__device__ inline float rsqrtf(float x) { return 1.0f / sqrtf(x); }
__device__ inline double rsqrt(double x) { return 1.0 / sqrt(x); }
__device__ inline float __expf(float x) { return expf(x); }
__device__ inline float __logf(float x) { return logf(x); }
__device__ inline float __fdividef(float a, float b) { return a / b; }
__device__ inline float __saturatef(float x) { return x < 0.0f ? 0.0f : (x > 1.0f ? 1.0f : x); }

// CUDA's half (cuda_fp16.h) is not modelled beyond conversions
struct half {
  _Float16 data_;
  half() {}
  half(float v) : data_((_Float16)v) {}
  operator float() const { return (float)data_; }
};

// CuPy's float16 (cupy/_core/include/cupy/float16.cuh): arithmetic goes through float
class float16 {
 private:
  _Float16 data_;
 public:
  float16() {}
  float16(float v) : data_((_Float16)v) {}
  explicit float16(bool v) : data_((_Float16)(float)v) {}
  explicit float16(double v) : data_((_Float16)(float)v) {}
  explicit float16(int v) : data_((_Float16)(float)v) {}
  explicit float16(unsigned int v) : data_((_Float16)(float)v) {}
  explicit float16(long long v) : data_((_Float16)(float)v) {}
  explicit float16(unsigned long long v) : data_((_Float16)(float)v) {}
  explicit float16(const half &v) : data_(v.data_) {}
  operator float() const { return (float)data_; }
  float16 &operator=(const float16 &) = default;
  template <typename U> float16 &operator=(const U &rhs) {
    *this = static_cast<float16>(rhs);
    return *this;
  }
  template <typename U> float16 &operator+=(const U &rhs) { *this = *this + rhs; return *this; }
  template <typename U> float16 &operator-=(const U &rhs) { *this = *this - rhs; return *this; }
  template <typename U> float16 &operator*=(const U &rhs) { *this = *this * rhs; return *this; }
  template <typename U> float16 &operator/=(const U &rhs) { *this = *this / rhs; return *this; }
};
inline float16 min(float16 x, float16 y) { return float16(fminf(float(x), float(y))); }
inline float16 max(float16 x, float16 y) { return float16(fmaxf(float(x), float(y))); }
inline float16 fmin(float16 x, float16 y) { return float16(fminf(float(x), float(y))); }
inline float16 fmax(float16 x, float16 y) { return float16(fmaxf(float(x), float(y))); }
inline int isnan(float16 x) { return isnan(float(x)); }
inline int isinf(float16 x) { return isinf(float(x)); }
inline int isfinite(float16 x) { return isfinite(float(x)); }
inline int signbit(float16 x) { return signbit(float(x)); }
inline int iszero(float16 x) { return float(x) == 0.0f; }
inline float16 copysign(float16 x, float16 y) { return float16(copysignf(float(x), float(y))); }
float16 nextafter(float16 x, float16 y) = delete;  // CuPy steps in float16: not modelled

// CuPy's CArray, for raw parameters: x[i] indexes the array in C order, x[idx] by position
template <typename T, int N> struct CArray {
  char *data_;
  ptrdiff_t size_;
  ptrdiff_t shape_[N > 0 ? N : 1];
  ptrdiff_t strides_[N > 0 ? N : 1];
  ptrdiff_t size() const { return size_; }
  const ptrdiff_t *shape() const { return shape_; }
  const ptrdiff_t *strides() const { return strides_; }
  T &operator[](const ptrdiff_t (&idx)[N > 0 ? N : 1]) const {
    ptrdiff_t offset = 0;
    for (int d = 0; d < N; ++d) offset += idx[d] * strides_[d];
    return *(T *)(data_ + offset);
  }
  T &operator[](ptrdiff_t i) const {
    ptrdiff_t offset = 0;
    for (int d = N - 1; d >= 0; --d) {
      offset += (i % shape_[d]) * strides_[d];
      i /= shape_[d];
    }
    return *(T *)(data_ + offset);
  }
};
"""


def cache_dir() -> Path:
    """Per user: ``$GRADCORE_CUDASIM_CACHE``, else ``cudasim`` in gradcore's cache folder."""
    explicit = os.environ.get("GRADCORE_CUDASIM_CACHE")
    return Path(explicit) if explicit else cache_root() / "cudasim"


def build(source: str) -> ctypes.CDLL:
    """The shared library of ``source`` (prelude included), compiled once per user."""
    try:
        return host_compiler.build(PRELUDE + source, COMPILER, FLAGS, cache_dir(), ".cpp")
    except NoCompilerError as error:
        raise NotImplementedError(
            f"the CUDA simulator compiles kernels with a host C++ compiler, and {error}: "
            "install g++"
        ) from error
