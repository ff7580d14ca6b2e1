/* The ABI 1.0 additions: the default backend's thread count and its survival across fork(), the
 * size-tagged projection stats, the device index, cancellable projections, the OS error code, size
 * queries that keep the last error, reading a projection's matrix, loading a projector from
 * memory, which calls give bit-identical rows, and the precision of projections and jobs.
 *
 * Usage: test_abi PROJECTOR_FILE
 *   PROJECTOR_FILE  from `isoclip fit -o FILE` (the built-in synthetic ViT-B/16 model, image:
 *                   768 features -> 262 compact / 512 full dims, no bias)
 */
#include "test_util.h"

#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdatomic.h>
#include <sys/wait.h>
#include <time.h>

/* The shapes of the projector file. */
#define D_IN 768
#define D_COMPACT 262
#define D_FULL 512

static void random_rows(float *x, size_t rows, size_t cols, uint64_t seed) {
    for (size_t i = 0; i < rows * cols; i++) x[i] = (float)rng_uniform(&seed);
}

static const isoclip_projector *load(const char *path) {
    const isoclip_projector *p = NULL;
    EXPECT_OK(isoclip_projector_load(path, &p));
    return p;
}

/* Dense f32 -> f32 projection with the default options and backend. */
static isoclip_status project(const isoclip_projector *p, const isoclip_projection_options *o,
                              size_t rows, const float *x, size_t in_cols, float *y,
                              size_t out_cols) {
    return isoclip_project(p, NULL, o, rows, x, ISOCLIP_DTYPE_F32, in_cols, in_cols * 4, y,
                           ISOCLIP_DTYPE_F32, out_cols, out_cols * 4, NULL);
}

/* A small image projector (6 features -> 5 dims, band 1/1: 3 compact dims), with or without a
 * bias, for tests that need many rows (valgrind runs them too). */
enum { SMALL_IN = 6, SMALL_D = 5, SMALL_COMPACT = 3 };

static const isoclip_projector *fit_small(int with_bias) {
    double pi[SMALL_IN * SMALL_D], pt[SMALL_D * SMALL_D], bias[SMALL_D];
    uint64_t seed = 3;
    for (int i = 0; i < SMALL_IN * SMALL_D; i++) pi[i] = rng_uniform(&seed);
    for (int i = 0; i < SMALL_D * SMALL_D; i++) pt[i] = rng_uniform(&seed);
    for (int i = 0; i < SMALL_D; i++) bias[i] = rng_uniform(&seed);
    isoclip_fit_options *fo = NULL;
    EXPECT_OK(isoclip_fit_options_new(&fo));
    EXPECT_OK(isoclip_fit_options_set_band(fo, ISOCLIP_MODALITY_IMAGE, 1, 1));
    if (with_bias) EXPECT_OK(isoclip_fit_options_set_bias(fo, ISOCLIP_MODALITY_IMAGE, bias, SMALL_D));
    const isoclip_projector *p = NULL;
    EXPECT_OK(isoclip_projector_fit(pi, SMALL_IN, SMALL_D, pt, SMALL_D, SMALL_D, fo, &p));
    isoclip_fit_options_free(fo);
    return p;
}

/* ---------------------------------------------------------------------------------------------- */

static void test_versions(void) {
    CHECK(ISOCLIP_ABI_VERSION_MAJOR == 1);
    CHECK(isoclip_abi_version() == ISOCLIP_ABI_VERSION);
    CHECK(ISOCLIP_ABI_VERSION == 1000 + ISOCLIP_ABI_VERSION_MINOR);
    CHECK(ISOCLIP_ABI_COMPATIBLE(isoclip_abi_version()));
    /* A newer minor runs this program; an older minor or another major does not. */
    CHECK(ISOCLIP_ABI_COMPATIBLE(ISOCLIP_ABI_VERSION + 1));
    CHECK(!ISOCLIP_ABI_COMPATIBLE(2000 + ISOCLIP_ABI_VERSION_MINOR));
    CHECK(!ISOCLIP_ABI_COMPATIBLE(ISOCLIP_ABI_VERSION_MINOR));
    CHECK(ISOCLIP_ERR_UNREPRESENTABLE == 16 && ISOCLIP_ERR_RESOURCE_EXHAUSTED == 17);
}

/* Must run before anything uses the default backend. */
static void test_default_threads(void) {
    EXPECT_OK(isoclip_set_default_threads(2));
    char desc[128];
    EXPECT_OK(isoclip_backend_describe(NULL, desc, sizeof desc, NULL));
    CHECK(strncmp(desc, "cpu (2 threads", 14) == 0);
    EXPECT_STATUS(ISOCLIP_ERR_INVALID_STATE, isoclip_set_default_threads(3));
    EXPECT_MESSAGE("isoclip_set_default_threads: the default backend already exists (an earlier "
                   "call used a NULL backend): set its threads before the first such call, or "
                   "pass a backend of your own made with isoclip_backend_new");
    EXPECT_OK(isoclip_backend_describe(NULL, desc, sizeof desc, NULL));
    CHECK(strncmp(desc, "cpu (2 threads", 14) == 0);
}

/* The child of a fork projects with the default backend (whose threads the child lacks) and may
 * size it anew. Before ABI 1.0 the child waited forever for rayon's pool. */
static void test_fork(const isoclip_projector *p) {
    enum { ROWS = 300 };
    float *x = malloc(sizeof(float) * ROWS * D_IN), *y = malloc(sizeof(float) * ROWS * D_COMPACT);
    float *want = malloc(sizeof(float) * ROWS * D_COMPACT);
    random_rows(x, ROWS, D_IN, 11);
    EXPECT_OK(project(p, NULL, ROWS, x, D_IN, want, D_COMPACT));
    fflush(NULL);
    pid_t child = fork();
    if (child == 0) {
        int ok = isoclip_set_default_threads(1) == ISOCLIP_OK;
        ok &= project(p, NULL, ROWS, x, D_IN, y, D_COMPACT) == ISOCLIP_OK;
        ok &= memcmp(y, want, sizeof(float) * ROWS * D_COMPACT) == 0;
        char desc[128];
        ok &= isoclip_backend_describe(NULL, desc, sizeof desc, NULL) == ISOCLIP_OK;
        ok &= strncmp(desc, "cpu (1 threads", 14) == 0;
        /* Leave through exec, not exit: under valgrind the child's leak check would report the
         * parent's threads' memory, which the child cannot free, as lost. */
        execl("/bin/sh", "sh", "-c", ok ? "exit 0" : "exit 3", (char *)NULL);
        _exit(4);
    }
    CHECK(child > 0);
    /* Wait up to 120 s (valgrind is slow), then kill a hung child. */
    int status = -1;
    pid_t done = 0;
    for (int i = 0; i < 1200 && done == 0; i++) {
        done = waitpid(child, &status, WNOHANG);
        if (done == 0) {
            struct timespec t = {0, 100 * 1000 * 1000};
            nanosleep(&t, NULL);
        }
    }
    if (done == 0) {
        fprintf(stderr, "the forked child hangs\n");
        kill(child, SIGKILL);
        waitpid(child, &status, 0);
    }
    CHECK(done == child && WIFEXITED(status) && WEXITSTATUS(status) == 0);
    /* The parent's default backend is untouched. */
    EXPECT_OK(project(p, NULL, ROWS, x, D_IN, y, D_COMPACT));
    CHECK(memcmp(y, want, sizeof(float) * ROWS * D_COMPACT) == 0);
    free(x);
    free(y);
    free(want);
}

/* A caller of a later 1.x may pass a longer struct: this library writes its own fields only. */
typedef struct {
    isoclip_projection_stats stats;
    uint64_t field_of_a_later_version;
} later_stats;

static void test_stats_struct_size(const isoclip_projector *p) {
    float x[3 * D_IN], y[3 * D_COMPACT];
    random_rows(x, 3, D_IN, 5);
    memset(x + D_IN, 0, sizeof(float) * D_IN); /* row 1: zero norm */
    isoclip_projection_stats stats = ISOCLIP_PROJECTION_STATS_INIT;
    CHECK(stats.struct_size == sizeof(isoclip_projection_stats) && stats.struct_size == 24);
    EXPECT_OK(isoclip_project(p, NULL, NULL, 3, x, ISOCLIP_DTYPE_F32, D_IN, D_IN * 4, y,
                              ISOCLIP_DTYPE_F32, D_COMPACT, D_COMPACT * 4, &stats));
    CHECK(stats.struct_size == 24 && stats.zero_norm_rows == 1 && stats.nonfinite_rows == 0);

    /* Not initialised: refused before any work. */
    isoclip_projection_stats bad = {0, 77, 77};
    EXPECT_STATUS(ISOCLIP_ERR_INVALID_ARGUMENT,
                  isoclip_project(p, NULL, NULL, 3, x, ISOCLIP_DTYPE_F32, D_IN, D_IN * 4, y,
                                  ISOCLIP_DTYPE_F32, D_COMPACT, D_COMPACT * 4, &bad));
    EXPECT_MESSAGE("isoclip_project: stats->struct_size is 0, less than the 24 bytes of "
                   "isoclip_projection_stats: initialise it with ISOCLIP_PROJECTION_STATS_INIT");
    CHECK(bad.zero_norm_rows == 77 && bad.nonfinite_rows == 77);
    bad.struct_size = 16;
    EXPECT_STATUS(ISOCLIP_ERR_INVALID_ARGUMENT,
                  isoclip_project(p, NULL, NULL, 3, x, ISOCLIP_DTYPE_F32, D_IN, D_IN * 4, y,
                                  ISOCLIP_DTYPE_F32, D_COMPACT, D_COMPACT * 4, &bad));

    /* A longer struct: the known fields are written, the rest is left alone, whether or not
     * struct_size covers it. */
    later_stats later = {ISOCLIP_PROJECTION_STATS_INIT, 0xABCDEF};
    later.stats.struct_size = sizeof later;
    EXPECT_OK(isoclip_project(p, NULL, NULL, 3, x, ISOCLIP_DTYPE_F32, D_IN, D_IN * 4, y,
                              ISOCLIP_DTYPE_F32, D_COMPACT, D_COMPACT * 4, &later.stats));
    CHECK(later.stats.struct_size == sizeof later && later.stats.zero_norm_rows == 1);
    CHECK(later.field_of_a_later_version == 0xABCDEF);
}

static void test_device_index(void) {
    isoclip_backend_options *bo = NULL;
    EXPECT_OK(isoclip_backend_options_new(&bo));
    EXPECT_STATUS(ISOCLIP_ERR_INVALID_ARGUMENT, isoclip_backend_options_set_device_index(bo, -2));
    EXPECT_MESSAGE("isoclip_backend_options_set_device_index: device index -2 is negative "
                   "(expected ISOCLIP_DEVICE_INDEX_ALL or an index from 0)");
    EXPECT_STATUS(ISOCLIP_ERR_NULL_POINTER, isoclip_backend_options_set_device_index(NULL, 0));
    const isoclip_backend *b = (const isoclip_backend *)0x1;
    EXPECT_OK(isoclip_backend_options_set_threads(bo, 1));
    EXPECT_OK(isoclip_backend_options_set_device_index(bo, 1));
    EXPECT_STATUS(ISOCLIP_ERR_INVALID_ARGUMENT, isoclip_backend_new(bo, &b));
    EXPECT_MESSAGE("isoclip_backend_new: device index 1 with the CPU: the CPU is device 0 (or use "
                   "ISOCLIP_DEVICE_INDEX_ALL)");
    CHECK(b == (const isoclip_backend *)0x1);
    for (int32_t index = ISOCLIP_DEVICE_INDEX_ALL; index <= 0; index++) {
        EXPECT_OK(isoclip_backend_options_set_device_index(bo, index));
        b = NULL;
        EXPECT_OK(isoclip_backend_new(bo, &b));
        isoclip_device device = -1;
        EXPECT_OK(isoclip_backend_device(b, &device));
        CHECK(device == ISOCLIP_DEVICE_CPU);
        isoclip_backend_free(b);
    }
    /* One GPU by index: a GPU that is not there is unavailable (no machine has 10000)... */
    EXPECT_OK(isoclip_backend_options_set_device(bo, ISOCLIP_DEVICE_CUDA));
    EXPECT_OK(isoclip_backend_options_set_device_index(bo, 9999));
    b = NULL;
    EXPECT_STATUS(ISOCLIP_ERR_DEVICE_UNAVAILABLE, isoclip_backend_new(bo, &b));
    CHECK(b == NULL);
    /* ...and AUTO falls back to the CPU then. */
    EXPECT_OK(isoclip_backend_options_set_device(bo, ISOCLIP_DEVICE_AUTO));
    EXPECT_OK(isoclip_backend_new(bo, &b));
    isoclip_device device = -1;
    EXPECT_OK(isoclip_backend_device(b, &device));
    CHECK(device == ISOCLIP_DEVICE_CPU);
    isoclip_backend_free(b);
    isoclip_backend_options_free(bo);
}

static void test_cancel(void) {
    /* Three slices of 65536 rows and a partial fourth. */
    enum { ROWS = 3 * 65536 + 1000, IN = SMALL_IN, OUT = SMALL_COMPACT };
    const isoclip_projector *p = fit_small(0);
    float *x = malloc(sizeof(float) * ROWS * IN);
    uint16_t *y1 = malloc(2 * (size_t)ROWS * OUT), *y2 = malloc(2 * (size_t)ROWS * OUT);
    random_rows(x, ROWS, IN, 21);
    memset(x + 70000 * IN, 0, sizeof(float) * IN); /* a zero row in the second slice */
    isoclip_cancel_token *t = NULL;
    EXPECT_OK(isoclip_cancel_token_new(&t));
    isoclip_projection_stats s1 = ISOCLIP_PROJECTION_STATS_INIT, s2 = ISOCLIP_PROJECTION_STATS_INIT;
    EXPECT_OK(isoclip_project(p, NULL, NULL, ROWS, x, ISOCLIP_DTYPE_F32, IN, IN * 4, y1,
                              ISOCLIP_DTYPE_F16, OUT, OUT * 2, &s1));
    EXPECT_OK(isoclip_project_with_cancel(p, NULL, NULL, ROWS, x, ISOCLIP_DTYPE_F32, IN, IN * 4,
                                          y2, ISOCLIP_DTYPE_F16, OUT, OUT * 2, &s2, t));
    /* Slicing changes no byte, and the counts add up over the slices. */
    CHECK(memcmp(y1, y2, 2 * (size_t)ROWS * OUT) == 0);
    CHECK(s1.zero_norm_rows == 1 && s2.zero_norm_rows == 1 && s2.nonfinite_rows == 0);
    EXPECT_OK(isoclip_project_with_cancel(p, NULL, NULL, ROWS, x, ISOCLIP_DTYPE_F32, IN, IN * 4,
                                          y2, ISOCLIP_DTYPE_F16, OUT, OUT * 2, NULL, NULL));
    CHECK(memcmp(y1, y2, 2 * (size_t)ROWS * OUT) == 0);

    /* A row error in a later slice names the row of the call. */
    x[(size_t)(2 * 65536 + 7) * IN + 3] = NAN;
    EXPECT_STATUS(ISOCLIP_ERR_NON_FINITE_ROW,
                  isoclip_project_with_cancel(p, NULL, NULL, ROWS, x, ISOCLIP_DTYPE_F32, IN, IN * 4,
                                              y2, ISOCLIP_DTYPE_F16, OUT, OUT * 2, NULL, t));
    EXPECT_MESSAGE_HAS("isoclip_project_with_cancel: row 131079 contains NaN or Inf");

    /* Cancelled: the call stops before projecting and does not write stats. */
    EXPECT_OK(isoclip_cancel_token_cancel(t));
    isoclip_projection_stats s3 = {sizeof s3, 5, 5};
    EXPECT_STATUS(ISOCLIP_ERR_CANCELLED,
                  isoclip_project_with_cancel(p, NULL, NULL, ROWS, x, ISOCLIP_DTYPE_F32, IN, IN * 4,
                                              y2, ISOCLIP_DTYPE_F16, OUT, OUT * 2, &s3, t));
    EXPECT_MESSAGE("isoclip_project_with_cancel: cancelled");
    CHECK(s3.zero_norm_rows == 5);
    /* Shapes are still checked first. */
    EXPECT_STATUS(ISOCLIP_ERR_SHAPE,
                  isoclip_project_with_cancel(p, NULL, NULL, 1, x, ISOCLIP_DTYPE_F32, IN, IN * 4,
                                              y2, ISOCLIP_DTYPE_F16, OUT + 1, OUT * 2 + 2, NULL, t));
    EXPECT_STATUS(ISOCLIP_ERR_NULL_POINTER, isoclip_cancel_token_cancel(NULL));
    EXPECT_STATUS(ISOCLIP_ERR_NULL_POINTER, isoclip_cancel_token_new(NULL));
    isoclip_cancel_token_free(t);
    isoclip_cancel_token_free(NULL);
    isoclip_projector_free(p);
    free(x);
    free(y1);
    free(y2);
}

/* Cancelled from another thread while projecting over and over: the next check sees it. */
typedef struct {
    isoclip_cancel_token *token;
    atomic_int started;
} canceller_arg;

static void *cancel_soon(void *arg) {
    canceller_arg *a = arg;
    while (!atomic_load(&a->started)) sched_yield();
    struct timespec t = {0, 20 * 1000 * 1000};
    nanosleep(&t, NULL);
    isoclip_cancel_token_cancel(a->token);
    return NULL;
}

static void test_cancel_from_another_thread(void) {
    enum { ROWS = 70000 };
    const isoclip_projector *p = fit_small(0);
    float *x = malloc(sizeof(float) * ROWS * SMALL_IN);
    uint16_t *y = malloc(2 * (size_t)ROWS * SMALL_COMPACT);
    random_rows(x, ROWS, SMALL_IN, 8);
    canceller_arg a = {NULL, 0};
    EXPECT_OK(isoclip_cancel_token_new(&a.token));
    pthread_t thread;
    CHECK(pthread_create(&thread, NULL, cancel_soon, &a) == 0);
    isoclip_status s = ISOCLIP_OK;
    for (int i = 0; i < 100000 && s == ISOCLIP_OK; i++) {
        atomic_store(&a.started, 1);
        s = isoclip_project_with_cancel(p, NULL, NULL, ROWS, x, ISOCLIP_DTYPE_F32, SMALL_IN,
                                        SMALL_IN * 4, y, ISOCLIP_DTYPE_F16, SMALL_COMPACT,
                                        SMALL_COMPACT * 2, NULL, a.token);
    }
    CHECK(s == ISOCLIP_ERR_CANCELLED);
    pthread_join(thread, NULL);
    isoclip_cancel_token_free(a.token);
    isoclip_projector_free(p);
    free(x);
    free(y);
}

static void test_os_code_and_size_queries(const isoclip_projector *p) {
    CHECK(isoclip_last_error_os_code() == 0 || isoclip_last_error_length() > 1);
    const isoclip_projector *q = NULL;
    EXPECT_STATUS(ISOCLIP_ERR_IO, isoclip_projector_load("/nonexistent/dir/p.st", &q));
    CHECK(isoclip_last_error_os_code() == ENOENT);
    const char *full =
        "isoclip_projector_load: /nonexistent/dir/p.st: No such file or directory (os error 2)";
    EXPECT_MESSAGE(full);

    /* Size queries of any string function keep the last error, message and code. */
    size_t need = 0;
    EXPECT_STATUS(ISOCLIP_ERR_BUFFER_TOO_SMALL, isoclip_projector_fingerprint(p, NULL, 0, &need));
    CHECK(need == 65);
    EXPECT_STATUS(ISOCLIP_ERR_BUFFER_TOO_SMALL, isoclip_backend_describe(NULL, NULL, 0, &need));
    EXPECT_STATUS(ISOCLIP_ERR_BUFFER_TOO_SMALL, isoclip_last_error_message(NULL, 0, &need));
    CHECK(need == strlen(full) + 1);
    EXPECT_MESSAGE(full);
    CHECK(isoclip_last_error_os_code() == ENOENT);

    /* A failure that is not the OS's resets the code. */
    EXPECT_STATUS(ISOCLIP_ERR_NULL_POINTER, isoclip_projector_load(NULL, &q));
    CHECK(isoclip_last_error_os_code() == 0);
    /* A buffer that is too small (not a size query) is a failure like any other. */
    char small[8];
    EXPECT_STATUS(ISOCLIP_ERR_BUFFER_TOO_SMALL,
                  isoclip_projector_fingerprint(p, small, sizeof small, NULL));
    EXPECT_MESSAGE_HAS("isoclip_projector_fingerprint: the buffer for the fingerprint holds 8");
}

/* y = x W (+ b), then normalised, in double. */
static void apply_matrix(const float *x, size_t rows, const float *w, const float *b, size_t d_in,
                         size_t d_out, float *y) {
    for (size_t r = 0; r < rows; r++) {
        double norm = 0;
        double *acc = calloc(d_out, sizeof(double));
        for (size_t i = 0; i < d_in; i++)
            for (size_t j = 0; j < d_out; j++) acc[j] += (double)x[r * d_in + i] * w[i * d_out + j];
        for (size_t j = 0; j < d_out; j++) {
            if (b) acc[j] += b[j];
            norm += acc[j] * acc[j];
        }
        norm = sqrt(norm);
        for (size_t j = 0; j < d_out; j++) y[r * d_out + j] = (float)(acc[j] / norm);
        free(acc);
    }
}

static double max_diff(const float *a, const float *b, size_t n) {
    double worst = 0;
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)a[i] - b[i]);
        if (!(d <= worst)) worst = d;
    }
    return worst;
}

static void test_matrix(const isoclip_projector *p) {
    enum { ROWS = 5 };
    float x[ROWS * D_IN];
    random_rows(x, ROWS, D_IN, 77);
    const isoclip_form forms[2] = {ISOCLIP_FORM_COMPACT, ISOCLIP_FORM_FULL};
    for (int f = 0; f < 2; f++) {
        size_t d_out = 0;
        EXPECT_OK(isoclip_projector_output_dim(p, ISOCLIP_MODALITY_AUTO, forms[f], &d_out));
        float *w = malloc(sizeof(float) * D_IN * d_out), *bias = malloc(sizeof(float) * d_out);
        float *want = malloc(sizeof(float) * ROWS * d_out), *got = malloc(sizeof(float) * ROWS * d_out);
        bias[0] = 42;
        EXPECT_OK(isoclip_projector_matrix(p, ISOCLIP_MODALITY_AUTO, ISOCLIP_INPUT_FEATURES,
                                           forms[f], w, D_IN, d_out, bias));
        CHECK(bias[0] == 0.0f); /* no bias: zeros */
        EXPECT_OK(isoclip_projector_matrix(p, ISOCLIP_MODALITY_IMAGE, ISOCLIP_INPUT_FEATURES,
                                           forms[f], w, D_IN, d_out, NULL));
        isoclip_projection_options *o = NULL;
        EXPECT_OK(isoclip_projection_options_new(&o));
        EXPECT_OK(isoclip_projection_options_set_form(o, forms[f]));
        EXPECT_OK(project(p, o, ROWS, x, D_IN, want, d_out));
        apply_matrix(x, ROWS, w, NULL, D_IN, d_out, got);
        double d = max_diff(got, want, ROWS * d_out);
        if (d > 1e-6) fprintf(stderr, "matrix form %d: max |diff| %g\n", f, d);
        CHECK(d <= 1e-6);
        isoclip_projection_options_free(o);
        free(w);
        free(bias);
        free(want);
        free(got);
    }
    float w[4];
    EXPECT_STATUS(ISOCLIP_ERR_SHAPE, isoclip_projector_matrix(p, ISOCLIP_MODALITY_AUTO,
                                                               ISOCLIP_INPUT_FEATURES,
                                                               ISOCLIP_FORM_COMPACT, w, 2, 2, NULL));
    EXPECT_MESSAGE("isoclip_projector_matrix: the map is 768 x 262 (input x output) but the "
                   "buffer is 2 x 2");
    EXPECT_STATUS(ISOCLIP_ERR_NULL_POINTER,
                  isoclip_projector_matrix(p, ISOCLIP_MODALITY_AUTO, ISOCLIP_INPUT_FEATURES,
                                           ISOCLIP_FORM_COMPACT, NULL, D_IN, D_COMPACT, NULL));
    EXPECT_STATUS(ISOCLIP_ERR_INVALID_ARGUMENT,
                  isoclip_projector_matrix(p, ISOCLIP_MODALITY_TEXT, ISOCLIP_INPUT_FEATURES,
                                           ISOCLIP_FORM_COMPACT, w, 2, 2, NULL));
    EXPECT_STATUS(ISOCLIP_ERR_INVALID_ARGUMENT,
                  isoclip_projector_matrix(p, ISOCLIP_MODALITY_AUTO, ISOCLIP_INPUT_FEATURES, 7, w,
                                           2, 2, NULL));
}

/* A bias-augmented projector: the bias comes out, and is required. */
static void test_matrix_with_bias(void) {
    enum { DI = SMALL_IN, D = SMALL_D, ROWS = 4 };
    const isoclip_projector *p = fit_small(1);
    size_t d_in = 0, d_out = 0;
    EXPECT_OK(isoclip_projector_input_dim(p, ISOCLIP_MODALITY_IMAGE, ISOCLIP_INPUT_FEATURES, &d_in));
    EXPECT_OK(isoclip_projector_output_dim(p, ISOCLIP_MODALITY_IMAGE, ISOCLIP_FORM_FULL, &d_out));
    CHECK(d_in == DI && d_out == D);
    float w[DI * D], b[D], x[ROWS * DI], want[ROWS * D], got[ROWS * D];
    EXPECT_STATUS(ISOCLIP_ERR_INVALID_ARGUMENT,
                  isoclip_projector_matrix(p, ISOCLIP_MODALITY_IMAGE, ISOCLIP_INPUT_FEATURES,
                                           ISOCLIP_FORM_FULL, w, DI, D, NULL));
    EXPECT_MESSAGE("isoclip_projector_matrix: this map has a bias of 5 values: pass `bias_out` to "
                   "receive it");
    EXPECT_OK(isoclip_projector_matrix(p, ISOCLIP_MODALITY_IMAGE, ISOCLIP_INPUT_FEATURES,
                                       ISOCLIP_FORM_FULL, w, DI, D, b));
    random_rows(x, ROWS, DI, 9);
    isoclip_projection_options *o = NULL;
    EXPECT_OK(isoclip_projection_options_new(&o));
    EXPECT_OK(isoclip_projection_options_set_form(o, ISOCLIP_FORM_FULL));
    EXPECT_OK(project(p, o, ROWS, x, DI, want, D));
    apply_matrix(x, ROWS, w, b, DI, D, got);
    CHECK(max_diff(got, want, ROWS * D) <= 1e-6);
    isoclip_projection_options_free(o);
    isoclip_projector_free(p);
}

static void test_load_from_memory(const isoclip_projector *from_file, const char *path) {
    size_t len = 0;
    unsigned char *data = read_file(path, &len);
    CHECK(data != NULL && len > 1000);
    const isoclip_projector *p = NULL;
    EXPECT_OK(isoclip_projector_load_from_memory(data, len, &p));
    char a[65], b[65];
    EXPECT_OK(isoclip_projector_content_digest(p, a, sizeof a, NULL));
    EXPECT_OK(isoclip_projector_content_digest(from_file, b, sizeof b, NULL));
    CHECK(strcmp(a, b) == 0);
    /* The handle does not keep the caller's buffer. */
    memset(data, 0, len);
    float x[2 * D_IN], y1[2 * D_COMPACT], y2[2 * D_COMPACT];
    random_rows(x, 2, D_IN, 4);
    EXPECT_OK(project(p, NULL, 2, x, D_IN, y1, D_COMPACT));
    EXPECT_OK(project(from_file, NULL, 2, x, D_IN, y2, D_COMPACT));
    CHECK(memcmp(y1, y2, sizeof y1) == 0);
    isoclip_projector_free(p);
    free(data);

    /* The same verification as a file: a changed byte in a weight fails the checksum. */
    data = read_file(path, &len);
    data[len - 100] ^= 0x40;
    p = (const isoclip_projector *)0x1;
    EXPECT_STATUS(ISOCLIP_ERR_FORMAT, isoclip_projector_load_from_memory(data, len, &p));
    EXPECT_MESSAGE_HAS("isoclip_projector_load_from_memory: (projector in memory): ");
    CHECK(p == (const isoclip_projector *)0x1);
    EXPECT_STATUS(ISOCLIP_ERR_FORMAT, isoclip_projector_load_from_memory(data, len / 2, &p));
    EXPECT_STATUS(ISOCLIP_ERR_FORMAT, isoclip_projector_load_from_memory(NULL, 0, &p));
    EXPECT_STATUS(ISOCLIP_ERR_NULL_POINTER, isoclip_projector_load_from_memory(NULL, 5, &p));
    EXPECT_MESSAGE("isoclip_projector_load_from_memory: argument `data` must not be NULL");
    EXPECT_STATUS(ISOCLIP_ERR_NULL_POINTER, isoclip_projector_load_from_memory(data, len, NULL));
    free(data);
}

/* The bit-identity guarantee of the CPU backend: a row's bytes depend only on the row and on the
 * size of its 128-row block. */
static void test_bit_identity(const isoclip_projector *p) {
    enum { ROWS = 300 };
    float *x = malloc(sizeof(float) * ROWS * D_IN);
    float *batch = malloc(sizeof(float) * ROWS * D_COMPACT), *part = malloc(sizeof(float) * ROWS * D_COMPACT);
    random_rows(x, ROWS, D_IN, 1234);
    const isoclip_backend *one = NULL;
    isoclip_backend_options *bo = NULL;
    EXPECT_OK(isoclip_backend_options_new(&bo));
    EXPECT_OK(isoclip_backend_options_set_threads(bo, 1));
    EXPECT_OK(isoclip_backend_new(bo, &one));
    isoclip_backend_options_free(bo);
    const size_t row_bytes = sizeof(float) * D_COMPACT;

    EXPECT_OK(project(p, NULL, ROWS, x, D_IN, batch, D_COMPACT));
    /* Split at multiples of 128 (blocks 128, 128, 44 both ways), on another thread count. */
    EXPECT_OK(isoclip_project(p, one, NULL, 128, x, ISOCLIP_DTYPE_F32, D_IN, D_IN * 4, part,
                              ISOCLIP_DTYPE_F32, D_COMPACT, row_bytes, NULL));
    EXPECT_OK(project(p, NULL, ROWS - 128, x + 128 * D_IN, D_IN, part + 128 * D_COMPACT, D_COMPACT));
    CHECK(memcmp(batch, part, ROWS * row_bytes) == 0);

    /* A full block of other rows around the same row: the same bytes (rows 0..255 lie in full
     * blocks of the batch; place row 200 at position 5 of a block of rows 0..127). */
    float *mixed = malloc(sizeof(float) * 128 * D_IN), *mixed_out = malloc(128 * row_bytes);
    memcpy(mixed, x, sizeof(float) * 128 * D_IN);
    memcpy(mixed + 5 * D_IN, x + 200 * D_IN, sizeof(float) * D_IN);
    EXPECT_OK(project(p, NULL, 128, mixed, D_IN, mixed_out, D_COMPACT));
    CHECK(memcmp(mixed_out + 5 * D_COMPACT, batch + 200 * D_COMPACT, row_bytes) == 0);

    /* Blocks of equal size: row 299 is alone in the last block of a 257-row call ending at it and
     * alone in a call of its own. */
    float alone[D_COMPACT];
    EXPECT_OK(project(p, NULL, 1, x + 299 * D_IN, D_IN, alone, D_COMPACT));
    EXPECT_OK(project(p, NULL, 257, x + 43 * D_IN, D_IN, part, D_COMPACT));
    CHECK(memcmp(alone, part + 256 * D_COMPACT, row_bytes) == 0);
    /* The 44-row last block of the batch, in reverse order as a call of its own: every row at
     * another position of a block of the same size, the same bytes. */
    float *reversed = malloc(sizeof(float) * 44 * D_IN);
    for (size_t r = 0; r < 44; r++)
        memcpy(reversed + r * D_IN, x + (299 - r) * D_IN, sizeof(float) * D_IN);
    EXPECT_OK(project(p, NULL, 44, reversed, D_IN, part, D_COMPACT));
    int same = 1;
    for (size_t r = 0; r < 44; r++)
        same &= memcmp(part + r * D_COMPACT, batch + (299 - r) * D_COMPACT, row_bytes) == 0;
    CHECK(same);
    free(reversed);
    /* Repeated single-row calls: always the same bytes. */
    float again[D_COMPACT];
    EXPECT_OK(isoclip_project(p, one, NULL, 1, x + 299 * D_IN, ISOCLIP_DTYPE_F32, D_IN, D_IN * 4,
                              again, ISOCLIP_DTYPE_F32, D_COMPACT, row_bytes, NULL));
    CHECK(memcmp(alone, again, row_bytes) == 0);

    /* Not promised: a row alone vs in a full block may differ in the last bit. Report, do not
     * fail: how many of the 300 rows differ, and by how much at most. */
    int differ = 0;
    double worst = 0;
    for (size_t r = 0; r < 256; r++) {
        float single[D_COMPACT];
        EXPECT_OK(project(p, NULL, 1, x + r * D_IN, D_IN, single, D_COMPACT));
        if (memcmp(single, batch + r * D_COMPACT, row_bytes) != 0) differ++;
        double d = max_diff(single, batch + r * D_COMPACT, D_COMPACT);
        if (d > worst) worst = d;
    }
    printf("rows alone vs in full blocks: %d of 256 differ, max |diff| %g\n", differ, worst);
    CHECK(worst <= 1e-6);

    isoclip_backend_free(one);
    free(x);
    free(batch);
    free(part);
    free(mixed);
    free(mixed_out);
}

/* Whether this CPU runs AVX-512 BF16 as the library sees it (CPUID and the OS's AVX-512 state).
 * Valgrind presents a CPU without AVX-512, so under valgrind the refusal is what is tested. */
static int cpu_has_bf16(void) {
#if defined(__x86_64__) && defined(__GNUC__)
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bf16");
#else
    return 0;
#endif
}

/* The arithmetic an f32 job records on this CPU as the library sees it: "f32" for its AVX-512F
 * kernel, "f32-gemm" for the gemm crate's (valgrind presents a CPU without AVX-512). */
static const char *f32_arithmetic(void) {
#if defined(__x86_64__) && defined(__GNUC__)
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f") ? "f32" : "f32-gemm";
#else
    return "f32-gemm";
#endif
}

/* Runs a job over `in` into `out` with the given options; returns its status. On success the
 * summary JSON is checked to name `arithmetic`, and `processed` receives the shards it projected. */
static isoclip_status run_precision_job(const isoclip_projector *p, const isoclip_projection_options *po,
                                        const isoclip_job_options *jo, const char *in, const char *out,
                                        const char *arithmetic, uint64_t *processed) {
    isoclip_job *job = NULL;
    EXPECT_OK(isoclip_job_new(p, NULL, po, jo, in, out, &job));
    isoclip_status s = isoclip_job_run(job);
    if (s == ISOCLIP_OK) {
        char json[4096], want[64];
        EXPECT_OK(isoclip_job_summary_json(job, json, sizeof json, NULL));
        FORMAT(want, "\"arithmetic\":\"%s\"", arithmetic);
        CHECK(strstr(json, want) != NULL);
        EXPECT_OK(isoclip_job_stat(job, ISOCLIP_JOB_STAT_SHARDS_PROCESSED, processed));
    }
    isoclip_job_free(job);
    return s;
}

/* Whether the output's manifest records `arithmetic` for its shards. */
static int manifest_says(const char *out, const char *arithmetic) {
    char path[700], want[64];
    FORMAT(path, "%s/isoclip-manifest.json", out);
    FORMAT(want, "\"arithmetic\": \"%s\"", arithmetic);
    size_t len = 0;
    unsigned char *m = read_file(path, &len);
    if (!m) return 0;
    char *text = malloc(len + 1);
    memcpy(text, m, len);
    text[len] = 0;
    int found = strstr(text, want) != NULL;
    free(text);
    free(m);
    return found;
}

/* ISOCLIP_PRECISION_BF16: close to f32 but not the same bytes where the CPU has AVX-512 BF16,
 * ISOCLIP_ERR_DEVICE_UNAVAILABLE where it does not; unknown values refused; jobs record it. */
static void test_precision(const isoclip_projector *p) {
    enum { ROWS = 7 };
    const int bf16 = cpu_has_bf16();
    printf("bf16: this CPU %s AVX-512 BF16 (as the program sees it)\n", bf16 ? "has" : "lacks");
    float x[ROWS * D_IN], y_default[ROWS * D_COMPACT], y_f32[ROWS * D_COMPACT], y_bf16[ROWS * D_COMPACT];
    random_rows(x, ROWS, D_IN, 4242);
    isoclip_projection_options *o = NULL;
    EXPECT_OK(isoclip_projection_options_new(&o));
    EXPECT_STATUS(ISOCLIP_ERR_INVALID_ARGUMENT, isoclip_projection_options_set_precision(o, 0));
    EXPECT_MESSAGE("isoclip_projection_options_set_precision: unknown precision 0 (expected "
                   "ISOCLIP_PRECISION_F32 or ISOCLIP_PRECISION_BF16)");
    EXPECT_STATUS(ISOCLIP_ERR_INVALID_ARGUMENT, isoclip_projection_options_set_precision(o, 3));
    EXPECT_STATUS(ISOCLIP_ERR_NULL_POINTER,
                  isoclip_projection_options_set_precision(NULL, ISOCLIP_PRECISION_BF16));
    /* The refused values left the default, f32: the bytes of NULL options. */
    EXPECT_OK(project(p, NULL, ROWS, x, D_IN, y_default, D_COMPACT));
    EXPECT_OK(project(p, o, ROWS, x, D_IN, y_f32, D_COMPACT));
    CHECK(memcmp(y_default, y_f32, sizeof y_f32) == 0);
    EXPECT_OK(isoclip_projection_options_set_precision(o, ISOCLIP_PRECISION_F32));
    EXPECT_OK(project(p, o, ROWS, x, D_IN, y_f32, D_COMPACT));
    CHECK(memcmp(y_default, y_f32, sizeof y_f32) == 0);

    EXPECT_OK(isoclip_projection_options_set_precision(o, ISOCLIP_PRECISION_BF16));
    isoclip_status s = project(p, o, ROWS, x, D_IN, y_bf16, D_COMPACT);
    if (bf16) {
        EXPECT_STATUS(ISOCLIP_OK, s);
        double worst = max_diff(y_bf16, y_f32, ROWS * D_COMPACT);
        printf("bf16 vs f32, %d normalised rows: max |diff| %g\n", ROWS, worst);
        CHECK(worst < 2e-2);
        CHECK(memcmp(y_bf16, y_f32, sizeof y_f32) != 0);
    } else {
        EXPECT_STATUS(ISOCLIP_ERR_DEVICE_UNAVAILABLE, s);
        EXPECT_MESSAGE_HAS("bf16 precision needs a CPU with AVX-512 BF16");
        EXPECT_MESSAGE_HAS("(set ISOCLIP_PRECISION_F32 with isoclip_projection_options_set_precision");
    }

    /* Jobs: the projection options' precision, or the job options' in its place. */
    char *dir = make_temp_dir();
    CHECK(dir != NULL);
    if (!dir) {
        isoclip_projection_options_free(o);
        return;
    }
    char in[600], path[700], out_bf16[600], out_f32[600];
    FORMAT(in, "%s/in", dir);
    mkdir(in, 0755);
    FORMAT(path, "%s/a.npy", in);
    CHECK(write_npy(path, x, ROWS, D_IN, 0) == 0);
    FORMAT(out_bf16, "%s/bf16", dir);
    FORMAT(out_f32, "%s/f32", dir);
    isoclip_job_options *jo = NULL;
    EXPECT_OK(isoclip_job_options_new(&jo));
    EXPECT_STATUS(ISOCLIP_ERR_INVALID_ARGUMENT, isoclip_job_options_set_precision(jo, 7));
    EXPECT_MESSAGE("isoclip_job_options_set_precision: unknown precision 7 (expected "
                   "ISOCLIP_PRECISION_F32 or ISOCLIP_PRECISION_BF16)");
    EXPECT_STATUS(ISOCLIP_ERR_NULL_POINTER, isoclip_job_options_set_precision(NULL, ISOCLIP_PRECISION_F32));
    uint64_t processed = 0;
    /* bf16 from the projection options (the job options set none). */
    s = run_precision_job(p, o, jo, in, out_bf16, "bf16", &processed);
    if (bf16) {
        EXPECT_STATUS(ISOCLIP_OK, s);
        CHECK(processed == 1);
        CHECK(manifest_says(out_bf16, "bf16"));
    } else {
        EXPECT_STATUS(ISOCLIP_ERR_DEVICE_UNAVAILABLE, s);
        EXPECT_MESSAGE_HAS("isoclip_job_run: bf16 precision needs a CPU with AVX-512 BF16");
        FORMAT(path, "%s/a.npy", out_bf16);
        CHECK(access(path, F_OK) != 0);
    }
    /* The job options' f32 over the projection options' bf16: runs everywhere. */
    EXPECT_OK(isoclip_job_options_set_precision(jo, ISOCLIP_PRECISION_F32));
    EXPECT_OK(run_precision_job(p, o, jo, in, out_f32, f32_arithmetic(), &processed));
    CHECK(processed == 1);
    CHECK(manifest_says(out_f32, f32_arithmetic()));
    /* A rerun at bf16 (job options over f32 projection options) redoes the shard, recorded as
     * bf16, rather than keeping the f32 one. */
    if (bf16) {
        EXPECT_OK(isoclip_projection_options_set_precision(o, ISOCLIP_PRECISION_F32));
        EXPECT_OK(isoclip_job_options_set_precision(jo, ISOCLIP_PRECISION_BF16));
        EXPECT_OK(run_precision_job(p, o, jo, in, out_f32, "bf16", &processed));
        CHECK(processed == 1);
        CHECK(manifest_says(out_f32, "bf16") && !manifest_says(out_f32, f32_arithmetic()));
    }
    isoclip_job_options_free(jo);
    isoclip_projection_options_free(o);
    remove_tree(dir);
    free(dir);
}

int main(int argc, char **argv) {
    if (argc != 2) {
        fprintf(stderr, "usage: %s PROJECTOR_FILE\n", argv[0]);
        return 2;
    }
    test_default_threads();
    test_versions();
    const isoclip_projector *p = load(argv[1]);
    if (!p) return finish("test_abi");
    test_fork(p);
    test_stats_struct_size(p);
    test_device_index();
    test_cancel();
    test_cancel_from_another_thread();
    test_os_code_and_size_queries(p);
    test_matrix(p);
    test_matrix_with_bias();
    test_load_from_memory(p, argv[1]);
    test_bit_identity(p);
    test_precision(p);
    isoclip_projector_free(p);
    return finish("test_abi");
}
