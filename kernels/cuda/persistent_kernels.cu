// Persistent kernels: ONE cooperative launch runs a whole layer-direction,
// every time step, for any cell: rnn_persistent_forward<T, Cell> and
// rnn_persistent_backward<T, Cell> (T float or double; Cell a struct of
// cells/*.cuh, contract in cell.cuh).
//
// Why: at small batch a time step is a few microseconds of GPU work, and the
// step path (step_kernels.cu) pays a host round of GEMM + kernel launch for
// each.  Here the host launches once; the blocks keep their slice of W_hh in
// shared memory for the whole sequence and meet at ONE grid-wide barrier per
// step, exchanging h_t (forward) or d gh_t (backward) through global memory
// (L2).
//
// Work split: block k owns the hidden units j in [k*U, k*U + U) (U =
// `units`; the last block may own fewer, the grid is ceil(H / U) blocks)
// with ALL their gate rows, for every batch row.  Per step:
//
//   forward   stage h_{t-1} (B x H) in shared memory
//             gh[b, g*H + j] = W_hh[g*H + j, :] . h_{t-1}[b, :]   for the owned j
//             the cell's forward (b_hh, gates, new states, what BPTT keeps),
//             the length mask, y_t = h_t
//             grid barrier: every block's h_t is written
//   backward  dh_rec[b, j] = sum_r dgh_{t+1}[b, r] W_hh[r, j]      for the owned j
//             (the column slice W_hh[:, j]: the same units, transposed)
//             dh_t = carried + dh_rec (+ dy_t); the cell's backward, the mask
//             grid barrier: every block's d gh_t is written
//
// The input projection x W_ih^T + b_ih stays one large GEMM before the
// launch, and the weight gradients large GEMMs after it (the host does both,
// as on the step path); the buffers and their layouts are the step path's
// (rnnkern.backends.cuda.driver), so both paths share the host code.
//
// Dot products, register-blocked because shared-memory loads, not FMAs,
// bound them: forward, a thread carries ROWS_PER_THREAD batch rows x all G
// gates of one unit (G + ROWS loads per G*ROWS FMAs, against 2 per FMA
// unblocked); backward, UNITS_PER_THREAD units of one batch row (one load of
// d gh, from L2, per UNITS FMAs).  Each such task is summed by `lanes`
// consecutive threads (a power of two, at most 32, as many as the block has
// threads for), each over every lanes-th element, into shared partial sums
// that the pointwise phase adds up.  Shared weight rows are padded by one
// element so that the rows read by one warp fall in different banks.
//
// Shared memory per block (elements of T; rnnkern.backends.cuda.planner
// computes the same sizes), with B' = B rounded up to ROWS_PER_THREAD and
// U' = U rounded up to UNITS_PER_THREAD:
//   forward   weights [G*U][H + 1]   row g*U + jl: W_hh[g*H + k*U + jl, :]
//             h_prev  [B'][H]        rows from B on: zeros
//             partial [max(B'*G*U, ROWS_PER_THREAD*G*threads)]
//   backward  weights [U'][G*H + 1]  row jl: W_hh[:, k*U + jl] (zeros from U on)
//             partial [max(B*U', UNITS_PER_THREAD*threads)]
//
// Index math: int within a step (the planner keeps B*G*H far below 2^31),
// 64-bit for the offsets of step t in the [T, ...] arrays.
#include "cell.cuh"
#include "step_arrays.cuh"

#ifndef RNNKERN_HOST_EMULATION
#include <cooperative_groups.h>

// The block's dynamic shared memory, the launch's shared_bytes (the host
// emulation's shim defines the same function).
__device__ __forceinline__ unsigned char* dynamic_shared_memory() {
    extern __shared__ __align__(16) unsigned char shared_bytes[];
    return shared_bytes;
}
#endif

namespace cg = cooperative_groups;

// The most threads per block the kernels are compiled for (launch bounds):
// 255 registers a thread then still leave one block per SM room.
constexpr int PERSISTENT_THREADS = 256;
// The register blocking of the dot products (see above).
constexpr int ROWS_PER_THREAD = 4;
constexpr int UNITS_PER_THREAD = 4;

// Threads summing each of `tasks` blocked dot products: the largest power
// of two up to 32 with tasks * lanes <= the block's threads (at least 1).
__device__ __forceinline__ int lanes_per_task(int tasks) {
    int lanes = 1;
    while (lanes < 32 && tasks * lanes * 2 <= int(blockDim.x)) lanes *= 2;
    return lanes;
}

// The dot product o: its lanes' partial sums added.
template <typename T>
__device__ __forceinline__ T dot_product(const T* partial, int o, int lanes) {
    T sum = T(0);
    for (int lane = 0; lane < lanes; ++lane) sum += partial[o * lanes + lane];
    return sum;
}

template <typename T, typename Cell>
__global__ void __launch_bounds__(PERSISTENT_THREADS) rnn_persistent_forward(
    StepArrays<T, Cell::num_states> states,       // S x [slots, B, H]: the initial states in
                                                  //   their first slot (host); slots as the
                                                  //   step path's (driver._state_slots)
    T* __restrict__ y,                            // [T, B, H]      h_t (0 where inactive)
    StepArrays<T, Cell::Saved::count> saved,      // [T or 1, B, w_s*H] per saved array s
                                                  //   (1: inference, overwritten each step)
    const T* __restrict__ gx,                     // [T, B, G*H]    x_t W_ih^T + b_ih
    const T* __restrict__ w_hh,                   // [G*H, H]
    const T* __restrict__ b_hh,                   // [G*H]
    const int* __restrict__ lengths,              // [B]
    int steps, int batch, int hidden, int units, int reverse, int keep)
{
    constexpr int G = Cell::num_gates, S = Cell::num_states;
    using Saved = typename Cell::Saved;
    const int B = batch, H = hidden, U = units;
    const int first_unit = int(blockIdx.x) * U;
    const int owned = max(0, min(U, H - first_unit));
    const int row_stride = H + 1;
    const int chunks = (B + ROWS_PER_THREAD - 1) / ROWS_PER_THREAD;
    const int padded_rows = chunks * ROWS_PER_THREAD;               // B'
    T* weights = reinterpret_cast<T*>(dynamic_shared_memory());   // [G*U][H + 1]
    T* h_prev = weights + G * U * row_stride;                       // [B'][H]
    T* partial = h_prev + padded_rows * H;                          // (see the top)

    // The block's W_hh rows, once for the whole sequence (zero past H).
    for (int e = threadIdx.x; e < G * U * H; e += blockDim.x) {
        const int r = e / H, i = e - r * H;
        const int g = r / U, jl = r - g * U;
        weights[r * row_stride + i] =
            jl < owned ? w_hh[(long long)(g * H + first_unit + jl) * H + i] : T(0);
    }
    for (int e = B * H + threadIdx.x; e < padded_rows * H; e += blockDim.x) h_prev[e] = T(0);
    const int tasks = U * chunks;                 // (jl, chunk of batch rows)
    const int lanes = lanes_per_task(tasks);      // output o = (b*G + g)*U + jl
    const long long state_size = (long long)B * H;
    cg::grid_group grid = cg::this_grid();

    for (int k = 0; k < steps; ++k) {
        const int t = reverse ? steps - 1 - k : k;
        const int read = keep ? (reverse ? t + 1 : t) : (k & 1);
        const int write = keep ? (reverse ? t : t + 1) : 1 - (k & 1);
        const long long step = keep ? t : 0;

        // h_{t-1}, written by every block last step: through L2 (__ldcg), not L1.
        const T* h_read = states.at[0] + read * state_size;
        for (int e = threadIdx.x; e < B * H; e += blockDim.x) h_prev[e] = __ldcg(h_read + e);
        __syncthreads();
        // gh[b, g*H + j] = W_hh[g*H + j, :] . h_{t-1}[b, :], ROWS rows x G gates a task
        for (int task = threadIdx.x; task < tasks * lanes; task += blockDim.x) {
            const int pair = task / lanes, lane = task - pair * lanes;
            const int jl = pair % U, first_row = (pair / U) * ROWS_PER_THREAD;
            T sum[G][ROWS_PER_THREAD];
#pragma unroll
            for (int g = 0; g < G; ++g)
#pragma unroll
                for (int r = 0; r < ROWS_PER_THREAD; ++r) sum[g][r] = T(0);
            for (int i = lane; i < H; i += lanes) {
                T w[G], h[ROWS_PER_THREAD];
#pragma unroll
                for (int g = 0; g < G; ++g) w[g] = weights[(g * U + jl) * row_stride + i];
#pragma unroll
                for (int r = 0; r < ROWS_PER_THREAD; ++r) h[r] = h_prev[(first_row + r) * H + i];
#pragma unroll
                for (int g = 0; g < G; ++g)
#pragma unroll
                    for (int r = 0; r < ROWS_PER_THREAD; ++r) sum[g][r] += w[g] * h[r];
            }
#pragma unroll
            for (int g = 0; g < G; ++g)
#pragma unroll
                for (int r = 0; r < ROWS_PER_THREAD; ++r)
                    partial[(((first_row + r) * G + g) * U + jl) * lanes + lane] = sum[g][r];
        }
        __syncthreads();

        const T* gx_t = gx + (long long)t * B * G * H;
        for (int p = threadIdx.x; p < B * owned; p += blockDim.x) {
            const int b = p / owned, jl = p - b * owned, j = first_unit + jl;
            const int e = b * H + j;
            T gx_v[G], gh[G], bias[G], state[S], state_new[S], kept[Saved::total];
#pragma unroll
            for (int g = 0; g < G; ++g) {
                gx_v[g] = gx_t[(b * G + g) * H + j];
                gh[g] = dot_product(partial, (b * G + g) * U + jl, lanes);
                bias[g] = b_hh[g * H + j];
            }
            state[0] = h_prev[e];
#pragma unroll
            for (int s = 1; s < S; ++s) state[s] = __ldcg(states.at[s] + read * state_size + e);

            Cell::forward(state_new, kept, gx_v, gh, bias, state);

            const bool active = t < lengths[b];
#pragma unroll
            for (int s = 0; s < S; ++s)
                states.at[s][write * state_size + e] = active ? state_new[s] : state[s];
            y[t * state_size + e] = active ? state_new[0] : T(0);
            store_saved_row<Saved>(saved, step * B + b, (long long)H, (long long)j, kept,
                                   active);                         // row b of step t
        }
        grid.sync();                              // h_t of every unit written
    }
}

template <typename T, typename Cell>
__global__ void __launch_bounds__(PERSISTENT_THREADS) rnn_persistent_backward(
    StepArrays<T, Cell::num_step_gradients> dgates,  // D x [T, B, G*H] d gx_t, then d gh_t if
                                                     //   written apart (0 where inactive)
    StepArrays<T, Cell::num_states> carry,           // S x [B, H] in: d of the final states;
                                                     //   out: d of the initial states
    const T* __restrict__ dy,                        // [T, B, H]
    StepArrays<const T, Cell::Saved::count> saved,   // [T, B, w_s*H] as the forward kept it
    StepArrays<const T, Cell::num_states> history,   // S x [T, B, H] states entering step t
    const T* __restrict__ w_hh,                      // [G*H, H]
    const int* __restrict__ lengths,                 // [B]
    int steps, int batch, int hidden, int units, int reverse)
{
    constexpr int G = Cell::num_gates, S = Cell::num_states, D = Cell::num_step_gradients;
    using Saved = typename Cell::Saved;
    const int B = batch, H = hidden, U = units, GH = G * hidden;
    const int first_unit = int(blockIdx.x) * U;
    const int owned = max(0, min(U, H - first_unit));
    const int row_stride = GH + 1;
    const int unit_chunks = (U + UNITS_PER_THREAD - 1) / UNITS_PER_THREAD;
    const int padded_units = unit_chunks * UNITS_PER_THREAD;        // U'
    T* weights = reinterpret_cast<T*>(dynamic_shared_memory());   // [U'][G*H + 1]
    T* partial = weights + padded_units * row_stride;               // (see the top)

    // The block's W_hh columns, transposed, once for the whole sequence.
    for (int e = threadIdx.x; e < padded_units * GH; e += blockDim.x) {
        const int jl = e / GH, r = e - jl * GH;
        weights[jl * row_stride + r] =
            jl < owned ? w_hh[(long long)r * H + first_unit + jl] : T(0);
    }
    const int tasks = B * unit_chunks;            // (b, chunk of units)
    const int lanes = lanes_per_task(tasks);      // output o = b*U' + jl
    cg::grid_group grid = cg::this_grid();

    // Visit k handles step t; visit `steps` only adds the last W_hh part to
    // the carried dh, making it the gradient of the initial h.
    for (int k = 0; k <= steps; ++k) {
        const int t = reverse ? k : steps - 1 - k;
        if (k > 0) {           // dh_rec = dgh_{t_later} W_hh, the step visited before
            const int later = reverse ? t - 1 : t + 1;
            const T* dgh = dgates.at[D - 1] + (long long)later * B * GH;
            for (int task = threadIdx.x; task < tasks * lanes; task += blockDim.x) {
                const int pair = task / lanes, lane = task - pair * lanes;
                const int b = pair / unit_chunks;
                const int first = (pair - b * unit_chunks) * UNITS_PER_THREAD;
                T sum[UNITS_PER_THREAD];
#pragma unroll
                for (int u = 0; u < UNITS_PER_THREAD; ++u) sum[u] = T(0);
                for (int r = lane; r < GH; r += lanes) {
                    const T d = __ldcg(dgh + b * GH + r);     // every block's, through L2
#pragma unroll
                    for (int u = 0; u < UNITS_PER_THREAD; ++u)
                        sum[u] += weights[(first + u) * row_stride + r] * d;
                }
#pragma unroll
                for (int u = 0; u < UNITS_PER_THREAD; ++u)
                    partial[(b * padded_units + first + u) * lanes + lane] = sum[u];
            }
        }
        __syncthreads();

        for (int p = threadIdx.x; p < B * owned; p += blockDim.x) {
            const int b = p / owned, jl = p - b * owned, j = first_unit + jl;
            const int e = b * H + j;
            T carried[S];
            carried[0] = carry.at[0][e] + (k > 0 ? dot_product(partial, b * padded_units + jl,
                                                               lanes)
                                                 : T(0));
#pragma unroll
            for (int s = 1; s < S; ++s) carried[s] = carry.at[s][e];
            if (k == steps) {                     // the gradients of the initial states
#pragma unroll
                for (int s = 0; s < S; ++s) carry.at[s][e] = carried[s];
                continue;
            }
            const long long at_t = (long long)t * B;
            if (t < lengths[b]) {
                T into[S], kept[Saved::total], state[S], dgate[D][G], direct[S];
#pragma unroll
                for (int s = 0; s < S; ++s) {
                    into[s] = carried[s];
                    state[s] = read_only(history.at[s] + at_t * H + e);
                }
                into[0] += dy[at_t * H + e];      // dh = dh_carried + dy_t
                load_saved_row<Saved>(kept, saved, at_t + b, (long long)H, (long long)j);

                Cell::backward(dgate, direct, into, kept, state);

                store_gate_row<D, G>(dgates, at_t + b, (long long)H, (long long)j, dgate, true);
#pragma unroll
                for (int s = 0; s < S; ++s) carry.at[s][e] = direct[s];
            } else {                              // padded step: carries pass through
                store_gate_row<D, G, T>(dgates, at_t + b, (long long)H, (long long)j, nullptr,
                                        false);
#pragma unroll
                for (int s = 0; s < S; ++s) carry.at[s][e] = carried[s];
            }
        }
        if (k < steps) grid.sync();               // d gh_t of every unit written
    }
}
