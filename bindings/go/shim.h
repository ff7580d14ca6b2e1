/* C shims for the Go package: each runs one library call and, on failure, copies the calling
 * thread's error message into a malloc'd string (msg->message, freed by Go) and its OS error code
 * into msg->os_code. A goroutine can move to another OS thread between two cgo calls, so both
 * must be read inside the same call as the failure. */
#ifndef ISOCLIP_GO_SHIM_H
#define ISOCLIP_GO_SHIM_H

#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>

#include "isoclip.h"

/* What a failed call left for its thread: the message (malloc'd) and the OS error code. */
typedef struct {
    char *message;
    int32_t os_code;
} isoclip_go_failure;

/* ISOCLIP_VERSION_STRING of the header the package was compiled with. */
const char *isoclip_go_header_version(void);

isoclip_status isoclip_go_projector_load(const char *path, const isoclip_projector **out, isoclip_go_failure *msg);
isoclip_status isoclip_go_projector_fit(const double *image, size_t image_rows, size_t image_cols,
                                        const double *text, size_t text_rows, size_t text_cols,
                                        bool image_band, size_t image_top, size_t image_bottom,
                                        bool text_band, size_t text_top, size_t text_bottom,
                                        const double *image_bias, size_t image_bias_len,
                                        const double *text_bias, size_t text_bias_len,
                                        const isoclip_projector **out, isoclip_go_failure *msg);
isoclip_status isoclip_go_projector_load_url(const char *location, char *const *keys,
                                            char *const *values, size_t n_options,
                                            const isoclip_projector **out, isoclip_go_failure *msg);
isoclip_status isoclip_go_projector_load_from_memory(const void *data, size_t len,
                                                    const isoclip_projector **out,
                                                    isoclip_go_failure *msg);
isoclip_status isoclip_go_projector_matrix(const isoclip_projector *p, int32_t modality, int32_t kind,
                                           int32_t form, float *weight, size_t rows, size_t cols,
                                           float *bias, isoclip_go_failure *msg);
isoclip_status isoclip_go_set_default_threads(size_t threads, isoclip_go_failure *msg);
isoclip_status isoclip_go_projector_save(const isoclip_projector *p, const char *path, isoclip_go_failure *msg);
isoclip_status isoclip_go_projector_has_modality(const isoclip_projector *p, int32_t modality,
                                                 bool *out, isoclip_go_failure *msg);
isoclip_status isoclip_go_projector_input_dim(const isoclip_projector *p, int32_t modality,
                                              int32_t kind, size_t *out, isoclip_go_failure *msg);
isoclip_status isoclip_go_projector_output_dim(const isoclip_projector *p, int32_t modality,
                                               int32_t form, size_t *out, isoclip_go_failure *msg);
isoclip_status isoclip_go_projector_band(const isoclip_projector *p, int32_t modality,
                                         size_t *k_top, size_t *k_bottom, isoclip_go_failure *msg);
isoclip_status isoclip_go_projector_fingerprint(const isoclip_projector *p, bool content_digest,
                                                char **out, isoclip_go_failure *msg);
isoclip_status isoclip_go_projector_embedding_dim(const isoclip_projector *p, size_t *out,
                                                  isoclip_go_failure *msg);
isoclip_status isoclip_go_backend_new(int32_t device, int32_t device_index, size_t threads,
                                      const isoclip_backend **out, isoclip_go_failure *msg);
isoclip_status isoclip_go_backend_describe(const isoclip_backend *b, char **out, int32_t *device,
                                           isoclip_go_failure *msg);
isoclip_status isoclip_go_project(const isoclip_projector *p, const isoclip_backend *b,
                                  int32_t modality, int32_t kind, int32_t form, bool normalize,
                                  int32_t nonfinite, int32_t precision, size_t rows, const void *in,
                                  int32_t in_dtype,
                                  size_t in_cols, size_t in_stride, void *out, int32_t out_dtype,
                                  size_t out_cols, size_t out_stride,
                                  const isoclip_cancel_token *token, uint64_t *zero_norm_rows,
                                  uint64_t *nonfinite_rows, isoclip_go_failure *msg);
isoclip_status isoclip_go_job_new(const isoclip_projector *p, const isoclip_backend *b,
                                  int32_t modality, int32_t kind, int32_t form, bool normalize,
                                  int32_t nonfinite, int32_t precision, int32_t out_dtype, bool overwrite,
                                  size_t chunk_bytes, uintptr_t progress_handle, uint32_t num_shards,
                                  uint32_t shard_index, bool shards_from_env, char *const *keys,
                                  char *const *values, size_t n_options, const char *input,
                                  const char *output_dir, isoclip_job **out, uint32_t *num_shards_out,
                                  uint32_t *shard_index_out, isoclip_go_failure *msg);
isoclip_status isoclip_go_job_run(isoclip_job *job, isoclip_go_failure *msg);
isoclip_status isoclip_go_job_stat(const isoclip_job *job, int32_t which, uint64_t *out, isoclip_go_failure *msg);
isoclip_status isoclip_go_job_summary(const isoclip_job *job, char **out, isoclip_go_failure *msg);

#endif
