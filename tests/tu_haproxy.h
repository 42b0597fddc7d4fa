/*
 * tu_haproxy.h — test utility: run HAProxy as a child process in the foreground on a
 * configuration file, and ask HTTP servers (facewired's /health) for a status.
 *
 * The frontend's listening socket is made here (127.0.0.1, a port the kernel picks) and handed
 * to HAProxy as an inherited descriptor: the configuration binds "${FW_FRONTEND}" and the
 * child's environment has FW_FRONTEND=fd@3. So no port is guessed and none can be taken by
 * somebody else between choosing it and binding it, and connections made before HAProxy is
 * running simply wait in the socket's backlog.
 *
 * HAProxy's stderr (its log: connections, servers going DOWN and UP) is captured by a reader
 * thread, so that tests can wait for "Server facewired/node2 is DOWN" as an event instead of
 * guessing how long health checks take. Every wait has the tu_timeout_ms bound.
 *
 * POSIX only (fork/exec, poll, pthreads), no libuv and no server code, because tests/tu_*.o
 * are also linked into the ARM client tests.
 */
#ifndef TU_HAPROXY_H
#define TU_HAPROXY_H

#include <pthread.h>
#include <stddef.h>
#include <stdio.h>
#include <sys/types.h>

#define TU_HAPROXY_LOG_CAP (1024u * 1024u)

typedef struct tu_haproxy {
    pid_t pid;          /* 0 when not running (never started, or reaped) */
    int status;         /* exit status once reaped: 0-255, 128+signal, -1 killed after timeout */
    int port;           /* the frontend: 127.0.0.1:port */

    /* stderr capture, filled by the reader thread; guarded by mu */
    int log_fd;
    pthread_t reader;
    int reader_running;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    char log[TU_HAPROXY_LOG_CAP]; /* the first TU_HAPROXY_LOG_CAP-1 bytes, NUL-terminated */
    size_t log_len;
    int log_eof;
} tu_haproxy;

/* Check the configuration (haproxy -c), then start `haproxy -db -f cfg` with env (a
 * NULL-terminated list of "NAME=value", may be NULL) set on top of our environment, plus
 * FW_FRONTEND=fd@3 for a socket listening on 127.0.0.1:h->port. The program is $FW_HAPROXY,
 * else /usr/sbin/haproxy, else "haproxy" on $PATH. h is large: static or heap storage.
 * 0 once it runs, or -1 after printing why (HAProxy's own output included). */
int tu_haproxy_start(tu_haproxy *h, const char *cfg, const char *const *env);

/* The length of the log now: pass it to tu_haproxy_wait_log to look only at what comes after. */
size_t tu_haproxy_log_mark(tu_haproxy *h);
/* Wait until the log, from offset `from` on, contains needle. 1 if it does, 0 on timeout or
 * when HAProxy exited without writing it. */
int tu_haproxy_wait_log(tu_haproxy *h, size_t from, const char *needle);
/* 1 if the log from offset `from` on contains needle now. */
int tu_haproxy_log_has(tu_haproxy *h, size_t from, const char *needle);
void tu_haproxy_dump_log(tu_haproxy *h, FILE *out);

/* Stop: SIGUSR1 (soft stop: listeners closed, sessions finish), then wait for the exit with
 * the timeout and SIGKILL after it. Returns the exit status (h->status). Safe to call on a
 * tu_haproxy that never started or was stopped already. */
int tu_haproxy_stop(tu_haproxy *h);

/* GET path over HTTP/1.0 from host:port (IPv4 or IPv6 literal), within the timeout. Returns
 * the response's status code with the body (NUL-terminated, truncated) in body, or -1 when
 * there was no well-formed response. */
int tu_http_get(const char *host, int port, const char *path, char *body, size_t cap);

#endif
