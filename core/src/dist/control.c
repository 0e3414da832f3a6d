/* dualparal: the control channel's messages, deadlines and proofs
 * (control.h). */
#include "dist/control.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

#include <netinet/in.h>
#include <netinet/tcp.h>

void
dp_ctl_msg_clear (dp_ctl_msg *m)
{
  g_free (m->payload);
  memset (m, 0, sizeof *m);
}

const char *
dp_ctl_type_name (int type)
{
  static const char *const names[] = {
    "?", "HELLO", "CHALLENGE", "AUTH", "WELCOME", "SETUP", "READY", "RUN", "CONTEXT",
    "DONE", "ERROR", "CANCEL", "PING", "SHUTDOWN", "LINK", "COND",
  };
  return type > 0 && type < (int) G_N_ELEMENTS (names) ? names[type] : "?";
}

dp_ctl_conn *
dp_ctl_conn_new (GSocketConnection *conn)
{
  dp_ctl_conn *c = g_new0 (dp_ctl_conn, 1);
  c->conn = g_object_ref (conn);
  g_mutex_init (&c->write_lock);
  GSocketAddress *a = g_socket_connection_get_remote_address (conn, NULL);
  if (G_IS_INET_SOCKET_ADDRESS (a)) {
    char *host = g_inet_address_to_string (g_inet_socket_address_get_address (G_INET_SOCKET_ADDRESS (a)));
    c->peer = g_strdup_printf ("%s:%u", host, g_inet_socket_address_get_port (G_INET_SOCKET_ADDRESS (a)));
    g_free (host);
  } else {
    c->peer = g_strdup ("(unknown peer)");
  }
  g_clear_object (&a);
  /* Control messages are small and latency matters (a cancel). */
  g_socket_set_option (g_socket_connection_get_socket (conn), IPPROTO_TCP, TCP_NODELAY, 1, NULL);
  return c;
}

void
dp_ctl_conn_shutdown (dp_ctl_conn *c)
{
  if (c)
    g_socket_shutdown (g_socket_connection_get_socket (c->conn), TRUE, TRUE, NULL);
}

GSocketConnection *
dp_ctl_conn_steal (dp_ctl_conn *c)
{
  GSocketConnection *conn = c->conn;
  g_mutex_clear (&c->write_lock);
  g_free (c->peer);
  g_free (c);
  return conn;
}

void
dp_ctl_conn_free (dp_ctl_conn *c)
{
  if (!c)
    return;
  g_io_stream_close (G_IO_STREAM (c->conn), NULL, NULL);
  g_object_unref (c->conn);
  g_mutex_clear (&c->write_lock);
  g_free (c->peer);
  g_free (c);
}

gboolean
dp_ctl_send_version (dp_ctl_conn *c, int version, int type, const void *payload, gsize length, GError **error)
{
  if (length > DP_CTL_MAX_PAYLOAD) {
    g_set_error (error, DP_ERROR, DP_ERROR_INVALID, "control: a %s message of %zu bytes is too long",
                 dp_ctl_type_name (type), length);
    return FALSE;
  }
  guint8 head[12];
  const guint32 magic = GUINT32_TO_LE (DP_CTL_MAGIC), len = GUINT32_TO_LE ((guint32) length);
  const guint16 ver = GUINT16_TO_LE ((guint16) version), ty = GUINT16_TO_LE ((guint16) type);
  memcpy (head, &magic, 4);
  memcpy (head + 4, &ver, 2);
  memcpy (head + 6, &ty, 2);
  memcpy (head + 8, &len, 4);
  GOutputStream *out = g_io_stream_get_output_stream (G_IO_STREAM (c->conn));
  GError *io = NULL;
  g_mutex_lock (&c->write_lock);
  gboolean ok = g_output_stream_write_all (out, head, sizeof head, NULL, NULL, &io) &&
                (length == 0 || g_output_stream_write_all (out, payload, length, NULL, NULL, &io));
  g_mutex_unlock (&c->write_lock);
  if (!ok) {
    g_set_error (error, DP_ERROR, DP_ERROR_IO, "control: sending %s to %s: %s", dp_ctl_type_name (type), c->peer,
                 io->message);
    g_error_free (io);
  }
  return ok;
}

gboolean
dp_ctl_send (dp_ctl_conn *c, int type, const void *payload, gsize length, GError **error)
{
  return dp_ctl_send_version (c, DP_CTL_VERSION, type, payload, length, error);
}

gboolean
dp_ctl_send_json (dp_ctl_conn *c, int type, JsonBuilder *b, GError **error)
{
  JsonNode *root = json_builder_get_root (b);
  char *text = json_to_string (root, FALSE);
  gboolean ok = dp_ctl_send (c, type, text, strlen (text), error);
  g_free (text);
  json_node_unref (root);
  g_object_unref (b);
  return ok;
}

void
dp_ctl_send_error (dp_ctl_conn *c, const GError *error)
{
  JsonBuilder *b = json_builder_new ();
  json_builder_begin_object (b);
  json_builder_set_member_name (b, "message");
  json_builder_add_string_value (b, error ? error->message : "(no message)");
  json_builder_set_member_name (b, "code");
  json_builder_add_int_value (b, error && error->domain == DP_ERROR ? error->code : DP_ERROR_FAILED);
  json_builder_end_object (b);
  dp_ctl_send_json (c, DP_CTL_ERROR, b, NULL);
}

/* Reads exactly n bytes before the deadline (monotonic microseconds, 0:
 * none). */
static gboolean
read_exact (dp_ctl_conn *c, void *buf, gsize n, gint64 deadline, const char *what, GError **error)
{
  GSocket *sock = g_socket_connection_get_socket (c->conn);
  GInputStream *in = g_io_stream_get_input_stream (G_IO_STREAM (c->conn));
  gsize done = 0;
  while (done < n) {
    if (deadline) {
      const gint64 left = deadline - g_get_monotonic_time ();
      GError *io = NULL;
      if (left <= 0 || !g_socket_condition_timed_wait (sock, G_IO_IN, left, NULL, &io)) {
        g_clear_error (&io);
        g_set_error (error, DP_ERROR, DP_ERROR_IO, "control: %s sent no %s within the deadline", c->peer, what);
        return FALSE;
      }
    }
    GError *io = NULL;
    gssize got = g_input_stream_read (in, (guint8 *) buf + done, n - done, NULL, &io);
    if (got <= 0) {
      g_set_error (error, DP_ERROR, DP_ERROR_IO, "control: the connection to %s closed%s%s", c->peer,
                   io ? ": " : "", io ? io->message : "");
      g_clear_error (&io);
      return FALSE;
    }
    done += (gsize) got;
  }
  return TRUE;
}

gboolean
dp_ctl_recv (dp_ctl_conn *c, double timeout_s, dp_ctl_msg *m, GError **error)
{
  memset (m, 0, sizeof *m);
  const gint64 deadline = timeout_s > 0 ? g_get_monotonic_time () + (gint64) (timeout_s * 1e6) : 0;
  guint8 head[12];
  if (!read_exact (c, head, sizeof head, deadline, "message", error))
    return FALSE;
  guint32 magic, len;
  guint16 ver, ty;
  memcpy (&magic, head, 4);
  memcpy (&ver, head + 4, 2);
  memcpy (&ty, head + 6, 2);
  memcpy (&len, head + 8, 4);
  if (GUINT32_FROM_LE (magic) != DP_CTL_MAGIC) {
    g_set_error (error, DP_ERROR, DP_ERROR_FORMAT, "control: %s does not speak dualparal's protocol (bad magic)",
                 c->peer);
    return FALSE;
  }
  m->type = GUINT16_FROM_LE (ty);
  m->version = GUINT16_FROM_LE (ver);
  m->length = GUINT32_FROM_LE (len);
  if (m->length > DP_CTL_MAX_PAYLOAD) {
    g_set_error (error, DP_ERROR, DP_ERROR_FORMAT, "control: %s sent a %zu-byte message (at most %u)", c->peer,
                 m->length, DP_CTL_MAX_PAYLOAD);
    return FALSE;
  }
  m->payload = g_try_malloc (m->length + 1);
  if (!m->payload) {
    g_set_error (error, DP_ERROR, DP_ERROR_NOMEM, "control: no memory for a %zu-byte message", m->length);
    return FALSE;
  }
  m->payload[m->length] = 0;
  if (!read_exact (c, m->payload, m->length, deadline, "whole message", error)) {
    dp_ctl_msg_clear (m);
    return FALSE;
  }
  if (m->version != DP_CTL_VERSION) {
    if (m->type == DP_CTL_ERROR) {
      GError *e = dp_ctl_error_from_msg (m, c->peer);
      g_set_error (error, DP_ERROR, DP_ERROR_UNSUPPORTED, "%s (the peer speaks protocol version %d, this is %d)",
                   e->message, m->version, DP_CTL_VERSION);
      g_error_free (e);
    } else {
      g_set_error (error, DP_ERROR, DP_ERROR_UNSUPPORTED,
                   "control: %s speaks protocol version %d, this is version %d: run the same dualparal release on "
                   "every process", c->peer, m->version, DP_CTL_VERSION);
    }
    dp_ctl_msg_clear (m);
    return FALSE;
  }
  return TRUE;
}

JsonParser *
dp_ctl_parse (const dp_ctl_msg *m, JsonObject **obj, GError **error)
{
  JsonParser *p = json_parser_new ();
  GError *je = NULL;
  if (!json_parser_load_from_data (p, (const char *) m->payload, (gssize) m->length, &je) ||
      !JSON_NODE_HOLDS_OBJECT (json_parser_get_root (p))) {
    g_set_error (error, DP_ERROR, DP_ERROR_FORMAT, "control: a %s message that is not a JSON object%s%s",
                 dp_ctl_type_name (m->type), je ? ": " : "", je ? je->message : "");
    g_clear_error (&je);
    g_object_unref (p);
    return NULL;
  }
  *obj = json_node_get_object (json_parser_get_root (p));
  return p;
}

GError *
dp_ctl_error_from_msg (const dp_ctl_msg *m, const char *who)
{
  JsonObject *o = NULL;
  JsonParser *p = dp_ctl_parse (m, &o, NULL);
  const char *text = p && json_object_has_member (o, "message") ? json_object_get_string_member (o, "message") : NULL;
  gint64 code = p && json_object_has_member (o, "code") ? json_object_get_int_member (o, "code") : DP_ERROR_FAILED;
  GError *e = g_error_new (DP_ERROR, (int) CLAMP (code, 0, DP_ERROR_NUMERIC), "%s: %s", who,
                           text ? text : "(an error without a message)");
  g_clear_object (&p);
  return e;
}

char *
dp_ctl_secret_from_env (GError **error)
{
  const char *v = g_getenv ("DUALPARAL_SECRET");
  if (v && *v)
    return g_strdup (v);
  const char *file = g_getenv ("DUALPARAL_SECRET_FILE");
  if (file && *file) {
    char *text = NULL;
    GError *io = NULL;
    if (!g_file_get_contents (file, &text, NULL, &io)) {
      g_set_error (error, DP_ERROR, DP_ERROR_INVALID, "DUALPARAL_SECRET_FILE: %s", io->message);
      g_error_free (io);
      return NULL;
    }
    g_strchomp (text);
    if (*text)
      return text;
    g_free (text);
    g_set_error (error, DP_ERROR, DP_ERROR_INVALID, "DUALPARAL_SECRET_FILE: %s is empty", file);
    return NULL;
  }
  g_set_error (error, DP_ERROR, DP_ERROR_INVALID,
               "no shared secret: set DUALPARAL_SECRET, or DUALPARAL_SECRET_FILE to a file holding it, to the same "
               "value for every process of the job (never on a command line)");
  return NULL;
}

char *
dp_ctl_random_hex (void)
{
  guint8 bytes[32];
  gboolean ok = FALSE;
  FILE *f = fopen ("/dev/urandom", "rb");
  if (f) {
    ok = fread (bytes, 1, sizeof bytes, f) == sizeof bytes;
    fclose (f);
  }
  if (!ok) /* no /dev/urandom: GLib's generator, seeded from the clock and pid */
    for (size_t i = 0; i < sizeof bytes; i++)
      bytes[i] = (guint8) g_random_int ();
  GString *s = g_string_sized_new (65);
  for (size_t i = 0; i < sizeof bytes; i++)
    g_string_append_printf (s, "%02x", bytes[i]);
  return g_string_free (s, FALSE);
}

char *
dp_ctl_proof (const char *secret, const char *label, const char *nonce)
{
  char *data = g_strdup_printf ("%s:%s", label, nonce);
  char *mac = g_compute_hmac_for_string (G_CHECKSUM_SHA256, (const guchar *) secret, strlen (secret), data, -1);
  g_free (data);
  return mac;
}

gboolean
dp_ctl_proof_equal (const char *a, const char *b)
{
  if (!a || !b)
    return FALSE;
  const size_t n = strlen (a);
  if (n != strlen (b))
    return FALSE;
  unsigned diff = 0;
  for (size_t i = 0; i < n; i++)
    diff |= (unsigned char) a[i] ^ (unsigned char) b[i];
  return diff == 0;
}

gboolean
dp_ctl_get_int (JsonObject *o, const char *key, gint64 lo, gint64 hi, gint64 *out, GError **error)
{
  JsonNode *n = json_object_get_member (o, key);
  if (!n || !JSON_NODE_HOLDS_VALUE (n) || json_node_get_value_type (n) != G_TYPE_INT64 ||
      json_node_get_int (n) < lo || json_node_get_int (n) > hi) {
    g_set_error (error, DP_ERROR, DP_ERROR_FORMAT, "control: \"%s\" missing or outside %" G_GINT64_FORMAT "..%"
                 G_GINT64_FORMAT, key, lo, hi);
    return FALSE;
  }
  *out = json_node_get_int (n);
  return TRUE;
}

const char *
dp_ctl_get_string (JsonObject *o, const char *key, GError **error)
{
  JsonNode *n = json_object_get_member (o, key);
  if (!n || !JSON_NODE_HOLDS_VALUE (n) || json_node_get_value_type (n) != G_TYPE_STRING) {
    g_set_error (error, DP_ERROR, DP_ERROR_FORMAT, "control: \"%s\" missing or not a string", key);
    return NULL;
  }
  return json_node_get_string (n);
}

void
dp_ctl_add_int (JsonBuilder *b, const char *key, gint64 v)
{
  json_builder_set_member_name (b, key);
  json_builder_add_int_value (b, v);
}

void
dp_ctl_add_string (JsonBuilder *b, const char *key, const char *v)
{
  json_builder_set_member_name (b, key);
  json_builder_add_string_value (b, v);
}

void
dp_ctl_add_double (JsonBuilder *b, const char *key, double v)
{
  char buf[G_ASCII_DTOSTR_BUF_SIZE];
  g_ascii_formatd (buf, sizeof buf, "%.17g", v);
  json_builder_set_member_name (b, key);
  json_builder_add_string_value (b, buf);
}

gboolean
dp_ctl_get_double (JsonObject *o, const char *key, double *out, GError **error)
{
  const char *s = dp_ctl_get_string (o, key, error);
  if (!s)
    return FALSE;
  char *end = NULL;
  *out = g_ascii_strtod (s, &end);
  if (!end || *end || !isfinite (*out)) {
    g_set_error (error, DP_ERROR, DP_ERROR_FORMAT, "control: \"%s\" is not a number: %s", key, s);
    return FALSE;
  }
  return TRUE;
}
