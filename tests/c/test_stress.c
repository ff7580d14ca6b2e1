/* Eight threads share one projector (and one backend), each projecting its own buffers with its
 * own options, over and over; the results must be byte-identical to a single-threaded run on a
 * separately loaded projector. The shared projector is fresh, so the threads also race on its
 * lazily prepared maps. Each thread also checks that error messages are its own.
 *
 * Usage: test_stress PROJECTOR_FILE [ROWS ROUNDS]
 *   PROJECTOR_FILE  from `isoclip fit -o FILE` (768 -> 262 compact / 512 full)
 *   ROWS, ROUNDS    rows per buffer (default 1000) and projections per thread (default 4); the
 *                   test suite passes small values under valgrind, which serialises threads
 */
#include "test_util.h"

#include <pthread.h>

#define THREADS 8
#define D_IN 768

static size_t ROWS = 1000;
static int ROUNDS = 4;

typedef struct {
    int index;
    const isoclip_projector *projector;
    const isoclip_backend *backend;
    isoclip_form form;
    isoclip_dtype in_dtype, out_dtype;
    size_t out_cols;
    void *input;
    size_t in_bytes;
    unsigned char *want; /* single-threaded result */
    size_t out_bytes;
    int mismatches;
    int message_errors;
    int status_errors;
} worker;

static size_t dtype_size(isoclip_dtype d) { return d == ISOCLIP_DTYPE_F16 ? 2 : 4; }

static isoclip_status project(const worker *w, const isoclip_projector *p, const isoclip_backend *b,
                              void *out) {
    isoclip_projection_options *o = NULL;
    isoclip_status s = isoclip_projection_options_new(&o);
    if (s != ISOCLIP_OK) return s;
    isoclip_projection_options_set_form(o, w->form);
    s = isoclip_project(p, b, o, ROWS, w->input, w->in_dtype, D_IN, D_IN * dtype_size(w->in_dtype),
                        out, w->out_dtype, w->out_cols, w->out_cols * dtype_size(w->out_dtype), NULL);
    isoclip_projection_options_free(o);
    return s;
}

static void *run(void *arg) {
    worker *w = arg;
    unsigned char *got = malloc(w->out_bytes);
    char want_msg[160];
    float bad_row[800] = {0};
    for (int round = 0; round < ROUNDS; round++) {
        memset(got, 0, w->out_bytes);
        if (project(w, w->projector, w->backend, got) != ISOCLIP_OK) w->status_errors++;
        if (memcmp(got, w->want, w->out_bytes) != 0) w->mismatches++;
        /* A failure of this thread's own: its message must be the one this thread sees. */
        size_t bad_cols = 700 + (size_t)w->index;
        isoclip_status s = isoclip_project(w->projector, w->backend, NULL, 1, bad_row, ISOCLIP_DTYPE_F32,
                                           bad_cols, bad_cols * 4, got, ISOCLIP_DTYPE_F16, 262,
                                           262 * 2, NULL);
        snprintf(want_msg, sizeof want_msg,
                 "isoclip_project: input rows have %zu columns but the projector expects 768",
                 bad_cols);
        if (s != ISOCLIP_ERR_SHAPE || strcmp(last_message(), want_msg) != 0) {
            if (w->message_errors++ == 0) fprintf(stderr, "thread %d: %s\n", w->index, last_message());
        }
    }
    free(got);
    return NULL;
}

int main(int argc, char **argv) {
    if (argc != 2 && argc != 4) {
        fprintf(stderr, "usage: %s PROJECTOR_FILE [ROWS ROUNDS]\n", argv[0]);
        return 2;
    }
    if (argc == 4) {
        ROWS = (size_t)strtoul(argv[2], NULL, 10);
        ROUNDS = atoi(argv[3]);
    }
    const isoclip_projector *reference = NULL, *shared = NULL;
    EXPECT_OK(isoclip_projector_load(argv[1], &reference));
    EXPECT_OK(isoclip_projector_load(argv[1], &shared));
    const isoclip_backend *backend = NULL;
    isoclip_backend_options *bo = NULL;
    EXPECT_OK(isoclip_backend_options_new(&bo));
    EXPECT_OK(isoclip_backend_options_set_threads(bo, 2));
    EXPECT_OK(isoclip_backend_new(bo, &backend));
    isoclip_backend_options_free(bo);
    if (g_failures) return finish("test_stress");

    worker w[THREADS];
    for (int i = 0; i < THREADS; i++) {
        worker *k = &w[i];
        memset(k, 0, sizeof *k);
        k->index = i;
        k->projector = shared;
        k->backend = (i % 2) ? backend : NULL; /* half on the shared default backend */
        k->form = (i % 2) ? ISOCLIP_FORM_FULL : ISOCLIP_FORM_COMPACT;
        k->in_dtype = (i / 2) % 2 ? ISOCLIP_DTYPE_F16 : ISOCLIP_DTYPE_F32;
        k->out_dtype = (i / 4) ? ISOCLIP_DTYPE_F32 : ISOCLIP_DTYPE_F16;
        k->out_cols = k->form == ISOCLIP_FORM_FULL ? 512 : 262;
        k->in_bytes = ROWS * D_IN * dtype_size(k->in_dtype);
        k->input = malloc(k->in_bytes);
        uint64_t seed = 1000 + (uint64_t)i;
        for (size_t j = 0; j < ROWS * D_IN; j++) {
            float v = (float)rng_uniform(&seed);
            if (k->in_dtype == ISOCLIP_DTYPE_F16)
                ((uint16_t *)k->input)[j] = float_to_half(v);
            else
                ((float *)k->input)[j] = v;
        }
        k->out_bytes = ROWS * k->out_cols * dtype_size(k->out_dtype);
        k->want = malloc(k->out_bytes);
        EXPECT_OK(project(k, reference, NULL, k->want));
    }

    pthread_t t[THREADS];
    for (int i = 0; i < THREADS; i++) CHECK(pthread_create(&t[i], NULL, run, &w[i]) == 0);
    for (int i = 0; i < THREADS; i++) pthread_join(t[i], NULL);
    for (int i = 0; i < THREADS; i++) {
        CHECK(w[i].status_errors == 0);
        CHECK(w[i].mismatches == 0);
        CHECK(w[i].message_errors == 0);
        if (w[i].mismatches || w[i].status_errors || w[i].message_errors)
            fprintf(stderr, "thread %d: %d failed calls, %d mismatches, %d wrong messages\n", i,
                    w[i].status_errors, w[i].mismatches, w[i].message_errors);
        free(w[i].input);
        free(w[i].want);
    }
    isoclip_backend_free(backend);
    isoclip_projector_free(shared);
    isoclip_projector_free(reference);
    return finish("test_stress");
}
