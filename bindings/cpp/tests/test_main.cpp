// Tests of the C++ wrapper: RAII and moves, exceptions with the library's status and message,
// spans and strided rows checked before the C call, projections against an independent
// reference, jobs with a progress callback that cancels or throws, and cancel() from another
// thread. Usage: test_cpp PROJECTOR_FILE (from `isoclip fit -o FILE`).
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iostream>
#include <thread>
#include <type_traits>

#include <cerrno>

#include <sys/stat.h>
#include <unistd.h>

#include "isoclip.hpp"
#include "second_tu.hpp"

static int checks = 0, failures = 0;

#define CHECK(cond)                                                                    \
    do {                                                                               \
        ++checks;                                                                      \
        if (!(cond)) {                                                                 \
            ++failures;                                                                \
            std::cerr << __FILE__ << ":" << __LINE__ << ": CHECK failed: " #cond "\n"; \
        }                                                                              \
    } while (0)

// Runs `stmt`, which must throw isoclip::Error with `status` and a message containing `part`.
#define EXPECT_ERROR(want_status, part, stmt)                                                       \
    do {                                                                                       \
        ++checks;                                                                              \
        try {                                                                                  \
            stmt;                                                                              \
            ++failures;                                                                        \
            std::cerr << __FILE__ << ":" << __LINE__ << ": no exception from " #stmt "\n";     \
        } catch (const isoclip::Error& e) {                                                    \
            if (e.status() != (want_status) || std::string(e.what()).find(part) == std::string::npos) { \
                ++failures;                                                                    \
                std::cerr << __FILE__ << ":" << __LINE__ << ": got " << e.status_name() << " \"" \
                          << e.what() << "\"\n";                                               \
            }                                                                                  \
        }                                                                                      \
    } while (0)

namespace {

constexpr std::size_t DI = 12, D = 8;

// Uniform in [-1, 1), deterministic.
double uniform(std::uint64_t& s) {
    std::uint64_t z = (s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    z ^= z >> 31;
    return static_cast<double>(z >> 11) * (2.0 / 9007199254740992.0) - 1.0;
}

std::vector<double> matrix(std::size_t rows, std::size_t cols, std::uint64_t seed) {
    std::vector<double> m(rows * cols);
    for (auto& v : m) v = uniform(seed);
    return m;
}

std::vector<float> features(std::size_t rows, std::size_t cols, std::uint64_t seed) {
    std::vector<float> x(rows * cols);
    for (auto& v : x) v = static_cast<float>(uniform(seed));
    return x;
}

// With k_top = k_bottom = 0 and a full-rank projector, the paper's full map is plain CLIP:
// y = normalize(x P). An independent reference.
std::vector<double> plain_clip(const std::vector<float>& x, const std::vector<double>& p,
                               std::size_t din, std::size_t d) {
    std::size_t rows = x.size() / din;
    std::vector<double> y(rows * d, 0.0);
    for (std::size_t r = 0; r < rows; r++) {
        double norm = 0;
        for (std::size_t j = 0; j < d; j++) {
            double acc = 0;
            for (std::size_t i = 0; i < din; i++) acc += x[r * din + i] * p[i * d + j];
            y[r * d + j] = acc;
            norm += acc * acc;
        }
        norm = std::sqrt(norm);
        for (std::size_t j = 0; j < d; j++) y[r * d + j] /= norm;
    }
    return y;
}

template <class A, class B>
double max_diff(const A& a, const B& b) {
    double worst = a.size() == b.size() ? 0.0 : 1e9;
    for (std::size_t i = 0; i < a.size() && i < b.size(); i++)
        worst = std::max(worst, std::fabs(static_cast<double>(a[i]) - static_cast<double>(b[i])));
    return worst;
}

void write_npy(const std::string& path, const std::vector<float>& data, std::size_t rows,
               std::size_t cols) {
    std::string dict = "{'descr': '<f4', 'fortran_order': False, 'shape': (" +
                       std::to_string(rows) + ", " + std::to_string(cols) + "), }";
    std::size_t total = 10 + dict.size() + 1;
    dict.append((64 - total % 64) % 64, ' ');
    dict.push_back('\n');
    std::ofstream f(path, std::ios::binary);
    f.write("\x93NUMPY\x01\x00", 8);
    const unsigned char len[2] = {static_cast<unsigned char>(dict.size() & 0xFF),
                                  static_cast<unsigned char>(dict.size() >> 8)};
    f.write(reinterpret_cast<const char*>(len), 2);
    f << dict;
    f.write(reinterpret_cast<const char*>(data.data()),
            static_cast<std::streamsize>(data.size() * sizeof(float)));
}

std::string temp_dir() {
    char tmpl[] = "/tmp/isoclip-cpptest-XXXXXX";
    const char* d = mkdtemp(tmpl);
    return d ? d : "";
}

void test_types() {
    static_assert(!std::is_copy_constructible<isoclip::Projector>::value, "move-only");
    static_assert(!std::is_copy_assignable<isoclip::Projector>::value, "move-only");
    static_assert(std::is_nothrow_move_constructible<isoclip::Projector>::value, "movable");
    static_assert(!std::is_copy_constructible<isoclip::Job>::value, "move-only");
    static_assert(std::is_move_constructible<isoclip::Job>::value, "movable");
    static_assert(!std::is_copy_constructible<isoclip::Backend>::value, "move-only");
    static_assert(!std::is_copy_constructible<isoclip::ProjectionOptions>::value, "move-only");
    CHECK(isoclip::version() == ISOCLIP_VERSION_STRING);
}

isoclip::Projector fit_model(const std::vector<double>& pi, const std::vector<double>& pt) {
    isoclip::FitOptions fo;
    fo.band(isoclip::Modality::Image, 0, 0).band(isoclip::Modality::Text, 1, 2);
    return isoclip::Projector::fit(pi, DI, D, pt, D, D, fo);
}

void test_projection(const isoclip::Projector& p, const std::vector<double>& pi) {
    CHECK(p.input_dim(isoclip::Modality::Image) == DI);
    CHECK(p.input_dim(isoclip::Modality::Image, isoclip::InputKind::Embeddings) == D);
    CHECK(p.output_dim(isoclip::Modality::Text) == D - 3);
    CHECK(p.band(isoclip::Modality::Text) == std::make_pair(std::size_t{1}, std::size_t{2}));
    CHECK(p.fingerprint().size() == 64 && p.content_digest().size() == 64);

    const std::size_t rows = 50;
    auto x = features(rows, DI, 3);
    auto want = plain_clip(x, pi, DI, D);

    // Full form from the second translation unit: plain CLIP.
    auto full = project_in_second_tu(p, x, isoclip::Form::Full);
    CHECK(max_diff(full, want) < 2e-5);

    // Compact form: the same inner products in fewer dimensions (here m = d).
    auto compact = project_in_second_tu(p, x, isoclip::Form::Compact);
    double worst = 0;
    for (std::size_t a = 0; a < rows; a++)
        for (std::size_t b = 0; b < rows; b++) {
            double gc = 0, gf = 0;
            for (std::size_t j = 0; j < D; j++) {
                gc += double(compact[a * D + j]) * compact[b * D + j];
                gf += double(full[a * D + j]) * full[b * D + j];
            }
            worst = std::max(worst, std::fabs(gc - gf));
        }
    CHECK(worst < 2e-5);

    // The embedding route from e = x P, fp16 in through a strided view, fp32 out.
    const std::size_t stride = D + 3;
    std::vector<std::uint16_t> e16(rows * stride, 0xFFFF);
    std::vector<double> e(rows * D);
    for (std::size_t r = 0; r < rows; r++)
        for (std::size_t j = 0; j < D; j++) {
            double acc = 0;
            for (std::size_t i = 0; i < DI; i++) acc += x[r * DI + i] * pi[i * D + j];
            e[r * D + j] = acc;
        }
    // fp16 bits through the library itself would not be independent: use a plain conversion.
    for (std::size_t r = 0; r < rows; r++)
        for (std::size_t j = 0; j < D; j++) {
            float f = static_cast<float>(e[r * D + j]);
            std::uint32_t bits;
            std::memcpy(&bits, &f, 4);
            std::uint32_t sign = (bits >> 16) & 0x8000, exp = (bits >> 23) & 0xFF;
            std::uint32_t mant = bits & 0x7FFFFF;
            int he = int(exp) - 127 + 15;  // |e| is well inside the normal fp16 range here
            std::uint32_t h = sign | (std::uint32_t(he) << 10) | (mant >> 13);
            if ((mant & 0x1FFF) > 0x1000 || ((mant & 0x1FFF) == 0x1000 && (h & 1))) h++;
            e16[r * stride + j] = static_cast<std::uint16_t>(h);
        }
    std::vector<float> y(rows * D);
    isoclip::ProjectionOptions o;
    o.modality(isoclip::Modality::Image).input_kind(isoclip::InputKind::Embeddings).form(
        isoclip::Form::Full);
    isoclip::Backend one(isoclip::Device::Cpu, 1);
    auto stats = p.project(isoclip::Rows<const std::uint16_t>{e16, rows, D, stride},
                           isoclip::Rows<float>{y, rows, D, 0}, &o, &one);
    CHECK(stats.zero_norm_rows == 0 && stats.nonfinite_rows == 0);
    CHECK(max_diff(y, want) < 2e-3);  // fp16 input
    CHECK(one.describe().rfind("cpu (1 threads", 0) == 0);
    CHECK(one.device() == isoclip::Device::Cpu);
}

void test_errors(const isoclip::Projector& p) {
    EXPECT_ERROR(ISOCLIP_ERR_IO, "isoclip_projector_load: /no/such/file.st: No such file",
                 isoclip::Projector::load("/no/such/file.st"));
    isoclip::ProjectionOptions o;
    o.modality(isoclip::Modality::Image);
    std::vector<float> x(4 * (DI - 1)), y(4 * D);
    EXPECT_ERROR(ISOCLIP_ERR_SHAPE,
                 "isoclip_project: input rows have 11 columns but the projector expects 12",
                 p.project(x, DI - 1, y, D, &o));
    // Caught by the wrapper before the C call: a span too small for its rows.
    std::vector<float> x2(4 * DI);
    EXPECT_ERROR(ISOCLIP_ERR_INVALID_ARGUMENT, "input: the span holds 47 elements but 4 rows need 48",
                 (p.project(isoclip::Rows<const float>{isoclip::Span<const float>(x2.data(), 47), 4, DI, 0},
                            isoclip::Rows<float>{y, 4, D, 0}, &o)));
    EXPECT_ERROR(ISOCLIP_ERR_SHAPE, "output span of 32 elements does not hold 4 rows of 5",
                 p.project(x2, DI, y, 5, &o));
    EXPECT_ERROR(ISOCLIP_ERR_INVALID_ARGUMENT, "holds both image and text maps",
                 p.project(x2, DI, y, D));
    EXPECT_ERROR(ISOCLIP_ERR_INVALID_ARGUMENT, "unknown form 9",
                 o.form(static_cast<isoclip::Form>(9)));
    isoclip::FitOptions fo;
    auto pi = matrix(DI, D, 1);
    EXPECT_ERROR(ISOCLIP_ERR_BAND, "empty band",
                 (fo.band(isoclip::Modality::Image, 6, 6),
                  isoclip::Projector::fit(pi, DI, D, pi, DI, D, fo)));
    // One device by index: the CPU is device 0 and has no other.
    isoclip::Backend cpu0(isoclip::Device::Cpu, 1, 0);
    CHECK(cpu0.device() == isoclip::Device::Cpu);
    EXPECT_ERROR(ISOCLIP_ERR_INVALID_ARGUMENT,
                 "isoclip_backend_new: device index 1 with the CPU: the CPU is device 0",
                 isoclip::Backend(isoclip::Device::Cpu, 1, 1));
    EXPECT_ERROR(ISOCLIP_ERR_INVALID_ARGUMENT,
                 "isoclip_backend_options_set_device_index: device index -2 is negative",
                 isoclip::Backend(isoclip::Device::Cpu, 1, -2));
    try {
        isoclip::Backend gpu(isoclip::Device::Cuda);
        CHECK(gpu.device() == isoclip::Device::Cuda);
    } catch (const isoclip::Error& e) {
        CHECK(e.status() == ISOCLIP_ERR_DEVICE_UNAVAILABLE);
        CHECK(std::string(e.status_name()) == "ISOCLIP_ERR_DEVICE_UNAVAILABLE");
    }
}

void test_moves(const std::string& cli_projector) {
    isoclip::Projector a = load_in_second_tu(cli_projector);
    const isoclip_projector* raw = a.get();
    isoclip::Projector b = std::move(a);
    CHECK(a.get() == nullptr && b.get() == raw);
    CHECK(b.input_dim() == 768 && b.output_dim() == 262);
    isoclip::Projector c = isoclip::Projector::load(cli_projector);
    c = std::move(b);  // frees c's old handle
    CHECK(c.get() == raw && b.get() == nullptr);
}

void test_jobs(const isoclip::Projector& p, const std::string& dir) {
    const std::string in = dir + "/in", out = dir + "/out";
    mkdir(in.c_str(), 0755);
    auto x = features(300, DI, 9);
    write_npy(in + "/a.npy", x, 300, DI);
    write_npy(in + "/b.npy", features(100, DI, 10), 100, DI);

    isoclip::ProjectionOptions o;
    o.modality(isoclip::Modality::Image).form(isoclip::Form::Full);
    std::vector<isoclip::Progress> seen;
    isoclip::JobOptions jo;
    jo.output_dtype = isoclip::DType::F32;
    jo.chunk_bytes = 1;
    jo.progress = [&](const isoclip::Progress& pr) { seen.push_back(pr); };
    {
        isoclip::Job job(p, in, out, &o, jo);
        EXPECT_ERROR(ISOCLIP_ERR_INVALID_STATE, "has not finished a run",
                     job.stat(isoclip::JobStat::RowsProcessed));
        job.run();
        CHECK(job.stat(isoclip::JobStat::RowsProcessed) == 400);
        CHECK(job.summary_json().find("\"shards_processed\":2") != std::string::npos);
    }
    CHECK(seen.size() == 1 + 3 + 1 + 2);  // start, chunks of 128 rows, shards
    CHECK(!seen.empty() && seen.back().rows_done == 400 && seen.back().shards_done == 2);
    // The output equals the reference (plain CLIP, full form, f32).
    std::ifstream f(out + "/a.npy", std::ios::binary);
    std::vector<char> bytes((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
    std::size_t header = 10 + (std::size_t(std::uint8_t(bytes[8])) | (std::size_t(std::uint8_t(bytes[9])) << 8));
    std::vector<float> got((bytes.size() - header) / 4);
    std::memcpy(got.data(), bytes.data() + header, got.size() * 4);
    CHECK(max_diff(got, plain_clip(x, matrix(DI, D, 1), DI, D)) < 2e-5);

    // A callback that throws: the job stops and run() rethrows the callback's exception.
    jo.progress = [](const isoclip::Progress& pr) {
        if (pr.rows_done > 0) throw std::runtime_error("stop here");
    };
    isoclip::Job failing(p, in, dir + "/out2", &o, jo);
    bool rethrown = false;
    try {
        failing.run();
    } catch (const std::runtime_error& e) {
        rethrown = std::string(e.what()) == "stop here" &&
                   dynamic_cast<const isoclip::Error*>(&e) == nullptr;
    }
    CHECK(rethrown);
    EXPECT_ERROR(ISOCLIP_ERR_CANCELLED, "isoclip_job_run: cancelled", failing.run());

    // cancel() from another thread, while the callback holds the run.
    std::atomic<bool> started{false}, cancelled{false};
    jo.progress = [&](const isoclip::Progress& pr) {
        if (pr.rows_done == 0 || started.exchange(true)) return;
        for (int i = 0; i < 10000 && !cancelled; i++)
            std::this_thread::sleep_for(std::chrono::milliseconds(1));
    };
    isoclip::Job job(p, in, dir + "/out3", &o, jo);
    isoclip::Job moved = std::move(job);  // the callback state moves with the job
    std::thread t([&] {
        while (!started) std::this_thread::yield();
        moved.cancel();
        cancelled = true;
    });
    EXPECT_ERROR(ISOCLIP_ERR_CANCELLED, "cancelled", moved.run());
    t.join();
    CHECK(cancelled);
}

std::vector<unsigned char> read_bytes(const std::string& path) {
    std::ifstream f(path, std::ios::binary);
    return std::vector<unsigned char>((std::istreambuf_iterator<char>(f)),
                                      std::istreambuf_iterator<char>());
}

// The wrappers of the ABI 1.0 additions: the OS error code, loading from memory and from a URL,
// the map as a matrix, cancel tokens, the stats initialiser and the default thread count.
void test_abi_additions(const isoclip::Projector& p, const std::vector<double>& pi,
                        const std::string& cli_projector) {
    // The OS code travels with the exception, and stays readable after it.
    try {
        isoclip::Projector::load("/no/such/file.st");
        CHECK(false);
    } catch (const isoclip::Error& e) {
        CHECK(e.status() == ISOCLIP_ERR_IO && e.os_code() == ENOENT);
        CHECK(isoclip::last_error_os_code() == ENOENT);
    }

    // From memory: the same projector as from its file; garbage is named as the memory buffer.
    const auto bytes = read_bytes(cli_projector);
    isoclip::Projector from_file = isoclip::Projector::load(cli_projector);
    isoclip::Projector from_memory = isoclip::Projector::load_from_memory(bytes.data(), bytes.size());
    CHECK(from_memory.content_digest() == from_file.content_digest());
    const char junk[] = "not a projector";
    EXPECT_ERROR(ISOCLIP_ERR_FORMAT, "isoclip_projector_load_from_memory: (projector in memory)",
                 isoclip::Projector::load_from_memory(junk, sizeof junk));
    try {
        isoclip::Projector::load_from_memory(junk, sizeof junk);
    } catch (const isoclip::Error& e) {
        CHECK(e.os_code() == 0);  // not an OS failure
    }

    // From a location: a plain path reads the file; a malformed URL is refused by name.
    isoclip::Projector from_location = isoclip::Projector::load_url(cli_projector, {{"aws_region", "eu-west-1"}});
    CHECK(from_location.content_digest() == from_file.content_digest());
    EXPECT_ERROR(ISOCLIP_ERR_INVALID_ARGUMENT,
                 "isoclip_projector_load_url: s3://bad host/p.st: not a valid URL",
                 isoclip::Projector::load_url("s3://bad host/p.st"));

    // The map: with the band 0/0 and a full-rank model, the image full map is the model's P.
    isoclip::LinearMap map = p.matrix(isoclip::Modality::Image, isoclip::InputKind::Features,
                                      isoclip::Form::Full);
    CHECK(map.rows == DI && map.cols == D && map.weight.size() == DI * D && map.bias.size() == D);
    double worst = 0;
    for (std::size_t i = 0; i < DI * D; i++) worst = std::max(worst, std::fabs(map.weight[i] - pi[i]));
    CHECK(worst < 1e-5);
    for (float b : map.bias) CHECK(b == 0.0f);
    EXPECT_ERROR(ISOCLIP_ERR_INVALID_ARGUMENT, "holds both image and text maps", p.matrix());

    // Cancel tokens: a live token changes nothing; a cancelled one stops the call.
    isoclip::ProjectionOptions o;
    o.modality(isoclip::Modality::Image);
    auto x = features(300, DI, 21);
    std::vector<float> plain(300 * D), with_token(300 * D);
    p.project(x, DI, plain, D, &o);
    isoclip::CancelToken token;
    p.project(x, DI, with_token, D, &o, nullptr, &token);
    CHECK(std::memcmp(plain.data(), with_token.data(), plain.size() * sizeof(float)) == 0);
    token.cancel();
    EXPECT_ERROR(ISOCLIP_ERR_CANCELLED, "isoclip_project_with_cancel: cancelled",
                 p.project(x, DI, with_token, D, &o, nullptr, &token));

    // The stats initialiser, for direct C calls.
    isoclip_projection_stats stats = isoclip::projection_stats_init();
    CHECK(stats.struct_size == sizeof(isoclip_projection_stats));
    CHECK(stats.zero_norm_rows == 0 && stats.nonfinite_rows == 0);
    std::vector<float> zero_row(DI, 0.0f), out(D);
    CHECK(isoclip_project(p.get(), nullptr, o.get(), 1, zero_row.data(), ISOCLIP_DTYPE_F32, DI,
                          DI * 4, out.data(), ISOCLIP_DTYPE_F32, D, D * 4, &stats) == ISOCLIP_OK);
    CHECK(stats.zero_norm_rows == 1);

    // The default backend exists now (main set its threads before the first projection).
    EXPECT_ERROR(ISOCLIP_ERR_INVALID_STATE, "isoclip_set_default_threads: the default backend already exists",
                 isoclip::set_default_threads(1));
}

// Scale-out settings of jobs: URLs, shard selection and storage options, checked when the job
// is made (the runs themselves are tested from C, tests/c/test_scale_out.c).
void test_job_scale_out_arguments(const isoclip::Projector& p) {
    isoclip::ProjectionOptions o;
    o.modality(isoclip::Modality::Image);
    isoclip::JobOptions jo;
    jo.num_shards = 2;
    jo.shard_index = 2;
    EXPECT_ERROR(ISOCLIP_ERR_INVALID_ARGUMENT,
                 "isoclip_job_options_set_shards: worker index 2 is out of range for 2 workers (0 to 1)",
                 isoclip::Job(p, "s3://bucket/emb/", "s3://bucket/out/", &o, jo));
    jo.shard_index = 1;
    jo.storage_options = {{"aws_region", "eu-west-1"}, {"", "x"}};
    EXPECT_ERROR(ISOCLIP_ERR_INVALID_ARGUMENT,
                 "isoclip_job_options_add_storage_option: the storage option key is empty",
                 isoclip::Job(p, "s3://bucket/emb/", "s3://bucket/out/", &o, jo));
    jo.storage_options.pop_back();
    EXPECT_ERROR(ISOCLIP_ERR_INVALID_ARGUMENT,
                 "isoclip_job_new: s3://bad host/emb/: not a valid URL (invalid domain character)",
                 isoclip::Job(p, "s3://bad host/emb/", "s3://bucket/out/", &o, jo));
    isoclip::Job ok(p, "s3://bucket/emb/", "gs://bucket/out/", &o, jo);
    CHECK(ok.get() != nullptr);
    CHECK(ok.num_shards() == 2 && ok.shard_index() == 1);
    // From the environment: a Kubernetes Indexed Job without its count is refused by name.
    unsetenv("SLURM_ARRAY_TASK_ID");
    setenv("JOB_COMPLETION_INDEX", "1", 1);
    unsetenv("ISOCLIP_NUM_SHARDS");
    jo.shards_from_env = true;
    EXPECT_ERROR(ISOCLIP_ERR_INVALID_ARGUMENT, "worker 1 of a Kubernetes Indexed Job",
                 isoclip::Job(p, "s3://bucket/emb/", "s3://bucket/out/", &o, jo));
    setenv("ISOCLIP_NUM_SHARDS", "2", 1);
    isoclip::Job from_env(p, "s3://bucket/emb/", "s3://bucket/out/", &o, jo);
    CHECK(from_env.get() != nullptr);
    CHECK(from_env.num_shards() == 2 && from_env.shard_index() == 1);  // from the environment
    unsetenv("JOB_COMPLETION_INDEX");
    unsetenv("ISOCLIP_NUM_SHARDS");
}

// Whether this CPU runs AVX-512 BF16 as the library sees it (valgrind presents one without it).
bool cpu_has_bf16() {
#if defined(__x86_64__) && defined(__GNUC__)
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bf16");
#else
    return false;
#endif
}

// Precision::Bf16: close to f32 and not the same bytes (or refused on a CPU without AVX-512
// BF16); a job records the arithmetic; an unknown value is refused.
void test_precision(const isoclip::Projector& p, const std::string& dir) {
    const bool bf16 = cpu_has_bf16();
    const std::size_t rows = 9;
    auto x = features(rows, DI, 31);
    std::vector<float> y32(rows * D), y16(rows * D);
    isoclip::ProjectionOptions o;
    o.modality(isoclip::Modality::Image).form(isoclip::Form::Full).precision(isoclip::Precision::F32);
    p.project(x, DI, y32, D, &o);
    o.precision(isoclip::Precision::Bf16);
    if (bf16) {
        p.project(x, DI, y16, D, &o);
        CHECK(max_diff(y16, y32) < 2e-2);
        CHECK(y16 != y32);
    } else {
        EXPECT_ERROR(ISOCLIP_ERR_DEVICE_UNAVAILABLE, "bf16 precision needs a CPU with AVX-512 BF16",
                     p.project(x, DI, y16, D, &o));
    }
    EXPECT_ERROR(ISOCLIP_ERR_INVALID_ARGUMENT,
                 "isoclip_projection_options_set_precision: unknown precision 5",
                 o.precision(static_cast<isoclip::Precision>(5)));

    // The job options' precision in place of the projection options' (still Bf16 here).
    const std::string in = dir + "/prec_in";
    mkdir(in.c_str(), 0755);
    write_npy(in + "/a.npy", x, rows, DI);
    isoclip::JobOptions jo;
    jo.precision = isoclip::Precision::F32;
    isoclip::Job f32_job(p, in, dir + "/prec_f32", &o, jo);
    f32_job.run();
    // "f32" for the library's AVX-512F kernel, "f32-gemm" where the CPU (or valgrind) lacks it.
    const bool avx512f = [] {
#if defined(__x86_64__) && defined(__GNUC__)
        __builtin_cpu_init();
        return __builtin_cpu_supports("avx512f") != 0;
#else
        return false;
#endif
    }();
    const std::string f32_arithmetic = avx512f ? "f32" : "f32-gemm";
    CHECK(f32_job.summary_json().find("\"arithmetic\":\"" + f32_arithmetic + "\"") !=
          std::string::npos);
    jo.precision = isoclip::Precision::Bf16;
    isoclip::ProjectionOptions o32;  // f32 by default: the job options' Bf16 wins
    o32.modality(isoclip::Modality::Image).form(isoclip::Form::Full);
    isoclip::Job bf16_job(p, in, dir + "/prec_bf16", &o32, jo);
    if (bf16) {
        bf16_job.run();
        CHECK(bf16_job.summary_json().find("\"arithmetic\":\"bf16\"") != std::string::npos);
    } else {
        EXPECT_ERROR(ISOCLIP_ERR_DEVICE_UNAVAILABLE, "isoclip_job_run: bf16 precision", bf16_job.run());
    }
    jo.precision = static_cast<isoclip::Precision>(0);
    EXPECT_ERROR(ISOCLIP_ERR_INVALID_ARGUMENT, "isoclip_job_options_set_precision: unknown precision 0",
                 isoclip::Job(p, in, dir + "/prec_bad", &o, jo));
}

void remove_tree(const std::string& dir) {
    std::string cmd = "rm -rf '" + dir + "'";
    CHECK(std::system(cmd.c_str()) == 0);
}

}  // namespace

int main(int argc, char** argv) {
    if (argc != 2) {
        std::cerr << "usage: " << argv[0] << " PROJECTOR_FILE\n";
        return 2;
    }
    try {
        test_types();
        isoclip::set_default_threads(2);  // before the first projection with the default backend
        auto pi = matrix(DI, D, 1), pt = matrix(D, D, 2);
        isoclip::Projector p = fit_model(pi, pt);
        test_projection(p, pi);
        test_errors(p);
        test_moves(argv[1]);
        test_abi_additions(p, pi, argv[1]);
        test_job_scale_out_arguments(p);
        std::string dir = temp_dir();
        CHECK(!dir.empty());
        test_jobs(p, dir);
        test_precision(p, dir);
        remove_tree(dir);
    } catch (const std::exception& e) {
        ++failures;
        std::cerr << "unexpected exception: " << e.what() << "\n";
    }
    std::cout << "test_cpp: " << checks << " checks, " << failures << " failed\n";
    return failures == 0 ? 0 : 1;
}
