/* The isoclip C API end to end: versions, the error protocol, every handle's lifetime, fits from
 * caller matrices checked against a closed-form reference, projections of every view kind, the
 * projector file, backends, and jobs (progress, cancellation from the callback and from another
 * thread, resume, parity with the `isoclip project` command line), with every error path.
 *
 * Usage: test_api PROJECTOR_FILE ISOCLIP_CLI
 *   PROJECTOR_FILE  from `isoclip fit -o FILE` (the built-in synthetic ViT-B/16 model, image)
 *   ISOCLIP_CLI     the isoclip command line, run once to compare a job with `isoclip project`
 */
#include "test_util.h"

#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <time.h>

/* The closed-form model: an orthogonal Q (N x N, product of two Householder reflections, not
 * symmetric), singular values S descending. P_i = [Q; 0] (DI x N, the last rows zero),
 * P_t = Q diag(S) (N x N). Then Ψ = P_i P_tᵀ has left singular vectors [q_j; 0], right singular
 * vectors q_j (the columns of Q), up to the library's sign convention (largest entry of u_j
 * positive). With the band [k_top, N - k_bottom), the maps are, for a feature row x:
 *   image compact: z_j = sign_j (x·q_j)        image full: y_j = x·q_j (0 outside the band)
 *   text compact:  z_j = sign_j s_j (x·q_j)    text full:  y_j = s_j (x·q_j)
 * (the QR of P_iᵀ U_m is the identity up to signs, that of P_tᵀ V_m has R = diag(s)). */
#define N 16
#define DI 20
#define IMG_TOP 3
#define IMG_BOTTOM 4
#define TXT_TOP 2
#define TXT_BOTTOM 5
#define IMG_M (N - IMG_TOP - IMG_BOTTOM)
#define TXT_M (N - TXT_TOP - TXT_BOTTOM)

static double Q[N * N];
static double S[N];
static int SIGN[N];
static double P_IMAGE[DI * N];
static double P_TEXT[N * N];

static void build_model(void) {
    uint64_t state = 42;
    double v1[N], v2[N], h1[N * N], h2[N * N];
    double n1 = 0, n2 = 0;
    for (int i = 0; i < N; i++) {
        v1[i] = rng_uniform(&state);
        v2[i] = rng_uniform(&state);
        n1 += v1[i] * v1[i];
        n2 += v2[i] * v2[i];
    }
    for (int i = 0; i < N; i++)
        for (int j = 0; j < N; j++) {
            h1[i * N + j] = (i == j) - 2 * v1[i] * v1[j] / n1;
            h2[i * N + j] = (i == j) - 2 * v2[i] * v2[j] / n2;
        }
    for (int i = 0; i < N; i++)
        for (int j = 0; j < N; j++) {
            double acc = 0;
            for (int k = 0; k < N; k++) acc += h1[i * N + k] * h2[k * N + j];
            Q[i * N + j] = acc;
        }
    for (int j = 0; j < N; j++) {
        S[j] = (double)(N - j);
        int best = 0;
        for (int i = 1; i < N; i++)
            if (fabs(Q[i * N + j]) > fabs(Q[best * N + j])) best = i;
        SIGN[j] = Q[best * N + j] < 0 ? -1 : 1;
    }
    memset(P_IMAGE, 0, sizeof P_IMAGE);
    for (int i = 0; i < N; i++)
        for (int j = 0; j < N; j++) {
            P_IMAGE[i * N + j] = Q[i * N + j];
            P_TEXT[i * N + j] = Q[i * N + j] * S[j];
        }
}

/* The reference projection of one row of features (DI columns for image, N for text). */
static void reference_row(int text, int full, int normalize, const float *x, double *y) {
    int top = text ? TXT_TOP : IMG_TOP, bottom = text ? TXT_BOTTOM : IMG_BOTTOM;
    int cols = full ? N : N - top - bottom;
    for (int k = 0; k < cols; k++) y[k] = 0;
    for (int j = top; j < N - bottom; j++) {
        double c = 0;
        for (int i = 0; i < N; i++) c += (double)x[i] * Q[i * N + j];
        if (text) c *= S[j];
        if (full)
            y[j] = c;
        else
            y[j - top] = SIGN[j] * c;
    }
    if (normalize) {
        double norm = 0;
        for (int k = 0; k < cols; k++) norm += y[k] * y[k];
        norm = sqrt(norm);
        if (norm > 0)
            for (int k = 0; k < cols; k++) y[k] /= norm;
    }
}

static void random_rows(float *x, size_t rows, size_t cols, uint64_t seed) {
    for (size_t i = 0; i < rows * cols; i++) x[i] = (float)rng_uniform(&seed);
}

static isoclip_projection_options *make_options(isoclip_modality modality, isoclip_input_kind kind,
                                                isoclip_form form, bool normalize) {
    isoclip_projection_options *o = NULL;
    EXPECT_OK(isoclip_projection_options_new(&o));
    EXPECT_OK(isoclip_projection_options_set_modality(o, modality));
    EXPECT_OK(isoclip_projection_options_set_input_kind(o, kind));
    EXPECT_OK(isoclip_projection_options_set_form(o, form));
    EXPECT_OK(isoclip_projection_options_set_normalize(o, normalize));
    return o;
}

/* Dense f32 -> f32 projection. */
static isoclip_status project_f32(const isoclip_projector *p, const isoclip_backend *b,
                                  const isoclip_projection_options *o, size_t rows, const float *in,
                                  size_t in_cols, float *out, size_t out_cols,
                                  isoclip_projection_stats *stats) {
    return isoclip_project(p, b, o, rows, in, ISOCLIP_DTYPE_F32, in_cols, in_cols * 4, out,
                           ISOCLIP_DTYPE_F32, out_cols, out_cols * 4, stats);
}

/* Redirects stderr (the file descriptor, which the library writes to unbuffered) to a temporary
 * file until stderr_capture_end, which returns how many bytes were written there. */
static int g_saved_stderr = -1;
static FILE *stderr_capture_begin(void) {
    fflush(stderr);
    FILE *f = tmpfile();
    CHECK(f != NULL);
    g_saved_stderr = dup(2);
    CHECK(g_saved_stderr >= 0 && dup2(fileno(f), 2) == 2);
    return f;
}
static long stderr_capture_end(FILE *f) {
    fflush(stderr);
    CHECK(dup2(g_saved_stderr, 2) == 2);
    close(g_saved_stderr);
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fclose(f);
    return n;
}

static const isoclip_projector *fit_model(void) {
    isoclip_fit_options *fo = NULL;
    EXPECT_OK(isoclip_fit_options_new(&fo));
    EXPECT_OK(isoclip_fit_options_set_band(fo, ISOCLIP_MODALITY_IMAGE, IMG_TOP, IMG_BOTTOM));
    EXPECT_OK(isoclip_fit_options_set_band(fo, ISOCLIP_MODALITY_TEXT, TXT_TOP, TXT_BOTTOM));
    const isoclip_projector *p = NULL;
    EXPECT_OK(isoclip_projector_fit(P_IMAGE, DI, N, P_TEXT, N, N, fo, &p));
    isoclip_fit_options_free(fo);
    CHECK(p != NULL);
    return p;
}

/* ---------------------------------------------------------------------------------------------- */

static void test_versions(void) {
    CHECK(isoclip_abi_version() == ISOCLIP_ABI_VERSION);
    CHECK(ISOCLIP_ABI_COMPATIBLE(isoclip_abi_version()));
    CHECK(strcmp(isoclip_version(), ISOCLIP_VERSION_STRING) == 0);
    char want[64];
    FORMAT(want, "%d.%d.%d", ISOCLIP_VERSION_MAJOR, ISOCLIP_VERSION_MINOR,
             ISOCLIP_VERSION_PATCH);
    CHECK(strcmp(isoclip_version(), want) == 0);
    CHECK(strcmp(isoclip_status_name(ISOCLIP_OK), "ISOCLIP_OK") == 0);
    CHECK(strcmp(isoclip_status_name(ISOCLIP_ERR_SHAPE), "ISOCLIP_ERR_SHAPE") == 0);
    CHECK(strcmp(isoclip_status_name(ISOCLIP_ERR_PANIC), "ISOCLIP_ERR_PANIC") == 0);
    CHECK(strcmp(isoclip_status_name(-3), "ISOCLIP_UNKNOWN_STATUS") == 0);
    /* The values are part of the ABI. */
    CHECK(ISOCLIP_ERR_INVALID_ARGUMENT == 1 && ISOCLIP_ERR_IO == 4 && ISOCLIP_ERR_CANCELLED == 13 &&
          ISOCLIP_ERR_INVALID_STATE == 15 && ISOCLIP_ERR_PANIC == 255);
    CHECK(sizeof(isoclip_status) == 4);
}

static void test_error_protocol(void) {
    const isoclip_projector *p = (const isoclip_projector *)0x1; /* must stay untouched */
    EXPECT_STATUS(ISOCLIP_ERR_IO, isoclip_projector_load("/nonexistent/dir/p.st", &p));
    CHECK(p == (const isoclip_projector *)0x1);
    const char *full =
        "isoclip_projector_load: /nonexistent/dir/p.st: No such file or directory (os error 2)";
    size_t need = isoclip_last_error_length();
    CHECK(need == strlen(full) + 1);
    EXPECT_MESSAGE(full);

    /* A short buffer gets a NUL-terminated prefix, and the message survives. */
    char small[9];
    size_t out_len = 0;
    EXPECT_STATUS(ISOCLIP_ERR_BUFFER_TOO_SMALL,
                  isoclip_last_error_message(small, sizeof small, &out_len));
    CHECK(out_len == need);
    CHECK(strcmp(small, "isoclip_") == 0);
    out_len = 0;
    EXPECT_STATUS(ISOCLIP_ERR_BUFFER_TOO_SMALL, isoclip_last_error_message(NULL, 0, &out_len));
    CHECK(out_len == need);
    EXPECT_STATUS(ISOCLIP_ERR_NULL_POINTER, isoclip_last_error_message(NULL, 5, NULL));
    CHECK(isoclip_last_error_length() == need);

    /* Successful calls leave the message alone. */
    isoclip_projection_options *o = NULL;
    EXPECT_OK(isoclip_projection_options_new(&o));
    isoclip_projection_options_free(o);
    char *buf = malloc(need);
    EXPECT_OK(isoclip_last_error_message(buf, need, &out_len));
    CHECK(strcmp(buf, full) == 0);
    free(buf);

    /* The next failure replaces it. */
    EXPECT_STATUS(ISOCLIP_ERR_NULL_POINTER, isoclip_projector_load(NULL, &p));
    EXPECT_MESSAGE("isoclip_projector_load: argument `path` must not be NULL");
}

static void test_null_arguments_and_free(void) {
    /* Every free accepts NULL. */
    isoclip_projector_free(NULL);
    isoclip_fit_options_free(NULL);
    isoclip_backend_free(NULL);
    isoclip_backend_options_free(NULL);
    isoclip_projection_options_free(NULL);
    isoclip_job_options_free(NULL);
    isoclip_job_free(NULL);

    const isoclip_projector *p = NULL;
    EXPECT_STATUS(ISOCLIP_ERR_NULL_POINTER, isoclip_projector_load("x.st", NULL));
    EXPECT_MESSAGE("isoclip_projector_load: argument `out` must not be NULL");
    EXPECT_STATUS(ISOCLIP_ERR_NULL_POINTER, isoclip_fit_options_new(NULL));
    EXPECT_STATUS(ISOCLIP_ERR_NULL_POINTER, isoclip_fit_options_set_band(NULL, 1, 0, 0));
    EXPECT_MESSAGE("isoclip_fit_options_set_band: argument `options` must not be NULL");
    EXPECT_STATUS(ISOCLIP_ERR_NULL_POINTER, isoclip_fit_options_set_bias(NULL, 1, NULL, 0));
    EXPECT_STATUS(ISOCLIP_ERR_NULL_POINTER,
                  isoclip_projector_fit(P_IMAGE, DI, N, P_TEXT, N, N, NULL, &p));
    EXPECT_MESSAGE("isoclip_projector_fit: argument `options` must not be NULL");
    isoclip_fit_options *fo = NULL;
    EXPECT_OK(isoclip_fit_options_new(&fo));
    EXPECT_OK(isoclip_fit_options_set_band(fo, ISOCLIP_MODALITY_IMAGE, 1, 1));
    EXPECT_STATUS(ISOCLIP_ERR_NULL_POINTER,
                  isoclip_projector_fit(NULL, DI, N, P_TEXT, N, N, fo, &p));
    EXPECT_MESSAGE("isoclip_projector_fit: argument `image` must not be NULL");
    EXPECT_STATUS(ISOCLIP_ERR_NULL_POINTER,
                  isoclip_projector_fit(P_IMAGE, DI, N, P_TEXT, N, N, fo, NULL));
    EXPECT_MESSAGE("isoclip_projector_fit: argument `out` must not be NULL");
    isoclip_fit_options_free(fo);
    CHECK(p == NULL);

    size_t dim = 7;
    bool has = false;
    size_t k1, k2;
    EXPECT_STATUS(ISOCLIP_ERR_NULL_POINTER, isoclip_projector_input_dim(NULL, 0, 1, &dim));
    EXPECT_MESSAGE("isoclip_projector_input_dim: argument `projector` must not be NULL");
    EXPECT_STATUS(ISOCLIP_ERR_NULL_POINTER, isoclip_projector_output_dim(NULL, 0, 1, &dim));
    EXPECT_STATUS(ISOCLIP_ERR_NULL_POINTER, isoclip_projector_has_modality(NULL, 1, &has));
    EXPECT_STATUS(ISOCLIP_ERR_NULL_POINTER, isoclip_projector_band(NULL, 1, &k1, &k2));
    EXPECT_STATUS(ISOCLIP_ERR_NULL_POINTER, isoclip_projector_embedding_dim(NULL, &dim));
    EXPECT_STATUS(ISOCLIP_ERR_NULL_POINTER, isoclip_projector_fingerprint(NULL, NULL, 0, NULL));
    EXPECT_STATUS(ISOCLIP_ERR_NULL_POINTER,
                  isoclip_projector_content_digest(NULL, NULL, 0, NULL));
    EXPECT_STATUS(ISOCLIP_ERR_NULL_POINTER, isoclip_projector_save(NULL, "/tmp/x.st"));
    CHECK(dim == 7);
    float x = 0, y = 0;
    EXPECT_STATUS(ISOCLIP_ERR_NULL_POINTER,
                  project_f32(NULL, NULL, NULL, 1, &x, 1, &y, 1, NULL));
    EXPECT_STATUS(ISOCLIP_ERR_NULL_POINTER, isoclip_projection_options_new(NULL));
    EXPECT_STATUS(ISOCLIP_ERR_NULL_POINTER, isoclip_projection_options_set_form(NULL, 1));
    EXPECT_MESSAGE("isoclip_projection_options_set_form: argument `options` must not be NULL");
    EXPECT_STATUS(ISOCLIP_ERR_NULL_POINTER, isoclip_projection_options_set_modality(NULL, 1));
    EXPECT_STATUS(ISOCLIP_ERR_NULL_POINTER, isoclip_projection_options_set_input_kind(NULL, 1));
    EXPECT_STATUS(ISOCLIP_ERR_NULL_POINTER, isoclip_projection_options_set_normalize(NULL, 1));
    EXPECT_STATUS(ISOCLIP_ERR_NULL_POINTER, isoclip_projection_options_set_nonfinite(NULL, 1));
    EXPECT_STATUS(ISOCLIP_ERR_NULL_POINTER, isoclip_backend_options_new(NULL));
    EXPECT_STATUS(ISOCLIP_ERR_NULL_POINTER, isoclip_backend_options_set_device(NULL, 1));
    EXPECT_STATUS(ISOCLIP_ERR_NULL_POINTER, isoclip_backend_options_set_threads(NULL, 1));
    EXPECT_STATUS(ISOCLIP_ERR_NULL_POINTER, isoclip_backend_new(NULL, NULL));
    EXPECT_STATUS(ISOCLIP_ERR_NULL_POINTER, isoclip_backend_device(NULL, NULL));
    EXPECT_STATUS(ISOCLIP_ERR_NULL_POINTER, isoclip_job_options_new(NULL));
    EXPECT_STATUS(ISOCLIP_ERR_NULL_POINTER, isoclip_job_options_set_output_dtype(NULL, 1));
    EXPECT_STATUS(ISOCLIP_ERR_NULL_POINTER, isoclip_job_options_set_overwrite(NULL, 1));
    EXPECT_STATUS(ISOCLIP_ERR_NULL_POINTER, isoclip_job_options_set_chunk_bytes(NULL, 1));
    EXPECT_STATUS(ISOCLIP_ERR_NULL_POINTER, isoclip_job_options_set_progress(NULL, NULL, NULL));
    isoclip_job *job = NULL;
    EXPECT_STATUS(ISOCLIP_ERR_NULL_POINTER,
                  isoclip_job_new(NULL, NULL, NULL, NULL, "in", "out", &job));
    EXPECT_STATUS(ISOCLIP_ERR_NULL_POINTER, isoclip_job_run(NULL));
    EXPECT_MESSAGE("isoclip_job_run: argument `job` must not be NULL");
    EXPECT_STATUS(ISOCLIP_ERR_NULL_POINTER, isoclip_job_cancel(NULL));
    uint64_t v = 0;
    EXPECT_STATUS(ISOCLIP_ERR_NULL_POINTER, isoclip_job_stat(NULL, 1, &v));
    EXPECT_STATUS(ISOCLIP_ERR_NULL_POINTER, isoclip_job_summary_json(NULL, NULL, 0, NULL));
    CHECK(job == NULL);
}

static void test_fit_and_queries(const isoclip_projector *p) {
    bool has = false;
    EXPECT_OK(isoclip_projector_has_modality(p, ISOCLIP_MODALITY_IMAGE, &has));
    CHECK(has);
    has = false;
    EXPECT_OK(isoclip_projector_has_modality(p, ISOCLIP_MODALITY_TEXT, &has));
    CHECK(has);
    EXPECT_STATUS(ISOCLIP_ERR_INVALID_ARGUMENT,
                  isoclip_projector_has_modality(p, ISOCLIP_MODALITY_AUTO, &has));
    EXPECT_MESSAGE("isoclip_projector_has_modality: this call needs ISOCLIP_MODALITY_IMAGE or "
                   "ISOCLIP_MODALITY_TEXT, not AUTO");

    size_t dim = 0;
    EXPECT_OK(isoclip_projector_input_dim(p, ISOCLIP_MODALITY_IMAGE, ISOCLIP_INPUT_FEATURES, &dim));
    CHECK(dim == DI);
    EXPECT_OK(isoclip_projector_input_dim(p, ISOCLIP_MODALITY_TEXT, ISOCLIP_INPUT_FEATURES, &dim));
    CHECK(dim == N);
    EXPECT_OK(isoclip_projector_input_dim(p, ISOCLIP_MODALITY_IMAGE, ISOCLIP_INPUT_EMBEDDINGS, &dim));
    CHECK(dim == N);
    EXPECT_OK(isoclip_projector_output_dim(p, ISOCLIP_MODALITY_IMAGE, ISOCLIP_FORM_COMPACT, &dim));
    CHECK(dim == IMG_M);
    EXPECT_OK(isoclip_projector_output_dim(p, ISOCLIP_MODALITY_TEXT, ISOCLIP_FORM_COMPACT, &dim));
    CHECK(dim == TXT_M);
    EXPECT_OK(isoclip_projector_output_dim(p, ISOCLIP_MODALITY_TEXT, ISOCLIP_FORM_FULL, &dim));
    CHECK(dim == N);
    EXPECT_OK(isoclip_projector_embedding_dim(p, &dim));
    CHECK(dim == N);
    size_t top = 0, bottom = 0;
    EXPECT_OK(isoclip_projector_band(p, ISOCLIP_MODALITY_TEXT, &top, &bottom));
    CHECK(top == TXT_TOP && bottom == TXT_BOTTOM);
    EXPECT_OK(isoclip_projector_band(p, ISOCLIP_MODALITY_IMAGE, &top, &bottom));
    CHECK(top == IMG_TOP && bottom == IMG_BOTTOM);

    dim = 99;
    EXPECT_STATUS(ISOCLIP_ERR_INVALID_ARGUMENT,
                  isoclip_projector_input_dim(p, ISOCLIP_MODALITY_AUTO, ISOCLIP_INPUT_FEATURES, &dim));
    EXPECT_MESSAGE("isoclip_projector_input_dim: the projector holds both image and text maps: "
                   "choose one with ISOCLIP_MODALITY_IMAGE or ISOCLIP_MODALITY_TEXT instead of AUTO");
    EXPECT_STATUS(ISOCLIP_ERR_INVALID_ARGUMENT, isoclip_projector_input_dim(p, 7, 1, &dim));
    EXPECT_MESSAGE("isoclip_projector_input_dim: unknown modality 7 (expected "
                   "ISOCLIP_MODALITY_AUTO, _IMAGE or _TEXT)");
    EXPECT_STATUS(ISOCLIP_ERR_INVALID_ARGUMENT, isoclip_projector_input_dim(p, 1, 0, &dim));
    EXPECT_MESSAGE("isoclip_projector_input_dim: unknown input kind 0 (expected "
                   "ISOCLIP_INPUT_FEATURES or ISOCLIP_INPUT_EMBEDDINGS)");
    EXPECT_STATUS(ISOCLIP_ERR_INVALID_ARGUMENT, isoclip_projector_output_dim(p, 1, 3, &dim));
    EXPECT_MESSAGE("isoclip_projector_output_dim: unknown form 3 (expected ISOCLIP_FORM_COMPACT "
                   "or ISOCLIP_FORM_FULL)");
    EXPECT_STATUS(ISOCLIP_ERR_NULL_POINTER, isoclip_projector_band(p, 1, &top, NULL));
    EXPECT_MESSAGE("isoclip_projector_band: argument `k_bottom` must not be NULL");
    CHECK(dim == 99);

    /* Fingerprint: the string convention (query, too small, exact). */
    size_t need = 0;
    EXPECT_STATUS(ISOCLIP_ERR_BUFFER_TOO_SMALL, isoclip_projector_fingerprint(p, NULL, 0, &need));
    CHECK(need == 65);
    /* A size query is not a failure worth a message: the previous one stays. */
    EXPECT_MESSAGE("isoclip_projector_band: argument `k_bottom` must not be NULL");
    char fp[65], small[10], digest[65];
    EXPECT_STATUS(ISOCLIP_ERR_BUFFER_TOO_SMALL,
                  isoclip_projector_fingerprint(p, small, sizeof small, &need));
    EXPECT_OK(isoclip_projector_fingerprint(p, fp, sizeof fp, &need));
    CHECK(strlen(fp) == 64 && strspn(fp, "0123456789abcdef") == 64);
    CHECK(strncmp(fp, small, 9) == 0 && small[9] == 0);
    EXPECT_OK(isoclip_projector_content_digest(p, digest, sizeof digest, NULL));
    CHECK(strlen(digest) == 64 && strcmp(digest, fp) != 0);

    /* Fitting the same matrices again gives the same projector. */
    const isoclip_projector *again = fit_model();
    char fp2[65], digest2[65];
    EXPECT_OK(isoclip_projector_fingerprint(again, fp2, sizeof fp2, NULL));
    EXPECT_OK(isoclip_projector_content_digest(again, digest2, sizeof digest2, NULL));
    CHECK(strcmp(fp, fp2) == 0 && strcmp(digest, digest2) == 0);
    isoclip_projector_free(again);
}

static double max_abs_diff(const float *got, const double *want, size_t n) {
    double worst = 0;
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)got[i] - want[i]);
        if (!(d <= worst)) worst = d; /* NaN counts as worst */
    }
    return worst;
}

static void test_projection_reference(const isoclip_projector *p) {
    enum { ROWS = 37 };
    float x[ROWS * DI], y[ROWS * N];
    double ref[N];
    random_rows(x, ROWS, DI, 7);
    for (int text = 0; text <= 1; text++) {
        for (int full = 0; full <= 1; full++) {
            for (int normalize = 0; normalize <= 1; normalize++) {
                size_t in_cols = text ? N : DI;
                size_t out_cols = full ? N : (size_t)(text ? TXT_M : IMG_M);
                isoclip_projection_options *o =
                    make_options(text ? ISOCLIP_MODALITY_TEXT : ISOCLIP_MODALITY_IMAGE,
                                 ISOCLIP_INPUT_FEATURES,
                                 full ? ISOCLIP_FORM_FULL : ISOCLIP_FORM_COMPACT, normalize);
                isoclip_projection_stats stats = {sizeof(isoclip_projection_stats), 99, 99};
                EXPECT_OK(project_f32(p, NULL, o, ROWS, x, in_cols, y, out_cols, &stats));
                CHECK(stats.zero_norm_rows == 0 && stats.nonfinite_rows == 0);
                double worst = 0;
                for (size_t r = 0; r < ROWS; r++) {
                    /* Text rows are read with N columns from the same buffer. */
                    reference_row(text, full, normalize, x + r * in_cols, ref);
                    double d = max_abs_diff(y + r * out_cols, ref, out_cols);
                    if (d > worst) worst = d;
                }
                if (worst > 2e-5)
                    fprintf(stderr, "text=%d full=%d normalize=%d: max |diff| %g\n", text, full,
                            normalize, worst);
                CHECK(worst <= 2e-5);
                isoclip_projection_options_free(o);
            }
        }
    }

    /* The embedding route: from e = x P (the CLIP embedding) to the same rows as from x. */
    for (int text = 0; text <= 1; text++) {
        size_t in_cols = text ? N : DI;
        const double *P = text ? P_TEXT : P_IMAGE;
        float e[ROWS * N];
        for (size_t r = 0; r < ROWS; r++)
            for (size_t j = 0; j < N; j++) {
                double acc = 0;
                for (size_t i = 0; i < in_cols; i++) acc += (double)x[r * in_cols + i] * P[i * N + j];
                e[r * N + j] = (float)acc;
            }
        for (int full = 0; full <= 1; full++) {
            size_t out_cols = full ? N : (size_t)(text ? TXT_M : IMG_M);
            isoclip_projection_options *o =
                make_options(text ? ISOCLIP_MODALITY_TEXT : ISOCLIP_MODALITY_IMAGE,
                             ISOCLIP_INPUT_EMBEDDINGS,
                             full ? ISOCLIP_FORM_FULL : ISOCLIP_FORM_COMPACT, true);
            EXPECT_OK(project_f32(p, NULL, o, ROWS, e, N, y, out_cols, NULL));
            double worst = 0;
            for (size_t r = 0; r < ROWS; r++) {
                reference_row(text, full, 1, x + r * in_cols, ref);
                double d = max_abs_diff(y + r * out_cols, ref, out_cols);
                if (d > worst) worst = d;
            }
            if (worst > 1e-4) fprintf(stderr, "embedding route text=%d full=%d: %g\n", text, full, worst);
            CHECK(worst <= 1e-4);
            isoclip_projection_options_free(o);
        }
    }
}

static void test_projection_views(const isoclip_projector *p) {
    enum { ROWS = 300 };
    const size_t in_stride = DI * 2 + 6, out_stride = IMG_M * 2 + 10; /* odd padding, f16 */
    float *x = malloc(sizeof(float) * ROWS * DI);
    random_rows(x, ROWS, DI, 11);
    unsigned char *in = malloc(ROWS * in_stride);
    unsigned char *out = malloc(ROWS * out_stride);
    memset(in, 0xCD, ROWS * in_stride);
    memset(out, 0xAB, ROWS * out_stride);
    for (size_t r = 0; r < ROWS; r++)
        for (size_t i = 0; i < DI; i++) {
            uint16_t h = float_to_half(x[r * DI + i]);
            memcpy(in + r * in_stride + 1 + 2 * i, &h, 2); /* unaligned on purpose */
        }
    isoclip_projection_options *o =
        make_options(ISOCLIP_MODALITY_IMAGE, ISOCLIP_INPUT_FEATURES, ISOCLIP_FORM_COMPACT, true);
    EXPECT_OK(isoclip_project(p, NULL, o, ROWS, in + 1, ISOCLIP_DTYPE_F16, DI, in_stride, out,
                              ISOCLIP_DTYPE_F16, IMG_M, out_stride, NULL));
    double worst = 0;
    int padding_intact = 1;
    double ref[N];
    for (size_t r = 0; r < ROWS; r++) {
        float xr[DI];
        for (size_t i = 0; i < DI; i++) {
            uint16_t h;
            memcpy(&h, in + r * in_stride + 1 + 2 * i, 2);
            xr[i] = half_to_float(h);
        }
        reference_row(0, 0, 1, xr, ref);
        for (size_t j = 0; j < IMG_M; j++) {
            uint16_t h;
            memcpy(&h, out + r * out_stride + 2 * j, 2);
            double d = fabs((double)half_to_float(h) - ref[j]);
            if (!(d <= worst)) worst = d;
        }
        for (size_t b = IMG_M * 2; b < out_stride; b++)
            if (out[r * out_stride + b] != 0xAB) padding_intact = 0;
    }
    CHECK(worst <= 1e-3); /* fp16 output: half an ulp near 1 is 2.4e-4 */
    CHECK(padding_intact);

    /* f16 in, f32 out and f32 in, f16 out agree with the f32 path within fp16 rounding. */
    float *y32 = malloc(sizeof(float) * ROWS * IMG_M);
    EXPECT_OK(isoclip_project(p, NULL, o, ROWS, in + 1, ISOCLIP_DTYPE_F16, DI, in_stride, y32,
                              ISOCLIP_DTYPE_F32, IMG_M, IMG_M * 4, NULL));
    uint16_t *y16 = malloc(2 * ROWS * IMG_M);
    EXPECT_OK(isoclip_project(p, NULL, o, ROWS, x, ISOCLIP_DTYPE_F32, DI, DI * 4, y16,
                              ISOCLIP_DTYPE_F16, IMG_M, IMG_M * 2, NULL));
    double worst32 = 0, worst16 = 0;
    for (size_t r = 0; r < ROWS; r++) {
        float xr[DI];
        for (size_t i = 0; i < DI; i++) {
            uint16_t h;
            memcpy(&h, in + r * in_stride + 1 + 2 * i, 2);
            xr[i] = half_to_float(h);
        }
        reference_row(0, 0, 1, xr, ref);
        double d = max_abs_diff(y32 + r * IMG_M, ref, IMG_M);
        if (d > worst32) worst32 = d;
        reference_row(0, 0, 1, x + r * DI, ref);
        for (size_t j = 0; j < IMG_M; j++) {
            double e = fabs((double)half_to_float(y16[r * IMG_M + j]) - ref[j]);
            if (!(e <= worst16)) worst16 = e;
        }
    }
    CHECK(worst32 <= 2e-5);
    CHECK(worst16 <= 1e-3);

    /* Zero rows, NaN rows, rows == 0. */
    float rows3[3 * DI];
    random_rows(rows3, 3, DI, 5);
    memset(rows3 + DI, 0, sizeof(float) * DI);
    float y3[3 * IMG_M];
    isoclip_projection_stats stats = ISOCLIP_PROJECTION_STATS_INIT;
    EXPECT_OK(project_f32(p, NULL, o, 3, rows3, DI, y3, IMG_M, &stats));
    CHECK(stats.zero_norm_rows == 1 && stats.nonfinite_rows == 0);
    int zeros = 1;
    for (size_t j = 0; j < IMG_M; j++) zeros &= y3[IMG_M + j] == 0.0f;
    CHECK(zeros);
    rows3[2 * DI + 4] = NAN;
    stats.zero_norm_rows = 77;
    EXPECT_STATUS(ISOCLIP_ERR_NON_FINITE_ROW, project_f32(p, NULL, o, 3, rows3, DI, y3, IMG_M, &stats));
    EXPECT_MESSAGE("isoclip_project: row 2 contains NaN or Inf (set ISOCLIP_NONFINITE_ZERO with "
                   "isoclip_projection_options_set_nonfinite to write zeros for such rows instead)");
    CHECK(stats.zero_norm_rows == 77); /* not written on failure */
    EXPECT_OK(isoclip_projection_options_set_nonfinite(o, ISOCLIP_NONFINITE_ZERO));
    EXPECT_OK(project_f32(p, NULL, o, 3, rows3, DI, y3, IMG_M, &stats));
    CHECK(stats.zero_norm_rows == 1 && stats.nonfinite_rows == 1);
    zeros = 1;
    for (size_t j = 0; j < IMG_M; j++) zeros &= y3[2 * IMG_M + j] == 0.0f;
    CHECK(zeros);
    EXPECT_OK(project_f32(p, NULL, o, 0, NULL, DI, NULL, IMG_M, &stats));
    CHECK(stats.zero_norm_rows == 0 && stats.nonfinite_rows == 0);
    EXPECT_OK(isoclip_project(p, NULL, o, 0, (const void *)0x10, ISOCLIP_DTYPE_F16, DI, 0,
                              (void *)0x20, ISOCLIP_DTYPE_F32, IMG_M, 0, NULL));

    isoclip_projection_options_free(o);
    free(x);
    free(in);
    free(out);
    free(y32);
    free(y16);
}

static void test_projection_errors(const isoclip_projector *p) {
    float x[4 * DI], y[4 * N];
    random_rows(x, 4, DI, 3);
    isoclip_projection_options *o =
        make_options(ISOCLIP_MODALITY_IMAGE, ISOCLIP_INPUT_FEATURES, ISOCLIP_FORM_COMPACT, true);
    EXPECT_STATUS(ISOCLIP_ERR_SHAPE, project_f32(p, NULL, o, 4, x, DI - 1, y, IMG_M, NULL));
    EXPECT_MESSAGE("isoclip_project: input rows have 19 columns but the projector expects 20");
    EXPECT_STATUS(ISOCLIP_ERR_SHAPE, project_f32(p, NULL, o, 4, x, DI, y, N, NULL));
    EXPECT_MESSAGE("isoclip_project: output rows have 16 columns but the projector produces 9");
    EXPECT_STATUS(ISOCLIP_ERR_INVALID_ARGUMENT,
                  isoclip_project(p, NULL, o, 4, x, ISOCLIP_DTYPE_F32, DI, DI * 4 - 1, y,
                                  ISOCLIP_DTYPE_F32, IMG_M, IMG_M * 4, NULL));
    EXPECT_MESSAGE("isoclip_project: input row stride 79 bytes is smaller than a row (20 x f32 = "
                   "80 bytes)");
    EXPECT_STATUS(ISOCLIP_ERR_INVALID_ARGUMENT,
                  isoclip_project(p, NULL, o, 4, x, 0, DI, DI * 4, y, ISOCLIP_DTYPE_F32, IMG_M,
                                  IMG_M * 4, NULL));
    EXPECT_MESSAGE("isoclip_project: unknown input dtype 0 (expected ISOCLIP_DTYPE_F16 or "
                   "ISOCLIP_DTYPE_F32)");
    EXPECT_STATUS(ISOCLIP_ERR_INVALID_ARGUMENT,
                  isoclip_project(p, NULL, o, 4, x, ISOCLIP_DTYPE_F32, DI, DI * 4, y, 5, IMG_M,
                                  IMG_M * 4, NULL));
    EXPECT_MESSAGE("isoclip_project: unknown output dtype 5 (expected ISOCLIP_DTYPE_F16 or "
                   "ISOCLIP_DTYPE_F32)");
    EXPECT_STATUS(ISOCLIP_ERR_INVALID_ARGUMENT,
                  isoclip_project(p, NULL, o, 2, x, ISOCLIP_DTYPE_F32, DI, DI * 4, x + DI,
                                  ISOCLIP_DTYPE_F32, IMG_M, IMG_M * 4, NULL));
    EXPECT_MESSAGE("isoclip_project: the input and output buffers overlap; project into a "
                   "separate buffer");
    EXPECT_STATUS(ISOCLIP_ERR_INVALID_ARGUMENT,
                  isoclip_project(p, NULL, o, SIZE_MAX / 2, x, ISOCLIP_DTYPE_F32, DI, DI * 4, y,
                                  ISOCLIP_DTYPE_F32, IMG_M, IMG_M * 4, NULL));
    EXPECT_MESSAGE_HAS("do not fit in memory");
    EXPECT_STATUS(ISOCLIP_ERR_NULL_POINTER, project_f32(p, NULL, o, 4, NULL, DI, y, IMG_M, NULL));
    EXPECT_MESSAGE("isoclip_project: argument `input` must not be NULL");
    EXPECT_STATUS(ISOCLIP_ERR_NULL_POINTER, project_f32(p, NULL, o, 4, x, DI, NULL, IMG_M, NULL));
    EXPECT_MESSAGE("isoclip_project: argument `output` must not be NULL");
    /* NULL options: AUTO modality on a two-modality projector. */
    EXPECT_STATUS(ISOCLIP_ERR_INVALID_ARGUMENT, project_f32(p, NULL, NULL, 4, x, DI, y, IMG_M, NULL));
    EXPECT_MESSAGE_HAS("holds both image and text maps");

    /* Setters refuse unknown values and keep the old one. */
    EXPECT_STATUS(ISOCLIP_ERR_INVALID_ARGUMENT, isoclip_projection_options_set_modality(o, 3));
    EXPECT_STATUS(ISOCLIP_ERR_INVALID_ARGUMENT, isoclip_projection_options_set_input_kind(o, 3));
    EXPECT_STATUS(ISOCLIP_ERR_INVALID_ARGUMENT, isoclip_projection_options_set_form(o, 0));
    EXPECT_STATUS(ISOCLIP_ERR_INVALID_ARGUMENT, isoclip_projection_options_set_nonfinite(o, 0));
    EXPECT_MESSAGE("isoclip_projection_options_set_nonfinite: unknown non-finite policy 0 "
                   "(expected ISOCLIP_NONFINITE_ERROR or _ZERO)");
    EXPECT_OK(project_f32(p, NULL, o, 4, x, DI, y, IMG_M, NULL));
    isoclip_projection_options_free(o);
}

static void test_fit_errors(void) {
    const isoclip_projector *p = NULL;
    isoclip_fit_options *fo = NULL;
    EXPECT_OK(isoclip_fit_options_new(&fo));
    EXPECT_STATUS(ISOCLIP_ERR_INVALID_ARGUMENT,
                  isoclip_projector_fit(P_IMAGE, DI, N, P_TEXT, N, N, fo, &p));
    EXPECT_MESSAGE("isoclip_projector_fit: no modality to fit: set a band with "
                   "isoclip_fit_options_set_band");
    EXPECT_STATUS(ISOCLIP_ERR_INVALID_ARGUMENT,
                  isoclip_fit_options_set_band(fo, ISOCLIP_MODALITY_AUTO, 1, 1));
    EXPECT_OK(isoclip_fit_options_set_band(fo, ISOCLIP_MODALITY_IMAGE, 10, 6));
    EXPECT_STATUS(ISOCLIP_ERR_BAND, isoclip_projector_fit(P_IMAGE, DI, N, P_TEXT, N, N, fo, &p));
    EXPECT_MESSAGE_HAS("isoclip_projector_fit: empty band: k_top 10 + k_bottom 6 = 16");
    /* Band sizes whose sum overflows: an empty band, not a caught panic, and the library prints
     * nothing on the host's stderr. */
    EXPECT_OK(isoclip_fit_options_set_band(fo, ISOCLIP_MODALITY_IMAGE, SIZE_MAX, 1));
    FILE *captured = stderr_capture_begin();
    isoclip_status st = isoclip_projector_fit(P_IMAGE, DI, N, P_TEXT, N, N, fo, &p);
    long printed = stderr_capture_end(captured);
    EXPECT_STATUS(ISOCLIP_ERR_BAND, st);
    EXPECT_MESSAGE_HAS("+ k_bottom 1 = more than the largest size leaves no direction");
    CHECK(printed == 0);
    EXPECT_OK(isoclip_fit_options_set_band(fo, ISOCLIP_MODALITY_IMAGE, 1, 1));
    EXPECT_STATUS(ISOCLIP_ERR_SHAPE, isoclip_projector_fit(P_IMAGE, DI, N, P_TEXT, N, N - 1, fo, &p));
    EXPECT_MESSAGE_HAS("image projector is 20 x 16 (output dim 16), text projector is 16 x 15");
    EXPECT_STATUS(ISOCLIP_ERR_SHAPE, isoclip_projector_fit(P_IMAGE, 0, N, P_TEXT, N, N, fo, &p));
    EXPECT_MESSAGE("isoclip_projector_fit: projectors must be non-empty: image is 0 x 16, text "
                   "is 16 x 16");
    EXPECT_STATUS(ISOCLIP_ERR_INVALID_ARGUMENT,
                  isoclip_projector_fit(P_IMAGE, SIZE_MAX, 2, P_TEXT, N, N, fo, &p));
    EXPECT_MESSAGE_HAS("overflow");
    double bad[DI * N];
    memcpy(bad, P_IMAGE, sizeof bad);
    bad[5] = INFINITY;
    EXPECT_STATUS(ISOCLIP_ERR_NON_FINITE, isoclip_projector_fit(bad, DI, N, P_TEXT, N, N, fo, &p));
    EXPECT_MESSAGE("isoclip_projector_fit: image projector contains a non-finite value (inf) at "
                   "flat index 5");
    EXPECT_STATUS(ISOCLIP_ERR_INVALID_ARGUMENT,
                  isoclip_projector_fit((const double *)((const char *)P_IMAGE + 1), DI, N, P_TEXT,
                                        N, N, fo, &p));
    EXPECT_MESSAGE("isoclip_projector_fit: argument `image` is not aligned to 8 bytes");
    double bias[N + 1];
    for (int i = 0; i <= N; i++) bias[i] = 0.01 * i;
    EXPECT_OK(isoclip_fit_options_set_bias(fo, ISOCLIP_MODALITY_IMAGE, bias, N + 1));
    EXPECT_STATUS(ISOCLIP_ERR_SHAPE, isoclip_projector_fit(P_IMAGE, DI, N, P_TEXT, N, N, fo, &p));
    EXPECT_MESSAGE("isoclip_projector_fit: image bias has 17 entries but the output dimension is 16");
    CHECK(p == NULL);

    /* A bias-augmented projector: fits, but has no embedding route. */
    EXPECT_OK(isoclip_fit_options_set_bias(fo, ISOCLIP_MODALITY_IMAGE, bias, N));
    EXPECT_OK(isoclip_projector_fit(P_IMAGE, DI, N, P_TEXT, N, N, fo, &p));
    size_t dim = 0;
    EXPECT_OK(isoclip_projector_input_dim(p, ISOCLIP_MODALITY_AUTO, ISOCLIP_INPUT_FEATURES, &dim));
    CHECK(dim == DI);
    EXPECT_STATUS(ISOCLIP_ERR_INVALID_ARGUMENT,
                  isoclip_projector_input_dim(p, ISOCLIP_MODALITY_AUTO, ISOCLIP_INPUT_EMBEDDINGS, &dim));
    EXPECT_MESSAGE_HAS("the embedding route is not exact for this model");
    bool has = true;
    EXPECT_OK(isoclip_projector_has_modality(p, ISOCLIP_MODALITY_TEXT, &has));
    CHECK(!has);
    EXPECT_STATUS(ISOCLIP_ERR_INVALID_ARGUMENT,
                  isoclip_projector_output_dim(p, ISOCLIP_MODALITY_TEXT, ISOCLIP_FORM_FULL, &dim));
    EXPECT_MESSAGE("isoclip_projector_output_dim: the projector file holds no text maps (it has: "
                   "image)");
    isoclip_projector_free(p);
    /* len == 0 removes the bias again, with any pointer. */
    EXPECT_OK(isoclip_fit_options_set_bias(fo, ISOCLIP_MODALITY_IMAGE, (const double *)0x8, 0));
    p = NULL;
    EXPECT_OK(isoclip_projector_fit(P_IMAGE, DI, N, P_TEXT, N, N, fo, &p));
    EXPECT_OK(isoclip_projector_input_dim(p, ISOCLIP_MODALITY_AUTO, ISOCLIP_INPUT_EMBEDDINGS, &dim));
    CHECK(dim == N);
    isoclip_projector_free(p);
    isoclip_fit_options_free(fo);
}

static void test_files(const isoclip_projector *fitted, const char *cli_projector, const char *dir) {
    /* The command line's projector: synthetic ViT-B/16 image maps, band 200/50. */
    const isoclip_projector *p = NULL;
    EXPECT_OK(isoclip_projector_load(cli_projector, &p));
    size_t d_in = 0, d = 0, compact = 0, full = 0, top = 0, bottom = 0;
    bool has = true;
    EXPECT_OK(isoclip_projector_input_dim(p, ISOCLIP_MODALITY_AUTO, ISOCLIP_INPUT_FEATURES, &d_in));
    EXPECT_OK(isoclip_projector_input_dim(p, ISOCLIP_MODALITY_IMAGE, ISOCLIP_INPUT_EMBEDDINGS, &d));
    EXPECT_OK(isoclip_projector_output_dim(p, ISOCLIP_MODALITY_AUTO, ISOCLIP_FORM_COMPACT, &compact));
    EXPECT_OK(isoclip_projector_output_dim(p, ISOCLIP_MODALITY_AUTO, ISOCLIP_FORM_FULL, &full));
    EXPECT_OK(isoclip_projector_band(p, ISOCLIP_MODALITY_AUTO, &top, &bottom));
    EXPECT_OK(isoclip_projector_has_modality(p, ISOCLIP_MODALITY_TEXT, &has));
    CHECK(d_in == 768 && d == 512 && compact == 262 && full == 512 && top == 200 && bottom == 50);
    CHECK(!has);

    /* Compact and full outputs have the same inner products (the compact form's promise). */
    enum { ROWS = 6 };
    float *x = malloc(sizeof(float) * ROWS * 768);
    float *yc = malloc(sizeof(float) * ROWS * 262);
    float *yf = malloc(sizeof(float) * ROWS * 512);
    random_rows(x, ROWS, 768, 21);
    isoclip_projection_options *oc =
        make_options(ISOCLIP_MODALITY_AUTO, ISOCLIP_INPUT_FEATURES, ISOCLIP_FORM_COMPACT, true);
    isoclip_projection_options *of =
        make_options(ISOCLIP_MODALITY_AUTO, ISOCLIP_INPUT_FEATURES, ISOCLIP_FORM_FULL, true);
    EXPECT_OK(project_f32(p, NULL, oc, ROWS, x, 768, yc, 262, NULL));
    EXPECT_OK(project_f32(p, NULL, of, ROWS, x, 768, yf, 512, NULL));
    double worst = 0;
    for (int a = 0; a < ROWS; a++)
        for (int b = 0; b < ROWS; b++) {
            double gc = 0, gf = 0;
            for (int j = 0; j < 262; j++) gc += (double)yc[a * 262 + j] * yc[b * 262 + j];
            for (int j = 0; j < 512; j++) gf += (double)yf[a * 512 + j] * yf[b * 512 + j];
            if (fabs(gc - gf) > worst) worst = fabs(gc - gf);
            if (a == b) CHECK(fabs(gc - 1.0) < 1e-5);
        }
    CHECK(worst < 1e-5);
    isoclip_projection_options_free(oc);
    isoclip_projection_options_free(of);
    free(x);
    free(yc);
    free(yf);
    isoclip_projector_free(p);

    /* Save and load: the same projector, the same bytes out. */
    char path[600];
    FORMAT(path, "%s/fitted.st", dir);
    EXPECT_OK(isoclip_projector_save(fitted, path));
    const isoclip_projector *loaded = NULL;
    EXPECT_OK(isoclip_projector_load(path, &loaded));
    char a[65], b[65];
    EXPECT_OK(isoclip_projector_content_digest(fitted, a, sizeof a, NULL));
    EXPECT_OK(isoclip_projector_content_digest(loaded, b, sizeof b, NULL));
    CHECK(strcmp(a, b) == 0);
    float xs[5 * N], y1[5 * N], y2[5 * N];
    random_rows(xs, 5, N, 8);
    isoclip_projection_options *ot =
        make_options(ISOCLIP_MODALITY_TEXT, ISOCLIP_INPUT_FEATURES, ISOCLIP_FORM_FULL, true);
    EXPECT_OK(project_f32(fitted, NULL, ot, 5, xs, N, y1, N, NULL));
    EXPECT_OK(project_f32(loaded, NULL, ot, 5, xs, N, y2, N, NULL));
    CHECK(memcmp(y1, y2, sizeof y1) == 0);
    isoclip_projection_options_free(ot);
    isoclip_projector_free(loaded);

    /* Files that are not projectors. */
    FORMAT(path, "%s/garbage.st", dir);
    FILE *f = fopen(path, "wb");
    fputs("this is not a safetensors file at all", f);
    fclose(f);
    loaded = (const isoclip_projector *)0x1;
    EXPECT_STATUS(ISOCLIP_ERR_FORMAT, isoclip_projector_load(path, &loaded));
    EXPECT_MESSAGE_HAS("not an isoclip projector file");
    CHECK(loaded == (const isoclip_projector *)0x1);
    FORMAT(path, "%s/no-such-dir/p.st", dir);
    EXPECT_STATUS(ISOCLIP_ERR_IO, isoclip_projector_save(fitted, path));
    EXPECT_MESSAGE_HAS("no-such-dir/p.st");
}

static void test_backends(const isoclip_projector *p) {
    const isoclip_backend *b = NULL;
    EXPECT_OK(isoclip_backend_new(NULL, &b));
    isoclip_device device = -1;
    EXPECT_OK(isoclip_backend_device(b, &device));
    CHECK(device == ISOCLIP_DEVICE_CPU);
    char desc[128];
    size_t need = 0;
    EXPECT_OK(isoclip_backend_describe(b, desc, sizeof desc, &need));
    CHECK(strncmp(desc, "cpu (", 5) == 0 && need == strlen(desc) + 1);
    char tiny[4];
    EXPECT_STATUS(ISOCLIP_ERR_BUFFER_TOO_SMALL, isoclip_backend_describe(b, tiny, sizeof tiny, NULL));
    CHECK(strcmp(tiny, "cpu") == 0);
    EXPECT_OK(isoclip_backend_describe(NULL, desc, sizeof desc, NULL)); /* the shared default */
    CHECK(strncmp(desc, "cpu (", 5) == 0);

    isoclip_backend_options *bo = NULL;
    EXPECT_OK(isoclip_backend_options_new(&bo));
    EXPECT_STATUS(ISOCLIP_ERR_INVALID_ARGUMENT, isoclip_backend_options_set_device(bo, 9));
    EXPECT_MESSAGE("isoclip_backend_options_set_device: unknown device 9 (expected "
                   "ISOCLIP_DEVICE_AUTO, _CPU or _CUDA)");
    /* At most 1024 threads; a refused count leaves the previous one. */
    EXPECT_STATUS(ISOCLIP_ERR_INVALID_ARGUMENT, isoclip_backend_options_set_threads(bo, SIZE_MAX));
    EXPECT_MESSAGE_HAS("threads requested; at most 1024 are allowed (0 uses every core)");
    EXPECT_STATUS(ISOCLIP_ERR_INVALID_ARGUMENT, isoclip_backend_options_set_threads(bo, 1025));
    EXPECT_OK(isoclip_backend_options_set_threads(bo, 1));
    const isoclip_backend *one = NULL;
    EXPECT_OK(isoclip_backend_new(bo, &one));
    EXPECT_OK(isoclip_backend_describe(one, desc, sizeof desc, NULL));
    CHECK(strncmp(desc, "cpu (1 threads", 14) == 0);

    /* One thread or many: the same bytes. */
    enum { ROWS = 700 };
    float *x = malloc(sizeof(float) * ROWS * DI);
    uint16_t *y1 = malloc(2 * ROWS * IMG_M), *y2 = malloc(2 * ROWS * IMG_M);
    random_rows(x, ROWS, DI, 99);
    isoclip_projection_options *o =
        make_options(ISOCLIP_MODALITY_IMAGE, ISOCLIP_INPUT_FEATURES, ISOCLIP_FORM_COMPACT, true);
    EXPECT_OK(isoclip_project(p, one, o, ROWS, x, ISOCLIP_DTYPE_F32, DI, DI * 4, y1,
                              ISOCLIP_DTYPE_F16, IMG_M, IMG_M * 2, NULL));
    EXPECT_OK(isoclip_project(p, b, o, ROWS, x, ISOCLIP_DTYPE_F32, DI, DI * 4, y2,
                              ISOCLIP_DTYPE_F16, IMG_M, IMG_M * 2, NULL));
    CHECK(memcmp(y1, y2, 2 * ROWS * IMG_M) == 0);
    isoclip_projection_options_free(o);
    free(x);
    free(y1);
    free(y2);

    /* CUDA: usable or refused with a reason, never anything else. AUTO always works. */
    EXPECT_OK(isoclip_backend_options_set_device(bo, ISOCLIP_DEVICE_CUDA));
    const isoclip_backend *gpu = NULL;
    isoclip_status s = isoclip_backend_new(bo, &gpu);
    CHECK(s == ISOCLIP_OK || s == ISOCLIP_ERR_DEVICE_UNAVAILABLE);
    if (s == ISOCLIP_OK) {
        EXPECT_OK(isoclip_backend_device(gpu, &device));
        CHECK(device == ISOCLIP_DEVICE_CUDA);
        /* The same rows on the GPU (fp16 tensor cores) and the CPU: the same directions. */
        float *xg = malloc(sizeof(float) * ROWS * DI);
        float *yg = malloc(sizeof(float) * ROWS * IMG_M), *yc = malloc(sizeof(float) * ROWS * IMG_M);
        random_rows(xg, ROWS, DI, 123);
        isoclip_projection_options *og =
            make_options(ISOCLIP_MODALITY_IMAGE, ISOCLIP_INPUT_FEATURES, ISOCLIP_FORM_COMPACT, true);
        EXPECT_OK(project_f32(p, gpu, og, ROWS, xg, DI, yg, IMG_M, NULL));
        EXPECT_OK(project_f32(p, NULL, og, ROWS, xg, DI, yc, IMG_M, NULL));
        double worst_cos = 1;
        for (size_t r = 0; r < ROWS; r++) {
            double c = 0;
            for (size_t j = 0; j < IMG_M; j++) c += (double)yg[r * IMG_M + j] * yc[r * IMG_M + j];
            if (!(c >= worst_cos)) worst_cos = c;
        }
        CHECK(worst_cos > 0.999);
        isoclip_projection_options_free(og);
        free(xg);
        free(yg);
        free(yc);
    } else {
        CHECK(gpu == NULL);
        EXPECT_MESSAGE_HAS("isoclip_backend_new: ");
        CHECK(isoclip_last_error_length() > 30);
    }
    isoclip_backend_free(gpu);
    EXPECT_OK(isoclip_backend_options_set_device(bo, ISOCLIP_DEVICE_AUTO));
    const isoclip_backend *any = NULL;
    EXPECT_OK(isoclip_backend_new(bo, &any));
    EXPECT_OK(isoclip_backend_device(any, &device));
    CHECK(device == ISOCLIP_DEVICE_CPU || device == ISOCLIP_DEVICE_CUDA);
    isoclip_backend_free(any);
    isoclip_backend_options_free(bo);
    isoclip_backend_free(one);
    isoclip_backend_free(b);
}

/* ---------------------------------------------------------------------------------------------- */
/* Jobs */

typedef struct {
    int calls;
    uint64_t first_rows_total, last_rows_done, last_shards_done, shards_total;
    int monotonic;
    const isoclip_job *cancel_job; /* cancel at the first chunk when set */
} progress_log;

static void record_progress(void *user, uint64_t rows_done, uint64_t rows_total,
                            uint64_t shards_done, uint64_t shards_total) {
    progress_log *log = user;
    if (log->calls == 0) {
        log->first_rows_total = rows_total;
        log->monotonic = rows_done == 0;
    } else if (rows_done < log->last_rows_done || shards_done < log->last_shards_done) {
        log->monotonic = 0;
    }
    log->calls++;
    log->last_rows_done = rows_done;
    log->last_shards_done = shards_done;
    log->shards_total = shards_total;
    if (log->cancel_job && rows_done > 0) isoclip_job_cancel(log->cancel_job);
}

/* The callback of the cross-thread test: signals the first chunk, then waits for the cancel. */
typedef struct {
    atomic_int started;
    atomic_int cancelled;
    int waited_ok;
} handshake;

static void wait_for_cancel(void *user, uint64_t rows_done, uint64_t rows_total,
                            uint64_t shards_done, uint64_t shards_total) {
    (void)rows_total;
    (void)shards_done;
    (void)shards_total;
    handshake *h = user;
    if (rows_done == 0 || atomic_load(&h->started)) return;
    atomic_store(&h->started, 1);
    for (int i = 0; i < 20000 && !atomic_load(&h->cancelled); i++) {
        struct timespec ts = {0, 1000000};
        nanosleep(&ts, NULL);
    }
    h->waited_ok = atomic_load(&h->cancelled);
}

typedef struct {
    const isoclip_job *job;
    handshake *h;
} canceller_args;

static void *canceller(void *arg) {
    canceller_args *a = arg;
    while (!atomic_load(&a->h->started)) sched_yield();
    isoclip_job_cancel(a->job);
    atomic_store(&a->h->cancelled, 1);
    return NULL;
}

static int count_files(const char *dir, const char *suffix) {
    DIR *d = opendir(dir);
    if (!d) return -1;
    int n = 0;
    struct dirent *e;
    size_t sl = strlen(suffix);
    while ((e = readdir(d)) != NULL) {
        size_t l = strlen(e->d_name);
        if (l >= sl && strcmp(e->d_name + l - sl, suffix) == 0) n++;
    }
    closedir(d);
    return n;
}

/* Compares an output shard's data with isoclip_project of the same rows. */
static void check_shard(const isoclip_projector *p, const char *out_path, const void *rows,
                        isoclip_dtype in_dtype, size_t n) {
    size_t len = 0, data_len = 0;
    unsigned char *file = read_file(out_path, &len);
    CHECK(file != NULL);
    if (!file) return;
    const unsigned char *data = npy_data(file, len, &data_len);
    CHECK(data != NULL && data_len == n * IMG_M * 2);
    uint16_t *want = malloc(n * IMG_M * 2);
    isoclip_projection_options *o =
        make_options(ISOCLIP_MODALITY_IMAGE, ISOCLIP_INPUT_FEATURES, ISOCLIP_FORM_COMPACT, true);
    size_t elem = in_dtype == ISOCLIP_DTYPE_F16 ? 2 : 4;
    EXPECT_OK(isoclip_project(p, NULL, o, n, rows, in_dtype, DI, DI * elem, want,
                              ISOCLIP_DTYPE_F16, IMG_M, IMG_M * 2, NULL));
    CHECK(data && data_len == n * IMG_M * 2 && memcmp(data, want, data_len) == 0);
    isoclip_projection_options_free(o);
    free(want);
    free(file);
}

static int files_equal(const char *a, const char *b) {
    size_t la = 0, lb = 0;
    unsigned char *fa = read_file(a, &la), *fb = read_file(b, &lb);
    int eq = fa && fb && la == lb && memcmp(fa, fb, la) == 0;
    free(fa);
    free(fb);
    return eq;
}

static void test_jobs(const isoclip_projector *fitted, const char *dir, const char *cli) {
    /* Two shards: 300 rows f32 and 200 rows f16, 20 image features. */
    enum { NA = 300, NB = 200 };
    char in[600], out[600], path[700], path2[700];
    FORMAT(in, "%s/in", dir);
    mkdir(in, 0755);
    float *a = malloc(sizeof(float) * NA * DI);
    random_rows(a, NA, DI, 1001);
    uint16_t *b = malloc(2 * NB * DI);
    for (size_t i = 0; i < NB * DI; i++) b[i] = float_to_half((float)rng_uniform(&(uint64_t){i + 7}));
    FORMAT(path, "%s/a.npy", in);
    CHECK(write_npy(path, a, NA, DI, 0) == 0);
    FORMAT(path, "%s/b.npy", in);
    CHECK(write_npy(path, b, NB, DI, 1) == 0);

    /* The projector is freed right after the job is created: the job keeps its own reference. */
    char fitted_path[600];
    FORMAT(fitted_path, "%s/fitted.st", dir); /* written by test_files */
    const isoclip_projector *p = NULL;
    EXPECT_OK(isoclip_projector_load(fitted_path, &p));
    isoclip_projection_options *po =
        make_options(ISOCLIP_MODALITY_IMAGE, ISOCLIP_INPUT_FEATURES, ISOCLIP_FORM_COMPACT, true);
    isoclip_job_options *jo = NULL;
    EXPECT_OK(isoclip_job_options_new(&jo));
    EXPECT_OK(isoclip_job_options_set_chunk_bytes(jo, 1)); /* 128-row chunks */
    progress_log log = {0};
    EXPECT_OK(isoclip_job_options_set_progress(jo, record_progress, &log));
    FORMAT(out, "%s/out", dir);
    isoclip_job *job = NULL;
    EXPECT_OK(isoclip_job_new(p, NULL, po, jo, in, out, &job));
    isoclip_projector_free(p);
    uint64_t v = 0;
    EXPECT_STATUS(ISOCLIP_ERR_INVALID_STATE, isoclip_job_stat(job, ISOCLIP_JOB_STAT_ROWS_PROCESSED, &v));
    EXPECT_MESSAGE("isoclip_job_stat: the job has not finished a run successfully");
    EXPECT_OK(isoclip_job_run(job));
    /* start, 3 + 2 chunks, 2 shards */
    CHECK(log.calls == 8);
    CHECK(log.monotonic);
    CHECK(log.first_rows_total == NA + NB && log.last_rows_done == NA + NB);
    CHECK(log.last_shards_done == 2 && log.shards_total == 2);
    EXPECT_OK(isoclip_job_stat(job, ISOCLIP_JOB_STAT_ROWS_PROCESSED, &v));
    CHECK(v == NA + NB);
    EXPECT_OK(isoclip_job_stat(job, ISOCLIP_JOB_STAT_SHARDS_PROCESSED, &v));
    CHECK(v == 2);
    EXPECT_OK(isoclip_job_stat(job, ISOCLIP_JOB_STAT_SHARDS_SKIPPED, &v));
    CHECK(v == 0);
    EXPECT_OK(isoclip_job_stat(job, ISOCLIP_JOB_STAT_BYTES_READ, &v));
    CHECK(v == NA * DI * 4 + NB * DI * 2);
    EXPECT_STATUS(ISOCLIP_ERR_INVALID_ARGUMENT, isoclip_job_stat(job, 0, &v));
    EXPECT_MESSAGE("isoclip_job_stat: unknown job statistic 0 (expected an ISOCLIP_JOB_STAT_* value)");
    size_t need = 0;
    EXPECT_STATUS(ISOCLIP_ERR_BUFFER_TOO_SMALL, isoclip_job_summary_json(job, NULL, 0, &need));
    char *json = malloc(need);
    EXPECT_OK(isoclip_job_summary_json(job, json, need, NULL));
    CHECK(strstr(json, "\"rows_processed\":500") != NULL);
    CHECK(strstr(json, "\"form\":\"compact\"") != NULL);
    free(json);

    FORMAT(path, "%s/a.npy", out);
    check_shard(fitted, path, a, ISOCLIP_DTYPE_F32, NA);
    FORMAT(path, "%s/b.npy", out);
    check_shard(fitted, path, b, ISOCLIP_DTYPE_F16, NB);

    /* A rerun skips both shards. */
    memset(&log, 0, sizeof log);
    EXPECT_OK(isoclip_job_run(job));
    EXPECT_OK(isoclip_job_stat(job, ISOCLIP_JOB_STAT_SHARDS_SKIPPED, &v));
    CHECK(v == 2);
    EXPECT_OK(isoclip_job_stat(job, ISOCLIP_JOB_STAT_ROWS_SKIPPED, &v));
    CHECK(v == NA + NB);
    CHECK(log.calls == 1 && log.first_rows_total == 0);
    isoclip_job_free(job);

    /* The same job through the command line writes the same files. */
    char cmd[2400];
    FORMAT(cmd, "'%s' project --projector '%s' --modality image --input '%s' --output '%s/cli' --quiet > /dev/null",
             cli, fitted_path, in, dir);
    CHECK(system(cmd) == 0);
    for (int k = 0; k < 2; k++) {
        FORMAT(path, "%s/%s", out, k ? "b.npy" : "a.npy");
        FORMAT(path2, "%s/cli/%s", dir, k ? "b.npy" : "a.npy");
        CHECK(files_equal(path, path2));
    }

    /* Cancelled from the progress callback: nothing half-written is left; cancellation sticks;
     * a new job resumes. */
    FORMAT(out, "%s/out2", dir);
    memset(&log, 0, sizeof log);
    EXPECT_OK(isoclip_job_new(fitted, NULL, po, jo, in, out, &job));
    log.cancel_job = job;
    EXPECT_STATUS(ISOCLIP_ERR_CANCELLED, isoclip_job_run(job));
    EXPECT_MESSAGE("isoclip_job_run: cancelled");
    CHECK(count_files(out, ".npy") == 0);
    CHECK(count_files(out, ".isoclip-tmp") == 0);
    EXPECT_STATUS(ISOCLIP_ERR_CANCELLED, isoclip_job_run(job));
    EXPECT_STATUS(ISOCLIP_ERR_INVALID_STATE, isoclip_job_stat(job, ISOCLIP_JOB_STAT_ROWS_PROCESSED, &v));
    isoclip_job_free(job);
    log.cancel_job = NULL;
    EXPECT_OK(isoclip_job_new(fitted, NULL, po, jo, in, out, &job));
    EXPECT_OK(isoclip_job_run(job));
    EXPECT_OK(isoclip_job_stat(job, ISOCLIP_JOB_STAT_SHARDS_PROCESSED, &v));
    CHECK(v == 2);
    isoclip_job_free(job);
    FORMAT(path, "%s/out/a.npy", dir);
    FORMAT(path2, "%s/out2/a.npy", dir);
    CHECK(files_equal(path, path2));

    /* Cancelled from another thread while running. */
    FORMAT(out, "%s/out3", dir);
    handshake h;
    atomic_init(&h.started, 0);
    atomic_init(&h.cancelled, 0);
    h.waited_ok = 0;
    EXPECT_OK(isoclip_job_options_set_progress(jo, wait_for_cancel, &h));
    EXPECT_OK(isoclip_job_new(fitted, NULL, po, jo, in, out, &job));
    pthread_t t;
    canceller_args ca = {job, &h};
    CHECK(pthread_create(&t, NULL, canceller, &ca) == 0);
    EXPECT_STATUS(ISOCLIP_ERR_CANCELLED, isoclip_job_run(job));
    pthread_join(t, NULL);
    CHECK(h.waited_ok);
    CHECK(count_files(out, ".npy") == 0 && count_files(out, ".isoclip-tmp") == 0);
    isoclip_job_free(job);

    /* Cancelled before it runs. */
    EXPECT_OK(isoclip_job_options_set_progress(jo, NULL, NULL));
    EXPECT_OK(isoclip_job_new(fitted, NULL, po, jo, in, out, &job));
    EXPECT_OK(isoclip_job_cancel(job));
    EXPECT_STATUS(ISOCLIP_ERR_CANCELLED, isoclip_job_run(job));
    isoclip_job_free(job);

    /* f32 output and overwrite. */
    EXPECT_OK(isoclip_job_options_set_output_dtype(jo, ISOCLIP_DTYPE_F32));
    EXPECT_OK(isoclip_job_options_set_overwrite(jo, true));
    EXPECT_STATUS(ISOCLIP_ERR_INVALID_ARGUMENT, isoclip_job_options_set_output_dtype(jo, 3));
    FORMAT(out, "%s/out", dir);
    EXPECT_OK(isoclip_job_new(fitted, NULL, po, jo, in, out, &job));
    EXPECT_OK(isoclip_job_run(job));
    EXPECT_OK(isoclip_job_stat(job, ISOCLIP_JOB_STAT_BYTES_WRITTEN, &v));
    FORMAT(path, "%s/a.npy", out);
    size_t len = 0;
    unsigned char *file = read_file(path, &len);
    size_t data_len = 0;
    CHECK(file && npy_data(file, len, &data_len) && data_len == NA * IMG_M * 4);
    free(file);
    EXPECT_OK(isoclip_job_stat(job, ISOCLIP_JOB_STAT_SHARDS_SKIPPED, &v));
    CHECK(v == 0);
    isoclip_job_free(job);
    EXPECT_OK(isoclip_job_options_set_output_dtype(jo, ISOCLIP_DTYPE_F16));
    EXPECT_OK(isoclip_job_options_set_overwrite(jo, false));

    /* Errors: at creation (options against the projector), and at run (the files). */
    isoclip_projection_options *auto_o = NULL;
    EXPECT_OK(isoclip_projection_options_new(&auto_o));
    EXPECT_STATUS(ISOCLIP_ERR_INVALID_ARGUMENT, isoclip_job_new(fitted, NULL, auto_o, jo, in, out, &job));
    EXPECT_MESSAGE_HAS("holds both image and text maps");
    isoclip_projection_options_free(auto_o);
    EXPECT_STATUS(ISOCLIP_ERR_NULL_POINTER, isoclip_job_new(fitted, NULL, po, jo, NULL, out, &job));
    EXPECT_MESSAGE("isoclip_job_new: argument `input` must not be NULL");

    FORMAT(path, "%s/missing", dir);
    EXPECT_OK(isoclip_job_new(fitted, NULL, po, jo, path, out, &job));
    EXPECT_STATUS(ISOCLIP_ERR_IO, isoclip_job_run(job));
    EXPECT_MESSAGE_HAS("missing: No such file or directory");
    isoclip_job_free(job);

    char bad[600];
    FORMAT(bad, "%s/bad", dir);
    mkdir(bad, 0755);
    FORMAT(path, "%s/narrow.npy", bad);
    CHECK(write_npy(path, a, 10, DI - 1, 0) == 0);
    EXPECT_OK(isoclip_job_new(fitted, NULL, po, jo, path, out, &job));
    EXPECT_STATUS(ISOCLIP_ERR_SHAPE, isoclip_job_run(job));
    EXPECT_MESSAGE_HAS("narrow.npy: rows have 19 dimensions but the projector expects image "
                       "features of dimension 20 (pre-projection)");
    isoclip_job_free(job);

    float nan_rows[8 * DI];
    random_rows(nan_rows, 8, DI, 4);
    nan_rows[5 * DI + 3] = NAN;
    FORMAT(path, "%s/nan.npy", bad);
    CHECK(write_npy(path, nan_rows, 8, DI, 0) == 0);
    FORMAT(out, "%s/out-nan", dir);
    EXPECT_OK(isoclip_job_new(fitted, NULL, po, jo, path, out, &job));
    /* The status of the row error (the error model's root), the shard named in the message. */
    EXPECT_STATUS(ISOCLIP_ERR_NON_FINITE_ROW, isoclip_job_run(job));
    EXPECT_MESSAGE_HAS("nan.npy: row 5 contains NaN or Inf");
    isoclip_job_free(job);

    FORMAT(out, "%s/inner", in);
    EXPECT_OK(isoclip_job_new(fitted, NULL, po, jo, in, out, &job));
    EXPECT_STATUS(ISOCLIP_ERR_INVALID_ARGUMENT, isoclip_job_run(job));
    EXPECT_MESSAGE_HAS("is inside (or equal to) the input directory");
    isoclip_job_free(job);

    isoclip_job_options_free(jo);
    isoclip_projection_options_free(po);
    free(a);
    free(b);
}

int main(int argc, char **argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: %s PROJECTOR_FILE ISOCLIP_CLI\n", argv[0]);
        return 2;
    }
    build_model();
    char *dir = make_temp_dir();
    if (!dir) {
        perror("mkdtemp");
        return 2;
    }
    test_versions();
    test_error_protocol();
    test_null_arguments_and_free();
    const isoclip_projector *p = fit_model();
    test_fit_and_queries(p);
    test_projection_reference(p);
    test_projection_views(p);
    test_projection_errors(p);
    test_fit_errors();
    test_files(p, argv[1], dir);
    test_backends(p);
    test_jobs(p, dir, argv[2]);
    isoclip_projector_free(p);
    remove_tree(dir);
    free(dir);
    return finish("test_api");
}
