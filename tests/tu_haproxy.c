/*
 * tu_haproxy.c — HAProxy as a child process for the cluster tests (see tu_haproxy.h).
 *
 * The child gets the frontend socket as descriptor 3 and nothing else above stderr
 * (tu_spawn): a HAProxy that inherited one of the test's client sockets would keep that
 * connection alive behind the test's back.
 */
#include "tests/tu_haproxy.h"

#include <errno.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "tests/tu_server.h"

extern char **environ;

#define TU_HAPROXY_FRONT_FD 3

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

/* Run `haproxy -c -f cfg` to completion within the timeout: 0 if it found the configuration
 * valid, else -1 after printing what it said. */
static int check_config(char *const *env, const char *cfg, int front_fd)
{
    char *argv[] = { (char *)haproxy_path(), (char *)"-c", (char *)"-q", (char *)"-f", (char *)cfg, NULL };
    char out[8192];
    int st = tu_run_argv(argv, env, front_fd, out, sizeof out);
    if (st != 0) {
        fprintf(stderr, "tu_haproxy: %s -c -f %s: status %d%s\n%s\n", argv[0], cfg, st,
                st == 127 ? " (is HAProxy installed? set FW_HAPROXY)" : "", out);
        return -1;
    }
    return 0;
}

int tu_haproxy_start(tu_haproxy *h, const char *cfg, const char *const *env)
{
    char front[32];
    const char *extra[64];
    char **cenv = NULL;
    int front_fd = -1, m = 0;

    memset(h, 0, sizeof *h);
    if ((front_fd = tu_listen_loopback(256, &h->port)) < 0) {
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
    if ((h->pid = tu_log_spawn(&h->log, "haproxy", argv, cenv, front_fd)) < 0) {
        h->pid = 0;
        goto err;
    }
    /* HAProxy has the socket now; ours would only keep the port open after it exits. */
    close(front_fd);
    free(cenv);
    return 0;
err:
    if (front_fd >= 0)
        close(front_fd);
    free(cenv);
    return -1;
}

int tu_haproxy_stop(tu_haproxy *h)
{
    if (h->pid <= 0)
        return h->status;
    kill(h->pid, SIGUSR1);
    h->status = tu_log_reap(&h->log, h->pid);
    h->pid = 0;
    return h->status;
}
