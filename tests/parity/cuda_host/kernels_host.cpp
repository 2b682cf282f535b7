// Host build of vesper_optim/kernels/kernels.cu for tests/parity/test_kernels_cu_host.py.
// Compiled with: g++ -O2 -shared -fPIC -std=c++17 -I<this dir> -I<vesper_optim/kernels>
// The launch_* wrappers take the grid/block sizes and the argument list velvet_cupy.py passes
// (pointers, n or the chunk table, then decay, beta1, beta2, eps, step_size, inv_sqrt_bc2, sparse).
#include "cuda_host_compat.h"

#include "kernels.cu"

#define VELVET_SCALARS float decay, float beta1, float beta2, float eps, float step_size, float inv_sqrt_bc2, int sparse
#define VELVET_SCALAR_ARGS decay, beta1, beta2, eps, step_size, inv_sqrt_bc2, sparse

extern "C" {

void launch_velvet_single_f32(unsigned int grid, unsigned int block, float* p, const float* g, float* m, float* v,
                              long long n, VELVET_SCALARS) {
    launch(dim3(grid), dim3(block), velvet_single_f32, p, g, m, v, n, VELVET_SCALAR_ARGS);
}

void launch_velvet_single_bf16(unsigned int grid, unsigned int block, unsigned short* p, const unsigned short* g,
                               float* m, float* v, long long n, VELVET_SCALARS) {
    launch(dim3(grid), dim3(block), velvet_single_bf16, p, g, m, v, n, VELVET_SCALAR_ARGS);
}

void launch_velvet_multi_f32(unsigned int grid, unsigned int block, const long long* table, int num_tensors,
                             long long num_chunks, long long chunk_size, VELVET_SCALARS) {
    launch(dim3(grid), dim3(block), velvet_multi_f32, table, num_tensors, num_chunks, chunk_size, VELVET_SCALAR_ARGS);
}

void launch_velvet_multi_bf16(unsigned int grid, unsigned int block, const long long* table, int num_tensors,
                              long long num_chunks, long long chunk_size, VELVET_SCALARS) {
    launch(dim3(grid), dim3(block), velvet_multi_bf16, table, num_tensors, num_chunks, chunk_size, VELVET_SCALAR_ARGS);
}

// The kernels' bf16 <-> f32 converters, element by element (checked against torch's rounding).
void host_f32_to_bf16_bits(const float* x, unsigned short* out, long long n) {
    for (long long i = 0; i < n; ++i) out[i] = f32_to_bf16_bits(x[i]);
}

void host_bf16_bits_to_f32(const unsigned short* h, float* out, long long n) {
    for (long long i = 0; i < n; ++i) out[i] = bf16_bits_to_f32(h[i]);
}

}  // extern "C"
