/*
 * tu_server.c — run facewired as a child process and talk to it over blocking sockets (see
 * tu_server.h). The process and its log are tu_proc's; what is facewired's own is here (its
 * arguments, its data directory, the address lines of its log). Every wait has the same
 * generous timeout, so a hung server fails a test rather than hanging the suite, and no wait
 * is a sleep.
 */
#include "tests/tu_server.h"
#include "tests/tu_req.h"

#include <arpa/inet.h>
#include <errno.h>
#include <ftw.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#define TU_MAX_ARGS 64

const char *tu_bin_path(const char *name, char *buf, size_t cap)
{
    const char *dir = getenv("FW_BIN");
    snprintf(buf, cap, "%s/%s", dir && *dir ? dir : "bin", name);
    return buf;
}

/* ---- the server's log ---------------------------------------------------------------------- */

int tu_server_log_has(tu_server *s, const char *needle) { return tu_log_has(&s->log, 0, needle); }

int tu_server_wait_log(tu_server *s, const char *needle) { return tu_log_wait(&s->log, 0, needle); }

void tu_server_dump_log(tu_server *s, FILE *out) { tu_log_dump(&s->log, out); }

/* The address of the log line with msg (e.g. 'msg="listening" addr=[::1]:7420'), split into
 * host ("::1", brackets gone) and port. The port, or -1 without such a line. */
static int log_addr(tu_server *s, const char *msg, char *host, size_t cap)
{
    char line[256];
    if (!tu_log_line(&s->log, 0, msg, line, sizeof line))
        return -1;
    char *a = strstr(line, " addr=");
    if (!a)
        return -1;
    a += 6;
    a[strcspn(a, " ")] = '\0';
    char *colon = strrchr(a, ':');
    if (!colon)
        return -1;
    *colon = '\0';
    if (a[0] == '[') {
        a++;
        char *rb = strchr(a, ']');
        if (rb)
            *rb = '\0';
    }
    snprintf(host, cap, "%s", a);
    int port = atoi(colon + 1);
    return port > 0 ? port : -1;
}

int tu_server_metrics_port(tu_server *s)
{
    char host[96];
    static const char msg[] = "msg=\"metrics listening\"";
    return tu_server_wait_log(s, msg) ? log_addr(s, msg, host, sizeof host) : -1;
}

/* ---- the child process --------------------------------------------------------------------- */

static int remove_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st, (void)flag, (void)ftw;
    return remove(path);
}

int tu_rmtree(const char *dir)
{
    if (nftw(dir, remove_entry, 8, FTW_DEPTH | FTW_PHYS) != 0) {
        fprintf(stderr, "tu_server: cannot remove %s: %s\n", dir, strerror(errno));
        return -1;
    }
    return 0;
}

static void remove_data_dir(tu_server *s)
{
    if (s->data_dir[0])
        (void)tu_rmtree(s->data_dir);
    s->data_dir[0] = '\0';
}

int tu_server_start(tu_server *s, const char *const *args)
{
    char path[512];
    char *argv[TU_MAX_ARGS + 6];
    int n = 0, has_listen = 0, has_data = 0;

    memset(s, 0, sizeof *s);
    tu_bin_path("facewired", path, sizeof path);
    argv[n++] = path;
    for (int i = 0; args && args[i]; i++) {
        if (n >= TU_MAX_ARGS) {
            fprintf(stderr, "tu_server_start: too many arguments\n");
            return -1;
        }
        if (strncmp(args[i], "--listen", 8) == 0)
            has_listen = 1;
        /* --gallery-url: PostgreSQL holds the gallery, no data directory (and --data with it
         * is a usage error) */
        if (strncmp(args[i], "--data", 6) == 0 || strncmp(args[i], "--gallery-url", 13) == 0)
            has_data = 1;
        argv[n++] = (char *)args[i];
    }
    if (!has_listen) {
        argv[n++] = (char *)"--listen";
        argv[n++] = (char *)"127.0.0.1:0";
    }
    if (!has_data) {
        snprintf(s->data_dir, sizeof s->data_dir, "/tmp/fw-tu-data-XXXXXX");
        if (!mkdtemp(s->data_dir)) {
            fprintf(stderr, "tu_server_start: mkdtemp: %s\n", strerror(errno));
            s->data_dir[0] = '\0';
            return -1;
        }
        argv[n++] = (char *)"--data";
        argv[n++] = s->data_dir;
    }
    argv[n] = NULL;

    s->pid = tu_log_spawn(&s->log, "facewired", argv, NULL, -1);
    if (s->pid < 0) {
        s->pid = 0;
        remove_data_dir(s);
        return -1;
    }
    /* msg="listening" comes before the signal handlers are installed, msg="started" after
     * them: a test may signal the server as soon as we return. */
    if (!tu_server_wait_log(s, "msg=\"started\"") ||
        (s->port = log_addr(s, "msg=\"listening\"", s->host, sizeof s->host)) <= 0) {
        fprintf(stderr, "tu_server_start: %s did not start, or did not report a listening address\n", path);
        tu_server_kill(s, SIGKILL);
        if (tu_server_wait(s) == 0) /* else it printed the log already */
            tu_server_dump_log(s, stderr);
        return -1;
    }
    return 0;
}

int tu_server_kill(tu_server *s, int sig)
{
    return s->pid > 0 ? kill(s->pid, sig) : -1;
}

int tu_server_wait(tu_server *s)
{
    if (s->pid <= 0)
        return s->status;
    s->status = tu_log_reap(&s->log, s->pid);
    s->pid = 0;
    remove_data_dir(s);
    if (s->status != 0)
        tu_server_dump_log(s, stderr);
    return s->status;
}

int tu_server_stop(tu_server *s)
{
    tu_server_kill(s, SIGTERM);
    return tu_server_wait(s);
}

int tu_run(const char *name, const char *const *args, char *out, size_t cap)
{
    char path[512];
    char *argv[TU_MAX_ARGS + 2];
    int n = 0;

    tu_bin_path(name, path, sizeof path);
    argv[n++] = path;
    for (int i = 0; args && args[i] && n < TU_MAX_ARGS; i++)
        argv[n++] = (char *)args[i];
    argv[n] = NULL;
    return tu_run_argv(argv, NULL, -1, out, cap);
}

/* ---- sockets ------------------------------------------------------------------------------- */

int tu_connect(const char *host, int port)
{
    struct sockaddr_storage ss;
    socklen_t len;
    memset(&ss, 0, sizeof ss);
    if (strchr(host, ':')) {
        struct sockaddr_in6 *a = (struct sockaddr_in6 *)&ss;
        a->sin6_family = AF_INET6;
        a->sin6_port = htons((uint16_t)port);
        if (inet_pton(AF_INET6, host, &a->sin6_addr) != 1)
            return -1;
        len = sizeof *a;
    } else {
        struct sockaddr_in *a = (struct sockaddr_in *)&ss;
        a->sin_family = AF_INET;
        a->sin_port = htons((uint16_t)port);
        if (inet_pton(AF_INET, host, &a->sin_addr) != 1)
            return -1;
        len = sizeof *a;
    }
    int fd = socket(ss.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -1;
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    /* Sends block on a full window; bound them too, so a stuck server fails the test. */
    struct timeval tv = {.tv_sec = tu_timeout_ms() / 1000, .tv_usec = 0};
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    while (connect(fd, (struct sockaddr *)&ss, len) != 0) {
        if (errno == EINTR)
            continue;
        close(fd);
        return -1;
    }
    return fd;
}

int tu_connect_server(const tu_server *s) { return tu_connect(s->host, s->port); }

int tu_send_all(int fd, const void *p, size_t n)
{
    const uint8_t *b = p;
    while (n > 0) {
        ssize_t w = send(fd, b, n, MSG_NOSIGNAL);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return -1;
        b += w;
        n -= (size_t)w;
    }
    return 0;
}

/* A socket bound to 127.0.0.1 on a port the kernel picked (*port); -1 on failure. */
static int bind_loopback(int *port)
{
    struct sockaddr_in a;
    socklen_t len = sizeof a;
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -1;
    memset(&a, 0, sizeof a);
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (bind(fd, (struct sockaddr *)&a, sizeof a) != 0 || getsockname(fd, (struct sockaddr *)&a, &len) != 0) {
        close(fd);
        return -1;
    }
    *port = ntohs(a.sin_port);
    return fd;
}

int tu_listen_loopback(int backlog, int *port)
{
    int fd = bind_loopback(port);
    if (fd >= 0 && listen(fd, backlog) != 0) {
        close(fd);
        return -1;
    }
    return fd;
}

int tu_closed_port(void)
{
    int port = 0, fd = bind_loopback(&port);
    if (fd < 0)
        return 0;
    close(fd);
    return port;
}

fw_header tu_request(uint8_t opcode, uint32_t request_id, uint32_t body_len)
{
    fw_header h;
    memset(&h, 0, sizeof h);
    h.magic = FW_MAGIC;
    h.version = FW_PROTO_VERSION;
    h.opcode = opcode;
    h.priority = FW_PRIO_NORMAL;
    h.request_id = request_id;
    h.body_len = body_len;
    return h;
}

int tu_send_frame(int fd, const fw_header *h, const void *body)
{
    uint8_t hdr[FW_HEADER_LEN];
    fw_header_encode(h, hdr);
    if (tu_send_all(fd, hdr, sizeof hdr) != 0)
        return -1;
    return body && h->body_len ? tu_send_all(fd, body, h->body_len) : 0;
}

ssize_t tu_recv_exact(int fd, void *buf, size_t n, int64_t deadline)
{
    uint8_t *p = buf;
    size_t got = 0;
    while (got < n) {
        struct pollfd pfd = {.fd = fd, .events = POLLIN};
        int64_t left = deadline - tu_now_ms();
        if (left <= 0)
            return -1;
        int pr = poll(&pfd, 1, (int)left);
        if (pr < 0 && errno == EINTR)
            continue;
        if (pr <= 0)
            return -1;
        ssize_t r = recv(fd, p + got, n - got, 0);
        if (r < 0 && errno == EINTR)
            continue;
        if (r == 0 || (r < 0 && errno == ECONNRESET))
            return got ? -2 : 0;
        if (r < 0)
            return -1;
        got += (size_t)r;
    }
    return (ssize_t)got;
}

int tu_read_frame(int fd, fw_header *h, uint8_t **body)
{
    uint8_t hdr[FW_HEADER_LEN];
    int64_t deadline = tu_now_ms() + tu_timeout_ms();
    *body = NULL;
    ssize_t r = tu_recv_exact(fd, hdr, sizeof hdr, deadline);
    if (r <= 0)
        return r == 0 ? 0 : -1;
    fw_header_decode(hdr, h);
    if (fw_check_response(h, 256u * 1024u * 1024u) != FW_HDR_OK)
        return -1;
    if (h->body_len == 0)
        return 1;
    uint8_t *b = malloc(h->body_len);
    if (!b)
        return -1;
    if (tu_recv_exact(fd, b, h->body_len, deadline) != (ssize_t)h->body_len) {
        free(b);
        return -1;
    }
    *body = b;
    return 1;
}

int tu_wait_closed(int fd)
{
    uint8_t b;
    ssize_t r = tu_recv_exact(fd, &b, 1, tu_now_ms() + tu_timeout_ms());
    return r == 0 ? 1 : r == 1 ? 0 : -1;
}

int tu_error_message(const uint8_t *body, uint32_t len, char *out, size_t cap)
{
    fw_reader rd;
    uint16_t n;
    fw_reader_init(&rd, body, len);
    const char *m = fw_get_str(&rd, &n);
    if (!m || cap == 0)
        return -1;
    size_t k = n < cap - 1 ? n : cap - 1;
    memcpy(out, m, k);
    out[k] = '\0';
    return 0;
}

int tu_raise_nofile(unsigned long want)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) != 0)
        return -1;
    if (rl.rlim_cur >= want)
        return 0;
    if (rl.rlim_max != RLIM_INFINITY && rl.rlim_max < want)
        return -1;
    rl.rlim_cur = want;
    return setrlimit(RLIMIT_NOFILE, &rl);
}

long long tu_info_get(int fd, const char *key)
{
    fw_header h = tu_request(FW_OP_INFO, 0x7FFF0001u, 0);
    tu_resp r;
    long long v = -1;
    if (tu_send_frame(fd, &h, NULL) != 0 || tu_read_resp(fd, &r) != 0)
        return -1;
    char *text = r.status == FW_STATUS_OK ? malloc((size_t)r.len + 1) : NULL;
    if (text) {
        memcpy(text, r.body, r.len);
        text[r.len] = '\0';
        v = tu_info_value(text, key);
        free(text);
    }
    tu_resp_free(&r);
    return v;
}

int tu_read_resp(int fd, tu_resp *r)
{
    fw_header h;
    memset(r, 0, sizeof *r);
    if (tu_read_frame(fd, &h, &r->body) != 1)
        return -1;
    r->status = h.status;
    r->rid = h.request_id;
    r->len = h.body_len;
    if (h.status != FW_STATUS_OK)
        tu_error_message(r->body, r->len, r->msg, sizeof r->msg);
    return 0;
}

void tu_resp_free(tu_resp *r)
{
    free(r->body);
    r->body = NULL;
}
