"""Cooperative kernels in the host emulation: fibers, barriers, shared memory.

Toy kernels (the code strings below, built by ``CodeLauncher``) show that the
emulation runs kernels whose threads cooperate as a GPU must: a block
reduction in dynamic shared memory behind ``__syncthreads()``, an exchange
between blocks behind the grid barrier of a cooperative launch, indices
right for every thread after every barrier, in every schedule; and that the
same kernels with a barrier deleted give wrong results in some schedule,
while a barrier some threads miss, a grid barrier outside a cooperative
launch or a write outside the shared memory are launch errors, not hangs.
"""

import os
import shlex
import shutil

import numpy as np
import pytest

import rnnkern.recurrent
from cuda_parity import LAYER_CASES, check_layer_parity, run_layer
from rnnkern.backends.cuda.driver import forward_step_arguments
from rnnkern.backends.cuda.emulation import (MAX_SHARED_BYTES, SCHEDULES, CodeLauncher,
                                             EmulatedLauncher, emulated_backend)
from rnnkern.backends.cuda.modules import CudaKernelError, kernel_name
from rnnkern.cells import cell_for

_CXX = shlex.split(os.environ.get("CXX", "g++"))[0]
pytestmark = [
    pytest.mark.skipif(shutil.which(_CXX) is None,
                       reason=f"the host emulation needs a C++ compiler ({_CXX}, or set $CXX)"),
    pytest.mark.timeout(300),
]

TOY_KERNELS = r"""
namespace cg = cooperative_groups;

template <bool Group>
__device__ __forceinline__ void block_barrier() {
    if constexpr (Group) cg::this_thread_block().sync(); else __syncthreads();
}

// out[b] = the sum of x[b * blockDim.x + t] over the threads t of block b:
// a tree reduction in dynamic shared memory (blockDim.x elements), the
// block barrier of cooperative groups (Group) or __syncthreads().
template <typename T, bool Group>
__global__ void block_sum(T* __restrict__ out,          // [grid]
                          const T* __restrict__ x)      // [grid * block]
{
    T* partial = reinterpret_cast<T*>(dynamic_shared_memory());
    const unsigned int t = threadIdx.x;
    partial[t] = x[blockIdx.x * blockDim.x + t];
    block_barrier<Group>();
    for (unsigned int stride = blockDim.x / 2; stride > 0; stride /= 2) {
        if (t < stride) partial[t] += partial[t + stride];
        block_barrier<Group>();
    }
    if (t == 0) out[blockIdx.x] = partial[0];
}

// out[i] = what thread i + blockDim.x (the next block's, cyclically) wrote
// to scratch before the grid barrier.
__global__ void grid_exchange(float* __restrict__ out,        // [n]
                              float* __restrict__ scratch)    // [n]
{
    cg::grid_group grid = cg::this_grid();
    const unsigned int i = blockIdx.x * blockDim.x + threadIdx.x;
    const unsigned int n = gridDim.x * blockDim.x;
    scratch[i] = float(i);
    grid.sync();
    out[i] = scratch[(i + blockDim.x) % n];
}

// out[phase][i][:] = what thread i sees in each phase: threadIdx.x,
// blockIdx.x, blockDim.x, gridDim.x, its ranks in block and grid, their sizes.
__device__ void record_indices(unsigned long long* out, int phase) {
    const unsigned long long n = gridDim.x * blockDim.x;
    unsigned long long* row = out + (phase * n + blockIdx.x * blockDim.x + threadIdx.x) * 8;
    row[0] = threadIdx.x;
    row[1] = blockIdx.x;
    row[2] = blockDim.x;
    row[3] = gridDim.x;
    row[4] = cg::this_thread_block().thread_rank();
    row[5] = cg::this_grid().thread_rank();
    row[6] = cg::this_thread_block().size();
    row[7] = cg::this_grid().size();
}

__global__ void indices(unsigned long long* __restrict__ out)    // [4, n, 8]
{
    record_indices(out, 0);
    __syncthreads();
    record_indices(out, 1);
    cg::this_grid().sync();
    record_indices(out, 2);
    __syncthreads();
    cg::this_grid().sync();
    record_indices(out, 3);
}

// order[p * n + k] = the thread that was k-th to run phase p (0: before a
// block barrier, 1: after it).  A race on a GPU; the emulation's fibers
// run one at a time, so it records the schedule.
__global__ void arrival_order(unsigned int* __restrict__ order,     // [2, n]
                              unsigned int* __restrict__ counter)   // [2]
{
    const unsigned int i = blockIdx.x * blockDim.x + threadIdx.x;
    order[counter[0]++] = i;
    __syncthreads();
    order[gridDim.x * blockDim.x + counter[1]++] = i;
}

// ok[i] = whether 16 KiB of thread i's locals survived a barrier unchanged
// (every thread has its own stack).
__global__ void private_stacks(int* __restrict__ ok)    // [n]
{
    volatile int local[4096];
    for (int k = 0; k < 4096; ++k) local[k] = int(threadIdx.x) * 4096 + k;
    __syncthreads();
    int good = 1;
    for (int k = 0; k < 4096; ++k) good &= local[k] == int(threadIdx.x) * 4096 + k;
    ok[blockIdx.x * blockDim.x + threadIdx.x] = good;
}

// out[i] = element threadIdx.x of the shared memory, which nobody wrote.
template <typename T>
__global__ void unwritten_shared(T* __restrict__ out)    // [n]
{
    out[blockIdx.x * blockDim.x + threadIdx.x] =
        reinterpret_cast<const T*>(dynamic_shared_memory())[threadIdx.x];
}

// Broken kernels: each breaks one rule of barriers or shared memory.
__global__ void barrier_in_branch(float* __restrict__ out)    // [n]
{
    if (threadIdx.x < 16) __syncthreads();
    out[blockIdx.x * blockDim.x + threadIdx.x] = 1.0f;
}

__global__ void two_barrier_calls(float* __restrict__ out)    // [n]
{
    if (threadIdx.x % 2)
        __syncthreads();
    else
        __syncthreads();
    out[blockIdx.x * blockDim.x + threadIdx.x] = 1.0f;
}

__global__ void block_and_grid_barrier(float* __restrict__ out)    // [n]
{
    if (threadIdx.x < 16)
        __syncthreads();
    else
        cg::this_grid().sync();
    out[blockIdx.x * blockDim.x + threadIdx.x] = 1.0f;
}

__global__ void block_skips_grid_barrier(float* __restrict__ out)    // [n]
{
    if (blockIdx.x == 1) return;
    cg::this_grid().sync();
    out[blockIdx.x * blockDim.x + threadIdx.x] = 1.0f;
}

// Thread 0 of each block writes float `index` of the shared memory.
__global__ void shared_write(float* __restrict__ out, int index)    // out: [n]
{
    if (threadIdx.x == 0) reinterpret_cast<float*>(dynamic_shared_memory())[index] = 1.0f;
    out[blockIdx.x * blockDim.x + threadIdx.x] = 1.0f;
}
"""

BLOCK_SUMS = [f"block_sum<{t}, {g}>" for t in ("float", "double") for g in ("false", "true")]
TOY_NAMES = [*BLOCK_SUMS, "grid_exchange", "indices", "arrival_order", "private_stacks",
             "unwritten_shared<float>", "unwritten_shared<double>", "barrier_in_branch",
             "two_barrier_calls", "block_and_grid_barrier", "block_skips_grid_barrier",
             "shared_write"]
# The x86-64 context switch, and the portable one (ucontext) of other machines.
FIBERS = {"switch": (), "ucontext": ("-DRNNKERN_FIBERS_UCONTEXT",)}


def _without(*barriers):
    """The toy kernels with every call of the given barriers deleted (an empty statement left)."""
    code = TOY_KERNELS
    for barrier in barriers:
        assert barrier in code
        code = code.replace(barrier, ";")
    return code


@pytest.fixture(scope="module")
def toy():
    """``toy(schedule, seed=0, code=TOY_KERNELS, fibers="switch")``: a ``CodeLauncher``
    of the toy kernels (one per combination)."""
    launchers = {}

    def make(schedule, seed=0, code=TOY_KERNELS, fibers="switch"):
        key = (schedule, seed, code, fibers)
        if key not in launchers:
            launchers[key] = CodeLauncher(code, TOY_NAMES, schedule, seed=seed,
                                          label="toy_kernels.cu", flags=FIBERS[fibers])
        return launchers[key]
    return make


def _block_sums(launcher, name, blocks, threads, cooperative=False):
    dtype = np.float32 if "float," in name else np.float64
    x = np.random.default_rng(blocks).integers(-50, 50, blocks * threads).astype(dtype)
    out = np.empty(blocks, dtype)
    launcher.launch(name, (blocks,), (threads,), [out, x],
                    shared_bytes=threads * x.itemsize, cooperative=cooperative)
    return out, x.reshape(blocks, threads).sum(axis=1)      # integers: exact in any order


def _exchange(launcher, blocks=4, threads=32):
    n = blocks * threads
    out, scratch = np.empty(n, np.float32), np.full(n, np.nan, np.float32)
    launcher.launch("grid_exchange", (blocks,), (threads,), [out, scratch], cooperative=True)
    return out, np.roll(np.arange(n, dtype=np.float32), -threads)


# ---------------------------------------------------------------------------
# Barriers make cooperating threads right in every schedule; without them, wrong.
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("fibers", FIBERS)
@pytest.mark.parametrize("cooperative", [False, True], ids=["launch", "cooperative"])
@pytest.mark.parametrize("name", BLOCK_SUMS)
@pytest.mark.parametrize("schedule", SCHEDULES)
def test_block_reduction_in_shared_memory_is_right_in_every_schedule(toy, schedule, name,
                                                                     cooperative, fibers):
    out, expected = _block_sums(toy(schedule, fibers=fibers), name, 5, 64, cooperative)
    np.testing.assert_array_equal(out, expected)


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_block_barrier_works_in_a_launch_of_many_blocks(toy, schedule):
    out, expected = _block_sums(toy(schedule), "block_sum<double, false>", 300, 128)
    np.testing.assert_array_equal(out, expected)


@pytest.mark.parametrize("name", BLOCK_SUMS)
def test_block_reduction_without_its_barriers_is_wrong_in_some_schedule(toy, name):
    code = _without("__syncthreads();", "cg::this_thread_block().sync();")
    right = [np.array_equal(*_block_sums(toy(schedule, code=code), name, 5, 64))
             for schedule in SCHEDULES]
    assert not all(right), "a reduction without barriers gave the right sums in every schedule"
    assert not right[0]                       # forward: thread 0 adds unwritten (NaN) partials


@pytest.mark.parametrize("fibers", FIBERS)
@pytest.mark.parametrize("schedule", SCHEDULES)
def test_grid_barrier_exchange_between_blocks_is_right_in_every_schedule(toy, schedule, fibers):
    np.testing.assert_array_equal(*_exchange(toy(schedule, fibers=fibers)))


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_exchange_without_the_grid_barrier_is_wrong(toy, schedule):
    out, expected = _exchange(toy(schedule, code=_without("grid.sync();")))
    assert not np.array_equal(out, expected)
    assert np.isnan(out).any()                # read before the other block wrote it


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_every_thread_sees_its_own_indices_after_every_barrier(toy, schedule):
    blocks, threads = 3, 64
    n = blocks * threads
    out = np.zeros((4, n, 8), np.uint64)
    toy(schedule, seed=7).launch("indices", (blocks,), (threads,), [out], cooperative=True)
    i = np.arange(n)
    expected = np.stack([i % threads, i // threads, np.full(n, threads), np.full(n, blocks),
                         i % threads, i, np.full(n, threads), np.full(n, n)], axis=1)
    for phase in range(4):
        np.testing.assert_array_equal(out[phase], expected, err_msg=f"phase {phase}")


def test_every_thread_has_its_own_stack(toy):
    ok = np.zeros(2 * 256, np.int32)
    toy("shuffled").launch("private_stacks", (2,), (256,), [ok])
    assert ok.all()


# ---------------------------------------------------------------------------
# The schedules.
# ---------------------------------------------------------------------------

def _arrivals(launcher, blocks=2, threads=32, cooperative=False):
    order, counter = np.zeros(2 * blocks * threads, np.uint32), np.zeros(2, np.uint32)
    launcher.launch("arrival_order", (blocks,), (threads,), [order, counter],
                    cooperative=cooperative)
    return order.reshape(2, blocks * threads)


@pytest.mark.parametrize("cooperative", [False, True], ids=["launch", "cooperative"])
def test_forward_and_reverse_schedules_run_threads_in_and_against_index_order(toy, cooperative):
    ascending = np.arange(64)
    np.testing.assert_array_equal(_arrivals(toy("forward"), cooperative=cooperative),
                                  [ascending, ascending])
    np.testing.assert_array_equal(_arrivals(toy("reverse"), cooperative=cooperative),
                                  [ascending[::-1], ascending[::-1]])


@pytest.mark.parametrize("cooperative", [False, True], ids=["launch", "cooperative"])
def test_shuffled_schedule_is_seeded_and_redrawn_at_each_barrier(toy, cooperative):
    first = _arrivals(toy("shuffled", seed=1), cooperative=cooperative)
    for phase in first:
        np.testing.assert_array_equal(np.sort(phase), np.arange(64))     # every thread once
        assert not np.array_equal(phase, np.arange(64))
    assert not np.array_equal(first[0], first[1])                        # redrawn
    np.testing.assert_array_equal(_arrivals(toy("shuffled", seed=1), cooperative=cooperative),
                                  first)                                 # reproducible
    assert not np.array_equal(_arrivals(toy("shuffled", seed=2), cooperative=cooperative),
                              first)


def test_shuffled_schedule_runs_the_blocks_of_a_launch_in_shuffled_order(toy):
    """One block after another (a plain launch), in a pseudo-random order."""
    order = _arrivals(toy("shuffled", seed=3), blocks=8)[0]
    blocks = order.reshape(8, 32) // 32
    assert (blocks == blocks[:, :1]).all()                   # block after block
    assert not np.array_equal(blocks[:, 0], np.arange(8))
    np.testing.assert_array_equal(np.sort(blocks[:, 0]), np.arange(8))


@pytest.mark.parametrize("bad", ["backwards", "Forward", None])
def test_unknown_schedule_is_refused(bad):
    with pytest.raises(ValueError, match="schedule"):
        EmulatedLauncher(bad)


# ---------------------------------------------------------------------------
# Broken barriers and shared memory: launch errors naming kernel, block and barrier.
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("schedule", SCHEDULES)
@pytest.mark.parametrize("kernel,cooperative,message", [
    ("barrier_in_branch", False,
     r"block \(\d,0,0\), thread \(\d+,0,0\): (returned while \d+ thread\(s\) of its block "
     r"wait at the block barrier __syncthreads\(\) at toy_kernels.cu:\d+|reached the block "
     r"barrier __syncthreads\(\) at toy_kernels.cu:\d+ after \d+ thread\(s\) of its block "
     r"returned)"),
    ("two_barrier_calls", False,
     r"block \(\d,0,0\), thread .*__syncthreads\(\) at toy_kernels.cu:(\d+) while \d+ "
     r"thread\(s\) of its block wait at .*__syncthreads\(\) at toy_kernels.cu:(?!\1)\d+"),
    ("block_and_grid_barrier", True, r"block \(\d,0,0\), thread .*: a deadlock"),
    ("block_skips_grid_barrier", True,
     r"(returned while .* thread\(s\) of the grid wait|after \d+ thread\(s\) of the grid "
     r"returned)"),
    ("grid_exchange", False, r"this_grid\(\).sync\(\) at toy_kernels.cu:\d+ in a launch that "
                             r"is not cooperative"),
])
def test_broken_barriers_are_launch_errors(toy, schedule, kernel, cooperative, message):
    launcher = toy(schedule)
    args = [np.zeros(3 * 64, np.float32)] * (2 if kernel == "grid_exchange" else 1)
    args = [a.copy() for a in args]
    with pytest.raises(CudaKernelError, match=rf"^{kernel}: .*{message}"):
        launcher.launch(kernel, (3,), (64,), args, cooperative=cooperative)
    out, expected = _block_sums(launcher, "block_sum<float, false>", 3, 64)   # still works
    np.testing.assert_array_equal(out, expected)


@pytest.mark.parametrize("index", [-1, 16, 40], ids=["before", "just-past", "past"])
def test_write_outside_the_shared_memory_is_a_launch_error(toy, index):
    launcher = toy("forward")
    with pytest.raises(CudaKernelError, match=r"shared_write: .*block \(0,0,0\).* outside its "
                                              r"block's dynamic shared memory"):
        launcher.launch("shared_write", (2,), (32,), [np.zeros(64, np.float32), np.int32(index)],
                        shared_bytes=64)
    launcher.launch("shared_write", (2,), (32,), [np.zeros(64, np.float32), np.int32(15)],
                    shared_bytes=64)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_unwritten_shared_memory_reads_as_nan(toy, dtype):
    out = np.zeros(2 * 64, dtype)
    name = f"unwritten_shared<{'float' if dtype == np.float32 else 'double'}>"
    toy("forward").launch(name, (2,), (64,), [out], shared_bytes=64 * out.itemsize)
    assert np.isnan(out).all()


@pytest.mark.parametrize("shared_bytes", [-1, MAX_SHARED_BYTES + 1, 1.0, True])
def test_bad_shared_bytes_are_refused(toy, shared_bytes):
    with pytest.raises(CudaKernelError, match="shared_bytes"):
        toy("forward").launch("unwritten_shared<float>", (1,), (32,), [np.zeros(32, np.float32)],
                              shared_bytes=shared_bytes)


def test_static_shared_memory_does_not_compile():
    code = ("__global__ void static_shared(float* __restrict__ out) {\n"
            "    __shared__ float tile[32];\n"
            "    tile[threadIdx.x] = 1.0f;\n"
            "    out[threadIdx.x] = tile[threadIdx.x];\n"
            "}\n")
    with pytest.raises(CudaKernelError, match=r"(?s)static_shared.*dynamic_shared_memory\(\)"):
        CodeLauncher(code, ["static_shared"], label="static_shared.cu")


def test_unknown_toy_kernel_is_named(toy):
    with pytest.raises(CudaKernelError, match="'no_such_kernel'.*toy_kernels.cu"):
        toy("forward").launch("no_such_kernel", (1,), (32,), [])


# ---------------------------------------------------------------------------
# The package's kernels: edited code, and the orchestration in every schedule.
# ---------------------------------------------------------------------------

ELMAN_FORWARD = kernel_name(cell_for("rnn_tanh"), "forward", "float64")


def _elman_forward_args(B=2, H=48):
    z = np.zeros((B, H))
    return forward_step_arguments([z.copy()], z.copy(), [z.copy()], z.copy(), z.copy(),
                                  np.zeros(H), [z.copy()], np.full(B, 4, np.int32), 0, B, H)


def test_edit_code_changes_what_is_built():
    """A barrier put into a branch of a real kernel (what a test deleting one
    from a persistent kernel also relies on): the edited build fails, the
    unedited one runs."""
    edited = []

    def barrier_in_branch(source, code):
        edited.append(source)
        anchor = "const Index H = hidden;"
        assert anchor in code
        return code.replace(anchor, "if (threadIdx.x < 32) __syncthreads();\n    " + anchor)

    launcher = EmulatedLauncher(edit_code=barrier_in_branch)
    with pytest.raises(CudaKernelError, match=r"rnn_forward_step<double, ElmanCell<TanhActivation"
                                              r">, int>: .*block barrier __syncthreads\(\) at "
                                              r"step_kernels.cu:\d+"):
        launcher.launch(ELMAN_FORWARD, (1,), (64,), _elman_forward_args())
    assert edited == ["step_kernels.cu"]
    EmulatedLauncher().launch(ELMAN_FORWARD, (1,), (64,), _elman_forward_args())


# Two layers, both directions, variable lengths: of LSTM and of GRU.
OTHER_SCHEDULE_CASES = [case for case in LAYER_CASES
                        if case.id.startswith(("lstm-float32-L2-bi-lengths",
                                               "gru-float64-L2-bi-lengths"))]


@pytest.mark.parametrize("cfg", OTHER_SCHEDULE_CASES)
@pytest.mark.parametrize("schedule", ["reverse", "shuffled"])
def test_layer_matches_oracle_and_numpy_path_in_other_schedules(schedule, cfg, monkeypatch):
    def run_emulated(layer, x, state, lengths, dy, dstate):
        with monkeypatch.context() as patch:
            patch.setattr(rnnkern.recurrent, "backend_for", lambda xp: emulated_backend(schedule))
            return run_layer(layer, x, state, lengths, dy, dstate)
    check_layer_parity(cfg, run_emulated)


def test_emulated_backend_is_cached_per_schedule():
    assert emulated_backend() is emulated_backend("forward")
    assert emulated_backend("shuffled") is emulated_backend("shuffled")
    assert emulated_backend("shuffled") is not emulated_backend("reverse")
