// The contract between a cell header (cells/*.cuh) and the step driver
// (step_kernels.cu), which is written once for every cell.
//
// A cell is a struct of compile-time constants and two static device
// functions holding ONLY its pointwise algebra, for one element (b, j) of the
// (B, H) state, on values already in registers: no indexing, no length mask,
// no carries, no stores (the driver does all of those).  Gate k of a
// pre-activation is the block of columns k*H .. k*H + H-1 (PyTorch order).
//
//   struct SomeCell {
//       static constexpr int num_gates;            // G        (Cell.gate_names)
//       static constexpr int num_states;           // S, h first (Cell.state_names)
//       using Saved = SavedWidths<w_0, w_1, ...>;  // what BPTT keeps besides the
//                                                  // states (Cell.saved): array s is
//                                                  // [B, w_s*H], value m at column m*H + j
//       static constexpr int num_step_gradients;   // 1: d gh = d gx; 2: written apart
//                                                  // (Cell.step_gradients)
//       template <typename T>
//       static __device__ void forward(
//           T state_new[num_states],               // the states after the step
//           T saved[Saved::total],                 // array 0's w_0 values, then array 1's, ...
//           const T gx[num_gates],                 // x_t W_ih^T + b_ih
//           const T gh[num_gates],                 // h_{t-1} W_hh^T (no bias)
//           const T b_hh[num_gates],
//           const T state[num_states]);            // the states entering the step
//
//       template <typename T>
//       static __device__ void backward(
//           T dgates[num_step_gradients][num_gates],   // d gx (= d b_ih), then d gh if apart
//           T dstate_prev[num_states],             // d of the states entering the step,
//                                                  // dh without the part through W_hh
//           const T dstate[num_states],            // d of the states after the step, all
//                                                  // of it (dh includes dy_t and W_hh's part)
//           const T saved[Saved::total],           // as forward wrote it
//           const T state_prev[num_states]);       // the states entering the step
//   };
//
// The constants must agree with the cell's registry entry (rnnkern.cells):
// the Python side sizes and counts the arrays from the registry, and the host
// emulation checks the counts against the kernels' parameter types at every
// launch (and the widths through its guard zones).
#pragma once

// The widths, in units of H, of a cell's saved arrays.
template <int... Widths>
struct SavedWidths {
    static constexpr int count = sizeof...(Widths);
    static constexpr int total = (0 + ... + Widths);

    // Width of array s, and where its values start in a cell's flat saved[];
    // constexpr, so the driver's unrolled loops fold them to constants.
    static __host__ __device__ constexpr int width(int s) {
        constexpr int widths[] = {Widths..., 0};
        return widths[s];
    }
    static __host__ __device__ constexpr int offset(int s) {
        int sum = 0;
        for (int k = 0; k < s; ++k) sum += width(k);
        return sum;
    }
};
