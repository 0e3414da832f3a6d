/* dualparal: the control channel between rank 0 and its workers (internal;
 * docs/distributed.md).
 *
 * A message is a 12-byte header, then `length` bytes of payload:
 *   u32 magic "DPCT" | u16 protocol version | u16 type | u32 length
 * (little-endian).  The header layout never changes between versions, so a
 * peer of another version is still understood well enough to be refused
 * with a clear error.  Payloads are JSON text, except the run's context
 * (raw F32).  Every read has a deadline.
 *
 * Peers prove they hold the same secret without sending it: each side sends
 * a random nonce and answers the other's with HMAC-SHA256 (secret, label |
 * nonce); the labels differ per role so that an answer cannot be replayed
 * back.  Writes on one connection are serialised by the caller (dp_ctl_conn
 * has a lock). */
#ifndef DUALPARAL_DIST_CONTROL_H
#define DUALPARAL_DIST_CONTROL_H

#include <gio/gio.h>
#include <json-glib/json-glib.h>

#include "dualparal/backend.h"

G_BEGIN_DECLS

#define DP_CTL_MAGIC 0x54435044u /* "DPCT" */
/* Bump when any message changes. */
#define DP_CTL_VERSION 4 /* 2: COND (prompt changes); 3: SETUP carries Wan2.2 two experts; 4: and per_token_time (TI2V) */
#define DP_CTL_MAX_PAYLOAD (1u << 30)

typedef enum {
  DP_CTL_HELLO = 1,  /* worker -> 0: rank, world size, host, pid, device, nonce */
  DP_CTL_CHALLENGE,  /* 0 -> worker: rank 0's nonce and its answer to the worker's */
  DP_CTL_AUTH,       /* worker -> 0: the worker's answer */
  DP_CTL_WELCOME,    /* 0 -> worker: accepted */
  DP_CTL_SETUP,      /* 0 -> worker: model, stage, engine settings */
  DP_CTL_READY,      /* worker -> 0: loaded; model fingerprint, data address */
  DP_CTL_RUN,        /* 0 -> worker: a run's id, sizes and the peers' data addresses */
  DP_CTL_CONTEXT,    /* 0 -> worker: the run's text context, raw F32 */
  DP_CTL_DONE,       /* worker -> 0: its stage finished the run; figures */
  DP_CTL_ERROR,      /* either way: a failure, JSON {"message", "code"} */
  DP_CTL_CANCEL,     /* 0 -> worker: stop the run */
  DP_CTL_PING,       /* either way, every second: alive */
  DP_CTL_SHUTDOWN,   /* 0 -> worker: exit */
  DP_CTL_LINK,       /* first message of a data stream: run id, sending stage, proof */
  DP_CTL_COND,       /* 0 -> worker, per block entering a run: int64 block, double guidance,
                      * then the new text context (raw F32, the run's shape) or nothing (the
                      * block keeps the previous one's conditioning); host byte order */
} dp_ctl_type;

typedef struct {
  int type;
  int version;
  guint8 *payload; /* owned, NUL-terminated beyond length */
  gsize length;
} dp_ctl_msg;

void dp_ctl_msg_clear (dp_ctl_msg *m);
const char *dp_ctl_type_name (int type);

/* A connection: the socket and a write lock. */
typedef struct {
  GSocketConnection *conn;
  GMutex write_lock;
  char *peer;  /* "host:port" of the other end */
} dp_ctl_conn;

dp_ctl_conn *dp_ctl_conn_new (GSocketConnection *conn);
void dp_ctl_conn_free (dp_ctl_conn *c);
/* Frees c but not its connection, which is returned open. */
GSocketConnection *dp_ctl_conn_steal (dp_ctl_conn *c);
/* Closes the socket: a thread blocked reading it returns at once. */
void dp_ctl_conn_shutdown (dp_ctl_conn *c);

/* Sends one message (thread-safe). */
gboolean dp_ctl_send (dp_ctl_conn *c, int type, const void *payload, gsize length, GError **error);
/* The same with another protocol version in the header (tests). */
gboolean dp_ctl_send_version (dp_ctl_conn *c, int version, int type, const void *payload, gsize length,
                              GError **error);
/* Sends a JSON object (the builder's root; the builder is consumed). */
gboolean dp_ctl_send_json (dp_ctl_conn *c, int type, JsonBuilder *b, GError **error);
/* Sends DP_CTL_ERROR with message and code (best effort: failures ignored). */
void dp_ctl_send_error (dp_ctl_conn *c, const GError *error);

/* Reads one message within timeout_s seconds (<= 0: no deadline).  Errors:
 * DP_ERROR_IO for a closed connection or a timeout (the text says which),
 * DP_ERROR_FORMAT for a header that is not dualparal's, DP_ERROR_UNSUPPORTED
 * for another protocol version (the payload of a DP_CTL_ERROR is still read
 * and quoted). */
gboolean dp_ctl_recv (dp_ctl_conn *c, double timeout_s, dp_ctl_msg *m, GError **error);
/* The payload as a JSON object (a parser the caller unrefs); NULL with
 * DP_ERROR_FORMAT. */
JsonParser *dp_ctl_parse (const dp_ctl_msg *m, JsonObject **obj, GError **error);
/* A DP_CTL_ERROR message as a GError, prefixed with who sent it. */
GError *dp_ctl_error_from_msg (const dp_ctl_msg *m, const char *who);

/* Secrets and proofs. */
/* The shared secret: DUALPARAL_SECRET, else the contents of the file named by
 * DUALPARAL_SECRET_FILE (trailing whitespace dropped).  NULL with
 * DP_ERROR_INVALID naming both variables when neither is set (or the file
 * cannot be read, or is empty). */
char *dp_ctl_secret_from_env (GError **error);
/* 32 random bytes as 64 hex digits (from the system's random source). */
char *dp_ctl_random_hex (void);
/* HMAC-SHA256 (secret, label ":" nonce) as hex. */
char *dp_ctl_proof (const char *secret, const char *label, const char *nonce);
/* Constant-time comparison of two proofs. */
gboolean dp_ctl_proof_equal (const char *a, const char *b);

/* Integers and doubles in JSON objects (doubles as "%.17g" strings so that
 * they round-trip exactly). */
gboolean dp_ctl_get_int (JsonObject *o, const char *key, gint64 lo, gint64 hi, gint64 *out, GError **error);
const char *dp_ctl_get_string (JsonObject *o, const char *key, GError **error);
void dp_ctl_add_double (JsonBuilder *b, const char *key, double v);
void dp_ctl_add_int (JsonBuilder *b, const char *key, gint64 v);
void dp_ctl_add_string (JsonBuilder *b, const char *key, const char *v);
gboolean dp_ctl_get_double (JsonObject *o, const char *key, double *out, GError **error);

G_END_DECLS

#endif
