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
gboolean dp_config_double (const dp_config *cfg, const char *key, double *out, GError **error);
gboolean dp_config_double_or (const dp_config *cfg, const char *key, double def, double *out,
                              GError **error);
gboolean dp_config_bool_or (const dp_config *cfg, const char *key, gboolean def, gboolean *out,
                            GError **error);
/* The string value (borrowed from cfg), or NULL with an error. */
const char *dp_config_string (const dp_config *cfg, const char *key, GError **error);
/* Numeric array of exactly n elements (n < 0: any length up to max_n, count in *n_out). */
gboolean dp_config_double_array (const dp_config *cfg, const char *key, double *out, int n,
                                 GError **error);
gboolean dp_config_int_array (const dp_config *cfg, const char *key, int64_t *out, int max_n,
                              int *n_out, GError **error);

G_END_DECLS

#endif
