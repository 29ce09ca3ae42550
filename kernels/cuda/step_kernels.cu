// Fused pointwise step kernels of the recurrent cells: one forward and one
// backward kernel per cell, templated on the scalar type T (float, double).
//
// The math is exactly that of rnnkern/cells.py (see its module docstring).
// Per step the host runs the GEMMs (cuBLAS) and ONE of these kernels:
//
//   forward   gh = h_{t-1} W_hh^T                       (GEMM)
//             *_forward_step: bias b_hh, gates, state update, length mask,
//             and saves what BPTT needs (activated gates; GRU: gh_n + b_hn)
//   backward  *_backward_step: gradients of the pre-activations (dgx, dgh),
//             the part of dh_{t-1} that does not pass through W_hh, dc_{t-1}
//             dh_recurrent = dgh_t W_hh                  (GEMM, read next step)
//
// So the gradient reaching h_t arrives in two parts, dh_direct (carried) and
// dh_recurrent (= dgh_{t+1} W_hh, from the GEMM); the backward kernel adds
// them (and dy_t) itself, which saves a separate add per step.
//
// Variable lengths: row b is active at time t iff t < lengths[b].  An
// inactive forward step keeps the state and writes y_t = 0; an inactive
// backward step passes dh and dc through unchanged, ignores dy_t and writes
// zero gate gradients.
//
// Launch: one thread per (b, j) element of the (B, H) state, any grid, with a
// grid-stride loop; offsets in 64 bits.  All arrays are C-contiguous, and the
// per-time-step pointers (gx_t, gates_t, ...) are already offset to step t.
// Argument order: outputs, then const __restrict__ inputs, then sizes.
#include "activations.cuh"

using index_t = long long;

// Calls body(e, b, j) for each element e = b * H + j of the (B, H) state
// that this thread owns: a grid-stride loop, so any grid covers them all.
template <typename Body>
__device__ __forceinline__ void for_each_state_element(int batch, int hidden, Body body) {
    const index_t H = hidden;
    const index_t count = index_t(batch) * H;
    const index_t stride = index_t(blockDim.x) * gridDim.x;
    for (index_t e = index_t(blockIdx.x) * blockDim.x + threadIdx.x; e < count; e += stride) {
        const index_t b = e / H;
        body(e, b, e - b * H);
    }
}

// ---------------------------------------------------------------------------
// Elman RNN: h_t = act(gx + gh + b_hh), act = Activation (Tanh or Relu).
// ---------------------------------------------------------------------------

template <typename T, typename Activation>
__global__ void rnn_forward_step(
    T* __restrict__ h_next,            // [B, H]  state after step t
    T* __restrict__ y_t,               // [B, H]  output of step t (0 where inactive)
    T* __restrict__ gates_t,           // [B, H]  act(a), saved for BPTT
    const T* __restrict__ gx_t,        // [B, H]  x_t W_ih^T + b_ih
    const T* __restrict__ gh,          // [B, H]  h_{t-1} W_hh^T (no bias)
    const T* __restrict__ b_hh,        // [H]
    const T* __restrict__ h_prev,      // [B, H]  state before step t
    const int* __restrict__ lengths,   // [B]
    int t, int batch, int hidden)
{
    for_each_state_element(batch, hidden, [&](index_t e, index_t b, index_t j) {
        // h = act(gx + gh + b_hh)
        const T h = Activation::forward(gx_t[e] + gh[e] + b_hh[j]);
        gates_t[e] = h;
        const bool active = t < lengths[b];
        h_next[e] = active ? h : h_prev[e];
        y_t[e] = active ? h : T(0);
    });
}

template <typename T, typename Activation>
__global__ void rnn_backward_step(
    T* __restrict__ dgx_t,             // [B, H]  d loss / d a  (a = gx + gh + b_hh), = dgh_t
    T* __restrict__ dh_prev_direct,    // [B, H]  d h_{t-1}, part not through W_hh
    const T* __restrict__ dy_t,        // [B, H]
    const T* __restrict__ dh_direct,   // [B, H]  d h_t, part not through W_hh
    const T* __restrict__ dh_recurrent,// [B, H]  d h_t through W_hh: dgh_{t+1} W_hh
    const T* __restrict__ gates_t,     // [B, H]  h = act(a) of the forward step
    const int* __restrict__ lengths,   // [B]
    int t, int batch, int hidden)
{
    for_each_state_element(batch, hidden, [&](index_t e, index_t b, index_t) {
        const T dh_carried = dh_direct[e] + dh_recurrent[e];
        if (t < lengths[b]) {
            // da = dh act'(a), with dh = dh_carried + dy_t; h_{t-1} reaches
            // h_t only through W_hh, so the direct part is 0.
            dgx_t[e] = Activation::backward(dh_carried + dy_t[e], gates_t[e]);
            dh_prev_direct[e] = T(0);
        } else {
            dgx_t[e] = T(0);
            dh_prev_direct[e] = dh_carried;
        }
    });
}

// ---------------------------------------------------------------------------
// LSTM (gate order i, f, g, o; each gate is a block of H columns):
//   i, f, g, o = sig, sig, tanh, sig of (gx + gh + b_hh)
//   c_t = f c_{t-1} + i g ;  h_t = o tanh(c_t)
// ---------------------------------------------------------------------------

template <typename T>
__global__ void lstm_forward_step(
    T* __restrict__ h_next,            // [B, H]   state after step t
    T* __restrict__ c_next,            // [B, H]
    T* __restrict__ y_t,               // [B, H]   output of step t (0 where inactive)
    T* __restrict__ gates_t,           // [B, 4H]  i, f, g, o (activated), saved for BPTT
    const T* __restrict__ gx_t,        // [B, 4H]  x_t W_ih^T + b_ih
    const T* __restrict__ gh,          // [B, 4H]  h_{t-1} W_hh^T (no bias)
    const T* __restrict__ b_hh,        // [4H]
    const T* __restrict__ h_prev,      // [B, H]   state before step t
    const T* __restrict__ c_prev,      // [B, H]
    const int* __restrict__ lengths,   // [B]
    int t, int batch, int hidden)
{
    const index_t H = hidden;
    for_each_state_element(batch, hidden, [&](index_t e, index_t b, index_t j) {
        const index_t row = b * 4 * H;           // row b of the [B, 4H] arrays
        // pre-activation of gate k: gx + gh + b_hh
        auto preactivation = [&](int k) {
            const index_t at = row + k * H + j;
            return gx_t[at] + gh[at] + b_hh[k * H + j];
        };
        const T i = sigmoid(preactivation(0));
        const T f = sigmoid(preactivation(1));
        const T g = DeviceMath<T>::tanh(preactivation(2));
        const T o = sigmoid(preactivation(3));
        const T c = f * c_prev[e] + i * g;       // c_t = f c_{t-1} + i g
        const T h = o * DeviceMath<T>::tanh(c);  // h_t = o tanh(c_t)
        gates_t[row + 0 * H + j] = i;
        gates_t[row + 1 * H + j] = f;
        gates_t[row + 2 * H + j] = g;
        gates_t[row + 3 * H + j] = o;
        const bool active = t < lengths[b];
        h_next[e] = active ? h : h_prev[e];
        c_next[e] = active ? c : c_prev[e];
        y_t[e] = active ? h : T(0);
    });
}

template <typename T>
__global__ void lstm_backward_step(
    T* __restrict__ dgx_t,             // [B, 4H]  d loss / d pre-activations (i, f, g, o), = dgh_t
    T* __restrict__ dh_prev_direct,    // [B, H]   d h_{t-1}, part not through W_hh
    T* __restrict__ dc_prev,           // [B, H]   d c_{t-1}
    const T* __restrict__ dy_t,        // [B, H]
    const T* __restrict__ dh_direct,   // [B, H]   d h_t, part not through W_hh
    const T* __restrict__ dh_recurrent,// [B, H]   d h_t through W_hh: dgh_{t+1} W_hh
    const T* __restrict__ dc,          // [B, H]   d c_t
    const T* __restrict__ gates_t,     // [B, 4H]  i, f, g, o of the forward step
    const T* __restrict__ c_prev,      // [B, H]   c_{t-1}
    const int* __restrict__ lengths,   // [B]
    int t, int batch, int hidden)
{
    const index_t H = hidden;
    for_each_state_element(batch, hidden, [&](index_t e, index_t b, index_t j) {
        const index_t row = b * 4 * H;
        const T dh_carried = dh_direct[e] + dh_recurrent[e];
        if (t < lengths[b]) {
            const T i = gates_t[row + 0 * H + j];
            const T f = gates_t[row + 1 * H + j];
            const T g = gates_t[row + 2 * H + j];
            const T o = gates_t[row + 3 * H + j];
            const T dh = dh_carried + dy_t[e];
            const T tanh_c = DeviceMath<T>::tanh(f * c_prev[e] + i * g);   // c_t recomputed
            // h = o tanh(c)  =>  dc_t = dc + dh o (1 - tanh(c)^2)
            const T dc_t = dc[e] + dh * o * d_tanh_from_output(tanh_c);
            // c = f c_prev + i g: di = dc g, df = dc c_prev, dg = dc i; do = dh tanh(c)
            dgx_t[row + 0 * H + j] = dc_t * g * d_sigmoid_from_output(i);
            dgx_t[row + 1 * H + j] = dc_t * c_prev[e] * d_sigmoid_from_output(f);
            dgx_t[row + 2 * H + j] = dc_t * i * d_tanh_from_output(g);
            dgx_t[row + 3 * H + j] = dh * tanh_c * d_sigmoid_from_output(o);
            dc_prev[e] = dc_t * f;
            dh_prev_direct[e] = T(0);
        } else {
            for (int k = 0; k < 4; ++k) dgx_t[row + k * H + j] = T(0);
            dc_prev[e] = dc[e];
            dh_prev_direct[e] = dh_carried;
        }
    });
}

// ---------------------------------------------------------------------------
// GRU (gate order r, z, n; PyTorch/cuDNN form, reset gate after W_hn h):
//   r = sig(gx_r + gh_r + b_hr) ;  z = sig(gx_z + gh_z + b_hz)
//   n = tanh(gx_n + r (gh_n + b_hn)) ;  h_t = (1 - z) n + z h_{t-1}
// ---------------------------------------------------------------------------

template <typename T>
__global__ void gru_forward_step(
    T* __restrict__ h_next,            // [B, H]   state after step t
    T* __restrict__ y_t,               // [B, H]   output of step t (0 where inactive)
    T* __restrict__ gates_t,           // [B, 3H]  r, z, n (activated), saved for BPTT
    T* __restrict__ gh_n_t,            // [B, H]   gh_n + b_hn, saved for BPTT
    const T* __restrict__ gx_t,        // [B, 3H]  x_t W_ih^T + b_ih
    const T* __restrict__ gh,          // [B, 3H]  h_{t-1} W_hh^T (no bias)
    const T* __restrict__ b_hh,        // [3H]
    const T* __restrict__ h_prev,      // [B, H]   state before step t
    const int* __restrict__ lengths,   // [B]
    int t, int batch, int hidden)
{
    const index_t H = hidden;
    for_each_state_element(batch, hidden, [&](index_t e, index_t b, index_t j) {
        const index_t row = b * 3 * H;           // row b of the [B, 3H] arrays
        // recurrent part of gate k with its bias: gh + b_hh
        auto recurrent = [&](int k) { return gh[row + k * H + j] + b_hh[k * H + j]; };
        const T r = sigmoid(gx_t[row + 0 * H + j] + recurrent(0));
        const T z = sigmoid(gx_t[row + 1 * H + j] + recurrent(1));
        const T gh_n = recurrent(2);
        const T n = DeviceMath<T>::tanh(gx_t[row + 2 * H + j] + r * gh_n);
        const T h = (T(1) - z) * n + z * h_prev[e];   // = n + z (h_{t-1} - n)
        gates_t[row + 0 * H + j] = r;
        gates_t[row + 1 * H + j] = z;
        gates_t[row + 2 * H + j] = n;
        gh_n_t[e] = gh_n;
        const bool active = t < lengths[b];
        h_next[e] = active ? h : h_prev[e];
        y_t[e] = active ? h : T(0);
    });
}

template <typename T>
__global__ void gru_backward_step(
    T* __restrict__ dgx_t,             // [B, 3H]  d loss / d gx (r, z, n)
    T* __restrict__ dgh_t,             // [B, 3H]  d loss / d gh (r, z, n); n part differs
    T* __restrict__ dh_prev_direct,    // [B, H]   d h_{t-1}, part not through W_hh
    const T* __restrict__ dy_t,        // [B, H]
    const T* __restrict__ dh_direct,   // [B, H]   d h_t, part not through W_hh
    const T* __restrict__ dh_recurrent,// [B, H]   d h_t through W_hh: dgh_{t+1} W_hh
    const T* __restrict__ gates_t,     // [B, 3H]  r, z, n of the forward step
    const T* __restrict__ gh_n_t,      // [B, H]   gh_n + b_hn of the forward step
    const T* __restrict__ h_prev,      // [B, H]   h_{t-1}
    const int* __restrict__ lengths,   // [B]
    int t, int batch, int hidden)
{
    const index_t H = hidden;
    for_each_state_element(batch, hidden, [&](index_t e, index_t b, index_t j) {
        const index_t row = b * 3 * H;
        const T dh_carried = dh_direct[e] + dh_recurrent[e];
        if (t < lengths[b]) {
            const T r = gates_t[row + 0 * H + j];
            const T z = gates_t[row + 1 * H + j];
            const T n = gates_t[row + 2 * H + j];
            const T dh = dh_carried + dy_t[e];
            // h = n + z (h_prev - n)
            const T dn = dh * (T(1) - z) * d_tanh_from_output(n);
            const T dz = dh * (h_prev[e] - n) * d_sigmoid_from_output(z);
            // n = tanh(gx_n + r gh_n): d gh_n = dn r, dr = dn gh_n
            const T dr = dn * gh_n_t[e] * d_sigmoid_from_output(r);
            dgx_t[row + 0 * H + j] = dr;
            dgx_t[row + 1 * H + j] = dz;
            dgx_t[row + 2 * H + j] = dn;
            dgh_t[row + 0 * H + j] = dr;
            dgh_t[row + 1 * H + j] = dz;
            dgh_t[row + 2 * H + j] = dn * r;
            dh_prev_direct[e] = dh * z;
        } else {
            for (int k = 0; k < 3; ++k) {
                dgx_t[row + k * H + j] = T(0);
                dgh_t[row + k * H + j] = T(0);
            }
            dh_prev_direct[e] = dh_carried;
        }
    });
}
