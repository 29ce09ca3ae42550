// The fused pointwise step kernels, written once for every cell:
// rnn_forward_step<T, Cell, Index> and rnn_backward_step<T, Cell, Index>, with T
// the scalar type (float, double), Cell the struct of a cell header
// (cells/*.cuh, contract in cell.cuh), named by
// rnnkern.cells.Cell.kernels["cuda"], and Index the type of the index math.
//
// Per step the host runs the GEMMs (cuBLAS) and ONE of these kernels:
//
//   forward   gh = h_{t-1} W_hh^T                       (GEMM)
//             rnn_forward_step: the cell's forward (b_hh, gates, new states,
//             what BPTT keeps), the length mask, y_t = h_t
//   backward  rnn_backward_step: dh_t = dh_direct + dh_recurrent (+ dy_t), the
//             cell's backward (dgx, dgh, the direct part of the gradients of
//             the states entering the step), the length mask
//             dh_recurrent = dgh_t W_hh                  (GEMM, read next step)
//
// So the gradient reaching h_t arrives in two parts, dh_direct (carried) and
// dh_recurrent (= dgh_{t+1} W_hh, from the GEMM); the backward kernel adds
// them (and dy_t) itself, which saves a separate add per step.  The other
// states (LSTM's c) have no W_hh part: their carried gradient is all of it.
//
// Variable lengths: row b is active at time t iff t < lengths[b].  An
// inactive forward step keeps the states, writes y_t = 0 and zero saved
// rows; an inactive backward step passes every carried gradient through
// unchanged (dh: dh_direct + dh_recurrent), ignores dy_t and writes zero
// gate gradients.  The cells never see the mask.
//
// A cell's states, saved arrays and gate gradients are arrays of a count
// fixed by the cell (Cell::num_states, Cell::Saved::count,
// Cell::num_step_gradients): each group is ONE parameter, a StepArrays<T, N>
// struct of N pointers passed by value.  The host derives the groups from the
// cell's registry entry (Cell.state_names, Cell.saved, Cell.step_gradients)
// and passes exactly N arrays, in registry order; nothing is left unused.
//
// Launch: one thread per (b, j) element of the (B, H) state, any grid, with a
// grid-stride loop.  Index math in the type Index: int (32-bit division, the
// cheap one) when the host has checked that every index (B*G*H, the largest
// saved array's) plus the grid's stride stays below 2^31; long long beyond
// (rnnkern.backends.cuda.modules.index_type).  All arrays are C-contiguous, and the
// per-time-step pointers (gx_t, saved_t, ...) are already offset to step t.
// Argument order: outputs, then inputs, then sizes.
#include "cell.cuh"
#include "step_arrays.cuh"

// Calls body(e, b, j) for each element e = b * H + j of the (B, H) state
// that this thread owns: a grid-stride loop, so any grid covers them all.
template <typename Index, typename Body>
__device__ __forceinline__ void for_each_state_element(int batch, int hidden, Body body) {
    const Index H = hidden;
    const Index count = Index(batch) * H;
    const Index stride = Index(blockDim.x) * Index(gridDim.x);
    for (Index e = Index(blockIdx.x) * Index(blockDim.x) + Index(threadIdx.x); e < count;
         e += stride) {
        const Index b = e / H;
        body(e, b, e - b * H);
    }
}

template <typename T, typename Cell, typename Index>
__global__ void rnn_forward_step(
    StepArrays<T, Cell::num_states> state_next,       // S x [B, H]   states after step t
    T* __restrict__ y_t,                              // [B, H]       h_t (0 where inactive)
    StepArrays<T, Cell::Saved::count> saved_t,        // [B, w_s*H] per saved array s: kept
                                                      //   for BPTT (0 where inactive)
    const T* __restrict__ gx_t,                       // [B, G*H]     x_t W_ih^T + b_ih
    const T* __restrict__ gh,                         // [B, G*H]     h_{t-1} W_hh^T (no bias)
    const T* __restrict__ b_hh,                       // [G*H]
    StepArrays<const T, Cell::num_states> state_prev, // S x [B, H]   states entering step t
    const int* __restrict__ lengths,                  // [B]
    int t, int batch, int hidden)
{
    constexpr int G = Cell::num_gates, S = Cell::num_states;
    using Saved = typename Cell::Saved;
    const Index H = hidden;
    for_each_state_element<Index>(batch, hidden, [&](Index e, Index b, Index j) {
        T gx[G], gh_b[G], bias[G], state[S], state_new[S], saved[Saved::total];
#pragma unroll
        for (int k = 0; k < G; ++k) {
            const Index at = (b * G + k) * H + j;          // gate k of row b
            gx[k] = gx_t[at];
            gh_b[k] = gh[at];
            bias[k] = b_hh[k * H + j];
        }
#pragma unroll
        for (int s = 0; s < S; ++s) state[s] = read_only(state_prev.at[s] + e);

        Cell::forward(state_new, saved, gx, gh_b, bias, state);

        const bool active = t < lengths[b];
#pragma unroll
        for (int s = 0; s < S; ++s) state_next.at[s][e] = active ? state_new[s] : state[s];
        y_t[e] = active ? state_new[0] : T(0);
        store_saved_row<Saved>(saved_t, b, H, j, saved, active);     // row b of step t
    });
}

template <typename T, typename Cell, typename Index>
__global__ void rnn_backward_step(
    StepArrays<T, Cell::num_step_gradients> dgates_t, // D x [B, G*H] d gx_t, then d gh_t if
                                                      //   written apart (0 where inactive)
    StepArrays<T, Cell::num_states> dstate_prev,      // S x [B, H]   d states entering step t
                                                      //   (dh: the part not through W_hh)
    const T* __restrict__ dy_t,                       // [B, H]
    const T* __restrict__ dh_recurrent,               // [B, H]       d h_t through W_hh:
                                                      //   dgh_{t+1} W_hh
    StepArrays<const T, Cell::num_states> dstate,     // S x [B, H]   d states after step t
                                                      //   (dh: the part not through W_hh)
    StepArrays<const T, Cell::Saved::count> saved_t,  // [B, w_s*H] per saved array s, as the
                                                      //   forward step kept it
    StepArrays<const T, Cell::num_states> state_prev, // S x [B, H]   states entering step t
    const int* __restrict__ lengths,                  // [B]
    int t, int batch, int hidden)
{
    constexpr int G = Cell::num_gates, S = Cell::num_states, D = Cell::num_step_gradients;
    using Saved = typename Cell::Saved;
    const Index H = hidden;
    for_each_state_element<Index>(batch, hidden, [&](Index e, Index b, Index j) {
        // the gradients carried to step t; dh_t = dh_direct + dh_recurrent
        T carried[S];
        carried[0] = read_only(dstate.at[0] + e) + dh_recurrent[e];
#pragma unroll
        for (int s = 1; s < S; ++s) carried[s] = read_only(dstate.at[s] + e);

        if (t < lengths[b]) {
            T into[S], saved[Saved::total], state[S], dgates[D][G], direct[S];
#pragma unroll
            for (int s = 0; s < S; ++s) {
                into[s] = carried[s];
                state[s] = read_only(state_prev.at[s] + e);
            }
            into[0] += dy_t[e];                              // dh = dh_carried + dy_t
            load_saved_row<Saved>(saved, saved_t, b, H, j);

            Cell::backward(dgates, direct, into, saved, state);

            store_gate_row<D, G>(dgates_t, b, H, j, dgates, true);
#pragma unroll
            for (int s = 0; s < S; ++s) dstate_prev.at[s][e] = direct[s];
        } else {                                             // padded step: carries pass through
            store_gate_row<D, G, T>(dgates_t, b, H, j, nullptr, false);
#pragma unroll
            for (int s = 0; s < S; ++s) dstate_prev.at[s][e] = carried[s];
        }
    });
}
