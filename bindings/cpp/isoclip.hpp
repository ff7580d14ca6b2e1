// isoclip.hpp: a header-only C++17 wrapper of the isoclip C API (include/isoclip.h).
//
// - Handles are move-only RAII objects; a moved-from object holds nothing and may only be
//   destroyed or assigned to.
// - Every failure throws isoclip::Error, carrying the library's status, message and OS error code.
// - Buffers are spans (pointer + size, in elements), checked against the rows, columns and row
//   stride before the library sees them. fp16 values are passed as uint16_t bit patterns.
// - Thread-safety follows the C API: a Projector and a Backend may be used by many threads at
//   once (their methods are const); options and jobs by one thread at a time, except
//   Job::cancel(), which any thread may call at any time.
//
// Link with the shared or static library: pkg-config --cflags --libs isoclip (or isoclip-static).
#ifndef ISOCLIP_HPP
#define ISOCLIP_HPP

#include <array>
#include <cstddef>
#include <cstdint>
#include <exception>
#include <functional>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "isoclip.h"

namespace isoclip {

// ---------------------------------------------------------------------------------------------
// Errors

/// A failed call: the C status (an ISOCLIP_ERR_* value), the library's message and the
/// operating-system error behind it (isoclip_last_error_os_code: errno, 0 when there is none).
class Error : public std::runtime_error {
public:
    Error(isoclip_status status, const std::string& message, int os_code = 0)
        : std::runtime_error(message), status_(status), os_code_(os_code) {}
    /// The ISOCLIP_ERR_* value.
    isoclip_status status() const noexcept { return status_; }
    /// The status's identifier, e.g. "ISOCLIP_ERR_SHAPE".
    const char* status_name() const noexcept { return isoclip_status_name(status_); }
    /// The errno behind the failure (ENOENT, ...), 0 when it did not come from the OS.
    int os_code() const noexcept { return os_code_; }

private:
    isoclip_status status_;
    int os_code_;
};

namespace detail {

/// The calling thread's last error message.
inline std::string last_message() {
    std::string s(isoclip_last_error_length(), '\0');
    if (isoclip_last_error_message(&s[0], s.size(), nullptr) != ISOCLIP_OK) return "(no message)";
    s.resize(s.size() - 1);  // the NUL
    return s;
}

inline void check(isoclip_status status) {
    if (status != ISOCLIP_OK) throw Error(status, last_message(), isoclip_last_error_os_code());
}

/// Throws unless the library has the ABI this header was written for: the same ABI major, and at
/// least its minor (ISOCLIP_ABI_COMPATIBLE).
inline void check_abi() {
    static const bool compatible = ISOCLIP_ABI_COMPATIBLE(isoclip_abi_version());
    if (!compatible)
        throw Error(ISOCLIP_ERR_UNSUPPORTED,
                    std::string("libisoclip ") + isoclip_version() + " has ABI version " +
                        std::to_string(isoclip_abi_version()) + " but this program was built " +
                        "against isoclip.h " + ISOCLIP_VERSION_STRING + " (ABI version " +
                        std::to_string(ISOCLIP_ABI_VERSION) +
                        ": it needs the same major and at least its minor)");
}

/// Runs a C string getter with the API's convention: ask the size, then copy.
template <class Getter>
std::string copy_string(Getter get) {
    size_t need = 0;
    isoclip_status s = get(nullptr, 0, &need);
    if (s != ISOCLIP_ERR_BUFFER_TOO_SMALL) check(s);
    std::string out(need, '\0');
    check(get(&out[0], out.size(), &need));
    out.resize(need - 1);
    return out;
}

template <class T, void (*Free)(T*)>
struct Deleter {
    void operator()(T* p) const noexcept { Free(p); }
};

// The C API frees immutable handles through const pointers.
inline void free_projector(const isoclip_projector* p) { isoclip_projector_free(p); }
inline void free_backend(const isoclip_backend* p) { isoclip_backend_free(p); }

}  // namespace detail

// ---------------------------------------------------------------------------------------------
// Enumerations (the values are the C constants)

enum class Modality : isoclip_modality {
    Auto = ISOCLIP_MODALITY_AUTO,
    Image = ISOCLIP_MODALITY_IMAGE,
    Text = ISOCLIP_MODALITY_TEXT,
};
enum class InputKind : isoclip_input_kind {
    Features = ISOCLIP_INPUT_FEATURES,
    Embeddings = ISOCLIP_INPUT_EMBEDDINGS,
};
enum class Form : isoclip_form { Compact = ISOCLIP_FORM_COMPACT, Full = ISOCLIP_FORM_FULL };
enum class DType : isoclip_dtype { F16 = ISOCLIP_DTYPE_F16, F32 = ISOCLIP_DTYPE_F32 };
enum class NonFinite : isoclip_nonfinite {
    Error = ISOCLIP_NONFINITE_ERROR,
    Zero = ISOCLIP_NONFINITE_ZERO,
};
/// The arithmetic of a projection: F32 (the default) or Bf16 (the CPU's AVX-512 BF16 GEMM; a
/// CPU without it throws ISOCLIP_ERR_DEVICE_UNAVAILABLE when projecting, a CUDA backend
/// ISOCLIP_ERR_INVALID_ARGUMENT).
enum class Precision : isoclip_precision {
    F32 = ISOCLIP_PRECISION_F32,
    Bf16 = ISOCLIP_PRECISION_BF16,
};
enum class Device : isoclip_device {
    Auto = ISOCLIP_DEVICE_AUTO,
    Cpu = ISOCLIP_DEVICE_CPU,
    Cuda = ISOCLIP_DEVICE_CUDA,
};
enum class JobStat : isoclip_job_stat_id {
    ShardsTotal = ISOCLIP_JOB_STAT_SHARDS_TOTAL,
    ShardsProcessed = ISOCLIP_JOB_STAT_SHARDS_PROCESSED,
    ShardsSkipped = ISOCLIP_JOB_STAT_SHARDS_SKIPPED,
    RowsProcessed = ISOCLIP_JOB_STAT_ROWS_PROCESSED,
    RowsSkipped = ISOCLIP_JOB_STAT_ROWS_SKIPPED,
    ZeroNormRows = ISOCLIP_JOB_STAT_ZERO_NORM_ROWS,
    NonFiniteRows = ISOCLIP_JOB_STAT_NONFINITE_ROWS,
    BytesRead = ISOCLIP_JOB_STAT_BYTES_READ,
    BytesWritten = ISOCLIP_JOB_STAT_BYTES_WRITTEN,
};

/// The library's version ("MAJOR.MINOR.PATCH").
inline std::string version() { return isoclip_version(); }

/// Sets the thread count of the default backend (the one a null Backend* stands for; 0: one per
/// available core). Call it before the first projection with the default backend: afterwards it
/// throws Error(ISOCLIP_ERR_INVALID_STATE).
inline void set_default_threads(std::size_t threads) {
    detail::check(isoclip_set_default_threads(threads));
}

/// The errno behind the last failed C call on this thread (0 if none). Error::os_code() holds it
/// for the failures the wrapper throws; this is for code that also calls the C API directly.
inline int last_error_os_code() noexcept { return isoclip_last_error_os_code(); }

/// A size-tagged isoclip_projection_stats (ISOCLIP_PROJECTION_STATS_INIT), for direct C calls.
inline isoclip_projection_stats projection_stats_init() noexcept {
    isoclip_projection_stats stats = ISOCLIP_PROJECTION_STATS_INIT;
    return stats;
}

/// Object-store options (key, value), as the object_store crate names them ("aws_region", ...).
using StorageOptions = std::vector<std::pair<std::string, std::string>>;

// ---------------------------------------------------------------------------------------------
// Buffers

/// A contiguous run of elements: pointer and size (C++17 has no std::span).
template <class T>
class Span {
public:
    constexpr Span() noexcept = default;
    constexpr Span(T* data, std::size_t size) noexcept : data_(data), size_(size) {}
    template <class U, class A,
              class = std::enable_if_t<std::is_convertible<U (*)[], T (*)[]>::value>>
    Span(std::vector<U, A>& v) noexcept : data_(v.data()), size_(v.size()) {}
    template <class U, class A,
              class = std::enable_if_t<std::is_convertible<const U (*)[], T (*)[]>::value>>
    Span(const std::vector<U, A>& v) noexcept : data_(v.data()), size_(v.size()) {}
    template <class U, std::size_t N,
              class = std::enable_if_t<std::is_convertible<U (*)[], T (*)[]>::value>>
    constexpr Span(U (&a)[N]) noexcept : data_(a), size_(N) {}
    template <class U, std::size_t N,
              class = std::enable_if_t<std::is_convertible<U (*)[], T (*)[]>::value>>
    constexpr Span(std::array<U, N>& a) noexcept : data_(a.data()), size_(N) {}
    template <class U, std::size_t N,
              class = std::enable_if_t<std::is_convertible<const U (*)[], T (*)[]>::value>>
    constexpr Span(const std::array<U, N>& a) noexcept : data_(a.data()), size_(N) {}
    template <class U, class = std::enable_if_t<std::is_convertible<U (*)[], T (*)[]>::value>>
    constexpr Span(Span<U> other) noexcept : data_(other.data()), size_(other.size()) {}

    constexpr T* data() const noexcept { return data_; }
    constexpr std::size_t size() const noexcept { return size_; }

private:
    T* data_ = nullptr;
    std::size_t size_ = 0;
};

/// Rows of a matrix in a span: `rows` rows of `cols` elements, row i starting at element
/// i * row_stride (0 means dense: row_stride = cols). Element types: float (fp32) or uint16_t
/// (fp16 bit patterns).
template <class T>
struct Rows {
    Span<T> data;
    std::size_t rows = 0;
    std::size_t cols = 0;
    std::size_t row_stride = 0;

    std::size_t stride() const noexcept { return row_stride ? row_stride : cols; }
};

namespace detail {
template <class T>
constexpr isoclip_dtype dtype_of() {
    using U = std::remove_const_t<T>;
    static_assert(std::is_same<U, float>::value || std::is_same<U, std::uint16_t>::value,
                  "isoclip buffers hold float (fp32) or uint16_t (fp16 bits)");
    return std::is_same<U, float>::value ? ISOCLIP_DTYPE_F32 : ISOCLIP_DTYPE_F16;
}

/// Throws unless the rows fit in their span (the C API cannot check a raw pointer).
template <class T>
void check_rows(const Rows<T>& r, const char* what) {
    if (r.rows == 0) return;
    if (r.stride() < r.cols)
        throw Error(ISOCLIP_ERR_INVALID_ARGUMENT,
                    std::string(what) + ": row stride " + std::to_string(r.stride()) +
                        " is smaller than a row of " + std::to_string(r.cols) + " elements");
    std::size_t need = (r.rows - 1) * r.stride() + r.cols;
    if (r.data.size() < need)
        throw Error(ISOCLIP_ERR_INVALID_ARGUMENT,
                    std::string(what) + ": the span holds " + std::to_string(r.data.size()) +
                        " elements but " + std::to_string(r.rows) + " rows need " +
                        std::to_string(need));
}
}  // namespace detail

/// Counts from one projection.
struct ProjectionStats {
    std::uint64_t zero_norm_rows = 0;
    std::uint64_t nonfinite_rows = 0;
};

// ---------------------------------------------------------------------------------------------
// Options

/// How rows are projected (defaults: Auto modality, features, compact, normalised, NaN = error,
/// f32 precision).
/// Setters return *this so they chain.
class ProjectionOptions {
public:
    ProjectionOptions() {
        detail::check_abi();
        isoclip_projection_options* p = nullptr;
        detail::check(isoclip_projection_options_new(&p));
        handle_.reset(p);
    }
    ProjectionOptions& modality(Modality m) {
        detail::check(isoclip_projection_options_set_modality(get(), static_cast<isoclip_modality>(m)));
        return *this;
    }
    ProjectionOptions& input_kind(InputKind k) {
        detail::check(
            isoclip_projection_options_set_input_kind(get(), static_cast<isoclip_input_kind>(k)));
        return *this;
    }
    ProjectionOptions& form(Form f) {
        detail::check(isoclip_projection_options_set_form(get(), static_cast<isoclip_form>(f)));
        return *this;
    }
    ProjectionOptions& normalize(bool on) {
        detail::check(isoclip_projection_options_set_normalize(get(), on));
        return *this;
    }
    ProjectionOptions& nonfinite(NonFinite policy) {
        detail::check(isoclip_projection_options_set_nonfinite(
            get(), static_cast<isoclip_nonfinite>(policy)));
        return *this;
    }
    /// The arithmetic of projections and jobs made with these options (Precision::F32 by
    /// default). Checked when projecting: Bf16 needs the CPU backend on a CPU with AVX-512 BF16.
    ProjectionOptions& precision(Precision p) {
        detail::check(isoclip_projection_options_set_precision(
            get(), static_cast<isoclip_precision>(p)));
        return *this;
    }
    isoclip_projection_options* get() const noexcept { return handle_.get(); }

private:
    std::unique_ptr<isoclip_projection_options,
                    detail::Deleter<isoclip_projection_options, isoclip_projection_options_free>>
        handle_;
};

/// What to fit: a band per modality and optional biases (bias-augmented projectors).
class FitOptions {
public:
    FitOptions() {
        detail::check_abi();
        isoclip_fit_options* p = nullptr;
        detail::check(isoclip_fit_options_new(&p));
        handle_.reset(p);
    }
    /// Keeps the singular directions [k_top, r - k_bottom) of Ψ for `m` (Image or Text).
    FitOptions& band(Modality m, std::size_t k_top, std::size_t k_bottom) {
        detail::check(isoclip_fit_options_set_band(get(), static_cast<isoclip_modality>(m), k_top,
                                                   k_bottom));
        return *this;
    }
    /// The bias b of an affine projector e = x P + b (d values); an empty span removes it.
    FitOptions& bias(Modality m, Span<const double> b) {
        detail::check(isoclip_fit_options_set_bias(get(), static_cast<isoclip_modality>(m),
                                                   b.data(), b.size()));
        return *this;
    }
    isoclip_fit_options* get() const noexcept { return handle_.get(); }

private:
    std::unique_ptr<isoclip_fit_options,
                    detail::Deleter<isoclip_fit_options, isoclip_fit_options_free>>
        handle_;
};

// ---------------------------------------------------------------------------------------------
// Backend

/// A device that runs projections. Shareable across threads. A null `const Backend*` wherever one
/// is taken means the library's shared CPU backend.
class Backend {
public:
    /// `threads` 0: every core. Device::Cuda throws Error(ISOCLIP_ERR_DEVICE_UNAVAILABLE) without
    /// a usable GPU; Device::Auto falls back to the CPU. `device_index`: ISOCLIP_DEVICE_INDEX_ALL
    /// (every visible GPU; the CPU) or one device (a CUDA ordinal; the CPU is 0), see
    /// isoclip_backend_options_set_device_index.
    explicit Backend(Device device = Device::Cpu, std::size_t threads = 0,
                     std::int32_t device_index = ISOCLIP_DEVICE_INDEX_ALL) {
        detail::check_abi();
        isoclip_backend_options* o = nullptr;
        detail::check(isoclip_backend_options_new(&o));
        std::unique_ptr<isoclip_backend_options,
                        detail::Deleter<isoclip_backend_options, isoclip_backend_options_free>>
            options(o);
        detail::check(isoclip_backend_options_set_device(o, static_cast<isoclip_device>(device)));
        detail::check(isoclip_backend_options_set_threads(o, threads));
        detail::check(isoclip_backend_options_set_device_index(o, device_index));
        const isoclip_backend* b = nullptr;
        detail::check(isoclip_backend_new(o, &b));
        handle_.reset(b);
    }
    /// The device it runs on: Cpu or Cuda.
    Device device() const {
        isoclip_device d = 0;
        detail::check(isoclip_backend_device(get(), &d));
        return static_cast<Device>(d);
    }
    std::string describe() const {
        return detail::copy_string([this](char* b, std::size_t n, std::size_t* need) {
            return isoclip_backend_describe(get(), b, n, need);
        });
    }
    const isoclip_backend* get() const noexcept { return handle_.get(); }

private:
    std::unique_ptr<const isoclip_backend,
                    detail::Deleter<const isoclip_backend, detail::free_backend>>
        handle_;
};

// ---------------------------------------------------------------------------------------------
// Cancellation of projections

/// Stops projections that use it (Projector::project with a token): checked before the first row
/// and then every 65 536 rows; a cancelled call throws Error(ISOCLIP_ERR_CANCELLED). Any thread
/// may cancel() at any time, any number of calls may share a token, and a cancelled token stays
/// cancelled. Move-only; it must outlive the calls that use it.
class CancelToken {
public:
    CancelToken() {
        detail::check_abi();
        isoclip_cancel_token* t = nullptr;
        detail::check(isoclip_cancel_token_new(&t));
        handle_.reset(t);
    }
    /// Any thread, any time.
    void cancel() const noexcept { isoclip_cancel_token_cancel(handle_.get()); }
    isoclip_cancel_token* get() const noexcept { return handle_.get(); }

private:
    std::unique_ptr<isoclip_cancel_token,
                    detail::Deleter<isoclip_cancel_token, isoclip_cancel_token_free>>
        handle_;
};

/// The linear map a projection applies before normalisation: y = x W + b, W row-major
/// rows x cols (input x output), b of cols values (zeros when the map has no bias).
struct LinearMap {
    std::size_t rows = 0, cols = 0;
    std::vector<float> weight;
    std::vector<float> bias;
};

namespace detail {
using JobOptionsHandle =
    std::unique_ptr<isoclip_job_options, Deleter<isoclip_job_options, isoclip_job_options_free>>;

inline JobOptionsHandle new_job_options() {
    isoclip_job_options* o = nullptr;
    check(isoclip_job_options_new(&o));
    return JobOptionsHandle(o);
}

inline void add_storage_options(isoclip_job_options* o, const StorageOptions& options) {
    for (const auto& kv : options)
        check(isoclip_job_options_add_storage_option(o, kv.first.c_str(), kv.second.c_str()));
}
}  // namespace detail

// ---------------------------------------------------------------------------------------------
// Projector

/// An aligned projector. Immutable and shareable across threads.
class Projector {
public:
    /// Loads a projector file (from `isoclip fit` or save()).
    static Projector load(const std::string& path) {
        detail::check_abi();
        const isoclip_projector* p = nullptr;
        detail::check(isoclip_projector_load(path.c_str(), &p));
        return Projector(p);
    }
    /// Loads a projector file from a path or a URL (s3://, gs://, az://, http(s)://, file://),
    /// with object-store options over the environment's.
    static Projector load_url(const std::string& location, const StorageOptions& options = {}) {
        detail::check_abi();
        detail::JobOptionsHandle o = detail::new_job_options();
        detail::add_storage_options(o.get(), options);
        const isoclip_projector* p = nullptr;
        detail::check(isoclip_projector_load_url(location.c_str(), o.get(), &p));
        return Projector(p);
    }
    /// Loads a projector from the bytes of a projector file in memory (read during the call only).
    static Projector load_from_memory(const void* data, std::size_t size) {
        detail::check_abi();
        const isoclip_projector* p = nullptr;
        detail::check(isoclip_projector_load_from_memory(data, size, &p));
        return Projector(p);
    }
    /// Fits from the model's projector matrices, row-major "input x output" (d_i x d, d_t x d).
    static Projector fit(Span<const double> image, std::size_t image_rows, std::size_t image_cols,
                         Span<const double> text, std::size_t text_rows, std::size_t text_cols,
                         const FitOptions& options) {
        detail::check_abi();
        if (image.size() != image_rows * image_cols || text.size() != text_rows * text_cols)
            throw Error(ISOCLIP_ERR_INVALID_ARGUMENT,
                        "Projector::fit: a span's size is not rows x cols");
        const isoclip_projector* p = nullptr;
        detail::check(isoclip_projector_fit(image.data(), image_rows, image_cols, text.data(),
                                            text_rows, text_cols, options.get(), &p));
        return Projector(p);
    }

    void save(const std::string& path) const {
        detail::check(isoclip_projector_save(get(), path.c_str()));
    }
    bool has_modality(Modality m) const {
        bool has = false;
        detail::check(isoclip_projector_has_modality(get(), static_cast<isoclip_modality>(m), &has));
        return has;
    }
    std::size_t input_dim(Modality m = Modality::Auto,
                          InputKind kind = InputKind::Features) const {
        std::size_t d = 0;
        detail::check(isoclip_projector_input_dim(get(), static_cast<isoclip_modality>(m),
                                                  static_cast<isoclip_input_kind>(kind), &d));
        return d;
    }
    std::size_t output_dim(Modality m = Modality::Auto, Form form = Form::Compact) const {
        std::size_t d = 0;
        detail::check(isoclip_projector_output_dim(get(), static_cast<isoclip_modality>(m),
                                                   static_cast<isoclip_form>(form), &d));
        return d;
    }
    /// {k_top, k_bottom}.
    std::pair<std::size_t, std::size_t> band(Modality m = Modality::Auto) const {
        std::size_t top = 0, bottom = 0;
        detail::check(
            isoclip_projector_band(get(), static_cast<isoclip_modality>(m), &top, &bottom));
        return {top, bottom};
    }
    std::size_t embedding_dim() const {
        std::size_t d = 0;
        detail::check(isoclip_projector_embedding_dim(get(), &d));
        return d;
    }
    std::string fingerprint() const {
        return detail::copy_string([this](char* b, std::size_t n, std::size_t* need) {
            return isoclip_projector_fingerprint(get(), b, n, need);
        });
    }
    std::string content_digest() const {
        return detail::copy_string([this](char* b, std::size_t n, std::size_t* need) {
            return isoclip_projector_content_digest(get(), b, n, need);
        });
    }
    /// The map a projection with these settings applies before normalisation (to fold into a
    /// FAISS LinearTransform or a GEMM of your own).
    LinearMap matrix(Modality m = Modality::Auto, InputKind kind = InputKind::Features,
                     Form form = Form::Compact) const {
        LinearMap map;
        map.rows = input_dim(m, kind);
        map.cols = output_dim(m, form);
        map.weight.resize(map.rows * map.cols);
        map.bias.resize(map.cols);
        detail::check(isoclip_projector_matrix(
            get(), static_cast<isoclip_modality>(m), static_cast<isoclip_input_kind>(kind),
            static_cast<isoclip_form>(form), map.weight.data(), map.rows, map.cols,
            map.bias.data()));
        return map;
    }

    /// Projects input rows into output rows (same row count). `options` null: the defaults;
    /// `backend` null: the shared CPU backend; `cancel` null: not cancellable (otherwise a
    /// cancelled token throws Error(ISOCLIP_ERR_CANCELLED), the output's content unspecified).
    /// Thread-safe.
    template <class In, class Out>
    ProjectionStats project(const Rows<const In>& input, const Rows<Out>& output,
                            const ProjectionOptions* options = nullptr,
                            const Backend* backend = nullptr,
                            const CancelToken* cancel = nullptr) const {
        static_assert(!std::is_const<Out>::value, "the output rows must be writable");
        detail::check_rows(input, "input");
        detail::check_rows(output, "output");
        if (input.rows != output.rows)
            throw Error(ISOCLIP_ERR_SHAPE, "input has " + std::to_string(input.rows) +
                                               " rows but output has " +
                                               std::to_string(output.rows));
        isoclip_projection_stats stats = ISOCLIP_PROJECTION_STATS_INIT;
        const isoclip_backend* b = backend ? backend->get() : nullptr;
        const isoclip_projection_options* o = options ? options->get() : nullptr;
        const std::size_t in_stride = input.stride() * sizeof(In);
        const std::size_t out_stride = output.stride() * sizeof(Out);
        // Without a token, isoclip_project: its messages name the call the caller expects.
        detail::check(
            cancel ? isoclip_project_with_cancel(get(), b, o, input.rows, input.data.data(),
                                                 detail::dtype_of<In>(), input.cols, in_stride,
                                                 output.data.data(), detail::dtype_of<Out>(),
                                                 output.cols, out_stride, &stats, cancel->get())
                   : isoclip_project(get(), b, o, input.rows, input.data.data(),
                                     detail::dtype_of<In>(), input.cols, in_stride,
                                     output.data.data(), detail::dtype_of<Out>(), output.cols,
                                     out_stride, &stats));
        return ProjectionStats{stats.zero_norm_rows, stats.nonfinite_rows};
    }

    /// Dense rows: the row count is input.size() / input_cols, which must also fill `output`
    /// exactly with output_cols columns.
    template <class In, class Out>
    ProjectionStats project(Span<const In> input, std::size_t input_cols, Span<Out> output,
                            std::size_t output_cols, const ProjectionOptions* options = nullptr,
                            const Backend* backend = nullptr,
                            const CancelToken* cancel = nullptr) const {
        if (input_cols == 0 || input.size() % input_cols != 0)
            throw Error(ISOCLIP_ERR_SHAPE, "input span of " + std::to_string(input.size()) +
                                               " elements is not a whole number of rows of " +
                                               std::to_string(input_cols));
        std::size_t rows = input.size() / input_cols;
        if (output.size() != rows * output_cols)
            throw Error(ISOCLIP_ERR_SHAPE, "output span of " + std::to_string(output.size()) +
                                               " elements does not hold " + std::to_string(rows) +
                                               " rows of " + std::to_string(output_cols));
        return project(Rows<const In>{input, rows, input_cols, 0},
                       Rows<Out>{output, rows, output_cols, 0}, options, backend, cancel);
    }

    /// Dense rows from vectors (see the Span overload).
    template <class In, class Out>
    ProjectionStats project(const std::vector<In>& input, std::size_t input_cols,
                            std::vector<Out>& output, std::size_t output_cols,
                            const ProjectionOptions* options = nullptr,
                            const Backend* backend = nullptr,
                            const CancelToken* cancel = nullptr) const {
        return project(Span<const In>(input), input_cols, Span<Out>(output), output_cols, options,
                       backend, cancel);
    }

    const isoclip_projector* get() const noexcept { return handle_.get(); }

private:
    explicit Projector(const isoclip_projector* p) : handle_(p) {}
    std::unique_ptr<const isoclip_projector,
                    detail::Deleter<const isoclip_projector, detail::free_projector>>
        handle_;
};

// ---------------------------------------------------------------------------------------------
// Jobs

/// Progress of a job run, as passed to the callback.
struct Progress {
    std::uint64_t rows_done, rows_total, shards_done, shards_total;
};

/// Job settings beyond the projection (defaults: fp16 output, the projection options'
/// precision, finished shards skipped, 16 MiB chunks, no progress callback, every shard, no
/// storage options).
struct JobOptions {
    DType output_dtype = DType::F16;
    /// The arithmetic of the job, in place of the projection options' precision (unset: theirs).
    /// Each shard records it: a rerun at another precision redoes the shards.
    std::optional<Precision> precision;
    bool overwrite = false;
    std::size_t chunk_bytes = 0;
    /// This worker's place among several sharing one output: it takes shard k of the sorted
    /// listing when k % num_shards == shard_index. (1, 0): every shard.
    std::uint32_t num_shards = 1;
    std::uint32_t shard_index = 0;
    /// Take num_shards and shard_index from the environment instead (a Slurm array, a Kubernetes
    /// Indexed Job with ISOCLIP_NUM_SHARDS, or ISOCLIP_NUM_SHARDS and ISOCLIP_SHARD_INDEX).
    bool shards_from_env = false;
    /// Object-store options for URLs, over the environment's.
    StorageOptions storage_options;
    /// Called on the thread running Job::run(). An exception it throws cancels the job and is
    /// rethrown by run().
    std::function<void(const Progress&)> progress;
};

/// A projection run over shards (the `isoclip project` command): `input` and `output_dir` are
/// paths or URLs (s3://, gs://, az://, http(s):// for input, file://). Move-only. run() on one
/// thread; cancel() from any thread, any time. Keeps its own reference to the projector and the
/// backend.
class Job {
public:
    Job(const Projector& projector, const std::string& input, const std::string& output_dir,
        const ProjectionOptions* projection = nullptr, JobOptions options = JobOptions(),
        const Backend* backend = nullptr)
        : state_(new State{std::move(options.progress), nullptr, nullptr}) {
        detail::check_abi();
        detail::JobOptionsHandle jo = detail::new_job_options();
        isoclip_job_options* o = jo.get();
        if (options.shards_from_env)
            detail::check(isoclip_job_options_set_shards_from_env(o));
        else
            detail::check(isoclip_job_options_set_shards(o, options.num_shards, options.shard_index));
        detail::check(isoclip_job_options_shards(o, &num_shards_, &shard_index_));
        detail::add_storage_options(o, options.storage_options);
        detail::check(
            isoclip_job_options_set_output_dtype(o, static_cast<isoclip_dtype>(options.output_dtype)));
        if (options.precision)
            detail::check(isoclip_job_options_set_precision(
                o, static_cast<isoclip_precision>(*options.precision)));
        detail::check(isoclip_job_options_set_overwrite(o, options.overwrite));
        detail::check(isoclip_job_options_set_chunk_bytes(o, options.chunk_bytes));
        if (state_->callback)
            detail::check(isoclip_job_options_set_progress(o, &Job::trampoline, state_.get()));
        isoclip_job* j = nullptr;
        detail::check(isoclip_job_new(projector.get(), backend ? backend->get() : nullptr,
                                      projection ? projection->get() : nullptr, o,
                                      input.c_str(), output_dir.c_str(), &j));
        handle_.reset(j);
        state_->job = j;
    }

    /// Runs to the end. Throws Error (status ISOCLIP_ERR_CANCELLED after cancel()), or rethrows
    /// what the progress callback threw.
    void run() {
        isoclip_status s = isoclip_job_run(handle_.get());
        if (state_->failure) {
            std::exception_ptr e = state_->failure;
            state_->failure = nullptr;
            std::rethrow_exception(e);
        }
        detail::check(s);
    }
    /// This worker's place among the workers sharing the output (from JobOptions or, with
    /// shards_from_env, from the environment when the job was made): it takes shard k of the
    /// sorted listing when k % num_shards() == shard_index().
    std::uint32_t num_shards() const noexcept { return num_shards_; }
    std::uint32_t shard_index() const noexcept { return shard_index_; }

    /// Asks the run to stop at the next chunk; permanent for this job. Any thread.
    void cancel() noexcept { isoclip_job_cancel(handle_.get()); }

    std::uint64_t stat(JobStat which) const {
        std::uint64_t v = 0;
        detail::check(
            isoclip_job_stat(handle_.get(), static_cast<isoclip_job_stat_id>(which), &v));
        return v;
    }
    /// The last successful run's summary, as JSON.
    std::string summary_json() const {
        return detail::copy_string([this](char* b, std::size_t n, std::size_t* need) {
            return isoclip_job_summary_json(handle_.get(), b, n, need);
        });
    }
    isoclip_job* get() const noexcept { return handle_.get(); }

private:
    struct State {
        std::function<void(const Progress&)> callback;
        std::exception_ptr failure;
        const isoclip_job* job;
    };

    // No exception may cross the C library: keep it, cancel, rethrow from run().
    static void trampoline(void* user_data, std::uint64_t rows_done, std::uint64_t rows_total,
                           std::uint64_t shards_done, std::uint64_t shards_total) noexcept {
        State* st = static_cast<State*>(user_data);
        if (st->failure) return;
        try {
            st->callback(Progress{rows_done, rows_total, shards_done, shards_total});
        } catch (...) {
            st->failure = std::current_exception();
            isoclip_job_cancel(st->job);
        }
    }

    std::unique_ptr<State> state_;
    std::unique_ptr<isoclip_job, detail::Deleter<isoclip_job, isoclip_job_free>> handle_;
    std::uint32_t num_shards_ = 1;
    std::uint32_t shard_index_ = 0;
};

}  // namespace isoclip

#endif  // ISOCLIP_HPP
