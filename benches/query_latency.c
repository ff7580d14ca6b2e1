/* Query-path latency of the C ABI: how long one `isoclip_project` call takes for the batch sizes a
 * search service sees (1 row, 64 rows), as percentiles over many calls, on the default backend
 * and on a 1-thread backend. Built and run by benches/query_latency.sh, which also times numpy
 * and FAISS on the same shapes in the same run.
 *
 *   query_latency PROJECTOR.safetensors [calls]
 *
 * Prints one tab-separated line per (backend, rows): p50/p90/p99/max in microseconds and the
 * GFLOP/s at the median (2 * rows * d_in * d_out per call). */
#define _POSIX_C_SOURCE 200809L
#include <isoclip.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static double now_us(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec * 1e6 + (double)t.tv_nsec / 1e3;
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static void die(const char *what, isoclip_status s) {
    char msg[1024];
    size_t need = 0;
    isoclip_last_error_message(msg, sizeof msg, &need);
    fprintf(stderr, "%s failed (status %d): %s\n", what, (int)s, msg);
    exit(1);
}

#define CHECK(call)                                                                                \
    do {                                                                                           \
        isoclip_status s_ = (call);                                                                \
        if (s_ != ISOCLIP_OK) die(#call, s_);                                                      \
    } while (0)

/* f32 -> f16 bits, round to nearest even (inputs here are small normal numbers). */
static uint16_t f16_bits(float f) {
    uint32_t x;
    memcpy(&x, &f, 4);
    uint32_t sign = (x >> 16) & 0x8000u;
    int32_t exp = (int32_t)((x >> 23) & 0xff) - 127 + 15;
    uint32_t mant = x & 0x7fffffu;
    if (exp <= 0) return (uint16_t)sign;
    uint32_t h = sign | ((uint32_t)exp << 10) | (mant >> 13);
    uint32_t rest = mant & 0x1fffu;
    if (rest > 0x1000u || (rest == 0x1000u && (h & 1u))) h++;
    return (uint16_t)h;
}

static void bench(const char *label, const isoclip_projector *p, const isoclip_backend *b,
                  size_t rows, size_t d_in, size_t d_out, int calls) {
    uint16_t *in = malloc(rows * d_in * sizeof *in);
    uint16_t *out = malloc(rows * d_out * sizeof *out);
    double *t = malloc((size_t)calls * sizeof *t);
    uint64_t state = 0x9e3779b97f4a7c15ull;
    for (size_t i = 0; i < rows * d_in; i++) {
        state = state * 6364136223846793005ull + 1442695040888963407ull;
        in[i] = f16_bits((float)((int64_t)(state >> 33) % 2001 - 1000) / 1000.0f);
    }
    isoclip_projection_stats st = ISOCLIP_PROJECTION_STATS_INIT;
    for (int warm = 0; warm < 200; warm++) {
        CHECK(isoclip_project(p, b, NULL, rows, in, ISOCLIP_DTYPE_F16, d_in, d_in * 2, out,
                              ISOCLIP_DTYPE_F16, d_out, d_out * 2, &st));
    }
    for (int i = 0; i < calls; i++) {
        double t0 = now_us();
        isoclip_status s = isoclip_project(p, b, NULL, rows, in, ISOCLIP_DTYPE_F16, d_in,
                                           d_in * 2, out, ISOCLIP_DTYPE_F16, d_out, d_out * 2, &st);
        t[i] = now_us() - t0;
        if (s != ISOCLIP_OK) die("isoclip_project", s);
    }
    qsort(t, (size_t)calls, sizeof *t, cmp_double);
    double p50 = t[calls / 2], p90 = t[(size_t)(calls * 0.90)], p99 = t[(size_t)(calls * 0.99)];
    double flop = 2.0 * (double)rows * (double)d_in * (double)d_out;
    printf("isoclip\t%s\trows=%zu\tp50_us=%.2f\tp90_us=%.2f\tp99_us=%.2f\tmax_us=%.2f\tgflops_p50=%.2f\n",
           label, rows, p50, p90, p99, t[calls - 1], flop / (p50 * 1e3));
    free(in);
    free(out);
    free(t);
}

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: %s PROJECTOR.safetensors [calls]\n", argv[0]);
        return 2;
    }
    int calls = argc > 2 ? atoi(argv[2]) : 20000;
    const isoclip_projector *p = NULL;
    CHECK(isoclip_projector_load(argv[1], &p));
    size_t d_in = 0, d_out = 0;
    CHECK(isoclip_projector_input_dim(p, ISOCLIP_MODALITY_AUTO, ISOCLIP_INPUT_FEATURES, &d_in));
    CHECK(isoclip_projector_output_dim(p, ISOCLIP_MODALITY_AUTO, ISOCLIP_FORM_COMPACT, &d_out));

    isoclip_backend_options *o = NULL;
    CHECK(isoclip_backend_options_new(&o));
    CHECK(isoclip_backend_options_set_threads(o, 1));
    const isoclip_backend *one = NULL;
    CHECK(isoclip_backend_new(o, &one));
    isoclip_backend_options_free(o);

    size_t batch[2] = {1, 64};
    for (int i = 0; i < 2; i++) {
        bench("default", p, NULL, batch[i], d_in, d_out, calls);
        bench("1-thread", p, one, batch[i], d_in, d_out, calls);
    }
    isoclip_backend_free(one);
    isoclip_projector_free(p);
    return 0;
}
