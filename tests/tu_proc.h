/*
 * tu_proc.h — test utility: child processes, and their output read as it comes.
 *
 * A tu_log is one child's stdout+stderr, read by a thread into a buffer, so that a test can
 * wait for a line (facewired's msg="listening", HAProxy's "Server facewired/node2 is DOWN") as
 * an event instead of guessing how long something takes, and print the whole output when the
 * child misbehaves (sanitizer reports included). tu_server (facewired) and tu_haproxy are
 * built on it; what differs between them (arguments, signals, the frontend socket) stays there.
 *
 * Children start with a clean descriptor table: stdin on /dev/null, stdout and stderr on our
 * pipe, optionally one inherited descriptor as 3, nothing else. A child that inherited one of
 * the test's sockets would keep that connection alive behind the test's back.
 *
 * POSIX only (fork/exec, poll, pthreads), no libuv and no server code: tests/tu_*.o are also
 * linked into the ARM client tests. Every wait is bounded by tu_timeout_ms() ($FW_TEST_TIMEOUT_MS,
 * default 20 s), so a hung child fails a test instead of hanging the suite; nothing sleeps.
 */
#ifndef TU_PROC_H
#define TU_PROC_H

#include <pthread.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <sys/types.h>

/* Milliseconds every blocking test helper waits at most. */
int tu_timeout_ms(void);
/* CLOCK_MONOTONIC in milliseconds: deadlines for the waits above. */
int64_t tu_now_ms(void);
/* A waitpid() status as 0-255 for an exit, 128+signal for a kill, -1 otherwise. */
int tu_exit_status(int wstatus);

/* fork + exec argv[0] (a path, or a name looked up in $PATH) with env (NULL: our environment).
 * The child has stdin on /dev/null, stdout and stderr on a pipe whose read end is *out_fd
 * (close-on-exec), fd3 (unless -1; else above 2) as its descriptor 3, and no other descriptor.
 * Returns the pid, or -1 if the pipe or the fork failed; a failed exec is the child's exit
 * status 127, with a line saying so on its output. */
pid_t tu_spawn(char *const *argv, char *const *env, int fd3, int *out_fd);

/* tu_spawn, then read the child's output to EOF into out (NUL-terminated, truncated to cap)
 * and reap it; SIGKILL when the timeout passes first. Returns its exit status (see
 * tu_exit_status), or -1 if it could not be run or reaped. */
int tu_run_argv(char *const *argv, char *const *env, int fd3, char *out, size_t cap);

/* ---- a captured log ------------------------------------------------------------------------ */

#define TU_LOG_CAP (1024u * 1024u)

/* One child's output. A tu_log is driven by one thread (the test's: spawn, wait, reap); the
 * reader thread only appends. buf, len and eof are guarded by mu while the reader runs, and
 * stay readable (without it) after tu_log_reap. Large: embed it in static or heap storage. */
typedef struct tu_log {
    const char *name;      /* what the child is, for tu_log_dump: "facewired", "haproxy" */
    pid_t pid;             /* the child that wrote it (kept after reaping, for tu_log_dump) */
    int fd;                /* read end of the child's pipe; -1 once closed */
    int reader_running;    /* the reader thread runs (mu and cv are initialised) */
    pthread_t reader;
    pthread_mutex_t mu;
    pthread_cond_t cv;     /* on CLOCK_MONOTONIC; signalled on every append and at EOF */
    size_t len;
    int eof;               /* the child closed its output (it exited) */
    char buf[TU_LOG_CAP];  /* the first TU_LOG_CAP-1 bytes, NUL-terminated */
} tu_log;

/* tu_spawn with the child's output read into log by a thread. With FW_TEST_VERBOSE set the
 * output is also copied to our stderr as it comes. Returns the pid, or -1 after printing why
 * (then no child is left running and log holds nothing). */
pid_t tu_log_spawn(tu_log *log, const char *name, char *const *argv, char *const *env, int fd3);

/* The length of the log now: pass it as `from` below to look only at what comes after. */
size_t tu_log_mark(tu_log *log);
/* Wait until the log, from offset `from` on, contains needle: 1 if it does, 0 on timeout or
 * when the child exited without writing it. */
int tu_log_wait(tu_log *log, size_t from, const char *needle);
/* 1 if the log from offset `from` on contains needle now. */
int tu_log_has(tu_log *log, size_t from, const char *needle);
/* The text from the first needle (at offset `from` or later) to the end of its line, into
 * line (NUL-terminated, truncated to cap): 1 if the needle is there, else 0 (line ""). */
int tu_log_line(tu_log *log, size_t from, const char *needle, char *line, size_t cap);
/* The whole log, framed by lines naming the child. */
void tu_log_dump(tu_log *log, FILE *out);

/* Reap pid (the child of tu_log_spawn, signalled or about to exit by itself): wait for EOF on
 * its output within the timeout, SIGKILL it if none came, stop the reader, waitpid. Returns
 * its exit status (see tu_exit_status), or -1 when it had to be killed. */
int tu_log_reap(tu_log *log, pid_t pid);

#endif
