// A tiny CUDA emulator for kernels/project.cu, so its index arithmetic, tails, pipeline
// ordering and epilogue can be checked on a machine without a GPU (scripts/test-cuda-kernels.sh).
//
// Every CUDA thread of a block is an OS thread; __syncthreads is a block barrier; warp
// collectives (shuffles, mma.sync) exchange operands through per-warp buffers between two warp
// barriers. mma.sync.m16n8k16 is emulated from the PTX ISA fragment layout. cp.async copies are
// queued per thread and performed only when cp.async.wait_group retires their group, so a read
// of a tile before its wait sees stale data and fails the test. Shared memory starts filled
// with 0x7e bytes (f16 NaN) so that reading memory nobody wrote shows up as a NaN flag.
//
// What it does not emulate: timing, bank conflicts, register limits, the real PTX assembler
// (scripts/test-cuda-kernels.sh also compiles the same source with NVRTC for sm_80 and sm_90).
#pragma once

#include <barrier>
#include <cmath>
#include <cstring>
#include <functional>
#include <memory>
#include <thread>
#include <vector>

struct iso_dim3 {
  unsigned x = 0, y = 0, z = 0;
};
struct float2 {
  float x, y;
};

#define __global__
#define __device__
#define __restrict__ __restrict
#define __launch_bounds__(...)
#define __shared__ static
#define ISO_DEVICE inline
#define threadIdx (emu::tl.tid)
#define blockIdx (emu::tl.bid)
#define __syncthreads() emu::syncthreads()
#define ISO_DYNAMIC_SMEM(name) unsigned char* name = emu::g_block->smem.data()

namespace emu {

struct ThreadState {
  iso_dim3 tid, bid;
  // cp.async groups: each copy is (dst, src, bytes), bytes 0 = zero fill.
  struct Copy {
    void* dst;
    const void* src;
    int bytes;
  };
  std::vector<Copy> open;
  std::vector<std::vector<Copy>> committed;
};
inline thread_local ThreadState tl;

struct WarpExchange {
  unsigned a[32][4];
  unsigned b[32][2];
  float c[32][4];
  float f[32];
};

struct Block {
  std::unique_ptr<std::barrier<>> bar;
  std::vector<std::unique_ptr<std::barrier<>>> warp_bars;
  std::vector<WarpExchange> wx;
  std::vector<unsigned char> smem;
};
inline Block* g_block = nullptr;

inline void syncthreads() { g_block->bar->arrive_and_wait(); }
inline void warp_sync() { g_block->warp_bars[tl.tid.x / 32]->arrive_and_wait(); }

inline float h2f(unsigned short h) {
  _Float16 v;
  std::memcpy(&v, &h, 2);
  return (float)v;
}
inline unsigned short f2h(float f) {
  _Float16 v = (_Float16)f;  // round to nearest even, like cvt.rn.f16.f32
  unsigned short h;
  std::memcpy(&h, &v, 2);
  return h;
}

// Runs `body` for every thread of every block, one block at a time.
inline void launch(unsigned grid, unsigned block, size_t dyn_smem,
                   const std::function<void()>& body) {
  for (unsigned b = 0; b < grid; ++b) {
    Block blk;
    blk.bar = std::make_unique<std::barrier<>>(block);
    for (unsigned w = 0; w < block / 32; ++w)
      blk.warp_bars.push_back(std::make_unique<std::barrier<>>(32));
    blk.wx.resize(block / 32);
    blk.smem.assign(dyn_smem + 16, 0x7e);
    g_block = &blk;
    std::vector<std::thread> threads;
    for (unsigned i = 0; i < block; ++i) {
      threads.emplace_back([&, i] {
        tl.tid = iso_dim3{i, 0, 0};
        tl.bid = iso_dim3{b, 0, 0};
        tl.open.clear();
        tl.committed.clear();
        body();
        if (!tl.open.empty() || !tl.committed.empty()) {
          std::fprintf(stderr, "thread %u left cp.async copies unwaited\n", i);
          std::abort();
        }
      });
    }
    for (auto& t : threads) t.join();
    g_block = nullptr;
  }
}

}  // namespace emu

inline void iso_cp_async16(void* dst, const void* src, int bytes) {
  emu::tl.open.push_back({dst, src, bytes});
}
inline void iso_cp_async_commit() {
  emu::tl.committed.push_back(std::move(emu::tl.open));
  emu::tl.open.clear();
}
template <int N>
inline void iso_cp_async_wait() {
  auto& q = emu::tl.committed;
  while (q.size() > (size_t)N) {
    for (auto& c : q.front()) {
      if (c.bytes == 16)
        std::memcpy(c.dst, c.src, 16);
      else
        std::memset(c.dst, 0, 16);
    }
    q.erase(q.begin());
  }
}

inline void iso_mma_16816(float* d, const unsigned int* a, unsigned int b0, unsigned int b1) {
  const int lane = emu::tl.tid.x & 31;
  auto& X = emu::g_block->wx[emu::tl.tid.x / 32];
  for (int i = 0; i < 4; ++i) X.a[lane][i] = a[i];
  X.b[lane][0] = b0;
  X.b[lane][1] = b1;
  emu::warp_sync();
  auto half_of = [](unsigned reg, int k) { return (unsigned short)(k & 1 ? reg >> 16 : reg); };
  auto A = [&](int row, int k) {
    const unsigned reg = X.a[(row % 8) * 4 + (k % 8) / 2][(row >= 8 ? 1 : 0) + (k >= 8 ? 2 : 0)];
    return emu::h2f(half_of(reg, k));
  };
  auto B = [&](int k, int col) {
    const unsigned reg = X.b[col * 4 + (k % 8) / 2][k >= 8 ? 1 : 0];
    return emu::h2f(half_of(reg, k));
  };
  const int g = lane >> 2, t = lane & 3;
  float out[4];
  for (int i = 0; i < 4; ++i) {
    const int row = g + (i >= 2 ? 8 : 0);
    const int col = 2 * t + (i & 1);
    float s = d[i];
    for (int k = 0; k < 16; ++k) s += A(row, k) * B(k, col);
    out[i] = s;
  }
  emu::warp_sync();
  for (int i = 0; i < 4; ++i) d[i] = out[i];
}

inline float iso_shfl_xor(float v, int mask) {
  const int lane = emu::tl.tid.x & 31;
  auto& X = emu::g_block->wx[emu::tl.tid.x / 32];
  X.f[lane] = v;
  emu::warp_sync();
  const float r = X.f[lane ^ mask];
  emu::warp_sync();
  return r;
}

inline unsigned short iso_f32_to_f16(float f) { return emu::f2h(f); }
inline unsigned int iso_f2u(float f) {
  unsigned int u;
  std::memcpy(&u, &f, 4);
  return u;
}
inline float iso_u2f(unsigned int u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
inline void iso_store2_f32(float* p, float a, float b) {
  p[0] = a;
  p[1] = b;
}
