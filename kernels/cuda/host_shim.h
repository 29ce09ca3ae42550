// Host emulation of the CUDA C++ our kernels use, so that g++ can compile
// the very same .cu sources for the CPU (rnnkern/backends/cuda/emulation.py
// builds them into a shared library and calls it through ctypes on NumPy
// arrays).
//
// What it provides:
//   - __global__ / __device__ / __host__ become nothing, __forceinline__ inline;
//   - threadIdx, blockIdx, blockDim, gridDim are thread_local variables;
//   - exp, tanh come from <cmath>; expf and tanhf too, then moved by a
//     deterministic 0 to 2 ulp (a hash of the argument picks how far and
//     which way): CUDA documents at most 2 ulp of error for both, and the
//     tests' tolerances must hold for any such error, not only for glibc's;
//   - __ldg is a plain load;
//   - cuda_host_emulation::launch runs the whole grid, block after block and
//     thread after thread, on the calling OS thread;
//   - the parameter types of each kernel as text, so that the Python side can
//     check every argument before a launch.
//
// The kernels are pointwise (one thread per element, no cooperation), so a
// plain loop over the grid is a faithful schedule.  There is deliberately no
// __syncthreads, __shared__ or warp intrinsic here: a kernel that starts to
// use one fails to compile in the emulation instead of running on a schedule
// that cannot honour it (that needs blocks on OS threads and CUDA threads as
// fibers switching at barriers).  FMA contraction, NVRTC's default, comes
// from the build (rnnkern/backends/cuda/emulation.py: -ffp-contract=fast, and
// -mfma where the CPU has it).  Not emulated: the memory model, and the
// flushing of float denormals to zero that CuPy asks of NVRTC (-ftz=true).
#pragma once

#include <cmath>
#include <cstddef>
#include <string>
#include <type_traits>
#include <utility>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline

struct uint3 {
    unsigned int x, y, z;
};

struct dim3 {
    unsigned int x, y, z;
};

// A read-only load through the non-coherent cache is, on the host, a load.
template <typename T>
inline T __ldg(const T* p) {
    return *p;
}

inline thread_local uint3 threadIdx;
inline thread_local uint3 blockIdx;
inline thread_local dim3 blockDim;
inline thread_local dim3 gridDim;

namespace cuda_host_emulation {

// x moved by 0, 1 or 2 ulp up or down, chosen by a hash of the argument a
// (deterministic: the same call gives the same result, as on a GPU).
inline float within_two_ulp(float x, float a) {
    unsigned int bits;
    static_assert(sizeof(bits) == sizeof(a), "float is 32 bits");
    __builtin_memcpy(&bits, &a, sizeof(bits));
    bits = (bits ^ (bits >> 16)) * 0x45d9f3bu;
    bits ^= bits >> 16;
    const int ulps = int(bits % 5u) - 2;
    const float toward = ulps < 0 ? -INFINITY : INFINITY;
    for (int k = 0; k < (ulps < 0 ? -ulps : ulps) && std::isfinite(x); ++k)
        x = std::nextafter(x, toward);
    return x;
}

inline float device_expf(float a) { return within_two_ulp(std::exp(a), a); }
// tanh is within [-1, 1] on a GPU too
inline float device_tanhf(float a) {
    return std::fmax(-1.0f, std::fmin(1.0f, within_two_ulp(std::tanh(a), a)));
}

// Runs kernel(args...) for every thread of the grid.  args is laid out as in
// cudaLaunchKernel: args[k] points to the value of the k-th parameter.
template <typename... Params, std::size_t... K>
void run_grid(void (*kernel)(Params...), dim3 grid, dim3 block, void** args,
              std::index_sequence<K...>) {
    gridDim = grid;
    blockDim = block;
    for (unsigned int bz = 0; bz < grid.z; ++bz)
        for (unsigned int by = 0; by < grid.y; ++by)
            for (unsigned int bx = 0; bx < grid.x; ++bx) {
                blockIdx = {bx, by, bz};
                for (unsigned int tz = 0; tz < block.z; ++tz)
                    for (unsigned int ty = 0; ty < block.y; ++ty)
                        for (unsigned int tx = 0; tx < block.x; ++tx) {
                            threadIdx = {tx, ty, tz};
                            kernel(*static_cast<std::remove_cv_t<Params>*>(args[K])...);
                        }
            }
}

template <typename... Params>
void launch(void (*kernel)(Params...), dim3 grid, dim3 block, void** args) {
    run_grid(kernel, grid, block, args, std::index_sequence_for<Params...>{});
}

// Type code of a scalar, as NumPy's dtype kind + itemsize: "f4", "i4", ...
template <typename S>
std::string scalar_code() {
    const char* kind = std::is_floating_point_v<S> ? "f" : std::is_signed_v<S> ? "i" : "u";
    return kind + std::to_string(sizeof(S));
}

// Whether P is a group of pointers passed by value, such as the step
// kernels' StepArrays<T, N>: a struct with a member type `pointer` (T*) and a
// constant `count` (N), laid out as an array of N pointers.
template <typename P, typename = void>
struct is_pointer_group : std::false_type {};

template <typename P>
struct is_pointer_group<P, std::void_t<typename P::pointer, decltype(P::count)>>
    : std::true_type {};

// "f4" for a float parameter, "f4*" for float*, "const f4*" for const float*,
// "f4*[2]" for a group of two float* (StepArrays<float, 2>).
template <typename P>
std::string parameter_code() {
    if constexpr (is_pointer_group<P>::value) {
        static_assert(sizeof(P) == P::count * sizeof(typename P::pointer),
                      "a pointer group must be laid out as an array of pointers");
        return parameter_code<typename P::pointer>() + "[" + std::to_string(P::count) + "]";
    } else if constexpr (std::is_pointer_v<P>) {
        using Pointee = std::remove_pointer_t<P>;
        return (std::is_const_v<Pointee> ? "const " : "") +
               scalar_code<std::remove_cv_t<Pointee>>() + "*";
    } else {
        return scalar_code<P>();
    }
}

// The kernel's parameter list as comma-separated type codes, so the Python
// side can check every argument before a launch.
template <typename... Params>
const char* signature(void (*)(Params...)) {
    static const std::string codes = [] {
        std::string joined;
        ((joined += parameter_code<Params>() + ","), ...);
        joined.pop_back();
        return joined;
    }();
    return codes.c_str();
}

}  // namespace cuda_host_emulation

// The float functions of the kernels, with CUDA's error bounds.
#define expf(a) cuda_host_emulation::device_expf(a)
#define tanhf(a) cuda_host_emulation::device_tanhf(a)

// Exports the instantiation given as the name expression (the macro's
// variadic part, which may contain commas) under C names numbered by its
// place in the name-expression list:
//   rnnkern_launch_<k>(grid x y z, block x y z, void** args)
//   rnnkern_signature_<k>()   the parameter type codes
//   rnnkern_name_<k>()        the name expression itself
#define RNNKERN_EXPORT_KERNEL(k, ...)                                                   \
    extern "C" void rnnkern_launch_##k(unsigned int gx, unsigned int gy, unsigned int gz, \
                                       unsigned int bx, unsigned int by, unsigned int bz, \
                                       void** args) {                                   \
        cuda_host_emulation::launch(&__VA_ARGS__, dim3{gx, gy, gz}, dim3{bx, by, bz}, args); \
    }                                                                                   \
    extern "C" const char* rnnkern_signature_##k() {                                    \
        return cuda_host_emulation::signature(&__VA_ARGS__);                            \
    }                                                                                   \
    extern "C" const char* rnnkern_name_##k() { return #__VA_ARGS__; }
