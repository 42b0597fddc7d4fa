/*
 * tu_haproxy.h — test utility: run HAProxy as a child process in the foreground on a
 * configuration file.
 *
 * The frontend's listening socket is made here (127.0.0.1, a port the kernel picks) and handed
 * to HAProxy as an inherited descriptor: the configuration binds "${FW_FRONTEND}" and the
 * child's environment has FW_FRONTEND=fd@3. So no port is guessed and none can be taken by
 * somebody else between choosing it and binding it, and connections made before HAProxy is
 * running simply wait in the socket's backlog.
 *
 * HAProxy's stderr (its log: connections, servers going DOWN and UP) is captured as a tu_log
 * (tests/tu_proc.h), so that tests can wait for "Server facewired/node2 is DOWN" as an event
 * instead of guessing how long health checks take: tu_log_mark(&h->log), then
 * tu_log_wait(&h->log, mark, ...). Every wait has the tu_timeout_ms bound.
 *
 * POSIX only (fork/exec, pthreads), no libuv and no server code, because tests/tu_*.o
 * are also linked into the ARM client tests.
 */
#ifndef TU_HAPROXY_H
#define TU_HAPROXY_H

#include <stddef.h>
#include <stdio.h>
#include <sys/types.h>

#include "tests/tu_proc.h"

typedef struct tu_haproxy {
    pid_t pid;          /* 0 when not running (never started, or reaped) */
    int status;         /* exit status once reaped: 0-255, 128+signal, -1 killed after timeout */
    int port;           /* the frontend: 127.0.0.1:port */
    tu_log log;         /* its stderr: connections, servers going DOWN and UP */
} tu_haproxy;

/* Check the configuration (haproxy -c), then start `haproxy -db -f cfg` with env (a
 * NULL-terminated list of "NAME=value", may be NULL) set on top of our environment, plus
 * FW_FRONTEND=fd@3 for a socket listening on 127.0.0.1:h->port. The program is $FW_HAPROXY,
 * else /usr/sbin/haproxy, else "haproxy" on $PATH. h is large: static or heap storage.
 * 0 once it runs, or -1 after printing why (HAProxy's own output included). */
int tu_haproxy_start(tu_haproxy *h, const char *cfg, const char *const *env);

/* Stop: SIGUSR1 (soft stop: listeners closed, sessions finish), then wait for the exit with
 * the timeout and SIGKILL after it. Returns the exit status (h->status). Safe to call on a
 * tu_haproxy that never started or was stopped already. */
int tu_haproxy_stop(tu_haproxy *h);

#endif
