/* Helpers shared by the C tests of the isoclip C API: checks that report the library's message,
 * fp16 conversion, a deterministic generator, .npy files and temporary directories.
 * Header-only (static functions): each test program includes it once. */
#ifndef ISOCLIP_TEST_UTIL_H
#define ISOCLIP_TEST_UTIL_H

/* mkdtemp, strdup, lstat: include this header before any system header. */
#ifndef _DEFAULT_SOURCE
#define _DEFAULT_SOURCE
#endif

#include <dirent.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "isoclip.h"

static int g_checks = 0;
static int g_failures = 0;

/* The calling thread's last error message, copied into a static buffer (tests only). */
static inline const char *last_message(void) {
    static _Thread_local char buf[4096];
    size_t need = isoclip_last_error_length();
    if (need > sizeof buf) {
        snprintf(buf, sizeof buf, "<message of %zu bytes>", need);
        return buf;
    }
    if (isoclip_last_error_message(buf, sizeof buf, NULL) != ISOCLIP_OK) {
        snprintf(buf, sizeof buf, "<could not read the message>");
    }
    return buf;
}

#define CHECK(cond)                                                                  \
    do {                                                                             \
        g_checks++;                                                                  \
        if (!(cond)) {                                                               \
            g_failures++;                                                            \
            fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #cond); \
        }                                                                            \
    } while (0)

/* Runs a call and checks its status; on a mismatch prints both names and the message. */
#define EXPECT_STATUS(expected, call)                                                   \
    do {                                                                                \
        isoclip_status s_ = (call);                                                     \
        g_checks++;                                                                     \
        if (s_ != (expected)) {                                                         \
            g_failures++;                                                               \
            fprintf(stderr, "%s:%d: %s returned %s, expected %s (message: %s)\n",       \
                    __FILE__, __LINE__, #call, isoclip_status_name(s_),                 \
                    isoclip_status_name(expected), last_message());                     \
        }                                                                               \
    } while (0)

#define EXPECT_OK(call) EXPECT_STATUS(ISOCLIP_OK, call)

/* Checks that the last error message equals `want` exactly. */
#define EXPECT_MESSAGE(want)                                                             \
    do {                                                                                 \
        const char *m_ = last_message();                                                 \
        g_checks++;                                                                      \
        if (strcmp(m_, (want)) != 0) {                                                   \
            g_failures++;                                                                \
            fprintf(stderr, "%s:%d: message\n  is   \"%s\"\n  want \"%s\"\n", __FILE__, \
                    __LINE__, m_, (want));                                               \
        }                                                                                \
    } while (0)

/* Checks that the last error message contains `part`. */
#define EXPECT_MESSAGE_HAS(part)                                                         \
    do {                                                                                 \
        const char *m_ = last_message();                                                 \
        g_checks++;                                                                      \
        if (strstr(m_, (part)) == NULL) {                                                \
            g_failures++;                                                                \
            fprintf(stderr, "%s:%d: message \"%s\" lacks \"%s\"\n", __FILE__, __LINE__, \
                    m_, (part));                                                         \
        }                                                                                \
    } while (0)

static inline int finish(const char *program) {
    printf("%s: %d checks, %d failed\n", program, g_checks, g_failures);
    return g_failures == 0 ? 0 : 1;
}

/* SplitMix64: the same sequence on every machine. */
static inline uint64_t rng_next(uint64_t *state) {
    uint64_t z = (*state += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

/* Uniform in [-1, 1). */
static inline double rng_uniform(uint64_t *state) {
    return (double)(rng_next(state) >> 11) * (2.0 / 9007199254740992.0) - 1.0;
}

/* IEEE half <-> float, independent of the library (round to nearest even). */
static inline float half_to_float(uint16_t h) {
    uint32_t sign = (uint32_t)(h >> 15) << 31;
    uint32_t exp = (h >> 10) & 0x1F;
    uint32_t mant = h & 0x3FF;
    uint32_t bits;
    if (exp == 0) {
        if (mant == 0) {
            bits = sign;
        } else {
            float f = ldexpf((float)mant, -24);
            return sign ? -f : f;
        }
    } else if (exp == 31) {
        bits = sign | 0x7F800000u | (mant << 13);
    } else {
        bits = sign | ((exp + 112) << 23) | (mant << 13);
    }
    float f;
    memcpy(&f, &bits, sizeof f);
    return f;
}

static inline uint16_t float_to_half(float f) {
    uint32_t x;
    memcpy(&x, &f, sizeof x);
    uint16_t sign = (uint16_t)((x >> 16) & 0x8000);
    uint32_t exp = (x >> 23) & 0xFF;
    uint32_t mant = x & 0x7FFFFF;
    if (exp == 0xFF) return (uint16_t)(sign | 0x7C00 | (mant ? 0x200 : 0));
    int e = (int)exp - 127 + 15;
    if (e >= 31) return (uint16_t)(sign | 0x7C00);
    if (e <= 0) {
        if (e < -10) return sign;
        mant |= 0x800000;
        int shift = 14 - e;
        uint32_t half_mant = mant >> shift;
        uint32_t rem = mant & ((1u << shift) - 1);
        uint32_t halfway = 1u << (shift - 1);
        if (rem > halfway || (rem == halfway && (half_mant & 1))) half_mant++;
        return (uint16_t)(sign | half_mant);
    }
    uint32_t half_mant = mant >> 13;
    uint32_t rem = mant & 0x1FFF;
    uint16_t h = (uint16_t)(sign | ((uint32_t)e << 10) | half_mant);
    if (rem > 0x1000 || (rem == 0x1000 && (half_mant & 1))) h++;
    return h;
}

/* snprintf that treats truncation as a bug of the test. */
#define FORMAT(buf, ...)                                                              \
    do {                                                                              \
        int n_ = snprintf((buf), sizeof(buf), __VA_ARGS__);                           \
        if (n_ < 0 || (size_t)n_ >= sizeof(buf)) {                                    \
            fprintf(stderr, "%s:%d: path too long for its buffer\n", __FILE__, __LINE__); \
            abort();                                                                  \
        }                                                                             \
    } while (0)

/* Writes a 2-D C-order .npy file ('<f4' or '<f2'). Returns 0 on success. */
static inline int write_npy(const char *path, const void *data, size_t rows, size_t cols, int f16) {
    char dict[128];
    int n = snprintf(dict, sizeof dict, "{'descr': '%s', 'fortran_order': False, 'shape': (%zu, %zu), }",
                     f16 ? "<f2" : "<f4", rows, cols);
    size_t total = 10 + (size_t)n + 1;
    size_t pad = (64 - total % 64) % 64;
    uint16_t header_len = (uint16_t)(n + pad + 1);
    FILE *f = fopen(path, "wb");
    if (!f) return -1;
    fwrite("\x93NUMPY\x01\x00", 1, 8, f);
    unsigned char len_le[2] = {(unsigned char)(header_len & 0xFF), (unsigned char)(header_len >> 8)};
    fwrite(len_le, 1, 2, f);
    fwrite(dict, 1, (size_t)n, f);
    for (size_t i = 0; i < pad; i++) fputc(' ', f);
    fputc('\n', f);
    fwrite(data, f16 ? 2 : 4, rows * cols, f);
    return fclose(f);
}

/* Reads a whole file; *len receives its size. The caller frees the result. */
static inline unsigned char *read_file(const char *path, size_t *len) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long size = ftell(f);
    fseek(f, 0, SEEK_SET);
    unsigned char *buf = malloc(size > 0 ? (size_t)size : 1);
    size_t got = fread(buf, 1, (size_t)size, f);
    fclose(f);
    *len = got;
    return buf;
}

/* The data section of a version 1 .npy file in memory (NULL if it is not one). */
static inline const unsigned char *npy_data(const unsigned char *file, size_t len, size_t *data_len) {
    if (len < 10 || memcmp(file, "\x93NUMPY\x01", 7) != 0) return NULL;
    size_t header_len = (size_t)file[8] | ((size_t)file[9] << 8);
    if (10 + header_len > len) return NULL;
    *data_len = len - 10 - header_len;
    return file + 10 + header_len;
}

/* A fresh temporary directory (the caller frees the string and removes the tree). */
static inline char *make_temp_dir(void) {
    const char *base = getenv("TMPDIR");
    char tmpl[512];
    snprintf(tmpl, sizeof tmpl, "%s/isoclip-ctest-XXXXXX", base && *base ? base : "/tmp");
    char *dir = mkdtemp(tmpl);
    return dir ? strdup(dir) : NULL;
}

/* Removes a directory tree of plain files and directories. */
static inline void remove_tree(const char *path) {
    DIR *d = opendir(path);
    if (d) {
        struct dirent *e;
        while ((e = readdir(d)) != NULL) {
            if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0) continue;
            char child[1024];
            FORMAT(child, "%s/%s", path, e->d_name);
            struct stat st;
            if (lstat(child, &st) == 0 && S_ISDIR(st.st_mode)) {
                remove_tree(child);
            } else {
                unlink(child);
            }
        }
        closedir(d);
    }
    rmdir(path);
}

#endif /* ISOCLIP_TEST_UTIL_H */
