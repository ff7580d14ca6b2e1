#include "shim.h"

#include <string.h>

#include "_cgo_export.h"

/* A malloc'd copy of this thread's last error message. */
static char *take_message(void) {
    size_t n = isoclip_last_error_length();
    char *m = malloc(n);
    if (m && isoclip_last_error_message(m, n, NULL) != ISOCLIP_OK) m[0] = 0;
    return m;
}

static isoclip_status done(isoclip_status s, isoclip_go_failure *msg) {
    if (s != ISOCLIP_OK) {
        msg->message = take_message();
        msg->os_code = isoclip_last_error_os_code();
    }
    return s;
}

static isoclip_status add_storage_options(isoclip_job_options *o, char *const *keys,
                                          char *const *values, size_t n) {
    isoclip_status s = ISOCLIP_OK;
    for (size_t i = 0; i < n && s == ISOCLIP_OK; i++)
        s = isoclip_job_options_add_storage_option(o, keys[i], values[i]);
    return s;
}

/* Copies a string out of the library with the size-then-copy convention, malloc'd. */
static isoclip_status get_string(isoclip_status (*get)(const void *, char *, size_t, size_t *),
                                 const void *obj, char **out) {
    size_t need = 0;
    isoclip_status s = get(obj, NULL, 0, &need);
    if (s != ISOCLIP_ERR_BUFFER_TOO_SMALL) return s;
    char *buf = malloc(need);
    if (!buf) abort();
    s = get(obj, buf, need, NULL);
    if (s != ISOCLIP_OK) {
        free(buf);
        return s;
    }
    *out = buf;
    return ISOCLIP_OK;
}

static isoclip_status fingerprint_of(const void *p, char *b, size_t n, size_t *need) {
    return isoclip_projector_fingerprint(p, b, n, need);
}
static isoclip_status digest_of(const void *p, char *b, size_t n, size_t *need) {
    return isoclip_projector_content_digest(p, b, n, need);
}
static isoclip_status description_of(const void *p, char *b, size_t n, size_t *need) {
    return isoclip_backend_describe(p, b, n, need);
}
static isoclip_status summary_of(const void *j, char *b, size_t n, size_t *need) {
    return isoclip_job_summary_json(j, b, n, need);
}

const char *isoclip_go_header_version(void) { return ISOCLIP_VERSION_STRING; }

isoclip_status isoclip_go_projector_load(const char *path, const isoclip_projector **out, isoclip_go_failure *msg) {
    return done(isoclip_projector_load(path, out), msg);
}

isoclip_status isoclip_go_projector_load_url(const char *location, char *const *keys,
                                            char *const *values, size_t n_options,
                                            const isoclip_projector **out, isoclip_go_failure *msg) {
    isoclip_job_options *o = NULL;
    isoclip_status s = isoclip_job_options_new(&o);
    if (s == ISOCLIP_OK) s = add_storage_options(o, keys, values, n_options);
    if (s == ISOCLIP_OK) s = isoclip_projector_load_url(location, o, out);
    s = done(s, msg);
    isoclip_job_options_free(o);
    return s;
}

isoclip_status isoclip_go_projector_load_from_memory(const void *data, size_t len,
                                                    const isoclip_projector **out,
                                                    isoclip_go_failure *msg) {
    return done(isoclip_projector_load_from_memory(data, len, out), msg);
}

isoclip_status isoclip_go_projector_matrix(const isoclip_projector *p, int32_t modality, int32_t kind,
                                           int32_t form, float *weight, size_t rows, size_t cols,
                                           float *bias, isoclip_go_failure *msg) {
    return done(isoclip_projector_matrix(p, modality, kind, form, weight, rows, cols, bias), msg);
}

isoclip_status isoclip_go_set_default_threads(size_t threads, isoclip_go_failure *msg) {
    return done(isoclip_set_default_threads(threads), msg);
}

isoclip_status isoclip_go_projector_fit(const double *image, size_t image_rows, size_t image_cols,
                                        const double *text, size_t text_rows, size_t text_cols,
                                        bool image_band, size_t image_top, size_t image_bottom,
                                        bool text_band, size_t text_top, size_t text_bottom,
                                        const double *image_bias, size_t image_bias_len,
                                        const double *text_bias, size_t text_bias_len,
                                        const isoclip_projector **out, isoclip_go_failure *msg) {
    isoclip_fit_options *o = NULL;
    isoclip_status s = isoclip_fit_options_new(&o);
    if (s == ISOCLIP_OK && image_band)
        s = isoclip_fit_options_set_band(o, ISOCLIP_MODALITY_IMAGE, image_top, image_bottom);
    if (s == ISOCLIP_OK && text_band)
        s = isoclip_fit_options_set_band(o, ISOCLIP_MODALITY_TEXT, text_top, text_bottom);
    if (s == ISOCLIP_OK)
        s = isoclip_fit_options_set_bias(o, ISOCLIP_MODALITY_IMAGE, image_bias, image_bias_len);
    if (s == ISOCLIP_OK)
        s = isoclip_fit_options_set_bias(o, ISOCLIP_MODALITY_TEXT, text_bias, text_bias_len);
    if (s == ISOCLIP_OK)
        s = isoclip_projector_fit(image, image_rows, image_cols, text, text_rows, text_cols, o, out);
    s = done(s, msg);
    isoclip_fit_options_free(o);
    return s;
}

isoclip_status isoclip_go_projector_save(const isoclip_projector *p, const char *path, isoclip_go_failure *msg) {
    return done(isoclip_projector_save(p, path), msg);
}

isoclip_status isoclip_go_projector_has_modality(const isoclip_projector *p, int32_t modality,
                                                 bool *out, isoclip_go_failure *msg) {
    return done(isoclip_projector_has_modality(p, modality, out), msg);
}

isoclip_status isoclip_go_projector_input_dim(const isoclip_projector *p, int32_t modality,
                                              int32_t kind, size_t *out, isoclip_go_failure *msg) {
    return done(isoclip_projector_input_dim(p, modality, kind, out), msg);
}

isoclip_status isoclip_go_projector_embedding_dim(const isoclip_projector *p, size_t *out,
                                                  isoclip_go_failure *msg) {
    return done(isoclip_projector_embedding_dim(p, out), msg);
}

isoclip_status isoclip_go_projector_output_dim(const isoclip_projector *p, int32_t modality,
                                               int32_t form, size_t *out, isoclip_go_failure *msg) {
    return done(isoclip_projector_output_dim(p, modality, form, out), msg);
}

isoclip_status isoclip_go_projector_band(const isoclip_projector *p, int32_t modality,
                                         size_t *k_top, size_t *k_bottom, isoclip_go_failure *msg) {
    return done(isoclip_projector_band(p, modality, k_top, k_bottom), msg);
}

isoclip_status isoclip_go_projector_fingerprint(const isoclip_projector *p, bool content_digest,
                                                char **out, isoclip_go_failure *msg) {
    return done(get_string(content_digest ? digest_of : fingerprint_of, p, out), msg);
}

isoclip_status isoclip_go_backend_new(int32_t device, int32_t device_index, size_t threads,
                                      const isoclip_backend **out, isoclip_go_failure *msg) {
    isoclip_backend_options *o = NULL;
    isoclip_status s = isoclip_backend_options_new(&o);
    if (s == ISOCLIP_OK) s = isoclip_backend_options_set_device(o, device);
    if (s == ISOCLIP_OK) s = isoclip_backend_options_set_device_index(o, device_index);
    if (s == ISOCLIP_OK) s = isoclip_backend_options_set_threads(o, threads);
    if (s == ISOCLIP_OK) s = isoclip_backend_new(o, out);
    s = done(s, msg);
    isoclip_backend_options_free(o);
    return s;
}

isoclip_status isoclip_go_backend_describe(const isoclip_backend *b, char **out, int32_t *device,
                                           isoclip_go_failure *msg) {
    isoclip_status s = get_string(description_of, b, out);
    if (s == ISOCLIP_OK) s = isoclip_backend_device(b, device);
    return done(s, msg);
}

static isoclip_status projection_options(isoclip_projection_options **o, int32_t modality,
                                         int32_t kind, int32_t form, bool normalize,
                                         int32_t nonfinite, int32_t precision) {
    isoclip_status s = isoclip_projection_options_new(o);
    if (s == ISOCLIP_OK) s = isoclip_projection_options_set_modality(*o, modality);
    if (s == ISOCLIP_OK) s = isoclip_projection_options_set_input_kind(*o, kind);
    if (s == ISOCLIP_OK) s = isoclip_projection_options_set_form(*o, form);
    if (s == ISOCLIP_OK) s = isoclip_projection_options_set_normalize(*o, normalize);
    if (s == ISOCLIP_OK) s = isoclip_projection_options_set_nonfinite(*o, nonfinite);
    if (s == ISOCLIP_OK) s = isoclip_projection_options_set_precision(*o, precision);
    return s;
}

isoclip_status isoclip_go_project(const isoclip_projector *p, const isoclip_backend *b,
                                  int32_t modality, int32_t kind, int32_t form, bool normalize,
                                  int32_t nonfinite, int32_t precision, size_t rows, const void *in,
                                  int32_t in_dtype,
                                  size_t in_cols, size_t in_stride, void *out, int32_t out_dtype,
                                  size_t out_cols, size_t out_stride,
                                  const isoclip_cancel_token *token, uint64_t *zero_norm_rows,
                                  uint64_t *nonfinite_rows, isoclip_go_failure *msg) {
    isoclip_projection_options *o = NULL;
    isoclip_projection_stats stats = ISOCLIP_PROJECTION_STATS_INIT;
    isoclip_status s = projection_options(&o, modality, kind, form, normalize, nonfinite, precision);
    if (s == ISOCLIP_OK)
        s = token ? isoclip_project_with_cancel(p, b, o, rows, in, in_dtype, in_cols, in_stride,
                                                out, out_dtype, out_cols, out_stride, &stats, token)
                  : isoclip_project(p, b, o, rows, in, in_dtype, in_cols, in_stride, out,
                                    out_dtype, out_cols, out_stride, &stats);
    s = done(s, msg);
    isoclip_projection_options_free(o);
    *zero_norm_rows = stats.zero_norm_rows;
    *nonfinite_rows = stats.nonfinite_rows;
    return s;
}

/* Forwards progress to the Go callback registered under `user_data` (a cgo.Handle). */
static void progress_trampoline(void *user_data, uint64_t rows_done, uint64_t rows_total,
                                uint64_t shards_done, uint64_t shards_total) {
    isoclipGoProgress((uintptr_t)user_data, rows_done, rows_total, shards_done, shards_total);
}

isoclip_status isoclip_go_job_new(const isoclip_projector *p, const isoclip_backend *b,
                                  int32_t modality, int32_t kind, int32_t form, bool normalize,
                                  int32_t nonfinite, int32_t precision, int32_t out_dtype, bool overwrite,
                                  size_t chunk_bytes, uintptr_t progress_handle, uint32_t num_shards,
                                  uint32_t shard_index, bool shards_from_env, char *const *keys,
                                  char *const *values, size_t n_options, const char *input,
                                  const char *output_dir, isoclip_job **out, uint32_t *num_shards_out,
                                  uint32_t *shard_index_out, isoclip_go_failure *msg) {
    isoclip_projection_options *po = NULL;
    isoclip_job_options *jo = NULL;
    isoclip_status s = projection_options(&po, modality, kind, form, normalize, nonfinite, precision);
    if (s == ISOCLIP_OK) s = isoclip_job_options_new(&jo);
    if (s == ISOCLIP_OK) s = isoclip_job_options_set_precision(jo, precision);
    if (s == ISOCLIP_OK) s = isoclip_job_options_set_output_dtype(jo, out_dtype);
    if (s == ISOCLIP_OK) s = isoclip_job_options_set_overwrite(jo, overwrite);
    if (s == ISOCLIP_OK) s = isoclip_job_options_set_chunk_bytes(jo, chunk_bytes);
    if (s == ISOCLIP_OK)
        s = shards_from_env ? isoclip_job_options_set_shards_from_env(jo)
                            : isoclip_job_options_set_shards(jo, num_shards, shard_index);
    if (s == ISOCLIP_OK) s = isoclip_job_options_shards(jo, num_shards_out, shard_index_out);
    if (s == ISOCLIP_OK) s = add_storage_options(jo, keys, values, n_options);
    if (s == ISOCLIP_OK && progress_handle != 0)
        s = isoclip_job_options_set_progress(jo, progress_trampoline, (void *)progress_handle);
    if (s == ISOCLIP_OK) s = isoclip_job_new(p, b, po, jo, input, output_dir, out);
    s = done(s, msg);
    isoclip_job_options_free(jo);
    isoclip_projection_options_free(po);
    return s;
}

isoclip_status isoclip_go_job_run(isoclip_job *job, isoclip_go_failure *msg) {
    return done(isoclip_job_run(job), msg);
}

isoclip_status isoclip_go_job_stat(const isoclip_job *job, int32_t which, uint64_t *out, isoclip_go_failure *msg) {
    return done(isoclip_job_stat(job, which, out), msg);
}

isoclip_status isoclip_go_job_summary(const isoclip_job *job, char **out, isoclip_go_failure *msg) {
    return done(get_string(summary_of, job, out), msg);
}
