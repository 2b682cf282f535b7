// Just enough of CUDA to compile vesper_optim/kernels/kernels.cu as host C++ (g++ -std=c++17).
//
// Execution model: launch(grid, block, kernel, args...) runs every (block, thread) of the grid
// serially on the calling CPU thread, setting blockIdx/threadIdx before each call. That is exact
// for kernels whose threads never communicate (grid-stride, elementwise, no shared memory, no
// __syncthreads, no atomics, no warp intrinsics), which is what kernels.cu is today. __shared__,
// __syncthreads, atomics and warp shuffles are deliberately NOT defined: if kernels.cu starts
// using them, this build fails to compile instead of silently running a wrong serialisation.
//
// Float semantics: g++ on x86-64 (no -march) emits no FMA, so a*b+c is rounded twice; nvcc
// contracts it into one FMA by default. Results can differ from the GPU in the last f32 ulp.
#pragma once

#include <math.h>
#include <stdint.h>
#include <string.h>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline __attribute__((always_inline))
// __restrict__ is a GNU C++ keyword already; nothing to define.

struct uint3 {
    unsigned int x, y, z;
};

struct dim3 {
    unsigned int x, y, z;
    constexpr dim3(unsigned int x_ = 1, unsigned int y_ = 1, unsigned int z_ = 1) : x(x_), y(y_), z(z_) {}
};

// The built-in index variables, as thread-locals the launcher writes before each "thread" runs.
static thread_local uint3 threadIdx;
static thread_local uint3 blockIdx;
static thread_local dim3 blockDim;
static thread_local dim3 gridDim;

static inline float __uint_as_float(unsigned int u) {
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

static inline unsigned int __float_as_uint(float f) {
    unsigned int u;
    memcpy(&u, &f, sizeof u);
    return u;
}

static inline int __float_as_int(float f) { return (int)__float_as_uint(f); }
static inline float __int_as_float(int i) { return __uint_as_float((unsigned int)i); }
static inline float rsqrtf(float x) { return 1.0f / sqrtf(x); }
static inline float __fdividef(float a, float b) { return a / b; }
template <typename T>
static inline T __ldg(const T* p) { return *p; }
// fabsf, sqrtf, expf, logf, fmaxf, fminf, fmaf: the C library's, from <math.h>.

// Run kernel(args...) once per (block, thread) of grid x block, serially, in CUDA index order.
template <typename Kernel, typename... Args>
static void launch(dim3 grid, dim3 block, Kernel kernel, Args... args) {
    gridDim = grid;
    blockDim = block;
    for (unsigned int bz = 0; bz < grid.z; ++bz)
        for (unsigned int by = 0; by < grid.y; ++by)
            for (unsigned int bx = 0; bx < grid.x; ++bx) {
                blockIdx = uint3{bx, by, bz};
                for (unsigned int tz = 0; tz < block.z; ++tz)
                    for (unsigned int ty = 0; ty < block.y; ++ty)
                        for (unsigned int tx = 0; tx < block.x; ++tx) {
                            threadIdx = uint3{tx, ty, tz};
                            kernel(args...);
                        }
            }
}
