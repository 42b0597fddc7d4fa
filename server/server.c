/*
 * server.c — the facewired server context (see server.h): command line, listeners, the
 * per-loop timing, the check-phase flush, INFO, and the shutdown sequence.
 *
 * Timing without a timer per connection: one repeating uv_timer (the "sweep") walks two
 * intrusive lists that are kept in time order for free — by_activity (a touch moves the
 * connection to the tail) and by_frame_start (appended when a frame is left incomplete) — and
 * stops at the first entry that has not expired. A tick costs O(expired + 1), and 10,000 idle
 * connections cost no timer memory at all.
 *
 * Shutdown (SIGINT/SIGTERM):
 *   0. GET /health answers 503 "draining" at once. With --drain-delay-ms N everything else
 *      goes on for N ms (listeners open, every request served) so that a load balancer's
 *      health check sees the 503 and stops sending work before connections are refused; a
 *      second signal cuts the delay short (an operator who means "now");
 *   1. close the listeners; new requests are answered SHUTTING_DOWN (compute does it for its
 *      ops, conn.c for PING);
 *   2. fw_compute_drain(grace): jobs in flight may finish until grace_ms, then compute answers
 *      the rest SHUTTING_DOWN and calls on_drained;
 *   3. every connection stops reading, flushes, and closes; a connection whose client does not
 *      read is closed anyway at force_close_at;
 *   4. when the last connection is gone, our handles close, compute stops, uv_run returns
 *      (once a SIGHUP reload still reading the file has ended: see on_sighup).
 */
#include "server/server.h"

#include <errno.h>
#include <limits.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>

#include "server/conn.h"

#define FW_DEFAULT_LISTEN "127.0.0.1:7420"
#define FW_DEFAULT_MAX_CONNECTIONS 10000u
#define FW_DEFAULT_MAX_OUTPUT (4u * 1024u * 1024u)
#define FW_DEFAULT_IDLE_TIMEOUT_MS 300000u
#define FW_DEFAULT_FRAME_TIMEOUT_MS 30000u
#define FW_DEFAULT_GRACE_MS 10000u
/* After the grace period, how long flushing the last answers may take. */
#define FW_FLUSH_GRACE_MS 2000u
#define FW_LISTEN_BACKLOG 4096
#define FW_MAX_BODY_LIMIT (1024u * 1024u * 1024u)

#ifndef FW_VERSION_STRING
#define FW_VERSION_STRING "0.0.0"
#endif

/* ---- command line -------------------------------------------------------------------------- */

void fw_server_config_default(fw_server_config *cfg)
{
    memset(cfg, 0, sizeof *cfg);
    cfg->data_dir = "./data";
    cfg->models_dir = "./models";
    cfg->max_body = FW_DEFAULT_MAX_BODY;
    cfg->max_connections = FW_DEFAULT_MAX_CONNECTIONS;
    cfg->max_output = FW_DEFAULT_MAX_OUTPUT;
    cfg->idle_timeout_ms = FW_DEFAULT_IDLE_TIMEOUT_MS;
    cfg->frame_timeout_ms = FW_DEFAULT_FRAME_TIMEOUT_MS;
    cfg->grace_ms = FW_DEFAULT_GRACE_MS;
    cfg->log_level = FW_LOG_INFO;
    fw_compute_options_default(&cfg->compute);
}

void fw_server_usage(FILE *out, const char *prog)
{
    fprintf(out,
"Usage: %s [OPTIONS]\n"
"\n"
"facewired serves the facewire protocol: length-prefixed binary frames over TCP, many\n"
"requests in flight per connection, answered in any order. PING and INFO are answered on\n"
"the event loop; face and gallery operations run on a worker pool.\n"
"\n"
"Connection options:\n"
"  --listen HOST:PORT       Listen on this address. Repeatable. IPv6 addresses go in\n"
"                           brackets: [::1]:7420. Port 0 picks a free port; every bound\n"
"                           address is logged as msg=\"listening\" addr=HOST:PORT.\n"
"                           Default: " FW_DEFAULT_LISTEN ".\n"
"  --max-connections N      Connections beyond N are accepted and closed at once (and\n"
"                           counted in INFO's rejected_connections). Default: %u.\n"
"  --max-body BYTES         Largest request body. A larger one is answered TOO_LARGE and\n"
"                           the connection closed. Suffixes k, m, g (binary). Default: 16m.\n"
"  --max-output BYTES       Unsent response bytes per connection before the server stops\n"
"                           reading from it until the client catches up. Default: 4m.\n"
"  --idle-timeout-ms MS     Close a connection with nothing sent, received or computing\n"
"                           for MS milliseconds. 0 disables. Default: %u.\n"
"  --frame-timeout-ms MS    Close a connection that leaves a frame incomplete for MS\n"
"                           milliseconds (slow senders). 0 disables. Default: %u.\n"
"  --grace-ms MS            On SIGINT/SIGTERM, how long requests in flight may still\n"
"                           finish; the rest are answered SHUTTING_DOWN. Default: %u.\n"
"  --drain-delay-ms MS      On SIGINT/SIGTERM, first answer GET /health with 503\n"
"                           \"draining\" and go on serving everything for MS milliseconds,\n"
"                           so that a load balancer checking /health stops sending work\n"
"                           before the listeners close; then drain as above. A second\n"
"                           signal ends the delay at once. Default: 0.\n"
"\n"
"Data options:\n"
"  --data DIR               Gallery directory, created (one level, mode 0700) if\n"
"                           missing. Default: ./data. Not with --gallery-url.\n"
"  --models DIR             Face model weights. Default: ./models. When given, GET\n"
"                           /health is 503 \"models not loaded\" if they fail to load.\n"
"\n"
"Other options:\n"
"  --log-level LEVEL        debug, info, warn, error or off. Logs are logfmt lines on\n"
"                           stderr. Default: info.\n"
"  --help                   Print this text and exit.\n"
"  --version                Print the version and exit.\n"
"\n",
            prog, FW_DEFAULT_MAX_CONNECTIONS, FW_DEFAULT_IDLE_TIMEOUT_MS,
            FW_DEFAULT_FRAME_TIMEOUT_MS, FW_DEFAULT_GRACE_MS);
    fprintf(out,
"Security options (docs/security.md):\n"
"  --server-key FILE        The server's secret key (%s keygen PREFIX writes\n"
"                           PREFIX.key, mode 0600). Enables secure sessions (HELLO/AUTH,\n"
"                           then every frame sealed). Needs --authorized-keys.\n"
"  --authorized-keys FILE   The devices allowed in: one facewire-ed25519 public key per\n"
"                           line (cat dev.pub >> FILE), '#' comments. Re-read on SIGHUP;\n"
"                           sessions of keys no longer listed are closed.\n"
"  --require-secure         Answer every op except HELLO/AUTH with UNAUTHORIZED until\n"
"                           the connection has a secure session.\n"
"  --insecure-plaintext     Allow listening on non-loopback addresses without\n"
"                           --server-key. Without it, plaintext is loopback-only.\n"
"  Keys: '%s keygen PREFIX [COMMENT]' writes PREFIX.key and PREFIX.pub;\n"
"  '%s keygen --symmetric FILE' writes a gallery key file. SIGHUP re-reads\n"
"  --authorized-keys.\n"
"\n", prog, prog, prog);
    fprintf(out, "Compute options:\n");
    fw_compute_usage(out);
    fprintf(out,
"\n"
"Options take their value as the next argument or after '=' (--grace-ms=500).\n"
"\n"
"Signals: SIGINT and SIGTERM start a graceful shutdown; a second one during\n"
"--drain-delay-ms ends the delay, any later one is ignored.\n"
"Exit status: 0 after a clean shutdown, 1 if the server cannot start, 2 on a usage error.\n");
}

/* Decimal u32 in [min, max]; with `sizes`, a k/m/g suffix multiplies by 1024^n. */
static int parse_u32(const char *s, uint32_t min, uint32_t max, int sizes, uint32_t *out)
{
    char *end;
    unsigned long long v;
    if (!s || *s < '0' || *s > '9')
        return -1;
    errno = 0;
    v = strtoull(s, &end, 10);
    if (errno != 0)
        return -1;
    if (sizes && *end) {
        unsigned shift = 0;
        switch (*end) {
        case 'k': case 'K': shift = 10; break;
        case 'm': case 'M': shift = 20; break;
        case 'g': case 'G': shift = 30; break;
        default: return -1;
        }
        end++;
        if (*end == 'i' && end[1] == 'B')
            end += 2;
        else if (*end == 'B' || *end == 'b')
            end++;
        if (v > (ULLONG_MAX >> shift))
            return -1;
        v <<= shift;
    }
    if (*end != '\0' || v < min || v > max)
        return -1;
    *out = (uint32_t)v;
    return 0;
}

static int parse_listen(const char *spec, struct sockaddr_storage *ss, char *err, size_t errlen);

enum flag_id {
    F_SERVER_KEY, F_AUTHORIZED_KEYS, F_REQUIRE_SECURE, F_INSECURE_PLAINTEXT,
    F_LISTEN, F_DATA, F_MODELS, F_MAX_BODY, F_MAX_CONNECTIONS, F_MAX_OUTPUT, F_IDLE_TIMEOUT,
    F_FRAME_TIMEOUT, F_GRACE, F_DRAIN_DELAY, F_LOG_LEVEL, F_HELP, F_VERSION
};

static const struct {
    const char *name;
    enum flag_id id;
    int takes_value;
} server_flags[] = {
    {"--listen", F_LISTEN, 1},
    {"--data", F_DATA, 1},
    {"--models", F_MODELS, 1},
    {"--max-body", F_MAX_BODY, 1},
    {"--max-connections", F_MAX_CONNECTIONS, 1},
    {"--max-output", F_MAX_OUTPUT, 1},
    {"--idle-timeout-ms", F_IDLE_TIMEOUT, 1},
    {"--frame-timeout-ms", F_FRAME_TIMEOUT, 1},
    {"--grace-ms", F_GRACE, 1},
    {"--drain-delay-ms", F_DRAIN_DELAY, 1},
    {"--log-level", F_LOG_LEVEL, 1},
    {"--server-key", F_SERVER_KEY, 1},
    {"--authorized-keys", F_AUTHORIZED_KEYS, 1},
    {"--require-secure", F_REQUIRE_SECURE, 0},
    {"--insecure-plaintext", F_INSECURE_PLAINTEXT, 0},
    {"--help", F_HELP, 0},
    {"--version", F_VERSION, 0},
};

/* Apply one of our flags. Returns 0, 1 for "print and exit 0", or -1 with a message. */
static int apply_flag(fw_server_config *cfg, enum flag_id id, const char *v, FILE *out,
                      const char *prog, char *err, size_t errlen)
{
    const uint32_t ms_max = 24u * 3600u * 1000u;
    int lvl;
    switch (id) {
    case F_LISTEN:
        if (cfg->n_listen >= FW_MAX_LISTEN) {
            snprintf(err, errlen, "at most %d --listen addresses", FW_MAX_LISTEN);
            return -1;
        }
        {
            struct sockaddr_storage ss;
            if (parse_listen(v, &ss, err, errlen) != 0)
                return -1; /* caught here so that a typo is a usage error, not a failed start */
        }
        cfg->listen[cfg->n_listen++] = v;
        return 0;
    case F_DATA:
        cfg->data_dir = v;
        cfg->data_given = 1;
        return 0;
    case F_MODELS:
        cfg->models_dir = v;
        cfg->compute.models_required = 1;
        return 0;
    case F_MAX_BODY:
        if (parse_u32(v, 1, FW_MAX_BODY_LIMIT, 1, &cfg->max_body) == 0)
            return 0;
        snprintf(err, errlen, "--max-body: expected bytes from 1 to 1g, got '%s'", v);
        return -1;
    case F_MAX_CONNECTIONS:
        if (parse_u32(v, 1, 1000000, 0, &cfg->max_connections) == 0)
            return 0;
        snprintf(err, errlen, "--max-connections: expected 1 to 1000000, got '%s'", v);
        return -1;
    case F_MAX_OUTPUT:
        if (parse_u32(v, 1024, FW_MAX_BODY_LIMIT, 1, &cfg->max_output) == 0)
            return 0;
        snprintf(err, errlen, "--max-output: expected bytes from 1k to 1g, got '%s'", v);
        return -1;
    case F_IDLE_TIMEOUT:
    case F_FRAME_TIMEOUT:
    case F_GRACE:
    case F_DRAIN_DELAY: {
        uint32_t *dst = id == F_IDLE_TIMEOUT ? &cfg->idle_timeout_ms
                      : id == F_FRAME_TIMEOUT ? &cfg->frame_timeout_ms
                      : id == F_GRACE ? &cfg->grace_ms : &cfg->drain_delay_ms;
        if (parse_u32(v, 0, ms_max, 0, dst) == 0)
            return 0;
        snprintf(err, errlen, "expected milliseconds from 0 to %u, got '%s'", ms_max, v);
        return -1;
    }
    case F_LOG_LEVEL:
        lvl = fw_log_level_parse(v);
        if (lvl >= 0) {
            cfg->log_level = (fw_log_level)lvl;
            return 0;
        }
        snprintf(err, errlen, "--log-level: expected debug, info, warn, error or off, got '%s'", v);
        return -1;
    case F_SERVER_KEY:
        cfg->server_key = v;
        return 0;
    case F_AUTHORIZED_KEYS:
        cfg->authorized_keys = v;
        return 0;
    case F_REQUIRE_SECURE:
        cfg->require_secure = 1;
        return 0;
    case F_INSECURE_PLAINTEXT:
        cfg->insecure_plaintext = 1;
        return 0;
    case F_HELP:
        fw_server_usage(out, prog);
        return 1;
    case F_VERSION:
        fprintf(out, "facewired %s\n", FW_VERSION_STRING);
        return 1;
    }
    return -1;
}

/* The flags that only make sense together, and the plaintext-on-loopback-only rule: devices
 * on a real network must not send face data in clear unless the operator says so. */
static int check_security_flags(const fw_server_config *cfg, char *err, size_t errlen)
{
    if (cfg->server_key && !cfg->authorized_keys) {
        snprintf(err, errlen, "--server-key needs --authorized-keys (the devices allowed in)");
        return -1;
    }
    if (!cfg->server_key && (cfg->authorized_keys || cfg->require_secure)) {
        snprintf(err, errlen, "%s needs --server-key",
                 cfg->authorized_keys ? "--authorized-keys" : "--require-secure");
        return -1;
    }
    if (cfg->server_key || cfg->insecure_plaintext)
        return 0;
    for (int i = 0; i < cfg->n_listen; i++) {
        struct sockaddr_storage ss;
        if (parse_listen(cfg->listen[i], &ss, err, errlen) != 0)
            return -1;
        if (!fw_security_addr_is_loopback((const struct sockaddr *)&ss)) {
            snprintf(err, errlen,
                     "refusing to serve plaintext on %s: give --server-key and --authorized-keys, "
                     "or --insecure-plaintext to accept that risk", cfg->listen[i]);
            return -1;
        }
    }
    return 0;
}

/* --gallery-url moves the gallery's system of record to PostgreSQL: the flags that are about
 * a gallery directory would be silently ignored, so they are refused. */
static int check_gallery_flags(fw_server_config *cfg, char *err, size_t errlen)
{
    const fw_compute_options *o = &cfg->compute;
    if (!o->gallery_url)
        return 0;
    const char *clash = cfg->data_given ? "--data"
                      : o->repair ? "--repair"
                      : o->gallery_key ? "--gallery-key" : NULL;
    if (clash) {
        snprintf(err, errlen, "--gallery-url cannot be combined with %s: the gallery is then kept in "
                 "PostgreSQL, not in a data directory", clash);
        return -1;
    }
    cfg->data_dir = NULL; /* not the default ./data either */
    return 0;
}

int fw_server_parse_args(fw_server_config *cfg, int argc, char **argv, FILE *out, FILE *errf)
{
    const char *prog = argc > 0 && argv[0] && *argv[0] ? argv[0] : "facewired";
    const char *slash = strrchr(prog, '/');
    if (slash && slash[1])
        prog = slash + 1; /* messages and usage name the program, not its path */
    char err[256];
    char name[64];

    for (int i = 1; i < argc; i++) {
        const char *arg = argv[i];
        const char *eq = strchr(arg, '=');
        const char *value = NULL;
        int inline_value = 0;

        if (strncmp(arg, "--", 2) != 0 || arg[2] == '\0') {
            fprintf(errf, "%s: unexpected argument '%s' (see --help)\n", prog, arg);
            return -1;
        }
        /* Split "--flag=value". */
        size_t nlen = eq ? (size_t)(eq - arg) : strlen(arg);
        if (nlen >= sizeof name) {
            fprintf(errf, "%s: unknown option '%.*s' (see --help)\n", prog, (int)nlen, arg);
            return -1;
        }
        memcpy(name, arg, nlen);
        name[nlen] = '\0';
        if (eq) {
            value = eq + 1;
            inline_value = 1;
        } else if (i + 1 < argc) {
            value = argv[i + 1];
        }

        int found = 0, r = 0, takes = 0;
        err[0] = '\0';
        for (size_t k = 0; k < sizeof server_flags / sizeof server_flags[0]; k++) {
            if (strcmp(name, server_flags[k].name) != 0)
                continue;
            found = 1;
            takes = server_flags[k].takes_value;
            if (takes && !value) {
                fprintf(errf, "%s: %s needs a value (see --help)\n", prog, name);
                return -1;
            }
            if (!takes && inline_value) {
                fprintf(errf, "%s: %s takes no value\n", prog, name);
                return -1;
            }
            r = apply_flag(cfg, server_flags[k].id, value, out, prog, err, sizeof err);
            break;
        }
        if (!found) {
            r = fw_compute_parse_flag(&cfg->compute, name, value, &takes, err, sizeof err);
            if (r == 0) {
                fprintf(errf, "%s: unknown option '%s' (see --help)\n", prog, name);
                return -1;
            }
            if (r > 0 && takes && !value) {
                fprintf(errf, "%s: %s needs a value (see --help)\n", prog, name);
                return -1;
            }
            if (r > 0 && !takes && inline_value) {
                fprintf(errf, "%s: %s takes no value\n", prog, name);
                return -1;
            }
            if (r > 0)
                r = 0;
        }
        if (r < 0) {
            fprintf(errf, "%s: %s: %s\n", prog, name, err[0] ? err : "invalid value");
            return -1;
        }
        if (r == 1)
            return 1;
        if (takes && !inline_value)
            i++;
    }
    if (check_security_flags(cfg, err, sizeof err) != 0 || check_gallery_flags(cfg, err, sizeof err) != 0) {
        fprintf(errf, "%s: %s\n", prog, err);
        return -1;
    }
    cfg->compute.data_dir = cfg->data_dir;
    cfg->compute.models_dir = cfg->models_dir;
    return 0;
}

/* ---- listeners ----------------------------------------------------------------------------- */

/* "1.2.3.4:80", "[::1]:80", ":80" (all IPv4 interfaces). Numeric hosts only: a name would
 * need a resolver at startup and could silently pick one of several addresses. */
static int parse_listen(const char *spec, struct sockaddr_storage *ss, char *err, size_t errlen)
{
    char host[64];
    const char *port_s;
    uint32_t port;
    int r;

    if (spec[0] == '[') {
        const char *close = strchr(spec, ']');
        if (!close || close[1] != ':' || (size_t)(close - spec - 1) >= sizeof host)
            goto bad;
        memcpy(host, spec + 1, (size_t)(close - spec - 1));
        host[close - spec - 1] = '\0';
        port_s = close + 2;
    } else {
        const char *colon = strrchr(spec, ':');
        if (!colon || (size_t)(colon - spec) >= sizeof host)
            goto bad;
        if (memchr(spec, ':', (size_t)(colon - spec))) {
            snprintf(err, errlen, "'%s': IPv6 addresses go in brackets, e.g. [::1]:7420", spec);
            return -1;
        }
        memcpy(host, spec, (size_t)(colon - spec));
        host[colon - spec] = '\0';
        if (host[0] == '\0')
            snprintf(host, sizeof host, "0.0.0.0");
        port_s = colon + 1;
    }
    if (parse_u32(port_s, 0, 65535, 0, &port) != 0)
        goto bad;
    memset(ss, 0, sizeof *ss);
    if (spec[0] == '[')
        r = uv_ip6_addr(host, (int)port, (struct sockaddr_in6 *)ss);
    else
        r = uv_ip4_addr(host, (int)port, (struct sockaddr_in *)ss);
    if (r != 0)
        goto bad;
    return 0;
bad:
    snprintf(err, errlen, "'%s': expected IPv4:PORT or [IPv6]:PORT with a numeric address", spec);
    return -1;
}

static void format_sockname(const uv_tcp_t *tcp, char *buf, size_t cap)
{
    struct sockaddr_storage ss;
    int len = (int)sizeof ss;
    char host[64] = "?";
    snprintf(buf, cap, "?");
    if (uv_tcp_getsockname(tcp, (struct sockaddr *)&ss, &len) != 0)
        return;
    if (ss.ss_family == AF_INET6) {
        uv_ip6_name((const struct sockaddr_in6 *)&ss, host, sizeof host);
        snprintf(buf, cap, "[%s]:%d", host, ntohs(((const struct sockaddr_in6 *)&ss)->sin6_port));
    } else {
        uv_ip4_name((const struct sockaddr_in *)&ss, host, sizeof host);
        snprintf(buf, cap, "%s:%d", host, ntohs(((const struct sockaddr_in *)&ss)->sin_port));
    }
}

static void on_connection(uv_stream_t *listener, int status)
{
    fw_listener *l = listener->data;
    if (status < 0) {
        /* EMFILE and friends: libuv keeps a spare fd to shed such connections; log and go on. */
        fw_log_warn(&l->srv->log, "accept error", "listener=%s err=%s", l->addr, uv_err_name(status));
        return;
    }
    fw_conn_accept(l->srv, listener);
}

static int listener_open(fw_server *s, fw_listener *l, const char *spec)
{
    struct sockaddr_storage ss;
    char err[160];
    int r;

    snprintf(l->addr, sizeof l->addr, "%s", spec);
    if (parse_listen(spec, &ss, err, sizeof err) != 0) {
        fw_log_error(&s->log, "bad listen address", "error=\"%s\"", err);
        return -1;
    }
    uv_tcp_init(s->loop, &l->tcp);
    l->tcp.data = l;
    l->srv = s; /* from here on close_listeners() closes it */
    /* IPV6ONLY so that [::]:P and 0.0.0.0:P can both be given. */
    r = uv_tcp_bind(&l->tcp, (const struct sockaddr *)&ss, ss.ss_family == AF_INET6 ? UV_TCP_IPV6ONLY : 0);
    if (r == 0)
        r = uv_listen((uv_stream_t *)&l->tcp, FW_LISTEN_BACKLOG, on_connection);
    if (r != 0) {
        fw_log_error(&s->log, "cannot listen", "addr=%s err=%s error=\"%s\"", spec, uv_err_name(r),
                     uv_strerror(r));
        return -1;
    }
    format_sockname(&l->tcp, l->addr, sizeof l->addr);
    fw_log_info(&s->log, "listening", "addr=%s", l->addr);
    return 0;
}

static void close_listeners(fw_server *s)
{
    for (int i = 0; i < s->n_listeners; i++)
        if (s->listeners[i].srv && !uv_is_closing((uv_handle_t *)&s->listeners[i].tcp))
            uv_close((uv_handle_t *)&s->listeners[i].tcp, NULL); /* freed by fw_server_free */
}

/* ---- loop handles -------------------------------------------------------------------------- */

static void reload_cancel(fw_server *s); /* SIGHUP, below */

static void close_handles(fw_server *s)
{
    uv_handle_t *hs[] = {(uv_handle_t *)&s->sweep, (uv_handle_t *)&s->drain_delay,
                         (uv_handle_t *)&s->flush, (uv_handle_t *)&s->nudge,
                         (uv_handle_t *)&s->sigint, (uv_handle_t *)&s->sigterm,
                         (uv_handle_t *)&s->sighup};
    for (size_t i = 0; i < sizeof hs / sizeof hs[0]; i++)
        if (hs[i]->data == s && !uv_is_closing(hs[i]))
            uv_close(hs[i], NULL); /* embedded in fw_server: nothing to free */
}

/* Everything is answered and every connection gone: close the rest so uv_run returns. */
static void server_finish(fw_server *s)
{
    if (s->finished)
        return;
    s->finished = 1;
    close_listeners(s);
    close_handles(s);
    reload_cancel(s);
    if (s->compute) {
        fw_compute_stop(s->compute);
        s->compute = NULL;
    }
    fw_log_info(&s->log, "stopped", "connections_total=%llu requests_total=%llu",
                (unsigned long long)s->connections_total, (unsigned long long)s->requests_total);
}

static void maybe_finish(fw_server *s)
{
    if (s->drained && s->n_conns == 0)
        server_finish(s);
}

void fw_server_conn_gone(fw_server *s) { maybe_finish(s); }

/* The idle handle does nothing; while it is active libuv polls without blocking, so
 * responses queued outside the poll phase (in a timer callback) still go out this turn. */
static void on_nudge(uv_idle_t *h) { (void)h; }

void fw_server_wake(fw_server *s)
{
    if (!s->finished && !uv_is_active((uv_handle_t *)&s->nudge))
        uv_idle_start(&s->nudge, on_nudge);
}

static void on_flush(uv_check_t *h)
{
    fw_server *s = h->data;
    fw_link batch;

    uv_idle_stop(&s->nudge);
    /* Take the current queue: connections queued while serving it wait for the next turn,
     * so a connection that keeps requeueing itself cannot keep us here. */
    fw_link_init(&batch);
    if (fw_link_empty(&s->pending))
        return;
    batch.next = s->pending.next;
    batch.prev = s->pending.prev;
    batch.next->prev = &batch;
    batch.prev->next = &batch;
    fw_link_init(&s->pending);
    while (!fw_link_empty(&batch)) {
        fw_conn *c = fw_container_of(batch.next, fw_conn, pending);
        fw_link_unlink(&c->pending);
        fw_conn_service(c);
    }
}

static void on_sweep(uv_timer_t *h)
{
    fw_server *s = h->data;
    uint64_t now = uv_now(s->loop);
    fw_conn_sweep(s, now);
    if (s->draining && now >= s->force_close_at && !fw_link_empty(&s->by_activity)) {
        fw_log_warn(&s->log, "closing connections that did not flush in time", "connections=%u", s->n_conns);
        while (!fw_link_empty(&s->by_activity))
            fw_conn_close(fw_container_of(s->by_activity.next, fw_conn, by_activity), "shutdown timeout");
    }
}

static void on_signal(uv_signal_t *h, int signum)
{
    fw_server *s = h->data;
    fw_server_shutdown(s, signum == SIGINT ? "SIGINT" : "SIGTERM");
}

/* SIGHUP: re-read the authorized keys and close the sessions of keys no longer listed. Other
 * connections are not touched.
 *
 * The file (up to 16 MiB, maybe on a slow or hung filesystem) is read and parsed on the libuv
 * pool, never on the loop: every connection would wait for it. The pool has free threads for
 * this whatever compute is doing (compute.c sizes it workers + FW_THREADPOOL_RESERVE and never
 * runs more than `workers` jobs). The worker builds a new list in its own fw_keys_reload and
 * touches no server state; the swap, the closing of revoked sessions and the freeing of the
 * old list happen here in the after-work callback, on the loop thread. One reload at a time:
 * a SIGHUP during one is remembered (keys.h reload_again) and one more runs after it, so the
 * file as of the last SIGHUP wins. A reload in flight at shutdown is waited for: it is an
 * active request, so uv_run does not return before its callback, which then only frees. */
typedef struct sighup_reload {
    uv_work_t work;     /* work.data = this */
    fw_server *srv;
    fw_keys_reload job; /* the worker's only data; s->security.reload points here */
} sighup_reload;

static void reload_start(fw_server *s);

static void reload_work(uv_work_t *w)
{
    sighup_reload *rl = w->data;
    fw_keys_reload_run(&rl->job);
}

static void reload_done(uv_work_t *w, int status)
{
    sighup_reload *rl = w->data;
    fw_server *s = rl->srv;
    char err[512];
    size_t n_bad = 0;
    int again = 0;

    if (status != 0 || s->finished) {
        /* cancelled by server_finish, or it finished while the file was being read: every
         * connection is gone, nothing to apply */
        fw_security_reload_abandon(&s->security, &rl->job);
        free(rl);
        fw_log_debug(&s->log, "authorized keys reload dropped", "reason=shutdown");
        return;
    }
    int rc = fw_security_reload_finish(&s->security, &rl->job, &n_bad, err, sizeof err, &again);
    free(rl);
    if (rc != 0) {
        fw_log_error(&s->log, "cannot reload authorized keys, keeping the old list", "error=\"%s\"", err);
    } else {
        if (n_bad)
            fw_log_warn(&s->log, "bad lines in authorized keys skipped", "bad_lines=%zu first=\"%s\"", n_bad, err);
        uint32_t closed = 0;
        for (fw_link *l = s->by_activity.next, *next; l != &s->by_activity; l = next) {
            next = l->next; /* fw_conn_close unlinks l */
            fw_conn *c = fw_container_of(l, fw_conn, by_activity);
            if (fw_security_revoked(&s->security, &c->sec)) {
                fw_conn_close(c, "key revoked");
                closed++;
            }
        }
        fw_log_info(&s->log, "authorized keys reloaded", "keys=%zu sessions_closed=%u",
                    s->security.keys.n, closed);
    }
    if (again)
        reload_start(s);
}

static void reload_start(fw_server *s)
{
    char err[512];
    sighup_reload *rl = calloc(1, sizeof *rl);
    if (!rl) {
        fw_log_error(&s->log, "cannot reload authorized keys, keeping the old list", "error=\"out of memory\"");
        return;
    }
    int rc = fw_security_reload_begin(&s->security, &rl->job, err, sizeof err);
    if (rc != 0) {
        free(rl);
        if (rc == 1)
            fw_log_debug(&s->log, "authorized keys reload in progress, another one follows", NULL);
        else
            fw_log_error(&s->log, "cannot reload authorized keys, keeping the old list", "error=\"%s\"", err);
        return;
    }
    rl->srv = s;
    rl->work.data = rl;
    int r = uv_queue_work(s->loop, &rl->work, reload_work, reload_done);
    if (r != 0) {
        fw_security_reload_abandon(&s->security, &rl->job);
        free(rl);
        fw_log_error(&s->log, "cannot reload authorized keys, keeping the old list", "error=\"%s\"",
                     uv_strerror(r));
    }
}

/* At shutdown: a reload not yet picked up by a pool thread need not be waited for. One being
 * read is (see above); uv_cancel fails then and its callback drops the result. */
static void reload_cancel(fw_server *s)
{
    if (s->security.reload) {
        sighup_reload *rl = fw_container_of(s->security.reload, sighup_reload, job);
        uv_cancel((uv_req_t *)&rl->work);
    }
    s->security.reload_again = 0;
}

static void on_sighup(uv_signal_t *h, int signum)
{
    fw_server *s = h->data;
    (void)signum;
    if (!s->security.enabled) {
        fw_log_info(&s->log, "SIGHUP ignored", "reason=\"no --authorized-keys\"");
        return;
    }
    reload_start(s);
}

static void on_drained(void *arg)
{
    fw_server *s = arg;
    s->drained = 1;
    fw_log_info(&s->log, "drained", "connections=%u", s->n_conns);
    /* Each connection stops reading, flushes and closes in the check phase. */
    for (fw_link *l = s->by_activity.next; l != &s->by_activity; l = l->next)
        fw_conn_queue(fw_container_of(l, fw_conn, by_activity));
    maybe_finish(s);
}

/* Step 1 of the shutdown (see the top of this file). */
static void begin_drain(fw_server *s)
{
    s->draining = 1;
    s->force_close_at = uv_now(s->loop) + s->cfg.grace_ms + FW_FLUSH_GRACE_MS;
    fw_log_info(&s->log, "shutting down", "reason=%s grace_ms=%u connections=%u", s->shutdown_why,
                s->cfg.grace_ms, s->n_conns);
    close_listeners(s);
    fw_compute_drain(s->compute, s->cfg.grace_ms, on_drained, s);
}

static void end_delay(fw_server *s, const char *why)
{
    s->delaying = 0;
    uv_timer_stop(&s->drain_delay);
    fw_log_info(&s->log, "drain delay over", "reason=%s elapsed_ms=%llu connections=%u", why,
                (unsigned long long)(uv_now(s->loop) - s->delay_started), s->n_conns);
    begin_drain(s);
}

static void on_drain_delay(uv_timer_t *t)
{
    end_delay(t->data, "timer");
}

void fw_server_shutdown(fw_server *s, const char *why)
{
    if (s->draining) {
        fw_log_info(&s->log, "shutdown already in progress", "reason=%s", why);
        return;
    }
    if (s->delaying) {
        end_delay(s, why); /* a second signal: the operator wants it now */
        return;
    }
    snprintf(s->shutdown_why, sizeof s->shutdown_why, "%s", why);
    /* first, so the very next health check sees it */
    fw_compute_announce_drain(s->compute);
    fw_log_info(&s->log, "draining", "reason=%s delay_ms=%u connections=%u", why, s->cfg.drain_delay_ms,
                s->n_conns);
    if (s->cfg.drain_delay_ms == 0) {
        begin_drain(s);
        return;
    }
    s->delaying = 1;
    s->delay_started = uv_now(s->loop);
    uv_timer_start(&s->drain_delay, on_drain_delay, s->cfg.drain_delay_ms, 0);
}

/* ---- start / info / free ------------------------------------------------------------------- */

static uint64_t sweep_interval(const fw_server_config *cfg)
{
    uint64_t iv = 250;
    if (cfg->idle_timeout_ms && cfg->idle_timeout_ms / 4 < iv)
        iv = cfg->idle_timeout_ms / 4;
    if (cfg->frame_timeout_ms && cfg->frame_timeout_ms / 4 < iv)
        iv = cfg->frame_timeout_ms / 4;
    return iv < 10 ? 10 : iv;
}

int fw_server_start(fw_server *s, uv_loop_t *loop, const fw_server_config *cfg)
{
    char err[256];
    int r;

    memset(s, 0, sizeof *s);
    s->loop = loop;
    s->cfg = *cfg;
    if (s->cfg.compute.gallery_url)
        s->cfg.data_dir = NULL; /* PostgreSQL holds the gallery (check_gallery_flags) */
    s->cfg.compute.data_dir = s->cfg.data_dir;
    s->cfg.compute.models_dir = s->cfg.models_dir;
    fw_log_init(&s->log, cfg->log_level);
    s->cfg.compute.log = &s->log; /* outlives compute: stopped in server_finish */
    fw_link_init(&s->by_activity);
    fw_link_init(&s->by_frame_start);
    fw_link_init(&s->pending);
    s->started_ms = uv_now(loop);

    /* Handles first, so the error path can close exactly what exists (data != NULL). */
    uv_timer_init(loop, &s->sweep);
    uv_timer_init(loop, &s->drain_delay);
    uv_check_init(loop, &s->flush);
    uv_idle_init(loop, &s->nudge);
    s->sweep.data = s->drain_delay.data = s->flush.data = s->nudge.data = s;
    if ((r = uv_signal_init(loop, &s->sigint)) != 0) {
        fw_log_error(&s->log, "cannot watch signals", "err=%s", uv_err_name(r));
        goto err;
    }
    s->sigint.data = s;
    if ((r = uv_signal_init(loop, &s->sigterm)) != 0) {
        fw_log_error(&s->log, "cannot watch signals", "err=%s", uv_err_name(r));
        goto err;
    }
    s->sigterm.data = s;
    if ((r = uv_signal_init(loop, &s->sighup)) != 0) {
        fw_log_error(&s->log, "cannot watch signals", "err=%s", uv_err_name(r));
        goto err;
    }
    s->sighup.data = s;

    if (fw_security_open(&s->security, cfg->server_key, cfg->authorized_keys, cfg->require_secure,
                         err, sizeof err) != 0) {
        fw_log_error(&s->log, "cannot load keys", "error=\"%s\"", err);
        goto err;
    }

    s->read_buf = malloc(FW_READ_BUF_SIZE);
    if (!s->read_buf) {
        fw_log_error(&s->log, "out of memory", NULL);
        goto err;
    }

    /* Before anything queues work on the loop: it sets the thread pool size. */
    if (fw_compute_start(loop, &s->cfg.compute, &s->compute, err, sizeof err) != 0) {
        s->compute = NULL;
        fw_log_error(&s->log, "cannot start compute", "error=\"%s\"", err);
        goto err;
    }

    int n = s->cfg.n_listen ? s->cfg.n_listen : 1;
    s->listeners = calloc((size_t)n, sizeof *s->listeners);
    if (!s->listeners) {
        fw_log_error(&s->log, "out of memory", NULL);
        goto err;
    }
    s->n_listeners = n;
    for (int i = 0; i < n; i++)
        if (listener_open(s, &s->listeners[i], s->cfg.n_listen ? s->cfg.listen[i] : FW_DEFAULT_LISTEN) != 0)
            goto err;

    uint64_t iv = sweep_interval(&s->cfg);
    uv_timer_start(&s->sweep, on_sweep, iv, iv);
    uv_check_start(&s->flush, on_flush);
    /* The check handle must not keep the loop alive on its own. */
    uv_unref((uv_handle_t *)&s->flush);
    uv_signal_start(&s->sigint, on_signal, SIGINT);
    uv_signal_start(&s->sigterm, on_signal, SIGTERM);
    uv_signal_start(&s->sighup, on_sighup, SIGHUP);
    fw_compute_serving(s->compute); /* /health may say ok from now on */
    if (s->security.enabled)
        fw_log_info(&s->log, "secure sessions", "authorized_keys=%zu require_secure=%d",
                    s->security.keys.n, s->security.require_secure);
    fw_log_info(&s->log, "started", "version=%s max_connections=%u max_body=%u idle_timeout_ms=%u "
                "frame_timeout_ms=%u", FW_VERSION_STRING, s->cfg.max_connections, s->cfg.max_body,
                s->cfg.idle_timeout_ms, s->cfg.frame_timeout_ms);
    return 0;

err:
    s->finished = 1;
    close_listeners(s);
    close_handles(s);
    if (s->compute) {
        fw_compute_stop(s->compute);
        s->compute = NULL;
    }
    return -1;
}

size_t fw_server_info(fw_server *s, char *buf, size_t cap)
{
    int r = snprintf(buf, cap,
                     "version: %s\n"
                     "uptime_s: %llu\n"
                     "connections: %u\n"
                     "connections_total: %llu\n"
                     "requests_total: %llu\n"
                     "bytes_in: %llu\n"
                     "bytes_out: %llu\n"
                     "rejected_connections: %llu\n",
                     FW_VERSION_STRING, (unsigned long long)((uv_now(s->loop) - s->started_ms) / 1000),
                     s->n_conns, (unsigned long long)s->connections_total,
                     (unsigned long long)s->requests_total, (unsigned long long)s->bytes_in,
                     (unsigned long long)s->bytes_out, (unsigned long long)s->rejected_connections);
    size_t n = r < 0 ? 0 : (size_t)r;
    if (n >= cap)
        return cap ? cap - 1 : 0;
    if (s->compute)
        n += fw_compute_info(s->compute, buf + n, cap - n);
    return n > cap ? cap : n;
}

void fw_server_free(fw_server *s)
{
    fw_security_close(&s->security);
    free(s->listeners);
    s->listeners = NULL;
    free(s->read_buf);
    s->read_buf = NULL;
    while (s->out_pool_n > 0)
        free(s->out_pool[--s->out_pool_n]);
}
