// Runs kernels/project.cu under the host emulator (cuda_emu.h) on every kernel variant, with row
// and column tails, odd widths, bias, f16/f32 input and output, NaN/Inf rows, zero rows, extreme
// f32 magnitudes and both pipeline depths, and compares with an f64 reference of the exact map.
//
// The host-side packing below mirrors src/backend/cuda/plan.rs (the layout contract documented
// at the top of project.cu). Build and run: scripts/test-cuda-kernels.sh.
#define ISOCLIP_EMU 1
#include "../project.cu"

#include <cstdio>
#include <cstdlib>
#include <random>
#include <string>

namespace {

int round_up(int v, int m) { return (v + m - 1) / m * m; }

struct Variant {
  const char* name;
  int bm;
  int ntmax;
};

// Same choice as plan.rs: the narrowest class whose columns hold d_out.
Variant pick(int d_out) {
  if (d_out <= 256) return {"n256", 64, 8};
  if (d_out <= 512) return {"n512", 64, 16};
  if (d_out <= 768) return {"n768", 32, 24};
  return {"n1024", 32, 32};
}

struct Case {
  int rows, d_in, d_out;
  bool bias, in_f32, out_f32, normalize;
  int stages;
};

int failures = 0;

void check(bool ok, const std::string& what) {
  if (!ok) {
    ++failures;
    if (failures < 20) std::fprintf(stderr, "FAIL: %s\n", what.c_str());
  }
}

void run_case(const Case& cs, unsigned seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  const int n = cs.rows, d_in = cs.d_in, d_out = cs.d_out;
  const Variant v = pick(d_out);
  const int nt = (d_out + 31) / 32;
  const int npad = nt * 32;
  const int ldx = round_up(d_in, 8), kpad = round_up(d_in, 16), ldo = round_up(d_out, 2);

  std::vector<float> w((size_t)d_in * d_out), b(d_out, 0.0f), xf((size_t)n * d_in);
  for (auto& e : w) e = nd(rng) * 0.05f;
  if (cs.bias)
    for (auto& e : b) e = nd(rng) * 0.1f;
  for (auto& e : xf) e = nd(rng);
  // Special rows: zero row (zero norm unless bias), NaN row, Inf row, huge and tiny rows.
  const int zero_row = n > 3 ? 3 : -1, nan_row = n > 5 ? 5 : -1, inf_row = n - 1;
  if (zero_row >= 0)
    for (int c = 0; c < d_in; ++c) xf[(size_t)zero_row * d_in + c] = 0.0f;
  if (nan_row >= 0) xf[(size_t)nan_row * d_in + d_in / 2] = NAN;
  xf[(size_t)inf_row * d_in] = -INFINITY;
  const int huge_row = n > 8 ? 8 : -1, tiny_row = n > 9 ? 9 : -1;
  if (cs.in_f32) {
    if (huge_row >= 0)
      for (int c = 0; c < d_in; ++c) xf[(size_t)huge_row * d_in + c] *= 1e9f;
    if (tiny_row >= 0)
      for (int c = 0; c < d_in; ++c) xf[(size_t)tiny_row * d_in + c] *= 1e-12f;  // 0 in f16 without the row scale
  } else {
    // f16 input: the reference uses the f16-rounded values the kernel sees.
    for (auto& e : xf) e = emu::h2f(emu::f2h(e));
  }

  // Weight packing (plan.rs): Wᵀ, f16, power-of-two scale putting max |w| in [2^14, 2^15).
  float wmax = 0.0f;
  for (float e : w) wmax = std::fmax(wmax, std::fabs(e));
  const int we = wmax > 0 ? std::ilogb(wmax) : 0;
  const float wscale = std::ldexp(1.0f, 14 - we), w_inv = std::ldexp(1.0f, we - 14);
  std::vector<unsigned short> wt((size_t)npad * kpad, 0);
  for (int k = 0; k < d_in; ++k)
    for (int c = 0; c < d_out; ++c)
      wt[(size_t)c * kpad + k] = emu::f2h(w[(size_t)k * d_out + c] * wscale);
  std::vector<float> bias_pad(npad, 0.0f);
  for (int c = 0; c < d_out; ++c) bias_pad[c] = b[c];

  std::vector<unsigned short> x((size_t)n * ldx, 0xffff);  // garbage the kernels must overwrite
  std::vector<float> row_inv(n, -1.0f);
  if (cs.in_f32) {
    emu::launch((n + 7) / 8, 256, 0, [&] {
      convert_rows_f32(xf.data(), d_in, x.data(), ldx, row_inv.data(), n);
    });
  } else {
    for (int r = 0; r < n; ++r)
      for (int c = 0; c < ldx; ++c)
        x[(size_t)r * ldx + c] = c < d_in ? emu::f2h(xf[(size_t)r * d_in + c]) : 0;
  }

  const size_t esz = cs.out_f32 ? 4 : 2;
  std::vector<unsigned char> out((size_t)n * ldo * esz, 0xcd);
  std::vector<unsigned char> flags(n, 0xcd);
  const size_t smem = (size_t)cs.stages * (v.bm + npad) * ISO_SROW * 2;
  const unsigned grid = (n + v.bm - 1) / v.bm;
  const std::string name = std::string("project_") + v.name + (cs.out_f32 ? "_f32" : "_f16");
  auto body = [&] {
    const float* ri = cs.in_f32 ? row_inv.data() : nullptr;
    const float* bp = cs.bias ? bias_pad.data() : nullptr;
    void* o = out.data();
#define ISO_CALL(K) K(x.data(), ldx, ri, wt.data(), kpad, bp, w_inv, o, ldo, flags.data(), n, d_out, \
                      nt, cs.stages, cs.normalize ? 1 : 0)
    if (name == "project_n256_f16") ISO_CALL(project_n256_f16);
    if (name == "project_n256_f32") ISO_CALL(project_n256_f32);
    if (name == "project_n512_f16") ISO_CALL(project_n512_f16);
    if (name == "project_n512_f32") ISO_CALL(project_n512_f32);
    if (name == "project_n768_f16") ISO_CALL(project_n768_f16);
    if (name == "project_n768_f32") ISO_CALL(project_n768_f32);
    if (name == "project_n1024_f16") ISO_CALL(project_n1024_f16);
    if (name == "project_n1024_f32") ISO_CALL(project_n1024_f32);
#undef ISO_CALL
  };
  emu::launch(grid, 256, smem, body);

  const std::string tag = name + " rows=" + std::to_string(n) + " d_in=" + std::to_string(d_in) +
                          " d_out=" + std::to_string(d_out) + (cs.bias ? " bias" : "") +
                          (cs.in_f32 ? " in=f32" : " in=f16") +
                          (cs.normalize ? "" : " raw") + " stages=" + std::to_string(cs.stages);
  double worst = 0.0;
  for (int r = 0; r < n; ++r) {
    bool finite = true;
    for (int c = 0; c < d_in; ++c) finite = finite && std::isfinite(xf[(size_t)r * d_in + c]);
    std::vector<double> y(d_out);
    double nrm = 0.0;
    for (int c = 0; c < d_out; ++c) {
      double s = b[c];
      for (int k = 0; k < d_in; ++k) s += (double)xf[(size_t)r * d_in + k] * w[(size_t)k * d_out + c];
      y[c] = s;
      nrm += s * s;
    }
    nrm = std::sqrt(nrm);
    // Unnormalised results beyond the output type are flagged 4 and written as zeros.
    bool too_big = false;
    for (int c = 0; c < d_out && !cs.normalize; ++c)
      too_big = too_big || (cs.out_f32 ? !(std::fabs(y[c]) <= 3.4028234663852886e38)
                                       : std::fabs(y[c]) >= 65520.0);
    const int want_flag = !finite ? 1 : (nrm == 0.0 ? 2 : (too_big ? 4 : 0));
    check(flags[r] == want_flag, tag + ": flag of row " + std::to_string(r) + " is " +
                                     std::to_string(flags[r]) + ", want " +
                                     std::to_string(want_flag));
    auto got = [&](int c) {
      const unsigned char* p = out.data() + ((size_t)r * ldo + c) * esz;
      if (cs.out_f32) {
        float f;
        std::memcpy(&f, p, 4);
        return (double)f;
      }
      unsigned short h;
      std::memcpy(&h, p, 2);
      return (double)emu::h2f(h);
    };
    for (int c = d_out; c < ldo; ++c) check(got(c) == 0.0, tag + ": pad column not zero");
    if (want_flag != 0) {
      for (int c = 0; c < d_out; ++c)
        check(got(c) == 0.0, tag + ": row " + std::to_string(r) + " should be zeros");
      continue;
    }
    // Unit-norm outputs: absolute error per component. Unnormalised: relative to the row norm.
    const double denom = cs.normalize ? nrm : 1.0;
    // (f16 holds nothing below 6e-8: an unnormalised tiny row rightly becomes zeros there.)
    const double tol_scale = cs.normalize ? 1.0 : (cs.out_f32 ? nrm : std::fmax(nrm, 1e-3));
    for (int c = 0; c < d_out; ++c) {
      const double err = std::fabs(got(c) - y[c] / denom) / tol_scale;
      worst = std::fmax(worst, err);
      check(err < 4e-3, tag + ": row " + std::to_string(r) + " col " + std::to_string(c) +
                            " got " + std::to_string(got(c)) + " want " +
                            std::to_string(y[c] / denom));
    }
  }
  std::printf("%-66s max err %.2e\n", tag.c_str(), worst);
}

}  // namespace

int main() {
  const Case cases[] = {
      // rows, d_in, d_out, bias, in_f32, out_f32, normalize, stages
      {70, 33, 5, false, false, false, true, 3},     // n256, odd width, row tail of BM=64
      {64, 64, 40, true, false, true, true, 2},      // n256, exact row tile, f32 out, bias
      {10, 7, 3, false, true, true, false, 3},       // tiny d_in, f32 in, unnormalised
      {130, 100, 262, false, false, false, true, 3}, // n512: compact B/16 width
      {65, 24, 318, true, true, false, true, 2},     // n512, f32 in with huge/tiny rows
      {40, 40, 512, false, false, true, true, 3},    // n512 full width
      {33, 17, 520, true, false, false, true, 3},    // n768, BM=32 tail
      {31, 48, 768, false, true, true, true, 2},     // n768 full width, fewer rows than BM
      {35, 33, 1000, true, false, false, true, 3},   // n1024 with column tail
      {12, 16, 1024, false, false, true, false, 2},  // n1024 full, unnormalised
      {20, 16, 40, false, true, false, false, 3},    // f16 out, unnormalised: huge row is flag 4
      {70, 24, 300, true, true, false, false, 2},    // likewise with a bias, rows in two CTAs
  };
  unsigned seed = 1;
  for (const Case& c : cases) run_case(c, seed++);
  if (failures) {
    std::fprintf(stderr, "%d check(s) failed\n", failures);
    return 1;
  }
  std::printf("all emulated kernel checks passed\n");
  return 0;
}
