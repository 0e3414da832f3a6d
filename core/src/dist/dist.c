/* dualparal: the launcher's environment, the model fingerprint, engine
 * settings on the wire and the data links (dist.h). */
#include "dist/dist.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <netinet/in.h>
#include <netinet/tcp.h>

double
dp_dist_timeout (const char *name, double fallback)
{
  const char *v = g_getenv (name);
  if (!v || !*v)
    return fallback;
  char *end = NULL;
  double d = g_ascii_strtod (v, &end);
  return end && !*end && d > 0 ? d : fallback;
}

/* ------------------------------------------------------------ launcher */

static gboolean
env_int (const char *name, int lo, int hi, int *out, GError **error)
{
  const char *v = g_getenv (name);
  gint64 x;
  if (!v || !g_ascii_string_to_signed (v, 10, lo, hi, &x, NULL)) {
    g_set_error (error, DP_ERROR, DP_ERROR_INVALID, "%s=\"%s\": expected a whole number %d..%d", name,
                 v ? v : "", lo, hi);
    return FALSE;
  }
  *out = (int) x;
  return TRUE;
}

gboolean
dp_launch_env_read (dp_launch_env *env, GError **error)
{
  static const struct {
    const char *launcher, *rank, *size, *local;
  } kinds[] = {
    { "torchrun", "RANK", "WORLD_SIZE", "LOCAL_RANK" },
    { "slurm", "SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID" },
    { "mpirun", "OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_LOCAL_RANK" },
  };
  memset (env, 0, sizeof *env);
  env->local_rank = -1;
  for (size_t i = 0; i < G_N_ELEMENTS (kinds); i++) {
    if (!g_getenv (kinds[i].rank))
      continue;
    if (!env_int (kinds[i].size, 1, DP_ENGINE_MAX_STAGES, &env->world_size, error) ||
        !env_int (kinds[i].rank, 0, env->world_size - 1, &env->rank, error))
      return FALSE;
    if (g_getenv (kinds[i].local) && !env_int (kinds[i].local, 0, 1 << 16, &env->local_rank, error))
      return FALSE;
    env->launcher = kinds[i].launcher;
    break;
  }
  if (!env->launcher) {
    g_set_error (error, DP_ERROR, DP_ERROR_INVALID,
                 "no launcher environment: set RANK and WORLD_SIZE (torchrun style), or run under srun "
                 "(SLURM_PROCID, SLURM_NTASKS) or mpirun (OMPI_COMM_WORLD_RANK, OMPI_COMM_WORLD_SIZE)");
    return FALSE;
  }
  const char *addr = g_getenv ("MASTER_ADDR");
  env->master_addr = g_strdup (addr && *addr ? addr : "127.0.0.1");
  env->master_port = DP_DIST_DEFAULT_PORT;
  if (g_getenv ("MASTER_PORT") && !env_int ("MASTER_PORT", 1, 65535, &env->master_port, error)) {
    dp_launch_env_clear (env);
    return FALSE;
  }
  return TRUE;
}

void
dp_launch_env_clear (dp_launch_env *env)
{
  g_clear_pointer (&env->master_addr, g_free);
}

/* ------------------------------------------------------------ fingerprint */

static int
compare_names (gconstpointer a, gconstpointer b)
{
  return strcmp (*(char *const *) a, *(char *const *) b);
}

/* Adds one transformer folder (config.json, then each safetensors header
 * in name order) to sum. */
static gboolean
hash_transformer (GChecksum *sum, const char *dir, GError **error)
{
  char *config = g_build_filename (dir, "config.json", NULL);
  char *text = NULL;
  gsize len = 0;
  GError *io = NULL;
  gboolean ok = g_file_get_contents (config, &text, &len, &io);
  if (ok)
    g_checksum_update (sum, (const guchar *) text, len);
  g_free (text);
  g_free (config);
  GPtrArray *names = g_ptr_array_new_with_free_func (g_free);
  GDir *d = ok ? g_dir_open (dir, 0, &io) : NULL;
  ok = d != NULL;
  for (const char *n; d && (n = g_dir_read_name (d));)
    if (g_str_has_suffix (n, ".safetensors"))
      g_ptr_array_add (names, g_strdup (n));
  if (d)
    g_dir_close (d);
  g_ptr_array_sort (names, compare_names);
  for (guint i = 0; ok && i < names->len; i++) {
    char *path = g_build_filename (dir, names->pdata[i], NULL);
    FILE *f = fopen (path, "rb");
    guint64 hlen = 0;
    guint8 *head = NULL;
    ok = f && fread (&hlen, 8, 1, f) == 1 && (hlen = GUINT64_FROM_LE (hlen)) < (100u << 20) &&
         (head = g_try_malloc (hlen + 1)) && fread (head, 1, hlen, f) == hlen;
    if (ok) {
      g_checksum_update (sum, (const guchar *) names->pdata[i], -1);
      g_checksum_update (sum, head, hlen);
    } else {
      g_set_error (&io, DP_ERROR, DP_ERROR_FORMAT, "%s: cannot read its safetensors header", path);
    }
    g_free (head);
    if (f)
      fclose (f);
    g_free (path);
  }
  g_ptr_array_unref (names);
  if (!ok) {
    g_set_error (error, DP_ERROR, DP_ERROR_MISSING, "model fingerprint of %s: %s", dir, io ? io->message : "");
    g_clear_error (&io);
  }
  return ok;
}

char *
dp_dist_model_fingerprint (const char *model_dir, GError **error)
{
  GChecksum *sum = g_checksum_new (G_CHECKSUM_SHA256);
  char *dir = g_build_filename (model_dir, "transformer", NULL);
  char *dir2 = g_build_filename (model_dir, "transformer_2", NULL);
  /* A Wan2.2 two-expert model's second transformer counts too. */
  gboolean ok = hash_transformer (sum, dir, error) &&
                (!g_file_test (dir2, G_FILE_TEST_IS_DIR) || hash_transformer (sum, dir2, error));
  char *hex = ok ? g_strdup (g_checksum_get_string (sum)) : NULL;
  g_checksum_free (sum);
  g_free (dir);
  g_free (dir2);
  return hex;
}

/* ------------------------------------------------------------ engine settings */

void
dp_dist_add_engine_params (JsonBuilder *b, const dp_engine_params *p)
{
  dp_ctl_add_int (b, "block_frames", p->block_frames);
  dp_ctl_add_int (b, "context_frames", p->context_frames);
  dp_ctl_add_int (b, "latent_frames", p->latent_frames);
  dp_ctl_add_int (b, "latent_height", p->latent_height);
  dp_ctl_add_int (b, "latent_width", p->latent_width);
  dp_ctl_add_double (b, "guidance", p->guidance);
  char seed[32]; /* a u64 may be beyond JSON's int64 */
  g_snprintf (seed, sizeof seed, "%" G_GUINT64_FORMAT, p->seed);
  json_builder_set_member_name (b, "seed");
  json_builder_add_string_value (b, seed);
  dp_ctl_add_int (b, "noise_stream", (gint64) p->noise_stream);
  /* Wan2.2 two experts: the worker loads transformer_2 beside
   * transformer (of its own model directory). */
  dp_ctl_add_int (b, "two_experts", p->expert2_dir != NULL);
  dp_ctl_add_double (b, "boundary", p->boundary);
  dp_ctl_add_double (b, "guidance_2", p->guidance_2);
  /* Wan2.2 TI2V: every stage gives the context frames their own timestep. */
  dp_ctl_add_int (b, "per_token_time", p->per_token_time != 0);
  dp_ctl_add_int (b, "steps", p->schedule->steps);
  dp_ctl_add_int (b, "sampler", p->schedule->settings.kind);
  json_builder_set_member_name (b, "schedule");
  json_builder_begin_object (b);
  for (int i = 0; i <= p->schedule->steps; i++) {
    char key[32];
    g_snprintf (key, sizeof key, "sigma%d", i);
    dp_ctl_add_double (b, key, p->schedule->sigmas[i]);
    if (i < p->schedule->steps) {
      g_snprintf (key, sizeof key, "t%d", i);
      dp_ctl_add_double (b, key, p->schedule->timesteps[i]);
    }
  }
  json_builder_end_object (b);
}

gboolean
dp_dist_read_engine_params (JsonObject *o, dp_engine_params *p, dp_schedule **schedule, gboolean *two_experts,
                            GError **error)
{
  gint64 P, C, F, H, W, stream, steps, kind, experts, per_token;
  const char *seed;
  memset (p, 0, sizeof *p);
  *schedule = NULL;
  if (!dp_ctl_get_int (o, "block_frames", 1, 1 << 20, &P, error) ||
      !dp_ctl_get_int (o, "context_frames", 0, 1 << 20, &C, error) ||
      !dp_ctl_get_int (o, "latent_frames", -1, G_MAXINT64, &F, error) ||
      !dp_ctl_get_int (o, "latent_height", 1, 1 << 16, &H, error) ||
      !dp_ctl_get_int (o, "latent_width", 1, 1 << 16, &W, error) ||
      !dp_ctl_get_double (o, "guidance", &p->guidance, error) ||
      !(seed = dp_ctl_get_string (o, "seed", error)) ||
      !dp_ctl_get_int (o, "noise_stream", 0, G_MAXINT64, &stream, error) ||
      !dp_ctl_get_int (o, "steps", 1, DP_SAMPLER_MAX_STEPS, &steps, error) ||
      !dp_ctl_get_int (o, "sampler", 0, 16, &kind, error) ||
      !dp_ctl_get_int (o, "two_experts", 0, 1, &experts, error) ||
      !dp_ctl_get_double (o, "boundary", &p->boundary, error) ||
      !dp_ctl_get_double (o, "guidance_2", &p->guidance_2, error) ||
      !dp_ctl_get_int (o, "per_token_time", 0, 1, &per_token, error))
    return FALSE;
  *two_experts = experts != 0;
  p->per_token_time = per_token != 0;
  guint64 seed_v;
  if (!g_ascii_string_to_unsigned (seed, 10, 0, G_MAXUINT64, &seed_v, error))
    return FALSE;
  JsonNode *sn = json_object_get_member (o, "schedule");
  if (!sn || !JSON_NODE_HOLDS_OBJECT (sn)) {
    g_set_error (error, DP_ERROR, DP_ERROR_FORMAT, "control: SETUP without a schedule");
    return FALSE;
  }
  JsonObject *so = json_node_get_object (sn);
  dp_schedule *s = g_new0 (dp_schedule, 1);
  s->settings.kind = (dp_sampler_kind) kind;
  s->steps = (int) steps;
  s->sigmas = g_new0 (double, steps + 1);
  s->timesteps = g_new0 (double, steps);
  for (int i = 0; i <= steps; i++) {
    char key[32];
    g_snprintf (key, sizeof key, "sigma%d", i);
    gboolean ok = dp_ctl_get_double (so, key, &s->sigmas[i], error);
    if (ok && i < steps) {
      g_snprintf (key, sizeof key, "t%d", i);
      ok = dp_ctl_get_double (so, key, &s->timesteps[i], error);
    }
    if (!ok) {
      dp_schedule_free (s);
      return FALSE;
    }
  }
  p->block_frames = (int) P;
  p->context_frames = (int) C;
  p->latent_frames = F;
  p->latent_height = (int) H;
  p->latent_width = (int) W;
  p->seed = seed_v;
  p->noise_stream = (uint64_t) stream;
  p->schedule = s;
  *schedule = s;
  return TRUE;
}

/* ------------------------------------------------------------ sockets */

GSocket *
dp_dist_listen (const char *host, int port, int *bound_port, GError **error)
{
  GError *io = NULL;
  GInetAddress *ia = g_inet_address_new_from_string (host);
  if (!ia) {
    /* A name: the first address it resolves to. */
    GList *list = g_resolver_lookup_by_name (g_resolver_get_default (), host, NULL, &io);
    if (list) {
      ia = g_object_ref (list->data);
      g_resolver_free_addresses (list);
    }
  }
  GSocket *sock = NULL;
  if (ia) {
    GSocketAddress *sa = g_inet_socket_address_new (ia, (guint16) port);
    sock = g_socket_new (g_inet_address_get_family (ia), G_SOCKET_TYPE_STREAM, G_SOCKET_PROTOCOL_TCP, &io);
    if (sock && (!g_socket_bind (sock, sa, TRUE, &io) || !g_socket_listen (sock, &io)))
      g_clear_object (&sock);
    g_object_unref (sa);
    g_object_unref (ia);
  }
  if (!sock) {
    g_set_error (error, DP_ERROR, DP_ERROR_IO, "cannot listen on %s:%d: %s", host, port,
                 io ? io->message : "not an address");
    g_clear_error (&io);
    return NULL;
  }
  GSocketAddress *local = g_socket_get_local_address (sock, NULL);
  *bound_port = local ? g_inet_socket_address_get_port (G_INET_SOCKET_ADDRESS (local)) : port;
  g_clear_object (&local);
  return sock;
}

GSocketConnection *
dp_dist_accept (GSocket *listener, double timeout_s, GCancellable *cancel, GError **error)
{
  GError *io = NULL;
  if (!g_socket_condition_timed_wait (listener, G_IO_IN, timeout_s > 0 ? (gint64) (timeout_s * 1e6) : -1, cancel,
                                      &io)) {
    const gboolean cancelled = g_error_matches (io, G_IO_ERROR, G_IO_ERROR_CANCELLED);
    g_set_error (error, DP_ERROR, cancelled ? DP_ERROR_CANCELLED : DP_ERROR_IO, "%s",
                 cancelled ? "cancelled" : "no connection within the deadline");
    g_error_free (io);
    return NULL;
  }
  GSocket *s = g_socket_accept (listener, cancel, &io);
  if (!s) {
    g_set_error (error, DP_ERROR, DP_ERROR_IO, "accepting a connection: %s", io->message);
    g_error_free (io);
    return NULL;
  }
  g_socket_set_blocking (s, TRUE);
  GSocketConnection *c = g_socket_connection_factory_create_connection (s);
  g_object_unref (s);
  return c;
}

GSocketConnection *
dp_dist_link_connect (const char *host, int port, const char *secret, guint64 run, int from, double timeout_s,
                      GError **error)
{
  GSocketClient *client = g_socket_client_new ();
  g_socket_client_set_timeout (client, (guint) MAX (1.0, timeout_s));
  GError *io = NULL;
  GSocketConnection *conn = g_socket_client_connect_to_host (client, host, (guint16) port, NULL, &io);
  g_object_unref (client);
  if (!conn) {
    g_set_error (error, DP_ERROR, DP_ERROR_IO, "data link from stage %d to %s:%d: %s", from, host, port, io->message);
    g_error_free (io);
    return NULL;
  }
  g_socket_set_option (g_socket_connection_get_socket (conn), IPPROTO_TCP, TCP_NODELAY, 1, NULL);
  char nonce[32];
  g_snprintf (nonce, sizeof nonce, "%" G_GUINT64_FORMAT ":%d", run, from);
  char *proof = dp_ctl_proof (secret, "dualparal-link", nonce);
  JsonBuilder *b = json_builder_new ();
  json_builder_begin_object (b);
  json_builder_set_member_name (b, "run");
  json_builder_add_int_value (b, (gint64) run);
  json_builder_set_member_name (b, "from");
  json_builder_add_int_value (b, from);
  json_builder_set_member_name (b, "proof");
  json_builder_add_string_value (b, proof);
  json_builder_end_object (b);
  g_free (proof);
  dp_ctl_conn *c = dp_ctl_conn_new (conn);
  gboolean ok = dp_ctl_send_json (c, DP_CTL_LINK, b, error);
  g_object_unref (dp_ctl_conn_steal (c));
  if (!ok)
    g_clear_object (&conn);
  return conn;
}

GSocketConnection *
dp_dist_link_accept (GSocket *listener, const char *secret, guint64 run, int from, double timeout_s, GError **error)
{
  const gint64 deadline = g_get_monotonic_time () + (gint64) (timeout_s * 1e6);
  GString *refused = g_string_new (NULL);
  for (;;) {
    const double left = (deadline - g_get_monotonic_time ()) / 1e6;
    GError *e = NULL;
    GSocketConnection *conn = left > 0 ? dp_dist_accept (listener, left, NULL, &e) : NULL;
    if (!conn) {
      g_set_error (error, DP_ERROR, DP_ERROR_IO, "data link from stage %d: %s%s%s", from,
                   e ? e->message : "no connection within the deadline", refused->len ? "; refused: " : "",
                   refused->str);
      g_clear_error (&e);
      g_string_free (refused, TRUE);
      return NULL;
    }
    dp_ctl_conn *c = dp_ctl_conn_new (conn);
    dp_ctl_msg m;
    JsonObject *o = NULL;
    JsonParser *p = NULL;
    gboolean good = dp_ctl_recv (c, MIN (left, 10.0), &m, &e) && m.type == DP_CTL_LINK && (p = dp_ctl_parse (&m, &o, &e));
    if (good) {
      gint64 r = -1, f = -1;
      char nonce[32];
      g_snprintf (nonce, sizeof nonce, "%" G_GUINT64_FORMAT ":%d", run, from);
      char *want = dp_ctl_proof (secret, "dualparal-link", nonce);
      good = dp_ctl_get_int (o, "run", 0, G_MAXINT64, &r, NULL) && dp_ctl_get_int (o, "from", 0, 1 << 16, &f, NULL) &&
             (guint64) r == run && f == from && json_object_has_member (o, "proof") &&
             dp_ctl_proof_equal (json_object_get_string_member (o, "proof"), want);
      g_free (want);
      if (!good)
        g_string_append_printf (refused, "%s%s (not this run's stage %d, or a wrong proof)", refused->len ? ", " : "",
                                c->peer, from);
    } else {
      g_string_append_printf (refused, "%s%s (%s)", refused->len ? ", " : "", c->peer, e ? e->message : "not a link");
    }
    g_clear_error (&e);
    g_clear_object (&p);
    dp_ctl_msg_clear (&m);
    if (good) {
      g_object_unref (dp_ctl_conn_steal (c));
      g_string_free (refused, TRUE);
      return conn;
    }
    dp_ctl_conn_free (c);
    g_object_unref (conn);
  }
}
