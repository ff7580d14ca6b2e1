/* Project image features into the IsoCLIP space with the C API (the README's C example).
 * Build: cc example.c $(pkg-config --cflags --libs isoclip) -o example
 * Run:   ./example b16.safetensors        (a projector file from `isoclip fit`) */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include "isoclip.h"

/* Prints the calling thread's last error message and returns 1. */
static int fail(const char *what, isoclip_status status) {
    size_t len = isoclip_last_error_length();
    char *message = malloc(len);
    if (message && isoclip_last_error_message(message, len, NULL) == ISOCLIP_OK)
        fprintf(stderr, "%s failed (%s): %s\n", what, isoclip_status_name(status), message);
    free(message);
    return 1;
}

int main(int argc, char **argv) {
    if (argc != 2) {
        fprintf(stderr, "usage: %s PROJECTOR_FILE\n", argv[0]);
        return 2;
    }
    if (!ISOCLIP_ABI_COMPATIBLE(isoclip_abi_version())) {
        fprintf(stderr, "libisoclip %s (ABI %u) lacks the ABI of isoclip.h %s\n", isoclip_version(),
                isoclip_abi_version(), ISOCLIP_VERSION_STRING);
        return 1;
    }

    const isoclip_projector *projector = NULL;
    isoclip_status s = isoclip_projector_load(argv[1], &projector);
    if (s != ISOCLIP_OK) return fail("isoclip_projector_load", s);

    size_t d_in = 0, d_out = 0;
    isoclip_projector_input_dim(projector, ISOCLIP_MODALITY_AUTO, ISOCLIP_INPUT_FEATURES, &d_in);
    isoclip_projector_output_dim(projector, ISOCLIP_MODALITY_AUTO, ISOCLIP_FORM_COMPACT, &d_out);

    /* Four rows of fp32 features in, compact fp16 rows out (uint16_t bit patterns). */
    enum { ROWS = 4 };
    float *features = malloc(sizeof(float) * ROWS * d_in);
    uint16_t *embeddings = malloc(sizeof(uint16_t) * ROWS * d_out);
    for (size_t i = 0; i < ROWS * d_in; i++) features[i] = (float)((i * 7919) % 1000) / 1000.0f - 0.5f;

    isoclip_projection_stats stats = ISOCLIP_PROJECTION_STATS_INIT;
    s = isoclip_project(projector, NULL /* the default CPU backend */, NULL /* default options */,
                        ROWS, features, ISOCLIP_DTYPE_F32, d_in, d_in * sizeof(float),
                        embeddings, ISOCLIP_DTYPE_F16, d_out, d_out * sizeof(uint16_t), &stats);
    int status = 0;
    if (s != ISOCLIP_OK) {
        status = fail("isoclip_project", s);
    } else {
        printf("projected %d rows: %zu features -> %zu dims (fp16), %llu zero rows\n", ROWS, d_in,
               d_out, (unsigned long long)stats.zero_norm_rows);
    }
    free(features);
    free(embeddings);
    isoclip_projector_free(projector);
    return status;
}
