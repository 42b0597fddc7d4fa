/*
 * tu_server.c — run facewired as a child process and talk to it over blocking sockets (see
 * tu_server.h). Every wait has the same generous timeout, so a hung server fails a test
 * rather than hanging the suite, and no wait is a sleep.
 */
#include "tests/tu_server.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define TU_MAX_ARGS 64

int tu_timeout_ms(void)
{
    const char *e = getenv("FW_TEST_TIMEOUT_MS");
    long v = e ? strtol(e, NULL, 10) : 0;
    return v > 0 && v < 3600000 ? (int)v : 20000;
}

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

const char *tu_bin_path(const char *name, char *buf, size_t cap)
{
    const char *dir = getenv("FW_BIN");
    snprintf(buf, cap, "%s/%s", dir && *dir ? dir : "bin", name);
    return buf;
}

/* ---- the server's stderr ------------------------------------------------------------------- */

static void *log_reader(void *arg)
{
    tu_server *s = arg;
    char buf[4096];
    int verbose = getenv("FW_TEST_VERBOSE") != NULL;
    for (;;) {
        ssize_t n = read(s->log_fd, buf, sizeof buf);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            break;
        if (verbose)
            fwrite(buf, 1, (size_t)n, stderr);
        pthread_mutex_lock(&s->mu);
        size_t room = TU_LOG_CAP - 1 - s->log_len;
        size_t k = (size_t)n < room ? (size_t)n : room;
        memcpy(s->log + s->log_len, buf, k);
        s->log_len += k;
        s->log[s->log_len] = '\0';
        pthread_cond_broadcast(&s->cv);
        pthread_mutex_unlock(&s->mu);
    }
    pthread_mutex_lock(&s->mu);
    s->log_eof = 1;
    pthread_cond_broadcast(&s->cv);
    pthread_mutex_unlock(&s->mu);
    return NULL;
}

int tu_server_log_has(tu_server *s, const char *needle)
{
    pthread_mutex_lock(&s->mu);
    int found = strstr(s->log, needle) != NULL;
    pthread_mutex_unlock(&s->mu);
    return found;
}

int tu_server_wait_log(tu_server *s, const char *needle)
{
    struct timespec dl;
    int found;
    clock_gettime(CLOCK_MONOTONIC, &dl);
    dl.tv_sec += tu_timeout_ms() / 1000;
    pthread_mutex_lock(&s->mu);
    while (!(found = strstr(s->log, needle) != NULL) && !s->log_eof)
        if (pthread_cond_timedwait(&s->cv, &s->mu, &dl) == ETIMEDOUT)
            break;
    if (!found)
        found = strstr(s->log, needle) != NULL;
    pthread_mutex_unlock(&s->mu);
    return found;
}

void tu_server_dump_log(tu_server *s, FILE *out)
{
    pthread_mutex_lock(&s->mu);
    fprintf(out, "---- facewired log (pid %d) ----\n%s---- end of log ----\n", (int)s->pid, s->log);
    pthread_mutex_unlock(&s->mu);
}

/* Find 'msg="listening" addr=HOST:PORT' and split it ("[::1]:P" -> "::1", P). */
static int parse_listening(tu_server *s)
{
    int ok = 0;
    pthread_mutex_lock(&s->mu);
    const char *line = strstr(s->log, "msg=\"listening\"");
    const char *a = line ? strstr(line, " addr=") : NULL;
    if (a) {
        char addr[96];
        a += 6;
        size_t n = strcspn(a, " \n");
        if (n < sizeof addr) {
            memcpy(addr, a, n);
            addr[n] = '\0';
            char *colon = strrchr(addr, ':');
            if (colon) {
                *colon = '\0';
                char *h = addr;
                if (h[0] == '[') {
                    h++;
                    char *rb = strchr(h, ']');
                    if (rb)
                        *rb = '\0';
                }
                snprintf(s->host, sizeof s->host, "%s", h);
                s->port = atoi(colon + 1);
                ok = s->port > 0;
            }
        }
    }
    pthread_mutex_unlock(&s->mu);
    return ok;
}

/* ---- the child process --------------------------------------------------------------------- */

/* fork + exec with stdout and stderr on a pipe; argv must be complete before the fork, as
 * the child may only call async-signal-safe functions. */
static pid_t spawn(const char *path, char *const *argv, int *out_fd)
{
    int p[2];
    if (pipe2(p, O_CLOEXEC) != 0)
        return -1;
    pid_t pid = fork();
    if (pid < 0) {
        close(p[0]);
        close(p[1]);
        return -1;
    }
    if (pid == 0) {
        int devnull = open("/dev/null", O_RDONLY);
        if (devnull >= 0)
            dup2(devnull, 0);
        dup2(p[1], 1);
        dup2(p[1], 2);
        execv(path, argv);
        _exit(127);
    }
    close(p[1]);
    *out_fd = p[0];
    return pid;
}

static int decode_status(int st)
{
    if (WIFEXITED(st))
        return WEXITSTATUS(st);
    if (WIFSIGNALED(st))
        return 128 + WTERMSIG(st);
    return -1;
}

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
    s->log_fd = -1;
    pthread_mutex_init(&s->mu, NULL);
    {
        pthread_condattr_t ca;
        pthread_condattr_init(&ca);
        pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
        pthread_cond_init(&s->cv, &ca);
        pthread_condattr_destroy(&ca);
    }
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

    s->pid = spawn(path, argv, &s->log_fd);
    if (s->pid < 0) {
        fprintf(stderr, "tu_server_start: cannot start %s: %s\n", path, strerror(errno));
        s->pid = 0;
        remove_data_dir(s);
        return -1;
    }
    if (pthread_create(&s->reader, NULL, log_reader, s) != 0) {
        fprintf(stderr, "tu_server_start: cannot start the log reader\n");
        kill(s->pid, SIGKILL);
        waitpid(s->pid, NULL, 0);
        s->pid = 0;
        close(s->log_fd);
        remove_data_dir(s);
        return -1;
    }
    s->reader_running = 1;
    if (!tu_server_wait_log(s, "msg=\"listening\"") || !parse_listening(s)) {
        fprintf(stderr, "tu_server_start: %s did not report a listening address\n", path);
        tu_server_kill(s, SIGKILL);
        tu_server_wait(s);
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
    int st = 0, killed = 0;
    if (s->pid <= 0)
        return s->status;
    /* The pipe reaches EOF when the server exits: wait for that, with the timeout. */
    if (s->reader_running) {
        struct timespec dl;
        clock_gettime(CLOCK_MONOTONIC, &dl);
        dl.tv_sec += tu_timeout_ms() / 1000;
        pthread_mutex_lock(&s->mu);
        while (!s->log_eof)
            if (pthread_cond_timedwait(&s->cv, &s->mu, &dl) == ETIMEDOUT)
                break;
        int eof = s->log_eof;
        pthread_mutex_unlock(&s->mu);
        if (!eof) {
            fprintf(stderr, "tu_server_wait: server %d did not exit in time; killing it\n", (int)s->pid);
            kill(s->pid, SIGKILL);
            killed = 1;
        }
        pthread_join(s->reader, NULL);
        s->reader_running = 0;
        close(s->log_fd);
        s->log_fd = -1;
    }
    while (waitpid(s->pid, &st, 0) < 0 && errno == EINTR)
        ;
    s->pid = 0;
    remove_data_dir(s);
    s->status = killed ? -1 : decode_status(st);
    if (s->status != 0)
        tu_server_dump_log(s, stderr);
    pthread_cond_destroy(&s->cv);
    pthread_mutex_destroy(&s->mu);
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
    int n = 0, fd, st;
    size_t len = 0;

    tu_bin_path(name, path, sizeof path);
    argv[n++] = path;
    for (int i = 0; args && args[i] && n < TU_MAX_ARGS; i++)
        argv[n++] = (char *)args[i];
    argv[n] = NULL;
    pid_t pid = spawn(path, argv, &fd);
    if (pid < 0)
        return -1;
    int64_t deadline = now_ms() + tu_timeout_ms();
    for (;;) {
        struct pollfd pfd = {.fd = fd, .events = POLLIN};
        int64_t left = deadline - now_ms();
        if (left <= 0 || poll(&pfd, 1, (int)left) == 0) {
            kill(pid, SIGKILL);
            break;
        }
        char tmp[4096];
        ssize_t r = read(fd, tmp, sizeof tmp);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            break;
        size_t k = cap > len + 1 ? cap - len - 1 : 0;
        if ((size_t)r < k)
            k = (size_t)r;
        memcpy(out + len, tmp, k);
        len += k;
    }
    if (cap)
        out[len < cap ? len : cap - 1] = '\0';
    close(fd);
    while (waitpid(pid, &st, 0) < 0)
        if (errno != EINTR)
            return -1;
    return decode_status(st);
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

/* Read exactly n bytes before the deadline: n on success, 0 on EOF before any byte, -1 on
 * timeout or error, -2 on EOF after some bytes. A reset counts as EOF. */
static ssize_t read_exact(int fd, uint8_t *p, size_t n, int64_t deadline)
{
    size_t got = 0;
    while (got < n) {
        struct pollfd pfd = {.fd = fd, .events = POLLIN};
        int64_t left = deadline - now_ms();
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
    int64_t deadline = now_ms() + tu_timeout_ms();
    *body = NULL;
    ssize_t r = read_exact(fd, hdr, sizeof hdr, deadline);
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
    if (read_exact(fd, b, h->body_len, deadline) != (ssize_t)h->body_len) {
        free(b);
        return -1;
    }
    *body = b;
    return 1;
}

int tu_wait_closed(int fd)
{
    uint8_t b;
    ssize_t r = read_exact(fd, &b, 1, now_ms() + tu_timeout_ms());
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
