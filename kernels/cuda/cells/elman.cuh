// Elman RNN, one gate:  h_t = act(gx + gh + b_hh),  act = Activation
// (TanhActivation or ReluActivation, activations.cuh).
// State (h); saved: gates [B, H], the activated h.  Pointwise steps only:
// see cell.cuh for the contract, step_kernels.cu for the driver.
#pragma once

#include "activations.cuh"
#include "cell.cuh"

template <typename Activation>
struct ElmanCell {
    static constexpr int num_gates = 1;
    static constexpr int num_states = 1;            // h
    using Saved = SavedWidths<1>;                   // gates: h = act(a)
    static constexpr int num_step_gradients = 1;    // d gh = d gx = d a

    template <typename T>
    static __device__ __forceinline__ void forward(
        T state_new[num_states], T saved[Saved::total],
        const T gx[num_gates], const T gh[num_gates], const T b_hh[num_gates],
        const T state[num_states])
    {
        // h = act(a),  a = gx + gh + b_hh
        const T h = Activation::forward(gx[0] + gh[0] + b_hh[0]);
        state_new[0] = h;
        saved[0] = h;
    }

    template <typename T>
    static __device__ __forceinline__ void backward(
        T dgates[num_step_gradients][num_gates], T dstate_prev[num_states],
        const T dstate[num_states], const T saved[Saved::total], const T state_prev[num_states])
    {
        // da = dh act'(a), from h = act(a); h_{t-1} reaches h_t only through
        // W_hh, so its direct part is 0.
        dgates[0][0] = Activation::backward(dstate[0], saved[0]);
        dstate_prev[0] = T(0);
    }
};
