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

// The gradients of the gate pre-activations at (row, j): D arrays [rows, G*H],
// gate g's value at column g*H + j.  An inactive row (values unread, may be
// null) stores zeros.
template <int D, int G, typename T, typename Index>
__device__ __forceinline__ void store_gate_row(StepArrays<T, D> dgates, Index row, Index hidden,
                                               Index j, const T values[D][G], bool active) {
#pragma unroll
    for (int d = 0; d < D; ++d) {
        T* at = dgates.at[d] + row * G * hidden + j;
#pragma unroll
        for (int g = 0; g < G; ++g) at[g * hidden] = active ? values[d][g] : T(0);
    }
}

// The values a cell keeps for BPTT, at (row, j) of every saved array: array
// s of the group is [rows, w_s*H], its value m at column m*H + j, and the
// cell's flat saved[] holds array 0's w_0 values, then array 1's, ...
// (Saved: the cell's SavedWidths, cell.cuh).  An inactive row stores zeros.
template <typename Saved, typename T, typename Index>
__device__ __forceinline__ void store_saved_row(StepArrays<T, Saved::count> saved, Index row,
                                                Index hidden, Index j,
                                                const T values[Saved::total], bool active) {
#pragma unroll
    for (int s = 0; s < Saved::count; ++s) {
        const int width = Saved::width(s);
        T* at = saved.at[s] + row * width * hidden + j;
#pragma unroll
        for (int m = 0; m < width; ++m)
            at[m * hidden] = active ? values[Saved::offset(s) + m] : T(0);
    }
}

template <typename Saved, typename T, typename Index>
__device__ __forceinline__ void load_saved_row(T values[Saved::total],
                                               StepArrays<const T, Saved::count> saved,
                                               Index row, Index hidden, Index j) {
#pragma unroll
    for (int s = 0; s < Saved::count; ++s) {
        const int width = Saved::width(s);
        const T* at = saved.at[s] + row * width * hidden + j;
#pragma unroll
        for (int m = 0; m < width; ++m) values[Saved::offset(s) + m] = read_only(at + m * hidden);
    }
}
