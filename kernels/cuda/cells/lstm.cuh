// LSTM, gate order i, f, g, o:
//   i, f, g, o = sig, sig, tanh, sig of (gx + gh + b_hh)
//   c_t = f c_{t-1} + i g ;  h_t = o tanh(c_t)
// State (h, c); saved: gates [B, 4H], the activated i, f, g, o (c_t is
// recomputed in the backward step from c_{t-1}, which the driver keeps).
// Pointwise steps only: see cell.cuh for the contract, step_kernels.cu for
// the driver.
#pragma once

#include "activations.cuh"
#include "cell.cuh"

struct LstmCell {
    static constexpr int num_gates = 4;             // i, f, g, o
    static constexpr int num_states = 2;            // h, c
    using Saved = SavedWidths<4>;                   // gates: i, f, g, o
    static constexpr int num_step_gradients = 1;    // d gh = d gx

    template <typename T>
    static __device__ __forceinline__ void forward(
        T state_new[num_states], T saved[Saved::total],
        const T gx[num_gates], const T gh[num_gates], const T b_hh[num_gates],
        const T state[num_states])
    {
        const T i = sigmoid(gx[0] + gh[0] + b_hh[0]);
        const T f = sigmoid(gx[1] + gh[1] + b_hh[1]);
        const T g = DeviceMath<T>::tanh(gx[2] + gh[2] + b_hh[2]);
        const T o = sigmoid(gx[3] + gh[3] + b_hh[3]);
        const T c = f * state[1] + i * g;               // c_t = f c_{t-1} + i g
        state_new[0] = o * DeviceMath<T>::tanh(c);      // h_t = o tanh(c_t)
        state_new[1] = c;
        saved[0] = i;
        saved[1] = f;
        saved[2] = g;
        saved[3] = o;
    }

    template <typename T>
    static __device__ __forceinline__ void backward(
        T dgates[num_step_gradients][num_gates], T dstate_prev[num_states],
        const T dstate[num_states], const T saved[Saved::total], const T state_prev[num_states])
    {
        const T i = saved[0], f = saved[1], g = saved[2], o = saved[3];
        const T dh = dstate[0];
        const T c_prev = state_prev[1];
        const T tanh_c = DeviceMath<T>::tanh(f * c_prev + i * g);   // c_t recomputed
        // h = o tanh(c)  =>  dc_t = dc + dh o (1 - tanh(c)^2)
        const T dc = dstate[1] + dh * o * d_tanh_from_output(tanh_c);
        // c = f c_prev + i g: di = dc g, df = dc c_prev, dg = dc i; do = dh tanh(c)
        dgates[0][0] = dc * g * d_sigmoid_from_output(i);
        dgates[0][1] = dc * c_prev * d_sigmoid_from_output(f);
        dgates[0][2] = dc * i * d_tanh_from_output(g);
        dgates[0][3] = dh * tanh_c * d_sigmoid_from_output(o);
        // h_{t-1} reaches h_t only through W_hh; c_{t-1} through f
        dstate_prev[0] = T(0);
        dstate_prev[1] = dc * f;
    }
};
