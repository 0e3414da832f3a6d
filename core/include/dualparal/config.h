/* dualparal: reading diffusers config.json files.
 *
 * Every getter fails with a GError (DP_ERROR_FORMAT / DP_ERROR_MISSING) that
 * names the file and the key, so a wrong config is reported, never guessed.
 * Getters with a _or suffix return the default when the key is absent (a
 * present key of the wrong type is still an error).
 */
#ifndef DUALPARAL_CONFIG_H
#define DUALPARAL_CONFIG_H

#include <glib.h>
#include <stdint.h>

G_BEGIN_DECLS

typedef struct dp_config dp_config;

dp_config *dp_config_load (const char *path, GError **error);
void dp_config_free (dp_config *cfg);
const char *dp_config_path (const dp_config *cfg);

gboolean dp_config_has (const dp_config *cfg, const char *key);
gboolean dp_config_int (const dp_config *cfg, const char *key, int64_t *out, GError **error);
gboolean dp_config_int_or (const dp_config *cfg, const char *key, int64_t def, int64_t *out,
                           GError **error);
/* An integer in [min, max] (the default too), as an int; a value outside is
 * DP_ERROR_FORMAT naming the key, the value and the range. */
gboolean dp_config_int_range (const dp_config *cfg, const char *key, int min, int max, int *out,
                              GError **error);
gboolean dp_config_int_range_or (const dp_config *cfg, const char *key, int64_t def, int min, int max,
                                 int *out, GError **error);
gboolean dp_config_double (const dp_config *cfg, const char *key, double *out, GError **error);
gboolean dp_config_double_or (const dp_config *cfg, const char *key, double def, double *out,
                              GError **error);
gboolean dp_config_bool_or (const dp_config *cfg, const char *key, gboolean def, gboolean *out,
                            GError **error);
/* The string value (borrowed from cfg), or NULL with an error. */
const char *dp_config_string (const dp_config *cfg, const char *key, GError **error);
/* TRUE when key is absent or null, or is the string `expected`; else FALSE
 * with DP_ERROR_FORMAT (not a string) or DP_ERROR_UNSUPPORTED naming the
 * file, key, value and what was expected.  For the keys that name a model
 * class or variant (_class_name, model_type, ...): another value is a model
 * this code does not run, never something to guess about. */
gboolean dp_config_expect_string (const dp_config *cfg, const char *key, const char *expected,
                                  GError **error);
/* Numeric array of exactly n elements. */
gboolean dp_config_double_array (const dp_config *cfg, const char *key, double *out, int n,
                                 GError **error);
/* Arrays of any length up to max_n elements; the count in *n_out. */
gboolean dp_config_int_array (const dp_config *cfg, const char *key, int64_t *out, int max_n,
                              int *n_out, GError **error);
gboolean dp_config_bool_array (const dp_config *cfg, const char *key, gboolean *out, int max_n,
                               int *n_out, GError **error);

G_END_DECLS

#endif
