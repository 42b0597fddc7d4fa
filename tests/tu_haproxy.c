/*
 * tu_haproxy.c — HAProxy as a child process for the cluster tests, and a small HTTP GET (see
 * tu_haproxy.h).
 *
 * The child gets the frontend socket as descriptor 3 and nothing else above stderr: a
 * HAProxy that inherited one of the test's client sockets would keep that connection alive
 * behind the test's back.
 */
#include "tests/tu_haproxy.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "tests/tu_server.h"

extern char **environ;

#define TU_HAPROXY_FRONT_FD 3

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static const char *haproxy_path(void)
{
    const char *e = getenv("FW_HAPROXY");
    if (e && *e)
        return e;
    return access("/usr/sbin/haproxy", X_OK) == 0 ? "/usr/sbin/haproxy" : "haproxy";
}

/* Our environment with every NAME=value of extra replacing ours of the same NAME, then
 * extra. The strings are not copied (they outlive the exec); the array is malloc'd. */
static char **child_env(const char *const *extra)
{
    size_t n = 0, k = 0, m = 0;
    while (environ && environ[n])
        n++;
    while (extra && extra[m])
        m++;
    char **env = calloc(n + m + 1, sizeof *env);
    if (!env)
        return NULL;
    for (size_t i = 0; i < n; i++) {
        size_t name = strcspn(environ[i], "=");
        int replaced = 0;
        for (size_t j = 0; j < m && !replaced; j++)
            replaced = strncmp(extra[j], environ[i], name + 1) == 0;
        if (!replaced)
            env[k++] = environ[i];
    }
    for (size_t j = 0; j < m; j++)
        env[k++] = (char *)extra[j];
    env[k] = NULL;
    return env;
}

/* fork + exec argv with stdout and stderr on a pipe (*out_fd) and front_fd as descriptor 3.
 * Everything the child needs is prepared before the fork: it may only call
 * async-signal-safe functions. */
static pid_t spawn(char *const *argv, char *const *env, int front_fd, int *out_fd)
{
    int p[2];
    long maxfd = sysconf(_SC_OPEN_MAX);
    if (maxfd < 0 || maxfd > 65536)
        maxfd = 65536;
    if (pipe2(p, O_CLOEXEC) != 0)
        return -1;
    pid_t pid = fork();
    if (pid < 0) {
        close(p[0]);
        close(p[1]);
        return -1;
    }
    if (pid == 0) {
        int nul = open("/dev/null", O_RDONLY);
        if (nul < 0 || dup2(nul, 0) < 0 || dup2(p[1], 1) < 0 || dup2(p[1], 2) < 0 ||
            dup2(front_fd, TU_HAPROXY_FRONT_FD) < 0 || fcntl(TU_HAPROXY_FRONT_FD, F_SETFD, 0) < 0)
            _exit(126);
        for (long fd = TU_HAPROXY_FRONT_FD + 1; fd < maxfd; fd++)
            close((int)fd);
        execve(argv[0], argv, env);
        if (!strchr(argv[0], '/'))
            execvpe(argv[0], argv, env);
        static const char m[] = "tu_haproxy: exec failed (is HAProxy installed? set FW_HAPROXY)\n";
        (void)!write(2, m, sizeof m - 1);
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

/* A socket listening on 127.0.0.1 with a port the kernel picked; -1 on failure. */
static int listen_loopback(int *port)
{
    struct sockaddr_in a;
    socklen_t len = sizeof a;
    int one = 1;
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -1;
    memset(&a, 0, sizeof a);
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (bind(fd, (struct sockaddr *)&a, sizeof a) != 0 || listen(fd, 256) != 0 ||
        getsockname(fd, (struct sockaddr *)&a, &len) != 0) {
        close(fd);
        return -1;
    }
    *port = ntohs(a.sin_port);
    return fd;
}

/* Run `haproxy -c -f cfg` to completion within the timeout: 0 if it found the configuration
 * valid, else -1 after printing what it said. */
static int check_config(char *const *env, const char *cfg, int front_fd)
{
    char *argv[] = { (char *)haproxy_path(), (char *)"-c", (char *)"-q", (char *)"-f", (char *)cfg, NULL };
    char out[8192];
    size_t len = 0;
    int fd, st;
    pid_t pid = spawn(argv, env, front_fd, &fd);
    if (pid < 0) {
        fprintf(stderr, "tu_haproxy: cannot run %s: %s\n", argv[0], strerror(errno));
        return -1;
    }
    int64_t deadline = now_ms() + tu_timeout_ms();
    for (;;) {
        struct pollfd pfd = { .fd = fd, .events = POLLIN };
        int64_t left = deadline - now_ms();
        if (left <= 0 || poll(&pfd, 1, (int)left) == 0) {
            kill(pid, SIGKILL);
            break;
        }
        ssize_t r = read(fd, out + len, sizeof out - 1 - len);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            break;
        len += (size_t)r;
        if (len == sizeof out - 1)
            break;
    }
    out[len] = '\0';
    close(fd);
    while (waitpid(pid, &st, 0) < 0)
        if (errno != EINTR)
            return -1;
    if (decode_status(st) != 0) {
        fprintf(stderr, "tu_haproxy: %s -c -f %s: status %d\n%s\n", argv[0], cfg, decode_status(st), out);
        return -1;
    }
    return 0;
}

static void *log_reader(void *arg)
{
    tu_haproxy *h = arg;
    char buf[4096];
    int verbose = getenv("FW_TEST_VERBOSE") != NULL;
    for (;;) {
        ssize_t n = read(h->log_fd, buf, sizeof buf);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            break;
        if (verbose)
            fwrite(buf, 1, (size_t)n, stderr);
        pthread_mutex_lock(&h->mu);
        size_t room = TU_HAPROXY_LOG_CAP - 1 - h->log_len;
        size_t k = (size_t)n < room ? (size_t)n : room;
        memcpy(h->log + h->log_len, buf, k);
        h->log_len += k;
        h->log[h->log_len] = '\0';
        pthread_cond_broadcast(&h->cv);
        pthread_mutex_unlock(&h->mu);
    }
    pthread_mutex_lock(&h->mu);
    h->log_eof = 1;
    pthread_cond_broadcast(&h->cv);
    pthread_mutex_unlock(&h->mu);
    return NULL;
}

int tu_haproxy_start(tu_haproxy *h, const char *cfg, const char *const *env)
{
    char front[32];
    const char *extra[64];
    char **cenv = NULL;
    int front_fd = -1, m = 0;

    memset(h, 0, sizeof *h);
    h->log_fd = -1;
    pthread_mutex_init(&h->mu, NULL);
    {
        pthread_condattr_t ca;
        pthread_condattr_init(&ca);
        pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
        pthread_cond_init(&h->cv, &ca);
        pthread_condattr_destroy(&ca);
    }
    if ((front_fd = listen_loopback(&h->port)) < 0) {
        fprintf(stderr, "tu_haproxy: cannot listen on 127.0.0.1: %s\n", strerror(errno));
        goto err;
    }
    snprintf(front, sizeof front, "FW_FRONTEND=fd@%d", TU_HAPROXY_FRONT_FD);
    for (int i = 0; env && env[i]; i++) {
        if (m >= (int)(sizeof extra / sizeof extra[0]) - 2) {
            fprintf(stderr, "tu_haproxy: too many environment variables\n");
            goto err;
        }
        extra[m++] = env[i];
    }
    extra[m++] = front;
    extra[m] = NULL;
    if (!(cenv = child_env(extra))) {
        fprintf(stderr, "tu_haproxy: cannot build the environment\n");
        goto err;
    }
    if (check_config(cenv, cfg, front_fd) != 0)
        goto err;

    char *argv[] = { (char *)haproxy_path(), (char *)"-db", (char *)"-f", (char *)cfg, NULL };
    h->pid = spawn(argv, cenv, front_fd, &h->log_fd);
    if (h->pid < 0) {
        fprintf(stderr, "tu_haproxy: cannot start %s: %s\n", argv[0], strerror(errno));
        h->pid = 0;
        goto err;
    }
    if (pthread_create(&h->reader, NULL, log_reader, h) != 0) {
        fprintf(stderr, "tu_haproxy: cannot start the log reader\n");
        kill(h->pid, SIGKILL);
        waitpid(h->pid, NULL, 0);
        h->pid = 0;
        close(h->log_fd);
        h->log_fd = -1;
        goto err;
    }
    h->reader_running = 1;
    /* HAProxy has the socket now; ours would only keep the port open after it exits. */
    close(front_fd);
    free(cenv);
    return 0;
err:
    if (front_fd >= 0)
        close(front_fd);
    free(cenv);
    pthread_cond_destroy(&h->cv);
    pthread_mutex_destroy(&h->mu);
    return -1;
}

size_t tu_haproxy_log_mark(tu_haproxy *h)
{
    pthread_mutex_lock(&h->mu);
    size_t n = h->log_len;
    pthread_mutex_unlock(&h->mu);
    return n;
}

int tu_haproxy_log_has(tu_haproxy *h, size_t from, const char *needle)
{
    pthread_mutex_lock(&h->mu);
    int found = from <= h->log_len && strstr(h->log + from, needle) != NULL;
    pthread_mutex_unlock(&h->mu);
    return found;
}

int tu_haproxy_wait_log(tu_haproxy *h, size_t from, const char *needle)
{
    struct timespec dl;
    int found;
    clock_gettime(CLOCK_MONOTONIC, &dl);
    dl.tv_sec += tu_timeout_ms() / 1000;
    pthread_mutex_lock(&h->mu);
    for (;;) {
        found = from <= h->log_len && strstr(h->log + from, needle) != NULL;
        if (found || h->log_eof || pthread_cond_timedwait(&h->cv, &h->mu, &dl) == ETIMEDOUT)
            break;
    }
    if (!found)
        found = from <= h->log_len && strstr(h->log + from, needle) != NULL;
    pthread_mutex_unlock(&h->mu);
    return found;
}

void tu_haproxy_dump_log(tu_haproxy *h, FILE *out)
{
    pthread_mutex_lock(&h->mu);
    fprintf(out, "---- haproxy log (pid %d) ----\n%s---- end of haproxy log ----\n", (int)h->pid, h->log);
    pthread_mutex_unlock(&h->mu);
}

int tu_haproxy_stop(tu_haproxy *h)
{
    int st = 0, killed = 0;
    if (h->pid <= 0)
        return h->status;
    kill(h->pid, SIGUSR1);
    if (h->reader_running) {
        /* The pipe reaches EOF when HAProxy exits: wait for that, with the timeout. */
        struct timespec dl;
        clock_gettime(CLOCK_MONOTONIC, &dl);
        dl.tv_sec += tu_timeout_ms() / 1000;
        pthread_mutex_lock(&h->mu);
        while (!h->log_eof)
            if (pthread_cond_timedwait(&h->cv, &h->mu, &dl) == ETIMEDOUT)
                break;
        int eof = h->log_eof;
        pthread_mutex_unlock(&h->mu);
        if (!eof) {
            fprintf(stderr, "tu_haproxy: haproxy %d did not stop in time; killing it\n", (int)h->pid);
            kill(h->pid, SIGKILL);
            killed = 1;
        }
        pthread_join(h->reader, NULL);
        h->reader_running = 0;
        close(h->log_fd);
        h->log_fd = -1;
    }
    while (waitpid(h->pid, &st, 0) < 0 && errno == EINTR)
        ;
    h->pid = 0;
    h->status = killed ? -1 : decode_status(st);
    pthread_cond_destroy(&h->cv);
    pthread_mutex_destroy(&h->mu);
    return h->status;
}

int tu_http_get(const char *host, int port, const char *path, char *body, size_t cap)
{
    char req[512], resp[8192];
    size_t len = 0;
    int code = -1, fd = tu_connect(host, port);
    if (cap)
        body[0] = '\0';
    if (fd < 0)
        return -1;
    int n = snprintf(req, sizeof req, "GET %s HTTP/1.0\r\nHost: %s\r\n\r\n", path, host);
    if (n < 0 || (size_t)n >= sizeof req || tu_send_all(fd, req, (size_t)n) != 0)
        goto out;
    int64_t deadline = now_ms() + tu_timeout_ms();
    for (;;) {
        struct pollfd pfd = { .fd = fd, .events = POLLIN };
        int64_t left = deadline - now_ms();
        if (left <= 0)
            goto out;
        int pr = poll(&pfd, 1, (int)left);
        if (pr < 0 && errno == EINTR)
            continue;
        if (pr <= 0)
            goto out;
        ssize_t r = recv(fd, resp + len, sizeof resp - 1 - len, 0);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0 && errno != ECONNRESET)
            goto out;
        if (r <= 0 || (len += (size_t)r) == sizeof resp - 1)
            break;
    }
    resp[len] = '\0';
    int minor, status;
    char *eoh = strstr(resp, "\r\n\r\n");
    if (!eoh || sscanf(resp, "HTTP/1.%d %3d", &minor, &status) != 2 || status < 100 || status > 599)
        goto out;
    code = status;
    if (cap)
        snprintf(body, cap, "%s", eoh + 4);
out:
    close(fd);
    return code;
}
