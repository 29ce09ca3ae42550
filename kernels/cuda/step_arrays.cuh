// What the step kernels and the persistent kernels share besides the cells:
// the by-value pointer groups of a cell's states, saved arrays and gate
// gradients, and the read-only load.
#pragma once

// N arrays of one step in one kernel parameter, passed by value: at[k] is
// array k (C-contiguous, all distinct).  The host passes the N device
// addresses as the bytes of the struct (CuPy: a size-1 NumPy array of N
// uintp; the host emulation: a ctypes array of N pointers).
template <typename T, int N>
struct StepArrays {
    using pointer = T*;                  // the host shim reads these two
    static constexpr int count = N;
    T* at[N];
};

// A read-only load through the non-coherent (texture) cache: what the
// compiler does by itself for the const __restrict__ pointer parameters, done
// explicitly for the const members of a StepArrays group, which no pointer
// of the kernel writes (all arrays are distinct).
template <typename T>
__device__ __forceinline__ T read_only(const T* p) {
    return __ldg(p);
}
