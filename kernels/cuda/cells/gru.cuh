// GRU, gate order r, z, n (PyTorch/cuDNN form, reset gate after W_hn h):
//   r = sig(gx_r + gh_r + b_hr) ;  z = sig(gx_z + gh_z + b_hz)
//   n = tanh(gx_n + r (gh_n + b_hn)) ;  h_t = (1 - z) n + z h_{t-1}
// State (h); saved: gates [B, 3H], the activated r, z, n, and gh_n [B, H],
// gh_n + b_hn (for dr).  d gh differs from d gx in the n block (d gh_n = dn r),
// so both are written.  Pointwise steps only: see cell.cuh for the contract,
// step_kernels.cu for the driver.
#pragma once

#include "activations.cuh"
#include "cell.cuh"

struct GruCell {
    static constexpr int num_gates = 3;             // r, z, n
    static constexpr int num_states = 1;            // h
    using Saved = SavedWidths<3, 1>;                // gates: r, z, n; gh_n + b_hn
    static constexpr int num_step_gradients = 2;    // d gx, d gh

    template <typename T>
    static __device__ __forceinline__ void forward(
        T state_new[num_states], T saved[Saved::total],
        const T gx[num_gates], const T gh[num_gates], const T b_hh[num_gates],
        const T state[num_states])
    {
        // the recurrent part of each gate with its bias: gh + b_hh
        const T r = sigmoid(gx[0] + (gh[0] + b_hh[0]));
        const T z = sigmoid(gx[1] + (gh[1] + b_hh[1]));
        const T gh_n = gh[2] + b_hh[2];
        const T n = DeviceMath<T>::tanh(gx[2] + r * gh_n);
        state_new[0] = (T(1) - z) * n + z * state[0];   // = n + z (h_{t-1} - n)
        saved[0] = r;
        saved[1] = z;
        saved[2] = n;
        saved[3] = gh_n;
    }

    template <typename T>
    static __device__ __forceinline__ void backward(
        T dgates[num_step_gradients][num_gates], T dstate_prev[num_states],
        const T dstate[num_states], const T saved[Saved::total], const T state_prev[num_states])
    {
        const T r = saved[0], z = saved[1], n = saved[2], gh_n = saved[3];
        const T dh = dstate[0];
        // h = n + z (h_prev - n)
        const T dn = dh * (T(1) - z) * d_tanh_from_output(n);
        const T dz = dh * (state_prev[0] - n) * d_sigmoid_from_output(z);
        // n = tanh(gx_n + r gh_n): d gh_n = dn r, dr = dn gh_n
        const T dr = dn * gh_n * d_sigmoid_from_output(r);
        dgates[0][0] = dr;
        dgates[0][1] = dz;
        dgates[0][2] = dn;
        dgates[1][0] = dr;
        dgates[1][1] = dz;
        dgates[1][2] = dn * r;
        dstate_prev[0] = dh * z;                        // the direct path of h_{t-1}
    }
};
