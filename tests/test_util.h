/* Helpers shared by the test programs (tests/meson.build links test_util.c
 * into the ones that include this).  Every helper asserts on failure
 * (GTest), so callers need no error handling; returned strings, buffers
 * and parsers belong to the caller. */
#ifndef DP_TEST_UTIL_H
#define DP_TEST_UTIL_H

#include <stddef.h>

#include <glib.h>
#include <json-glib/json-glib.h>

#include "dualparal/backend.h"
#include "dualparal/safetensors.h"

G_BEGIN_DECLS

/* $DP_TEST_DATA/first/... (NULL-terminated path elements). */
char *dp_test_data_path (const char *first, ...) G_GNUC_NULL_TERMINATED;

/* A new directory under the system temp dir; tmpl ends in XXXXXX. */
char *dp_test_make_tmp_dir (const char *tmpl);
/* Copies the files and folders below `from` into `to` (made if needed). */
void dp_test_copy_tree (const char *from, const char *to);
/* Removes path: a file, or a folder and everything below it.  A path that
 * does not exist is fine. */
void dp_test_remove_tree (const char *path);

/* The whole file (NUL-terminated beyond *len); len may be NULL. */
char *dp_test_read_file (const char *path, gsize *len);
/* A parser holding the JSON file (json_parser_get_root for the root). */
JsonParser *dp_test_parse_json (const char *path);

/* Writes root (a JSON tree, borrowed) to path. */
void dp_test_write_json (const char *path, JsonNode *root);

/* Writing safetensors files: tensors are added in order, then save writes
 * the u64 LE header length, the JSON header padded with spaces to a
 * multiple of 8 bytes, and the data; it frees the writer.  dtype is the
 * file's label ("F32", "BF16", ... or a wrong one on purpose); data holds
 * nbytes bytes (copied). */
typedef struct dp_test_st_writer dp_test_st_writer;
dp_test_st_writer *dp_test_st_writer_new (void);
void dp_test_st_writer_add (dp_test_st_writer *w, const char *name, const char *dtype, int ndim,
                            const int64_t *shape, const void *data, size_t nbytes);
void dp_test_st_writer_save (dp_test_st_writer *w, const char *path);
/* The tensors of src, in its order, except the one named skip (NULL:
 * none), into a new file at path. */
void dp_test_write_safetensors_copy (const char *path, const dp_safetensors *src, const char *skip);

/* The CPU backend. */
dp_backend *dp_test_cpu_backend (void);

/* ||a - ref||_2 / ||ref||_2 over n floats, in double precision (a zero
 * reference gives ||a|| / 1e-15, so any difference fails a tolerance). */
double dp_test_rel_l2 (const float *a, const float *ref, size_t n);

G_END_DECLS

#endif
