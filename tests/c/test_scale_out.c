/* Jobs for scale-out: inputs and outputs given as URLs, shard selection (explicit and from the
 * Slurm / Kubernetes environment), storage options owned by the job options, and
 * isoclip_projector_load_url.
 *
 * The argument checks need nothing but the library. The runs (two workers into one output, file://
 * URLs with a storage option) use the engine's mode with per-shard completion records.
 *
 * Usage: test_scale_out PROJECTOR_FILE
 *   PROJECTOR_FILE  from `isoclip fit -o FILE` (the built-in synthetic ViT-B/16 model, image:
 *                   768 features -> 262 compact dims)
 */
#include "test_util.h"

#define D_IN 768

/* Every variable isoclip_job_options_set_shards_from_env reads. */
static const char *const SHARD_VARIABLES[] = {
    "SLURM_ARRAY_TASK_ID", "SLURM_ARRAY_TASK_MIN",  "SLURM_ARRAY_TASK_COUNT", "SLURM_ARRAY_TASK_STEP",
    "JOB_COMPLETION_INDEX", "ISOCLIP_NUM_SHARDS", "ISOCLIP_SHARD_INDEX",
};

static void clear_shard_variables(void) {
    for (size_t i = 0; i < sizeof SHARD_VARIABLES / sizeof SHARD_VARIABLES[0]; i++)
        unsetenv(SHARD_VARIABLES[i]);
}

/* Checks the worker's place the options hold. */
#define EXPECT_SHARDS(options, count, index)                                 \
    do {                                                                     \
        uint32_t n_ = 99, i_ = 99;                                           \
        EXPECT_OK(isoclip_job_options_shards((options), &n_, &i_));          \
        g_checks++;                                                          \
        if (n_ != (count) || i_ != (index)) {                                \
            g_failures++;                                                    \
            fprintf(stderr, "%s:%d: shards are %u of %u, expected %u of %u\n", \
                    __FILE__, __LINE__, i_, n_, (unsigned)(index), (unsigned)(count)); \
        }                                                                    \
    } while (0)

static char *content_digest(const isoclip_projector *p) {
    size_t need = 0;
    EXPECT_STATUS(ISOCLIP_ERR_BUFFER_TOO_SMALL, isoclip_projector_content_digest(p, NULL, 0, &need));
    char *s = malloc(need);
    EXPECT_OK(isoclip_projector_content_digest(p, s, need, NULL));
    return s;
}

/* ---------------------------------------------------------------------------------------------- */

static void test_shard_selection_arguments(void) {
    isoclip_job_options *jo = NULL;
    EXPECT_OK(isoclip_job_options_new(&jo));
    EXPECT_SHARDS(jo, 1, 0);

    EXPECT_OK(isoclip_job_options_set_shards(jo, 4, 3));
    EXPECT_SHARDS(jo, 4, 3);
    EXPECT_STATUS(ISOCLIP_ERR_INVALID_ARGUMENT, isoclip_job_options_set_shards(jo, 2, 2));
    EXPECT_MESSAGE("isoclip_job_options_set_shards: worker index 2 is out of range for 2 workers (0 to 1)");
    EXPECT_STATUS(ISOCLIP_ERR_INVALID_ARGUMENT, isoclip_job_options_set_shards(jo, 0, 0));
    EXPECT_MESSAGE("isoclip_job_options_set_shards: the number of workers must be at least 1");
    EXPECT_SHARDS(jo, 4, 3); /* a refused setting leaves the options alone */
    EXPECT_STATUS(ISOCLIP_ERR_NULL_POINTER, isoclip_job_options_set_shards(NULL, 1, 0));
    EXPECT_MESSAGE("isoclip_job_options_set_shards: argument `options` must not be NULL");
    uint32_t n = 0;
    EXPECT_STATUS(ISOCLIP_ERR_NULL_POINTER, isoclip_job_options_shards(jo, &n, NULL));
    EXPECT_MESSAGE("isoclip_job_options_shards: argument `shard_index` must not be NULL");

    /* From the environment: nothing set means every shard. */
    clear_shard_variables();
    EXPECT_OK(isoclip_job_options_set_shards_from_env(jo));
    EXPECT_SHARDS(jo, 1, 0);
    /* A Slurm array --array=5-8: task 7 is worker 2 of 4. */
    setenv("SLURM_ARRAY_TASK_ID", "7", 1);
    setenv("SLURM_ARRAY_TASK_MIN", "5", 1);
    setenv("SLURM_ARRAY_TASK_COUNT", "4", 1);
    EXPECT_OK(isoclip_job_options_set_shards_from_env(jo));
    EXPECT_SHARDS(jo, 4, 2);
    setenv("SLURM_ARRAY_TASK_STEP", "2", 1);
    EXPECT_STATUS(ISOCLIP_ERR_INVALID_ARGUMENT, isoclip_job_options_set_shards_from_env(jo));
    EXPECT_MESSAGE("isoclip_job_options_set_shards_from_env: a Slurm array with step 2 has gaps in "
                   "its task ids; use a step of 1 (e.g. --array=0-9)");
    setenv("SLURM_ARRAY_TASK_ID", "x", 1);
    EXPECT_STATUS(ISOCLIP_ERR_INVALID_ARGUMENT, isoclip_job_options_set_shards_from_env(jo));
    EXPECT_MESSAGE("isoclip_job_options_set_shards_from_env: environment variable "
                   "SLURM_ARRAY_TASK_ID=\"x\" is not a non-negative integer");
    EXPECT_SHARDS(jo, 4, 2);
    clear_shard_variables();
    /* A Kubernetes Indexed Job: the index from Kubernetes, the count from ISOCLIP_NUM_SHARDS. */
    setenv("JOB_COMPLETION_INDEX", "1", 1);
    EXPECT_STATUS(ISOCLIP_ERR_INVALID_ARGUMENT, isoclip_job_options_set_shards_from_env(jo));
    EXPECT_MESSAGE("isoclip_job_options_set_shards_from_env: this is worker 1 of a Kubernetes "
                   "Indexed Job, but the number of workers is unknown: give it (or set "
                   "ISOCLIP_NUM_SHARDS)");
    setenv("ISOCLIP_NUM_SHARDS", "3", 1);
    EXPECT_OK(isoclip_job_options_set_shards_from_env(jo));
    EXPECT_SHARDS(jo, 3, 1);
    setenv("JOB_COMPLETION_INDEX", "3", 1);
    EXPECT_STATUS(ISOCLIP_ERR_INVALID_ARGUMENT, isoclip_job_options_set_shards_from_env(jo));
    EXPECT_MESSAGE("isoclip_job_options_set_shards_from_env: worker index 3 is out of range for 3 "
                   "workers (0 to 2)");
    clear_shard_variables();
    /* Explicit settings replace what the environment gave. */
    EXPECT_OK(isoclip_job_options_set_shards(jo, 1, 0));
    EXPECT_SHARDS(jo, 1, 0);
    EXPECT_STATUS(ISOCLIP_ERR_NULL_POINTER, isoclip_job_options_set_shards_from_env(NULL));
    isoclip_job_options_free(jo);
}

static void test_storage_option_arguments(const isoclip_projector *p) {
    isoclip_job_options *jo = NULL;
    EXPECT_OK(isoclip_job_options_new(&jo));
    EXPECT_STATUS(ISOCLIP_ERR_NULL_POINTER, isoclip_job_options_add_storage_option(jo, NULL, "x"));
    EXPECT_MESSAGE("isoclip_job_options_add_storage_option: argument `key` must not be NULL");
    EXPECT_STATUS(ISOCLIP_ERR_NULL_POINTER, isoclip_job_options_add_storage_option(jo, "k", NULL));
    EXPECT_MESSAGE("isoclip_job_options_add_storage_option: argument `value` must not be NULL");
    EXPECT_STATUS(ISOCLIP_ERR_NULL_POINTER, isoclip_job_options_add_storage_option(NULL, "k", "v"));
    EXPECT_MESSAGE("isoclip_job_options_add_storage_option: argument `options` must not be NULL");
    EXPECT_STATUS(ISOCLIP_ERR_INVALID_ARGUMENT, isoclip_job_options_add_storage_option(jo, "", "v"));
    EXPECT_MESSAGE("isoclip_job_options_add_storage_option: the storage option key is empty");
    EXPECT_STATUS(ISOCLIP_ERR_INVALID_ARGUMENT,
                  isoclip_job_options_add_storage_option(jo, "aws_region", "\xff"));
    EXPECT_MESSAGE("isoclip_job_options_add_storage_option: argument `value` is not valid UTF-8");

    /* The options copy the strings: the caller's buffers may change right after the call. A job
     * copies the options: they may be freed before the job is (valgrind checks both). */
    char key[32], value[32];
    strcpy(key, "aws_region");
    strcpy(value, "eu-west-1");
    EXPECT_OK(isoclip_job_options_add_storage_option(jo, key, value));
    strcpy(value, "us-east-2");
    EXPECT_OK(isoclip_job_options_add_storage_option(jo, key, value)); /* the same key again */
    memset(key, 'k', sizeof key - 1);
    memset(value, 'v', sizeof value - 1);
    EXPECT_OK(isoclip_job_options_add_storage_option(jo, "aws_allow_http", "true"));
    isoclip_job *job = NULL;
    EXPECT_OK(isoclip_job_new(p, NULL, NULL, jo, "s3://bucket/gallery/", "s3://bucket/out/", &job));
    isoclip_job_options_free(jo);
    isoclip_job_free(job);
}

static void test_url_arguments(const isoclip_projector *p, const char *projector_path) {
    isoclip_job *job = NULL;
    /* Malformed URLs are refused when the job is made, by name. */
    EXPECT_STATUS(ISOCLIP_ERR_INVALID_ARGUMENT,
                  isoclip_job_new(p, NULL, NULL, NULL, "s3://bad host/emb/", "/tmp/out", &job));
    EXPECT_MESSAGE("isoclip_job_new: s3://bad host/emb/: not a valid URL (invalid domain character)");
    EXPECT_STATUS(ISOCLIP_ERR_INVALID_ARGUMENT,
                  isoclip_job_new(p, NULL, NULL, NULL, "/tmp/in", "gs://[bucket/out/", &job));
    EXPECT_MESSAGE("isoclip_job_new: gs://[bucket/out/: not a valid URL (invalid IPv6 address)");
    CHECK(job == NULL);
    /* Well-formed URLs of every scheme, and paths that only look like URLs, are accepted: stores
     * are opened by isoclip_job_run. */
    const char *accepted[][2] = {
        {"s3://bucket/emb/", "s3://bucket/out/"},
        {"gs://bucket/emb", "az://container/out"},
        {"https://example.org/emb/a.npy", "file:///tmp/isoclip-out"},
        {"s3:/not-a-url", "./s3://still-a-path"},
    };
    for (size_t i = 0; i < sizeof accepted / sizeof accepted[0]; i++) {
        job = NULL;
        EXPECT_OK(isoclip_job_new(p, NULL, NULL, NULL, accepted[i][0], accepted[i][1], &job));
        CHECK(job != NULL);
        isoclip_job_free(job);
    }

    /* isoclip_projector_load_url: a plain path reads what isoclip_projector_load reads. */
    const isoclip_projector *q = NULL;
    EXPECT_STATUS(ISOCLIP_ERR_NULL_POINTER, isoclip_projector_load_url(NULL, NULL, &q));
    EXPECT_MESSAGE("isoclip_projector_load_url: argument `location` must not be NULL");
    EXPECT_STATUS(ISOCLIP_ERR_INVALID_ARGUMENT, isoclip_projector_load_url("s3://bad host/p.st", NULL, &q));
    EXPECT_MESSAGE("isoclip_projector_load_url: s3://bad host/p.st: not a valid URL (invalid domain character)");
    CHECK(q == NULL);
    EXPECT_OK(isoclip_projector_load_url(projector_path, NULL, &q));
    if (q) {
        char *want = content_digest(p), *got = content_digest(q);
        CHECK(strcmp(want, got) == 0);
        free(want);
        free(got);
        isoclip_projector_free(q);
    }
}

/* ---------------------------------------------------------------------------------------------- */
/* Runs: these use the engine's mode with per-shard completion records. */

enum { SHARDS = 5, ROWS = 130 };
static const char *const SHARD_NAMES[SHARDS] = {"a.npy", "b.npy", "c.npy", "d.npy", "e.npy"};

/* Writes the gallery: SHARDS shards of ROWS rows of D_IN f32 features. */
static void write_gallery(const char *dir) {
    mkdir(dir, 0755);
    float *x = malloc(sizeof(float) * ROWS * D_IN);
    for (int s = 0; s < SHARDS; s++) {
        uint64_t seed = 500 + (uint64_t)s;
        for (size_t i = 0; i < (size_t)ROWS * D_IN; i++) x[i] = (float)rng_uniform(&seed);
        char path[700];
        FORMAT(path, "%s/%s", dir, SHARD_NAMES[s]);
        CHECK(write_npy(path, x, ROWS, D_IN, 0) == 0);
    }
    free(x);
}

static int files_equal(const char *a, const char *b) {
    size_t la = 0, lb = 0;
    unsigned char *fa = read_file(a, &la), *fb = read_file(b, &lb);
    int same = fa && fb && la == lb && memcmp(fa, fb, la) == 0;
    free(fa);
    free(fb);
    return same;
}

static int exists(const char *path) {
    struct stat st;
    return stat(path, &st) == 0;
}

/* Runs one job and returns its status; *processed and *skipped receive its shard counts. */
static isoclip_status run_job(const isoclip_projector *p, const isoclip_job_options *jo,
                              const char *in, const char *out, uint64_t *processed, uint64_t *skipped) {
    isoclip_job *job = NULL;
    isoclip_status s = isoclip_job_new(p, NULL, NULL, jo, in, out, &job);
    if (s == ISOCLIP_OK) s = isoclip_job_run(job);
    if (s == ISOCLIP_OK) s = isoclip_job_stat(job, ISOCLIP_JOB_STAT_SHARDS_PROCESSED, processed);
    if (s == ISOCLIP_OK) s = isoclip_job_stat(job, ISOCLIP_JOB_STAT_SHARDS_SKIPPED, skipped);
    isoclip_job_free(job);
    return s;
}

/* Two workers (0 and 1 of 2) into one output directory: each takes its shards (k mod 2), a
 * worker run again skips what it finished, and together they write the bytes of one plain run. */
static void test_two_workers_share_an_output(const isoclip_projector *p, const char *dir) {
    char in[600], reference[600], shared[600], a[800], b[800];
    FORMAT(in, "%s/gallery", dir);
    FORMAT(reference, "%s/reference", dir);
    FORMAT(shared, "%s/shared", dir);
    write_gallery(in);
    uint64_t processed = 0, skipped = 0;
    EXPECT_OK(run_job(p, NULL, in, reference, &processed, &skipped));
    CHECK(processed == SHARDS);

    isoclip_job_options *jo = NULL;
    EXPECT_OK(isoclip_job_options_new(&jo));
    EXPECT_OK(isoclip_job_options_set_shards(jo, 2, 0));
    EXPECT_OK(run_job(p, jo, in, shared, &processed, &skipped));
    CHECK(processed == 3 && skipped == 0); /* a, c, e */
    for (int s = 0; s < SHARDS; s++) {
        FORMAT(a, "%s/%s", shared, SHARD_NAMES[s]);
        g_checks++;
        if (exists(a) != (s % 2 == 0)) {
            g_failures++;
            fprintf(stderr, "%s:%d: after worker 0 of 2, %s %s\n", __FILE__, __LINE__, a,
                    exists(a) ? "exists" : "is missing");
        }
    }
    EXPECT_OK(isoclip_job_options_set_shards(jo, 2, 1));
    EXPECT_OK(run_job(p, jo, in, shared, &processed, &skipped));
    CHECK(processed == 2); /* b, d */
    EXPECT_OK(isoclip_job_options_set_shards(jo, 2, 0));
    EXPECT_OK(run_job(p, jo, in, shared, &processed, &skipped));
    CHECK(processed == 0); /* a worker run again redoes none of its shards */
    isoclip_job_options_free(jo);
    for (int s = 0; s < SHARDS; s++) {
        FORMAT(a, "%s/%s", reference, SHARD_NAMES[s]);
        FORMAT(b, "%s/%s", shared, SHARD_NAMES[s]);
        g_checks++;
        if (!files_equal(a, b)) {
            g_failures++;
            fprintf(stderr, "%s:%d: %s differs from %s\n", __FILE__, __LINE__, b, a);
        }
    }
}

/* file:// URLs with a storage option (local files take none and ignore them): the same bytes as
 * plain paths, and the projector loads from a file:// URL too. */
static void test_file_urls_with_storage_options(const isoclip_projector *p, const char *dir,
                                                const char *projector_path) {
    char in_url[700], out_url[700], reference[600], a[800], b[800], projector_url[700];
    FORMAT(in_url, "file://%s/gallery", dir); /* written by test_two_workers_share_an_output */
    FORMAT(out_url, "file://%s/by-url", dir);
    FORMAT(reference, "%s/reference", dir);
    isoclip_job_options *jo = NULL;
    EXPECT_OK(isoclip_job_options_new(&jo));
    EXPECT_OK(isoclip_job_options_add_storage_option(jo, "aws_region", "us-east-1"));
    uint64_t processed = 0, skipped = 0;
    EXPECT_OK(run_job(p, jo, in_url, out_url, &processed, &skipped));
    CHECK(processed == SHARDS && skipped == 0);
    for (int s = 0; s < SHARDS; s++) {
        FORMAT(a, "%s/%s", reference, SHARD_NAMES[s]);
        FORMAT(b, "%s/by-url/%s", dir, SHARD_NAMES[s]);
        g_checks++;
        if (!files_equal(a, b)) {
            g_failures++;
            fprintf(stderr, "%s:%d: %s differs from %s\n", __FILE__, __LINE__, b, a);
        }
    }

    FORMAT(projector_url, "file://%s", projector_path);
    const isoclip_projector *q = NULL;
    EXPECT_OK(isoclip_projector_load_url(projector_url, jo, &q));
    if (q) {
        char *want = content_digest(p), *got = content_digest(q);
        CHECK(strcmp(want, got) == 0);
        free(want);
        free(got);
        isoclip_projector_free(q);
    }
    isoclip_job_options_free(jo);
}

int main(int argc, char **argv) {
    if (argc != 2 || argv[1][0] != '/') {
        fprintf(stderr, "usage: %s ABSOLUTE_PROJECTOR_FILE\n", argv[0]);
        return 2;
    }
    const isoclip_projector *p = NULL;
    EXPECT_OK(isoclip_projector_load(argv[1], &p));
    if (!p) return finish("test_scale_out");
    char *dir = make_temp_dir();
    CHECK(dir != NULL && dir[0] == '/');
    if (!dir) return finish("test_scale_out");

    test_shard_selection_arguments();
    test_storage_option_arguments(p);
    test_url_arguments(p, argv[1]);
    test_two_workers_share_an_output(p, dir);
    test_file_urls_with_storage_options(p, dir, argv[1]);

    isoclip_projector_free(p);
    remove_tree(dir);
    free(dir);
    return finish("test_scale_out");
}
