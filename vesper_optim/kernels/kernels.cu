// Velvet optimizer update: CUDA kernels loaded by velvet_cupy.py through cupy.RawModule.
//
// Port of upstream kernels.cu with the fixed semantics (one definition for every backend):
//   p <- p * decay                      decay     = 1 - lr_e * wd       (host)
//   m <- beta1_e * m + (1 - beta1_e) * g
//   v <- beta2 * v + (1 - beta2) * g^2
//   p <- p - step_size * m / (sqrt(v) * inv_sqrt_bc2 + eps)
//                                       step_size = lr_e / bc1, inv_sqrt_bc2 = 1/sqrt(bc2) (host)
//   sparse != 0: elements with |p| < 1e-9 are left untouched (no decay, m and v unchanged).
// Every scale (entropy lr scale, perplexity momentum scale) is applied once on the host; the
// kernels never re-apply them (upstream BUG-1/BUG-2). Indices are 64-bit throughout (upstream
// computed them in 32 bits before widening). m and v are float32; params/grads are float32 or
// bfloat16 (passed as raw 16-bit words and converted by hand, so no cuda_bf16.h is needed and
// the file compiles the same with nvcc and NVRTC).
//
// Kernels (all extern "C", names looked up by velvet_cupy.py):
//   velvet_single_f32 / velvet_single_bf16    one tensor, grid-stride loop over n elements
//   velvet_multi_f32  / velvet_multi_bf16     many tensors, grid-stride over a chunk table:
//     table (int64, device) = [p_ptr[T] | g_ptr[T] | m_ptr[T] | v_ptr[T] | numel[T] |
//                              chunk_tensor[C] | chunk_start[C]]
//     block b handles chunks b, b + gridDim.x, ...; chunk c covers elements
//     [chunk_start[c], min(chunk_start[c] + chunk_size, numel[t])) of tensor t = chunk_tensor[c].

#define VELVET_SPARSE_THRESHOLD 1e-9f

__device__ __forceinline__ float bf16_bits_to_f32(unsigned short h) {
    return __uint_as_float(((unsigned int)h) << 16);
}

__device__ __forceinline__ unsigned short f32_to_bf16_bits(float f) {
    unsigned int u = __float_as_uint(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) {          // NaN: keep it a (quiet) NaN
        return (unsigned short)((u >> 16) | 0x0040u);
    }
    u += 0x7fffu + ((u >> 16) & 1u);                 // round to nearest, ties to even
    return (unsigned short)(u >> 16);
}

struct F32Param {
    typedef float storage_t;
    static __device__ __forceinline__ float load(const storage_t* ptr, long long i) { return ptr[i]; }
    static __device__ __forceinline__ void store(storage_t* ptr, long long i, float x) { ptr[i] = x; }
};

struct BF16Param {
    typedef unsigned short storage_t;
    static __device__ __forceinline__ float load(const storage_t* ptr, long long i) { return bf16_bits_to_f32(ptr[i]); }
    static __device__ __forceinline__ void store(storage_t* ptr, long long i, float x) { ptr[i] = f32_to_bf16_bits(x); }
};

template <typename P>
__device__ __forceinline__ void velvet_element(
    typename P::storage_t* __restrict__ p, const typename P::storage_t* __restrict__ g,
    float* __restrict__ m, float* __restrict__ v, long long i,
    float decay, float beta1, float beta2, float eps, float step_size, float inv_sqrt_bc2, int sparse) {
    float pi = P::load(p, i);
    if (sparse && fabsf(pi) < VELVET_SPARSE_THRESHOLD) {
        return;                                      // untouched: no decay, moments unchanged
    }
    const float gi = P::load(g, i);
    const float mi = beta1 * m[i] + (1.0f - beta1) * gi;
    const float vi = beta2 * v[i] + (1.0f - beta2) * gi * gi;
    pi = pi * decay;
    pi = pi - step_size * (mi / (sqrtf(vi) * inv_sqrt_bc2 + eps));
    m[i] = mi;
    v[i] = vi;
    P::store(p, i, pi);
}

template <typename P>
__device__ __forceinline__ void velvet_single(
    typename P::storage_t* p, const typename P::storage_t* g, float* m, float* v, long long n,
    float decay, float beta1, float beta2, float eps, float step_size, float inv_sqrt_bc2, int sparse) {
    const long long stride = (long long)gridDim.x * (long long)blockDim.x;
    for (long long i = (long long)blockIdx.x * (long long)blockDim.x + (long long)threadIdx.x; i < n; i += stride) {
        velvet_element<P>(p, g, m, v, i, decay, beta1, beta2, eps, step_size, inv_sqrt_bc2, sparse);
    }
}

template <typename P>
__device__ __forceinline__ void velvet_multi(
    const long long* __restrict__ table, int num_tensors, long long num_chunks, long long chunk_size,
    float decay, float beta1, float beta2, float eps, float step_size, float inv_sqrt_bc2, int sparse) {
    const long long T = (long long)num_tensors;
    for (long long c = (long long)blockIdx.x; c < num_chunks; c += (long long)gridDim.x) {
        const long long t = table[5 * T + c];
        const long long start = table[5 * T + num_chunks + c];
        const long long numel = table[4 * T + t];
        const long long end = (start + chunk_size < numel) ? start + chunk_size : numel;
        typename P::storage_t* p = (typename P::storage_t*)table[t];
        const typename P::storage_t* g = (const typename P::storage_t*)table[T + t];
        float* m = (float*)table[2 * T + t];
        float* v = (float*)table[3 * T + t];
        for (long long i = start + (long long)threadIdx.x; i < end; i += (long long)blockDim.x) {
            velvet_element<P>(p, g, m, v, i, decay, beta1, beta2, eps, step_size, inv_sqrt_bc2, sparse);
        }
    }
}

extern "C" __global__ void velvet_single_f32(
    float* p, const float* g, float* m, float* v, long long n,
    float decay, float beta1, float beta2, float eps, float step_size, float inv_sqrt_bc2, int sparse) {
    velvet_single<F32Param>(p, g, m, v, n, decay, beta1, beta2, eps, step_size, inv_sqrt_bc2, sparse);
}

extern "C" __global__ void velvet_single_bf16(
    unsigned short* p, const unsigned short* g, float* m, float* v, long long n,
    float decay, float beta1, float beta2, float eps, float step_size, float inv_sqrt_bc2, int sparse) {
    velvet_single<BF16Param>(p, g, m, v, n, decay, beta1, beta2, eps, step_size, inv_sqrt_bc2, sparse);
}

extern "C" __global__ void velvet_multi_f32(
    const long long* table, int num_tensors, long long num_chunks, long long chunk_size,
    float decay, float beta1, float beta2, float eps, float step_size, float inv_sqrt_bc2, int sparse) {
    velvet_multi<F32Param>(table, num_tensors, num_chunks, chunk_size,
                           decay, beta1, beta2, eps, step_size, inv_sqrt_bc2, sparse);
}

extern "C" __global__ void velvet_multi_bf16(
    const long long* table, int num_tensors, long long num_chunks, long long chunk_size,
    float decay, float beta1, float beta2, float eps, float step_size, float inv_sqrt_bc2, int sparse) {
    velvet_multi<BF16Param>(table, num_tensors, num_chunks, chunk_size,
                            decay, beta1, beta2, eps, step_size, inv_sqrt_bc2, sparse);
}
