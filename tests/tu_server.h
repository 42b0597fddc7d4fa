/*
 * tu_server.h — test utility: run bin/facewired (from $FW_BIN) as a child process on an
 * ephemeral port, and talk to it over plain blocking sockets.
 *
 * POSIX only (fork/exec, poll, pthreads), no libuv and no server code, so client tests can
 * use it too. Every wait is for an event (a log line, a frame, EOF, the child's exit) with a
 * generous timeout ($FW_TEST_TIMEOUT_MS, default 20 s) so a broken server fails the test
 * instead of hanging it; nothing here sleeps to synchronise.
 *
 * The server's stderr (logfmt) is captured as a tu_log (tests/tu_proc.h): tu_server_start()
 * waits for the msg="started" line and learns the port from msg="listening", tests may wait
 * for other lines, and the whole log is printed when the server does not exit cleanly
 * (sanitizer reports included).
 */
#ifndef TU_SERVER_H
#define TU_SERVER_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <sys/types.h>

#include "fw_proto.h"
#include "tests/tu_proc.h"

typedef struct tu_server {
    pid_t pid;          /* 0 once reaped */
    char host[96];      /* of the first listener: "127.0.0.1" or "::1" */
    int port;
    int status;         /* exit status after tu_server_stop/tu_server_wait: 0-255, 128+signal */

    /* --data made for this server when the arguments have none ("" otherwise): a gallery
     * directory is locked by its server, so servers of tests running at the same time must
     * not share the default ./data. Removed when the server has been reaped. */
    char data_dir[64];

    /* Its stdout and stderr. The tu_server_*log* calls below cover the common uses; tu_log_*
     * (tu_proc.h) work on it directly, e.g. tu_log_line(&s->log, 0, "msg=\"...\"", ...). */
    tu_log log;
} tu_server;

/* "$FW_BIN/name" (FW_BIN defaults to "bin"). */
const char *tu_bin_path(const char *name, char *buf, size_t cap);

/* Start facewired with the extra arguments (NULL-terminated list, may be NULL). Unless the
 * list has its own --listen, "--listen 127.0.0.1:0" is added; unless it has its own --data (or
 * a --gallery-url, which excludes it), a fresh temporary directory is (see data_dir). Waits
 * until the server logs that it has started (signal handlers in place), and its bound address.
 * s can be large: give it static or heap storage, not a small stack.
 * Returns 0, or -1 after printing why (and the server's log). */
int tu_server_start(tu_server *s, const char *const *args);

/* Wait until the captured log contains needle; 1 if it does, 0 on timeout or server exit. */
int tu_server_wait_log(tu_server *s, const char *needle);
/* 1 if the captured log contains needle now (also after the server was reaped). */
int tu_server_log_has(tu_server *s, const char *needle);
void tu_server_dump_log(tu_server *s, FILE *out);
/* The port of the --metrics-listen listener, from the log line msg="metrics listening"
 * addr=HOST:PORT (waited for); -1 if the server did not log one. */
int tu_server_metrics_port(tu_server *s);

/* Send a signal to the server. */
int tu_server_kill(tu_server *s, int sig);
/* Wait for the server to exit (SIGKILL after the timeout); returns its status (see above),
 * or -1 if it had to be killed. Prints the log when the status is not 0. */
int tu_server_wait(tu_server *s);
/* SIGTERM, then tu_server_wait. */
int tu_server_stop(tu_server *s);

/* Run $FW_BIN/name with args to completion, capturing stdout+stderr into out (NUL-terminated,
 * truncated). Returns the exit status, or -1. */
int tu_run(const char *name, const char *const *args, char *out, size_t cap);

/* Remove a directory tree (a test's temporary --data). 0, or -1 after printing why. */
int tu_rmtree(const char *dir);

/* ---- sockets ------------------------------------------------------------------------------- */

/* Blocking TCP connection with TCP_NODELAY; -1 on failure. */
int tu_connect(const char *host, int port);
int tu_connect_server(const tu_server *s);
int tu_send_all(int fd, const void *p, size_t n);
/* Receive exactly n bytes before `deadline` (tu_now_ms() time). Returns n, 0 on EOF (or a
 * reset) before the first byte, -2 on EOF after some bytes, -1 on timeout or another error. */
ssize_t tu_recv_exact(int fd, void *p, size_t n, int64_t deadline);
/* A socket listening on 127.0.0.1 with the given backlog, on a port the kernel picked
 * (*port); close-on-exec. -1 on failure. */
int tu_listen_loopback(int backlog, int *port);
/* A loopback port nobody listens on (bound a moment ago, then closed), so that a connection
 * to it is refused at once; 0 on failure. */
int tu_closed_port(void);
/* A request header with the given fields and everything else valid. */
fw_header tu_request(uint8_t opcode, uint32_t request_id, uint32_t body_len);
/* Send the header as is (any field may be invalid), then body_len bytes of body (or none if
 * body is NULL). */
int tu_send_frame(int fd, const fw_header *h, const void *body);
/* Read one whole frame within the timeout. Returns 1 with *h and *body (malloc'd, caller
 * frees; NULL when empty), 0 on EOF or reset before the first byte, -1 on a timeout, an EOF
 * inside a frame, a response header fw_check_response rejects, or an allocation failure. */
int tu_read_frame(int fd, fw_header *h, uint8_t **body);
/* Wait for the peer to close: 1 on EOF/reset, 0 if data arrived instead, -1 on timeout. */
int tu_wait_closed(int fd);
/* The message of an error body (u16 length + text), NUL-terminated into out; -1 if the body
 * is malformed. */
int tu_error_message(const uint8_t *body, uint32_t len, char *out, size_t cap);

/* One response read whole: header fields, the body (malloc'd, owned until tu_resp_free) and,
 * for an error status, its message. */
typedef struct tu_resp {
    uint16_t status;
    uint32_t rid;
    uint8_t *body;
    uint32_t len;
    char msg[256];
} tu_resp;

/* 0, or -1 when no whole frame could be read (closed, timed out, malformed). */
int tu_read_resp(int fd, tu_resp *r);
void tu_resp_free(tu_resp *r);
/* INFO on fd (nothing else may be in flight on it): the integer of its "key: N" line, or -1
 * when there is no such line or the request failed. */
long long tu_info_get(int fd, const char *key);
/* Raise RLIMIT_NOFILE's soft limit to at least want; -1 if the hard limit is lower. */
int tu_raise_nofile(unsigned long want);

#endif
