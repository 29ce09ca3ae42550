// Device activations and their derivatives, shared by every cell header.
//
// Plain CUDA C++ with no includes: NVRTC provides expf/exp/tanhf/tanh as
// built-ins, and the host emulation (host_shim.h) provides them from
// <cmath>.  Derivatives are written in terms of the activation's OUTPUT,
// which is what the forward pass saves:
//
//     sigmoid' = s (1 - s)        tanh' = 1 - y^2        relu' = [y > 0]
#pragma once

// Per-type math: the float versions call the single-precision functions
// (expf, tanhf), the double versions the double ones, so a kernel templated on
// T never silently promotes float to double.
template <typename T>
struct DeviceMath;

template <>
struct DeviceMath<float> {
    static __device__ __forceinline__ float exp(float a) { return expf(a); }
    static __device__ __forceinline__ float tanh(float a) { return tanhf(a); }
};

template <>
struct DeviceMath<double> {
    static __device__ __forceinline__ double exp(double a) { return ::exp(a); }
    static __device__ __forceinline__ double tanh(double a) { return ::tanh(a); }
};

// sigmoid(a) = 1 / (1 + e^-a); e^-a overflows to inf for very negative a and
// the result is then exactly 0, as in torch.
template <typename T>
__device__ __forceinline__ T sigmoid(T a) {
    return T(1) / (T(1) + DeviceMath<T>::exp(-a));
}

// d sigmoid(a) / da = s (1 - s), with s = sigmoid(a).
template <typename T>
__device__ __forceinline__ T d_sigmoid_from_output(T s) {
    return s * (T(1) - s);
}

// d tanh(a) / da = 1 - y^2, with y = tanh(a).
template <typename T>
__device__ __forceinline__ T d_tanh_from_output(T y) {
    return T(1) - y * y;
}

// The Elman RNN's nonlinearity as a compile-time choice (cells/elman.cuh):
// ElmanCell<TanhActivation> or ElmanCell<ReluActivation>.
//   forward(a)                    the activation
//   backward(dy, y)               dy * act'(a), from the output y = act(a)
struct TanhActivation {
    template <typename T>
    static __device__ __forceinline__ T forward(T a) { return DeviceMath<T>::tanh(a); }

    template <typename T>
    static __device__ __forceinline__ T backward(T dy, T y) { return dy * d_tanh_from_output(y); }
};

struct ReluActivation {
    // max(a, 0), written so that a NaN input stays NaN as in torch.relu.
    template <typename T>
    static __device__ __forceinline__ T forward(T a) { return a < T(0) ? T(0) : a; }

    // relu'(a) = [a > 0] = [y > 0]
    template <typename T>
    static __device__ __forceinline__ T backward(T dy, T y) { return y > T(0) ? dy : T(0); }
};
