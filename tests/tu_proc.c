/*
 * tu_proc.c — child processes for tests and their captured output (see tu_proc.h).
 *
 * The reader thread is the only writer of a tu_log's buffer; the test's thread reads it under
 * the mutex while the reader runs and freely once tu_log_reap has joined it. That is why the
 * lock is taken only while reader_running: that flag is written by the test's thread alone,
 * and it lets a test look at the log of a child it has already reaped.
 */
#include "tests/tu_proc.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

extern char **environ;

/* A child never needs to look beyond this many descriptors to close the ones it inherited. */
#define TU_MAX_FD 65536

int tu_timeout_ms(void)
{
    const char *e = getenv("FW_TEST_TIMEOUT_MS");
    long v = e ? strtol(e, NULL, 10) : 0;
    return v > 0 && v < 3600000 ? (int)v : 20000;
}

int64_t tu_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int tu_exit_status(int wstatus)
{
    if (WIFEXITED(wstatus))
        return WEXITSTATUS(wstatus);
    if (WIFSIGNALED(wstatus))
        return 128 + WTERMSIG(wstatus);
    return -1;
}

/* The CLOCK_MONOTONIC time one timeout from now, for pthread_cond_timedwait. */
static struct timespec deadline_ts(void)
{
    struct timespec ts;
    int ms = tu_timeout_ms();
    clock_gettime(CLOCK_MONOTONIC, &ts);
    ts.tv_sec += ms / 1000;
    ts.tv_nsec += (long)(ms % 1000) * 1000000L;
    if (ts.tv_nsec >= 1000000000L) {
        ts.tv_sec++;
        ts.tv_nsec -= 1000000000L;
    }
    return ts;
}

/* ---- spawning and running ------------------------------------------------------------------ */

pid_t tu_spawn(char *const *argv, char *const *env, int fd3, int *out_fd)
{
    int p[2];
    long maxfd = sysconf(_SC_OPEN_MAX);
    size_t arg0_len = strlen(argv[0]);
    char *const *envp = env ? env : environ;

    if (maxfd < 0 || maxfd > TU_MAX_FD)
        maxfd = TU_MAX_FD;
    if (pipe2(p, O_CLOEXEC) != 0)
        return -1;
    pid_t pid = fork();
    if (pid < 0) {
        close(p[0]);
        close(p[1]);
        return -1;
    }
    if (pid == 0) {
        /* Async-signal-safe calls only from here on: everything was prepared before fork. */
        int nul = open("/dev/null", O_RDONLY);
        if (nul < 0 || dup2(nul, 0) < 0 || dup2(p[1], 1) < 0 || dup2(p[1], 2) < 0)
            _exit(126);
        if (fd3 >= 0 && (dup2(fd3, 3) < 0 || fcntl(3, F_SETFD, 0) < 0))
            _exit(126);
        for (long fd = fd3 >= 0 ? 4 : 3; fd < maxfd; fd++)
            close((int)fd);
        if (strchr(argv[0], '/'))
            execve(argv[0], argv, envp);
        else
            execvpe(argv[0], argv, envp);
        static const char m[] = "tu_spawn: cannot execute ";
        (void)!write(2, m, sizeof m - 1);
        (void)!write(2, argv[0], arg0_len);
        (void)!write(2, "\n", 1);
        _exit(127);
    }
    close(p[1]);
    *out_fd = p[0];
    return pid;
}

int tu_run_argv(char *const *argv, char *const *env, int fd3, char *out, size_t cap)
{
    int fd, st;
    size_t len = 0;
    if (cap)
        out[0] = '\0';
    pid_t pid = tu_spawn(argv, env, fd3, &fd);
    if (pid < 0)
        return -1;
    int64_t deadline = tu_now_ms() + tu_timeout_ms();
    for (;;) {
        struct pollfd pfd = { .fd = fd, .events = POLLIN };
        int64_t left = deadline - tu_now_ms();
        int pr = left > 0 ? poll(&pfd, 1, (int)left) : 0;
        if (pr < 0 && errno == EINTR)
            continue;
        if (pr <= 0) {
            kill(pid, SIGKILL);
            break;
        }
        /* Read on after out is full: a child blocked on a full pipe would never exit. */
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
        out[len] = '\0';
    close(fd);
    while (waitpid(pid, &st, 0) < 0)
        if (errno != EINTR)
            return -1;
    return tu_exit_status(st);
}

/* ---- a captured log ------------------------------------------------------------------------ */

static void log_lock(tu_log *l)
{
    if (l->reader_running)
        pthread_mutex_lock(&l->mu);
}

static void log_unlock(tu_log *l)
{
    if (l->reader_running)
        pthread_mutex_unlock(&l->mu);
}

static const char *log_name(const tu_log *l)
{
    return l->name ? l->name : "child";
}

/* The first needle at offset `from` or later; call with the lock held. */
static const char *log_find(const tu_log *l, size_t from, const char *needle)
{
    return from <= l->len ? strstr(l->buf + from, needle) : NULL;
}

/* Reads the child's output until EOF (the child exited, or we closed our end). */
static void *log_reader(void *arg)
{
    tu_log *l = arg;
    char tmp[4096];
    int verbose = getenv("FW_TEST_VERBOSE") != NULL;
    for (;;) {
        ssize_t n = read(l->fd, tmp, sizeof tmp);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            break;
        if (verbose)
            fwrite(tmp, 1, (size_t)n, stderr);
        pthread_mutex_lock(&l->mu);
        size_t room = TU_LOG_CAP - 1 - l->len;
        size_t k = (size_t)n < room ? (size_t)n : room;
        memcpy(l->buf + l->len, tmp, k);
        l->len += k;
        l->buf[l->len] = '\0';
        pthread_cond_broadcast(&l->cv);
        pthread_mutex_unlock(&l->mu);
    }
    pthread_mutex_lock(&l->mu);
    l->eof = 1;
    pthread_cond_broadcast(&l->cv);
    pthread_mutex_unlock(&l->mu);
    return NULL;
}

pid_t tu_log_spawn(tu_log *l, const char *name, char *const *argv, char *const *env, int fd3)
{
    pthread_condattr_t ca;

    l->name = name;
    l->pid = 0;
    l->fd = -1;
    l->reader_running = 0;
    l->len = 0;
    l->eof = 0;
    l->buf[0] = '\0';
    pid_t pid = tu_spawn(argv, env, fd3, &l->fd);
    if (pid < 0) {
        fprintf(stderr, "tu_proc: cannot start %s: %s\n", argv[0], strerror(errno));
        return -1;
    }
    l->pid = pid;
    pthread_mutex_init(&l->mu, NULL);
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&l->cv, &ca);
    pthread_condattr_destroy(&ca);
    l->reader_running = 1;
    if (pthread_create(&l->reader, NULL, log_reader, l) != 0) {
        fprintf(stderr, "tu_proc: cannot start the reader of %s's output\n", log_name(l));
        l->reader_running = 0;
        pthread_cond_destroy(&l->cv);
        pthread_mutex_destroy(&l->mu);
        kill(pid, SIGKILL);
        while (waitpid(pid, NULL, 0) < 0 && errno == EINTR)
            ;
        close(l->fd);
        l->fd = -1;
        return -1;
    }
    return pid;
}

size_t tu_log_mark(tu_log *l)
{
    log_lock(l);
    size_t n = l->len;
    log_unlock(l);
    return n;
}

int tu_log_has(tu_log *l, size_t from, const char *needle)
{
    log_lock(l);
    int found = log_find(l, from, needle) != NULL;
    log_unlock(l);
    return found;
}

int tu_log_wait(tu_log *l, size_t from, const char *needle)
{
    if (!l->reader_running)
        return tu_log_has(l, from, needle);
    struct timespec dl = deadline_ts();
    pthread_mutex_lock(&l->mu);
    int found;
    while (!(found = log_find(l, from, needle) != NULL) && !l->eof)
        if (pthread_cond_timedwait(&l->cv, &l->mu, &dl) == ETIMEDOUT) {
            found = log_find(l, from, needle) != NULL;
            break;
        }
    pthread_mutex_unlock(&l->mu);
    return found;
}

int tu_log_line(tu_log *l, size_t from, const char *needle, char *line, size_t cap)
{
    if (cap)
        line[0] = '\0';
    log_lock(l);
    const char *p = log_find(l, from, needle);
    if (p && cap) {
        size_t n = strcspn(p, "\n");
        if (n > cap - 1)
            n = cap - 1;
        memcpy(line, p, n);
        line[n] = '\0';
    }
    log_unlock(l);
    return p != NULL;
}

void tu_log_dump(tu_log *l, FILE *out)
{
    log_lock(l);
    fprintf(out, "---- %s log (pid %d) ----\n%s---- end of %s log ----\n", log_name(l), (int)l->pid, l->buf,
            log_name(l));
    log_unlock(l);
}

int tu_log_reap(tu_log *l, pid_t pid)
{
    int st = 0, killed = 0;
    if (l->reader_running) {
        /* The pipe reaches EOF when the child exits: wait for that, with the timeout. */
        struct timespec dl = deadline_ts();
        pthread_mutex_lock(&l->mu);
        while (!l->eof)
            if (pthread_cond_timedwait(&l->cv, &l->mu, &dl) == ETIMEDOUT)
                break;
        int eof = l->eof;
        pthread_mutex_unlock(&l->mu);
        if (!eof) {
            fprintf(stderr, "tu_proc: %s (pid %d) did not exit in time; killing it\n", log_name(l), (int)pid);
            kill(pid, SIGKILL);
            killed = 1;
        }
        pthread_join(l->reader, NULL);
        l->reader_running = 0;
        pthread_cond_destroy(&l->cv);
        pthread_mutex_destroy(&l->mu);
        close(l->fd);
        l->fd = -1;
    }
    while (waitpid(pid, &st, 0) < 0)
        if (errno != EINTR)
            return -1;
    return killed ? -1 : tu_exit_status(st);
}
