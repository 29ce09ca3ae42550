// Host emulation of the CUDA C++ our kernels use, so that g++ can compile
// the very same .cu sources for the CPU (rnnkern/backends/cuda/emulation.py
// builds them into a shared library and calls it through ctypes on NumPy
// arrays).
//
// What it provides:
//   - RNNKERN_HOST_EMULATION (defined as 1), for the few lines a kernel
//     source must keep from g++ (#include <cooperative_groups.h>, its own
//     extern __shared__ dynamic_shared_memory());
//   - __global__ / __device__ / __host__ and __launch_bounds__(...) become
//     nothing, __forceinline__ inline;
//   - threadIdx, blockIdx, blockDim, gridDim are thread_local variables, set
//     for each CUDA thread every time it is resumed;
//   - exp, tanh come from <cmath>; expf and tanhf too, then moved by a
//     deterministic 0 to 2 ulp (a hash of the argument picks how far and
//     which way): CUDA documents at most 2 ulp of error for both, and the
//     tests' tolerances must hold for any such error, not only for glibc's;
//   - min/max of two ints, unsigneds, longs, long longs, floats or doubles,
//     as CUDA's;
//   - __ldg and __ldcg are plain loads, __threadfence a fence;
//   - __syncthreads(), cooperative_groups::this_thread_block().sync() (block
//     barrier) and cooperative_groups::this_grid().sync() (grid barrier, in a
//     cooperative launch only);
//   - dynamic_shared_memory(): the current block's dynamic shared memory,
//     the launch's shared_bytes, 16-byte aligned;
//   - cuda_host_emulation::launch: runs a grid (below);
//   - the parameter types of each kernel as text, so that the Python side can
//     check every argument before a launch.
//
// How a launch runs.  Every CUDA thread is a fiber (its own stack, switched
// to and from on the calling OS thread; x86-64: a hand-rolled switch of the
// callee-saved registers, elsewhere ucontext).  A fiber runs until it reaches
// a barrier or returns; the scheduler then resumes the next runnable fiber.
// It works in rounds: a round resumes every runnable fiber once, in the order
// of the launch's schedule, over the resident fibers:
//   forward    block-major, threads ascending;
//   reverse    the opposite;
//   shuffled   a pseudo-random permutation from the launch's seed, redrawn
//              for every round (a round begins after barriers released).
// A barrier whose last thread arrives releases its waiters into the next
// round.  A cooperative launch makes every block resident at once (as the GPU
// must), so a grid barrier can wait for all of them; any other launch runs
// its blocks one after another, in the schedule's order (shuffled: a
// pseudo-random affine permutation of the block indices), each block's
// threads as fibers.  Fibers start lazily, and a fiber whose thread returns
// runs the next thread of the round on the same stack if that one has not
// started yet, so a block that meets no barrier costs one stack and two
// switches.
//
// Barrier rules, checked as threads arrive (a broken one is a launch error,
// never a hang; CUDA leaves these cases undefined): every thread of a block
// reaches the same barriers, the threads of a block wait at one barrier call
// (the same kind, file and line) at a time, and none returns while others of
// its block wait or reaches a barrier after another returned.  A grid barrier
// likewise over every thread of the grid, and only in a cooperative launch.
//
// Dynamic shared memory: one buffer per resident block, filled with 0xFF
// bytes (NaN, for floats and doubles) when the block starts, so an element
// read before any thread wrote it shows up; guard bytes before and after are
// checked when the block's last thread returns (a write outside shared_bytes
// is a launch error).  Static __shared__ variables are not emulated: a
// kernel that declares one fails to compile (use dynamic_shared_memory()).
// Neither are warp intrinsics (__shfl_sync, ...): a kernel that calls one
// fails to compile instead of running on a schedule that cannot honour it.
//
// Errors come back as a message (the exported launcher returns it, nullptr
// on success): the launch stops at the first one, its suspended fibers are
// dropped (their stacks go back to the pool).  FMA contraction, NVRTC's
// default, comes from the build (rnnkern/backends/cuda/emulation.py:
// -ffp-contract=fast, and -mfma where the CPU has it).  Not emulated: the
// memory model (a fiber's writes are seen by all at once; there are no data
// races, only orders), and the flushing of float denormals to zero that CuPy
// asks of NVRTC (-ftz=true).  Each fiber has a 256 KiB stack (mmap'ed with
// MAP_NORESERVE: only touched pages cost memory), pooled per OS thread; an
// overflow is caught by a canary at its bottom (a launch error).  Define
// RNNKERN_FIBERS_UCONTEXT to use ucontext on x86-64 too.
#pragma once

#define RNNKERN_HOST_EMULATION 1

#include <sys/mman.h>
#include <unistd.h>

#include <cmath>
#include <cstdarg>
#include <cstdio>
#include <cstddef>
#include <cstdint>
#include <exception>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#if !defined(__x86_64__) || defined(RNNKERN_FIBERS_UCONTEXT)
#define RNNKERN_FIBERS_USE_UCONTEXT 1
#include <ucontext.h>
#endif

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __shared__                                                                  \
    static_assert(false, "host emulation (host_shim.h): static __shared__ variables " \
                         "are not emulated; use dynamic_shared_memory()");

struct uint3 {
    unsigned int x, y, z;
};

struct dim3 {
    unsigned int x, y, z;
};

// A read-only load through the non-coherent cache is, on the host, a load.
template <typename T>
inline T __ldg(const T* p) {
    return *p;
}

// A load that bypasses L1 (cached in L2 only) is, on the host, a load.
template <typename T>
inline T __ldcg(const T* p) {
    return *p;
}

// The fibers of a launch share one OS thread: a fence orders nothing more,
// but keeps the compiler from moving memory accesses across it.
inline void __threadfence() { __atomic_thread_fence(__ATOMIC_SEQ_CST); }

// CUDA's min and max of the built-in types (the floating ones as fminf/fmaxf).
#define RNNKERN_MIN_MAX(T)                                  \
    inline T min(T a, T b) { return b < a ? b : a; }        \
    inline T max(T a, T b) { return a < b ? b : a; }
RNNKERN_MIN_MAX(int)
RNNKERN_MIN_MAX(unsigned int)
RNNKERN_MIN_MAX(long)
RNNKERN_MIN_MAX(unsigned long)
RNNKERN_MIN_MAX(long long)
RNNKERN_MIN_MAX(unsigned long long)
#undef RNNKERN_MIN_MAX
inline float min(float a, float b) { return std::fmin(a, b); }
inline float max(float a, float b) { return std::fmax(a, b); }
inline double min(double a, double b) { return std::fmin(a, b); }
inline double max(double a, double b) { return std::fmax(a, b); }

inline thread_local uint3 threadIdx;
inline thread_local uint3 blockIdx;
inline thread_local dim3 blockDim;
inline thread_local dim3 gridDim;

namespace cuda_host_emulation {

// x moved by 0, 1 or 2 ulp up or down, chosen by a hash of the argument a
// (deterministic: the same call gives the same result, as on a GPU).
inline float within_two_ulp(float x, float a) {
    unsigned int bits;
    static_assert(sizeof(bits) == sizeof(a), "float is 32 bits");
    __builtin_memcpy(&bits, &a, sizeof(bits));
    bits = (bits ^ (bits >> 16)) * 0x45d9f3bu;
    bits ^= bits >> 16;
    const int ulps = int(bits % 5u) - 2;
    const float toward = ulps < 0 ? -INFINITY : INFINITY;
    for (int k = 0; k < (ulps < 0 ? -ulps : ulps) && std::isfinite(x); ++k)
        x = std::nextafter(x, toward);
    return x;
}

inline float device_expf(float a) { return within_two_ulp(std::exp(a), a); }
// tanh is within [-1, 1] on a GPU too
inline float device_tanhf(float a) {
    return std::fmax(-1.0f, std::fmin(1.0f, within_two_ulp(std::tanh(a), a)));
}

// ---------------------------------------------------------------------------
// Fiber contexts and stacks.
// ---------------------------------------------------------------------------

#ifdef RNNKERN_FIBERS_USE_UCONTEXT
struct Context {
    ucontext_t state;
};
#else
// A suspended x86-64 context is its stack pointer: the callee-saved
// registers and the return address lie on its stack (rnnkern_fiber_switch).
struct Context {
    void* sp = nullptr;
};
#endif

}  // namespace cuda_host_emulation

#ifndef RNNKERN_FIBERS_USE_UCONTEXT
// rnnkern_fiber_switch(save, load): pushes the callee-saved registers (the
// System V ABI's rbx, rbp, r12-r15; the FP control words are left as they
// are: no kernel changes them), saves the stack pointer in *save, switches
// to the stack `load` and pops its registers; the `ret` resumes that context.
// rnnkern_fiber_start: where a new fiber's first switch returns to; it calls
// the entry function left in r13 (which never returns).
extern "C" __attribute__((visibility("hidden"))) void rnnkern_fiber_switch(void** save,
                                                                           void* load);
extern "C" __attribute__((visibility("hidden"))) void rnnkern_fiber_start();
__asm__(R"(
    .pushsection .text
    .weak rnnkern_fiber_switch
    .hidden rnnkern_fiber_switch
    .type rnnkern_fiber_switch, @function
rnnkern_fiber_switch:
    pushq %rbp
    pushq %rbx
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    movq %rsp, (%rdi)
    movq %rsi, %rsp
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %rbx
    popq %rbp
    ret
    .size rnnkern_fiber_switch, .-rnnkern_fiber_switch
    .weak rnnkern_fiber_start
    .hidden rnnkern_fiber_start
    .type rnnkern_fiber_start, @function
rnnkern_fiber_start:
    callq *%r13
    ud2
    .size rnnkern_fiber_start, .-rnnkern_fiber_start
    .popsection
)");
#endif

namespace cuda_host_emulation {

// A fiber's stack: `bytes` of memory, the lowest `canary_bytes` of which
// hold a pattern that an overflow destroys (checked whenever the fiber
// switches back to the scheduler), and the context of the fiber that runs on
// it (a started fiber owns its stack until it returns).
struct Stack {
    static constexpr std::size_t bytes = std::size_t(256) << 10;
    static constexpr int canary_words = 8;
    static constexpr std::uint64_t canary = 0xC3A5'5A3C'DEAD'BEEFull;
    unsigned char* bottom = nullptr;
    bool canary_set = false;               // false: mapped or given back to the system
    Context context;

    unsigned char* top() const { return bottom + bytes; }

    void set_canary() {
        for (int k = 0; k < canary_words; ++k)
            __builtin_memcpy(bottom + 8 * k, &canary, 8);
        canary_set = true;
    }

    bool overflowed() const {
        std::uint64_t words[canary_words];
        __builtin_memcpy(words, bottom, sizeof(words));
        std::uint64_t differ = 0;
        for (int k = 0; k < canary_words; ++k) differ |= words[k] ^ canary;
        return differ != 0;
    }
};

// The stacks of one OS thread, reused across fibers and launches.  They are
// mapped `chunk` at a time above one guard page (MAP_NORESERVE: untouched
// pages cost nothing), not each under its own guard page: that would take
// two memory mappings per stack, and a cooperative launch of a GPU's worth
// of threads (132 SMs x 256) would exceed Linux's default 65530 mappings.
class StackPool {
public:
    static constexpr std::size_t chunk = 64;

    StackPool() = default;
    StackPool(const StackPool&) = delete;
    StackPool& operator=(const StackPool&) = delete;
    ~StackPool() {
        for (auto [mapping, bytes] : mappings_) munmap(mapping, bytes);
        for (Stack* stacks : chunks_) delete[] stacks;
    }

    // A stack with its canary set, or nullptr if no memory can be mapped.
    Stack* take() {
        if (free_.empty() && !map_chunk()) return nullptr;
        Stack* stack = free_.back();
        free_.pop_back();
        if (released_ > free_.size()) released_ = free_.size();
        if (!stack->canary_set) stack->set_canary();
        return stack;
    }

    // Takes a stack back (its canary must be intact, or canary_set false).
    void give(Stack* stack) { free_.push_back(stack); }

    // Gives the pages of all but the `keep` most recently used free stacks
    // back to the system (a large cooperative launch leaves many, each with
    // its touched pages).
    void trim(std::size_t keep) {
        for (; released_ + keep < free_.size(); ++released_) {
            madvise(free_[released_]->bottom, Stack::bytes, MADV_DONTNEED);
            free_[released_]->canary_set = false;
        }
    }

private:
    bool map_chunk() {
        const std::size_t page = std::size_t(sysconf(_SC_PAGESIZE));
        const std::size_t bytes = page + chunk * Stack::bytes;
        void* mapping = mmap(nullptr, bytes, PROT_READ | PROT_WRITE,
                             MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_STACK, -1, 0);
        if (mapping == MAP_FAILED) return false;
        mappings_.emplace_back(mapping, bytes);
        mprotect(mapping, page, PROT_NONE);      // best effort: the canaries still check
        Stack* stacks = chunks_.emplace_back(new Stack[chunk]);
        for (std::size_t k = chunk; k-- > 0;) {
            stacks[k].bottom = static_cast<unsigned char*>(mapping) + page + k * Stack::bytes;
            free_.push_back(&stacks[k]);
        }
        return true;
    }

    std::vector<std::pair<void*, std::size_t>> mappings_;
    std::vector<Stack*> chunks_;        // arrays of `chunk` stacks (new[])
    std::vector<Stack*> free_;          // last in, first out
    std::size_t released_ = 0;          // free_[:released_] have no pages
};

inline thread_local StackPool stack_pool;

// Saves the running context in `save` and resumes `load`.
inline void switch_context(Context& save, Context& load) {
#ifdef RNNKERN_FIBERS_USE_UCONTEXT
    swapcontext(&save.state, &load.state);
#else
    rnnkern_fiber_switch(&save.sp, load.sp);
#endif
}

// Prepares stack.context so that switching to it calls entry() on the stack.
inline void start_context(Stack& stack, void (*entry)()) {
#ifdef RNNKERN_FIBERS_USE_UCONTEXT
    getcontext(&stack.context.state);
    stack.context.state.uc_stack.ss_sp = stack.bottom;
    stack.context.state.uc_stack.ss_size = Stack::bytes;
    stack.context.state.uc_link = nullptr;
    makecontext(&stack.context.state, entry, 0);
#else
    // The frame rnnkern_fiber_switch pops: r15, r14, r13 (= entry), r12, rbx,
    // rbp, then the return address rnnkern_fiber_start.  After the `ret` the
    // stack pointer is top - 16, 16-byte aligned, as a `call` wants it.
    void** frame = reinterpret_cast<void**>(stack.top() - 72);
    for (int k = 0; k < 6; ++k) frame[k] = nullptr;
    frame[2] = reinterpret_cast<void*>(entry);
    frame[6] = reinterpret_cast<void*>(&rnnkern_fiber_start);
    stack.context.sp = frame;
#endif
}

// ---------------------------------------------------------------------------
// The scheduler.
// ---------------------------------------------------------------------------

enum class Schedule : int { forward = 0, reverse = 1, shuffled = 2 };

enum class BarrierKind : unsigned char { block, grid };

// A barrier call: its kind and where the kernel calls it.
struct BarrierSite {
    BarrierKind kind;
    const char* file;
    int line;

    bool operator==(const BarrierSite& other) const {
        return kind == other.kind && line == other.line &&
               (file == other.file || __builtin_strcmp(file, other.file) == 0);
    }

    // For messages: the barrier and where it is called.
    const char* name() const {
        return kind == BarrierKind::block ? "the block barrier __syncthreads()"
                                          : "the grid barrier this_grid().sync()";
    }

};

struct Fiber {
    enum State : unsigned char { ready, waiting, done };
    Stack* stack = nullptr;          // null until started, and after it returned
    unsigned int block = 0;          // its resident block's slot
    uint3 thread{};
    State state = ready;
};

// A resident block: its index, the barrier its waiting threads are at, its
// shared memory.
struct Block {
    uint3 index{};
    unsigned int waiting = 0;        // threads at a barrier (block or grid)
    unsigned int done = 0;           // threads returned
    BarrierSite site{};              // where the waiting threads are
    unsigned char* shared = nullptr;
};

// The guard zones before and after each block's shared memory: this many
// bytes of a fixed pattern.
constexpr std::size_t shared_guard_bytes = 256;
// The byte the shared memory is filled with when a block starts: 0xFF...
// is a NaN as float and as double.
constexpr unsigned char shared_fill = 0xFF;

struct GuardPattern {
    unsigned char bytes[shared_guard_bytes];

    constexpr GuardPattern() : bytes{} {
        for (std::size_t k = 0; k < shared_guard_bytes; ++k)
            bytes[k] = static_cast<unsigned char>(0x5A + 37 * k);
    }
};

inline constexpr GuardPattern guard_pattern{};

// splitmix64: the schedule's pseudo-random numbers.
class Random {
public:
    explicit Random(std::uint64_t seed) : state_(seed) {}

    std::uint64_t next() {
        std::uint64_t z = (state_ += 0x9e3779b97f4a7c15ull);
        z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
        z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
        return z ^ (z >> 31);
    }

    // Uniform enough in [0, n) for a schedule.
    std::uint64_t below(std::uint64_t n) { return next() % n; }

private:
    std::uint64_t state_;
};

inline std::uint64_t gcd(std::uint64_t a, std::uint64_t b) {
    while (b != 0) a = std::exchange(b, a % b);
    return a;
}

// printf into a std::string: the error messages (cold code, kept small).
[[gnu::cold, gnu::format(printf, 1, 2)]] inline std::string format(const char* format, ...) {
    char text[1024];
    va_list args;
    va_start(args, format);
    std::vsnprintf(text, sizeof(text), format, args);
    va_end(args);
    return text;
}

inline uint3 unravel(std::uint64_t linear, dim3 shape) {
    const unsigned int x = unsigned(linear % shape.x);
    linear /= shape.x;
    return {x, unsigned(linear % shape.y), unsigned(linear / shape.y)};
}

// A thrown launch error: the message the exported launcher returns.
struct LaunchError {
    std::string message;
};

class Launch;
inline thread_local Launch* active_launch = nullptr;
inline thread_local unsigned char* active_shared = nullptr;

class Launch {
public:
    Launch(void (*body)(void**), void** args, dim3 grid, dim3 block, std::size_t shared_bytes,
           bool cooperative, Schedule schedule, std::uint64_t seed)
        : body_(body), args_(args), grid_(grid), block_(block), shared_bytes_(shared_bytes),
          cooperative_(cooperative), schedule_(schedule), random_(seed),
          threads_per_block_(block.x * block.y * block.z),
          blocks_(std::uint64_t(grid.x) * grid.y * grid.z) {}

    // Runs the grid; the error message, empty on success.
    std::string run() {
        Launch* outer = active_launch;
        active_launch = this;
        try {
            if (cooperative_)
                run_cooperative();
            else
                run_block_by_block();
        } catch (const LaunchError& err) {
            error_ = err.message;
        } catch (const std::exception& err) {
            error_ = std::string("host emulation: ") + err.what();
        }
        for (Fiber& fiber : fibers_) {     // those an error left suspended
            if (fiber.stack == nullptr) continue;
            if (fiber.stack->overflowed()) fiber.stack->canary_set = false;
            pool_.give(fiber.stack);
        }
        pool_.trim(2048);
        active_launch = outer;
        active_shared = nullptr;
        return error_;
    }

    // __syncthreads() / this_grid().sync() of the running fiber.
    __attribute__((noinline)) void arrive(BarrierSite site) {
        Fiber& fiber = fibers_[current_];
        Block& block = blocks_resident_[fiber.block];
        if (site.kind == BarrierKind::grid && !cooperative_)
            fail(fiber, "%s at %s:%d in a launch that is not cooperative (a grid barrier needs "
                        "every block resident: launch with cooperative=True)",
                 site.name(), site.file, site.line);
        if (block.done != 0)
            fail(fiber, "reached %s at %s:%d after %u thread(s) of its block returned: every "
                        "thread of a block must reach the same barriers",
                 site.name(), site.file, site.line, block.done);
        if (block.waiting != 0 && !(block.site == site))
            fail(fiber, "reached %s at %s:%d while %u thread(s) of its block wait at %s at "
                        "%s:%d: a deadlock",
                 site.name(), site.file, site.line, block.waiting, block.site.name(),
                 block.site.file, block.site.line);
        if (site.kind == BarrierKind::grid) {
            if (grid_done_ != 0)
                fail(fiber, "reached %s at %s:%d after %llu thread(s) of the grid returned: "
                            "every thread of the grid must reach the same grid barriers",
                     site.name(), site.file, site.line, (unsigned long long)grid_done_);
            if (grid_waiting_ != 0 && !(grid_site_ == site))
                fail(fiber, "reached %s at %s:%d while %llu thread(s) of the grid wait at %s "
                            "at %s:%d: a deadlock",
                     site.name(), site.file, site.line, (unsigned long long)grid_waiting_,
                     grid_site_.name(), grid_site_.file, grid_site_.line);
        }
        fiber.state = Fiber::waiting;
        block.site = site;
        if (site.kind == BarrierKind::block) {
            if (++block.waiting == threads_per_block_) release_block(fiber.block);
        } else {
            ++block.waiting;
            grid_site_ = site;
            if (++grid_waiting_ == fibers_.size()) release_grid();
        }
        suspend();
    }

    unsigned long long grid_rank() const {
        const Fiber& fiber = fibers_[current_];
        return (block_rank(blocks_resident_[fiber.block].index) * threads_per_block_) +
               thread_rank(fiber.thread);
    }

    unsigned long long block_rank() const { return thread_rank(fibers_[current_].thread); }
    unsigned long long grid_threads() const { return blocks_ * threads_per_block_; }
    unsigned long long block_threads() const { return threads_per_block_; }
    bool cooperative() const { return cooperative_; }

    // Where a new fiber starts: runs its thread of the kernel; when that
    // returns and the next thread of the round has not started yet, runs that
    // one too, on the same stack, and so on: a kernel without barriers runs a
    // whole block with one stack and two switches.  Then back to the
    // scheduler for good.
    static void fiber_main() {
        Launch& launch = *active_launch;
        for (;;) {
            launch.body_(launch.args_);
            launch.returned();
            if (launch.position_ + 1 == launch.order_.size()) break;
            Fiber& next = launch.fibers_[launch.order_[launch.position_ + 1]];
            if (next.stack != nullptr) break;           // suspended: the scheduler resumes it
            next.stack = std::exchange(launch.fibers_[launch.current_].stack, nullptr);
            launch.enter(launch.order_[++launch.position_]);
        }
        launch.suspend();
        __builtin_trap();    // a returned fiber is never resumed
    }

private:
    unsigned long long thread_rank(uint3 t) const {
        return t.x + std::uint64_t(block_.x) * (t.y + std::uint64_t(block_.y) * t.z);
    }

    unsigned long long block_rank(uint3 b) const {
        return b.x + std::uint64_t(grid_.x) * (b.y + std::uint64_t(grid_.y) * b.z);
    }

    // Every block at once: the fibers of all blocks in one set of rounds.
    void run_cooperative() {
        if (blocks_ * threads_per_block_ > (std::uint64_t(1) << 31))
            throw LaunchError{format("host emulation: a cooperative launch of %llu threads is "
                                     "beyond any GPU (and this emulation)",
                                     (unsigned long long)(blocks_ * threads_per_block_))};
        make_resident(blocks_);
        for (std::uint64_t b = 0; b < blocks_; ++b) start_block(unsigned(b), unravel(b, grid_));
        run_rounds();
    }

    // One block after another, in the schedule's order.
    void run_block_by_block() {
        make_resident(1);
        // shuffled: b -> (a b + c) mod n with a coprime to n, a pseudo-random
        // permutation that needs no table for the largest grids.
        std::uint64_t a = 1, c = 0;
        if (schedule_ == Schedule::shuffled && blocks_ > 1) {
            c = random_.below(blocks_);
            a = 1 + random_.below(blocks_ - 1);
            while (gcd(a, blocks_) != 1) a = a % (blocks_ - 1) + 1;
        }
        for (std::uint64_t k = 0; k < blocks_; ++k) {
            const std::uint64_t b = schedule_ == Schedule::forward ? k
                                    : schedule_ == Schedule::reverse
                                        ? blocks_ - 1 - k
                                        : std::uint64_t((unsigned __int128)(a) * k % blocks_ +
                                                        c) % blocks_;
            start_block(0, unravel(b, grid_));
            run_rounds();
        }
    }

    void make_resident(std::uint64_t blocks) {
        fibers_.assign(blocks * threads_per_block_, Fiber{});
        blocks_resident_.assign(blocks, Block{});
        const std::size_t stride =
            (shared_guard_bytes + shared_bytes_ + shared_guard_bytes + 15) / 16 * 16;
        shared_memory_.assign(blocks * stride + 16, 0);
        unsigned char* base = shared_memory_.data();
        base += (16 - reinterpret_cast<std::uintptr_t>(base) % 16) % 16;
        for (std::uint64_t b = 0; b < blocks; ++b)
            blocks_resident_[b].shared = base + b * stride + shared_guard_bytes;
        for (std::size_t f = 0; f < fibers_.size(); ++f) {
            fibers_[f].block = unsigned(f / threads_per_block_);
            fibers_[f].thread = unravel(f % threads_per_block_, block_);
        }
        grid_waiting_ = 0;
        grid_done_ = 0;
    }

    // Resets the resident slot `slot` to the block `index`: its fibers ready
    // to start, its shared memory filled and guarded.
    void start_block(unsigned int slot, uint3 index) {
        Block& block = blocks_resident_[slot];
        block.index = index;
        block.waiting = block.done = 0;
        const std::uint64_t first = std::uint64_t(slot) * threads_per_block_;
        for (unsigned int t = 0; t < threads_per_block_; ++t) {
            fibers_[first + t].stack = nullptr;
            fibers_[first + t].state = Fiber::ready;
        }
        __builtin_memcpy(block.shared - shared_guard_bytes, guard_pattern.bytes,
                         shared_guard_bytes);
        __builtin_memset(block.shared, shared_fill, shared_bytes_);
        __builtin_memcpy(block.shared + shared_bytes_, guard_pattern.bytes, shared_guard_bytes);
    }

    // Resumes the runnable fibers, round after round, until none is left.
    void run_rounds() {
        for (;;) {
            order_.clear();
            for (std::size_t f = 0; f < fibers_.size(); ++f)
                if (fibers_[f].state == Fiber::ready) order_.push_back(unsigned(f));
            if (order_.empty()) break;
            if (schedule_ == Schedule::reverse) {
                for (std::size_t k = 0, n = order_.size(); k < n / 2; ++k)
                    std::swap(order_[k], order_[n - 1 - k]);
            } else if (schedule_ == Schedule::shuffled) {
                for (std::size_t k = order_.size() - 1; k > 0; --k)
                    std::swap(order_[k], order_[random_.below(k + 1)]);
            }
            for (position_ = 0; position_ < order_.size(); ++position_) resume();
        }
        for (const Fiber& fiber : fibers_)    // the arrival checks make this unreachable
            if (fiber.state != Fiber::done)
                throw LaunchError{where(fiber) + "waits at a barrier: a deadlock"};
    }

    // Makes fiber f the running one: its indices and shared memory.
    void enter(unsigned int f) {
        const Fiber& fiber = fibers_[f];
        const Block& block = blocks_resident_[fiber.block];
        current_ = f;
        threadIdx = fiber.thread;
        blockIdx = block.index;
        blockDim = block_;
        gridDim = grid_;
        active_shared = block.shared;
    }

    // Runs the fiber order_[position_] until it reaches a barrier or returns
    // (it may run the next ones of the round too: fiber_main).
    void resume() {
        enter(order_[position_]);
        Fiber& first = fibers_[current_];
        if (first.stack == nullptr) {
            first.stack = pool_.take();
            if (first.stack == nullptr)
                throw LaunchError{where(first) + "no memory for another fiber stack"};
            start_context(*first.stack, &Launch::fiber_main);
        }
        switch_context(scheduler_, first.stack->context);
        Fiber& last = fibers_[current_];
        if (last.stack->overflowed())
            throw LaunchError{where(last) + format("overflowed its stack (%zu KiB)",
                                                   Stack::bytes >> 10)};
        if (!error_.empty()) throw LaunchError{error_};
        if (last.state == Fiber::done) {
            pool_.give(last.stack);
            last.stack = nullptr;
        }
    }

    // Back to the scheduler; returns when the scheduler resumes this fiber.
    void suspend() { switch_context(fibers_[current_].stack->context, scheduler_); }

    // "block (x,y,z), thread (x,y,z): " of a fiber, to start a message.
    [[gnu::cold]] std::string where(const Fiber& fiber) const {
        const uint3 b = blocks_resident_[fiber.block].index, t = fiber.thread;
        return format("block (%u,%u,%u), thread (%u,%u,%u): ", b.x, b.y, b.z, t.x, t.y, t.z);
    }

    // Records the error and leaves the fiber for good (the scheduler throws it).
    [[noreturn, gnu::cold, gnu::format(printf, 3, 4)]] void fail(const Fiber& fiber,
                                                                 const char* what, ...) {
        char text[1024];
        va_list args;
        va_start(args, what);
        std::vsnprintf(text, sizeof(text), what, args);
        va_end(args);
        error_ = where(fiber) + text;
        suspend();
        __builtin_trap();    // a failed launch never resumes its fibers
    }

    void returned() {
        Fiber& fiber = fibers_[current_];
        Block& block = blocks_resident_[fiber.block];
        fiber.state = Fiber::done;
        ++grid_done_;
        if (block.waiting != 0)
            fail(fiber, "returned while %u thread(s) of its block wait at %s at %s:%d: every "
                        "thread of a block must reach the same barriers",
                 block.waiting, block.site.name(), block.site.file, block.site.line);
        if (grid_waiting_ != 0)
            fail(fiber, "returned while %llu thread(s) of the grid wait at %s at %s:%d: every "
                        "thread of the grid must reach the same grid barriers",
                 (unsigned long long)grid_waiting_, grid_site_.name(), grid_site_.file,
                 grid_site_.line);
        if (++block.done == threads_per_block_) check_shared_guards(fiber, block);
    }

    void check_shared_guards(const Fiber& fiber, const Block& block) {
        const unsigned char* zones[] = {block.shared - shared_guard_bytes,
                                        block.shared + shared_bytes_};
        for (const unsigned char* zone : zones) {
            if (__builtin_memcmp(zone, guard_pattern.bytes, shared_guard_bytes) == 0) continue;
            std::size_t k = 0;
            while (zone[k] == guard_pattern.bytes[k]) ++k;
            const std::ptrdiff_t offset = zone + k - block.shared;
            fail(fiber, "wrote outside its block's dynamic shared memory (shared_bytes = %zu): "
                        "byte %td of it changed (a guard byte; found when the block's last "
                        "thread returned)", shared_bytes_, offset);
        }
    }

    void release_block(unsigned int slot) {
        blocks_resident_[slot].waiting = 0;
        const std::uint64_t first = std::uint64_t(slot) * threads_per_block_;
        for (unsigned int t = 0; t < threads_per_block_; ++t)
            fibers_[first + t].state = Fiber::ready;
    }

    void release_grid() {
        grid_waiting_ = 0;
        for (Block& block : blocks_resident_) block.waiting = 0;
        for (Fiber& fiber : fibers_) fiber.state = Fiber::ready;
    }

    void (*body_)(void**);
    void** args_;
    dim3 grid_, block_;
    std::size_t shared_bytes_;
    bool cooperative_;
    Schedule schedule_;
    Random random_;
    unsigned int threads_per_block_;
    std::uint64_t blocks_;

    std::vector<Fiber> fibers_;              // the resident blocks' threads, block-major
    std::vector<Block> blocks_resident_;
    std::vector<unsigned char> shared_memory_;
    std::vector<unsigned int> order_;        // this round's fibers
    std::size_t position_ = 0;               // of the running fiber in order_
    std::uint64_t grid_waiting_ = 0, grid_done_ = 0;
    BarrierSite grid_site_{};
    unsigned int current_ = 0;               // the running fiber
    StackPool& pool_ = stack_pool;           // (one look-up of the thread_local)
    Context scheduler_;
    std::string error_;
};

// Calls kernel(args...) for the current CUDA thread.  args is laid out as in
// cudaLaunchKernel: args[k] points to the value of the k-th parameter.
template <typename... Params, std::size_t... K>
void call_kernel(void (*kernel)(Params...), void** args, std::index_sequence<K...>) {
    kernel(*static_cast<std::remove_cv_t<Params>*>(args[K])...);
}

template <typename... Params>
void call_kernel(void (*kernel)(Params...), void** args) {
    call_kernel(kernel, args, std::index_sequence_for<Params...>{});
}

// The kernel as the scheduler runs it: one CUDA thread, arguments in args.
template <auto kernel>
void kernel_body(void** args) {
    call_kernel(kernel, args);
}

inline thread_local std::string launch_error;

// Runs the grid of `body`; nullptr on success, else the error message
// (valid until the next launch on this OS thread).  One function for every
// kernel of a library: only kernel_body is compiled per kernel.
__attribute__((noinline)) inline const char* launch(void (*body)(void**), dim3 grid, dim3 block,
                                                    void** args, std::size_t shared_bytes,
                                                    int cooperative, int schedule,
                                                    std::uint64_t seed) noexcept {
    if (schedule < 0 || schedule > int(Schedule::shuffled)) {
        launch_error = format("host emulation: unknown schedule %d", schedule);
    } else {
        try {
            launch_error = Launch(body, args, grid, block, shared_bytes, cooperative != 0,
                                  Schedule(schedule), seed)
                               .run();
        } catch (const std::exception& err) {    // bad_alloc making the launch
            launch_error = std::string("host emulation: ") + err.what();
        }
    }
    return launch_error.empty() ? nullptr : launch_error.c_str();
}

// Type code of a scalar, as NumPy's dtype kind + itemsize: "f4", "i4", ...
template <typename S>
std::string scalar_code() {
    const char* kind = std::is_floating_point_v<S> ? "f" : std::is_signed_v<S> ? "i" : "u";
    return kind + std::to_string(sizeof(S));
}

// Whether P is a group of pointers passed by value, such as the step
// kernels' StepArrays<T, N>: a struct with a member type `pointer` (T*) and a
// constant `count` (N), laid out as an array of N pointers.
template <typename P, typename = void>
struct is_pointer_group : std::false_type {};

template <typename P>
struct is_pointer_group<P, std::void_t<typename P::pointer, decltype(P::count)>>
    : std::true_type {};

// "f4" for a float parameter, "f4*" for float*, "const f4*" for const float*,
// "f4*[2]" for a group of two float* (StepArrays<float, 2>).
template <typename P>
std::string parameter_code() {
    if constexpr (is_pointer_group<P>::value) {
        static_assert(sizeof(P) == P::count * sizeof(typename P::pointer),
                      "a pointer group must be laid out as an array of pointers");
        return parameter_code<typename P::pointer>() + "[" + std::to_string(P::count) + "]";
    } else if constexpr (std::is_pointer_v<P>) {
        using Pointee = std::remove_pointer_t<P>;
        return (std::is_const_v<Pointee> ? "const " : "") +
               scalar_code<std::remove_cv_t<Pointee>>() + "*";
    } else {
        return scalar_code<P>();
    }
}

// The kernel's parameter list as comma-separated type codes, so the Python
// side can check every argument before a launch.
template <typename... Params>
const char* signature(void (*)(Params...)) {
    static const std::string codes = [] {
        std::string joined;
        ((joined += parameter_code<Params>() + ","), ...);
        if (!joined.empty()) joined.pop_back();
        return joined;
    }();
    return codes.c_str();
}

}  // namespace cuda_host_emulation

// The current block's dynamic shared memory: the launch's shared_bytes,
// 16-byte aligned (the kernels' own header declares it extern __shared__ on
// a GPU).
inline unsigned char* dynamic_shared_memory() { return cuda_host_emulation::active_shared; }

// The block barrier.  The defaults record where the kernel calls it.
inline void __syncthreads(const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
    cuda_host_emulation::active_launch->arrive(
        {cuda_host_emulation::BarrierKind::block, file, line});
}

namespace cooperative_groups {

class thread_block {
public:
    void sync(const char* file = __builtin_FILE(), int line = __builtin_LINE()) const {
        cuda_host_emulation::active_launch->arrive(
            {cuda_host_emulation::BarrierKind::block, file, line});
    }
    unsigned long long thread_rank() const {
        return cuda_host_emulation::active_launch->block_rank();
    }
    unsigned long long num_threads() const {
        return cuda_host_emulation::active_launch->block_threads();
    }
    unsigned long long size() const { return num_threads(); }
    uint3 group_index() const { return blockIdx; }
    uint3 thread_index() const { return threadIdx; }
};

// The grid of a cooperative launch (is_valid() false in any other launch,
// where sync() is a launch error).
class grid_group {
public:
    void sync(const char* file = __builtin_FILE(), int line = __builtin_LINE()) const {
        cuda_host_emulation::active_launch->arrive(
            {cuda_host_emulation::BarrierKind::grid, file, line});
    }
    bool is_valid() const { return cuda_host_emulation::active_launch->cooperative(); }
    unsigned long long thread_rank() const {
        return cuda_host_emulation::active_launch->grid_rank();
    }
    unsigned long long num_threads() const {
        return cuda_host_emulation::active_launch->grid_threads();
    }
    unsigned long long size() const { return num_threads(); }
};

inline thread_block this_thread_block() { return {}; }
inline grid_group this_grid() { return {}; }

}  // namespace cooperative_groups

// The float functions of the kernels, with CUDA's error bounds.
#define expf(a) cuda_host_emulation::device_expf(a)
#define tanhf(a) cuda_host_emulation::device_tanhf(a)

// Exports the instantiation given as the name expression (the macro's
// variadic part, which may contain commas) under C names numbered by its
// place in the name-expression list:
//   rnnkern_launch_<k>(grid x y z, block x y z, void** args, shared_bytes,
//                      cooperative, schedule, seed)
//                              nullptr, or the launch error's message
//   rnnkern_signature_<k>()   the parameter type codes
//   rnnkern_name_<k>()        the name expression itself
// (the only symbols the library exports: it is built with -fvisibility=hidden,
// so that libraries built with other shims or flags never share this state).
#define RNNKERN_EXPORTED extern "C" __attribute__((visibility("default")))
#define RNNKERN_EXPORT_KERNEL(k, ...)                                                          \
    RNNKERN_EXPORTED const char* rnnkern_launch_##k(                                           \
        unsigned int gx, unsigned int gy, unsigned int gz, unsigned int bx, unsigned int by,   \
        unsigned int bz, void** args, std::size_t shared_bytes, int cooperative,               \
        int schedule, std::uint64_t seed) {                                                    \
        return cuda_host_emulation::launch(&cuda_host_emulation::kernel_body<&__VA_ARGS__>,    \
                                           dim3{gx, gy, gz}, dim3{bx, by, bz}, args,           \
                                           shared_bytes, cooperative, schedule, seed);         \
    }                                                                                          \
    RNNKERN_EXPORTED const char* rnnkern_signature_##k() {                                     \
        return cuda_host_emulation::signature(&__VA_ARGS__);                                   \
    }                                                                                          \
    RNNKERN_EXPORTED const char* rnnkern_name_##k() { return #__VA_ARGS__; }
