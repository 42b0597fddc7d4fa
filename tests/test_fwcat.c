/*
 * test_fwcat.c — bin/fwcat against a real bin/facewired, as a user or a script would run it.
 *
 * One server (started with --enable-test-ops through tests/tu_server.h) serves every test;
 * each test runs fwcat as a child process with a given stdin and checks its exit status,
 * stdout and stderr exactly where the output is specified (ping, --raw hex, --json errors) and
 * by its structure where it depends on the models (detect, embed, verify on ../shared/eval).
 * fwcat and facewired come from $FW_BIN, so under `make test` both are sanitizer builds.
 */
#include "tests/check.h"
#include "tests/tu_data.h"
#include "tests/tu_server.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define OUT_CAP (256u * 1024u)
#define MAX_ARGV 32

/* The server every test talks to (started in main, before any test runs). */
static tu_server *srv;

typedef struct run {
    int status;           /* exit status, 128+signal, or -1 (timeout / could not start) */
    char out[OUT_CAP];    /* stdout, NUL-terminated (truncated at OUT_CAP-1) */
    char err[OUT_CAP];    /* stderr, likewise */
} run;

static void append(char *buf, size_t *len, const char *p, size_t n)
{
    size_t room = OUT_CAP - 1 - *len;
    if (n > room)
        n = room;
    memcpy(buf + *len, p, n);
    *len += n;
    buf[*len] = '\0';
}

/* Run $FW_BIN/fwcat [-h HOST -p PORT] args... with `input` on stdin (NULL: empty). */
static void fwcat(run *r, int with_server, const char *input, const char *const *args)
{
    char path[512], port[16];
    char *argv[MAX_ARGV];
    int n = 0;
    memset(r, 0, sizeof *r);
    r->status = -1;
    tu_bin_path("fwcat", path, sizeof path);
    argv[n++] = path;
    if (with_server) {
        snprintf(port, sizeof port, "%d", srv->port);
        argv[n++] = (char *)"-h";
        argv[n++] = srv->host;
        argv[n++] = (char *)"-p";
        argv[n++] = port;
    }
    for (int i = 0; args[i] && n < MAX_ARGV - 1; i++)
        argv[n++] = (char *)args[i];
    argv[n] = NULL;

    int in[2], out[2], err[2];
    if (pipe(in) != 0)
        return;
    if (pipe(out) != 0 || pipe(err) != 0) {
        close(in[0]), close(in[1]);
        return;
    }
    pid_t pid = fork();
    if (pid == 0) {
        dup2(in[0], 0), dup2(out[1], 1), dup2(err[1], 2);
        close(in[0]), close(in[1]), close(out[0]), close(out[1]), close(err[0]), close(err[1]);
        execv(path, argv);
        _exit(127);
    }
    close(in[0]), close(out[1]), close(err[1]);
    if (pid < 0) {
        close(in[1]), close(out[0]), close(err[0]);
        return;
    }
    /* Inputs are small (well under a pipe buffer): write all, then collect the outputs. */
    if (input) {
        size_t left = strlen(input);
        const char *p = input;
        while (left > 0) {
            ssize_t w = write(in[1], p, left);
            if (w < 0 && errno == EINTR)
                continue;
            if (w <= 0)
                break;
            p += w;
            left -= (size_t)w;
        }
    }
    close(in[1]);
    size_t olen = 0, elen = 0;
    struct timespec t0;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    int open_fds = 2, timed_out = 0;
    struct pollfd pf[2] = {{out[0], POLLIN, 0}, {err[0], POLLIN, 0}};
    while (open_fds > 0) {
        struct timespec t;
        clock_gettime(CLOCK_MONOTONIC, &t);
        long spent = (long)(t.tv_sec - t0.tv_sec) * 1000 + (t.tv_nsec - t0.tv_nsec) / 1000000;
        long left = tu_timeout_ms() - spent;
        int k = left > 0 ? poll(pf, 2, (int)left) : 0;
        if (k < 0 && errno == EINTR)
            continue;
        if (k <= 0) {
            timed_out = 1;
            break;
        }
        for (int i = 0; i < 2; i++) {
            if (pf[i].fd < 0 || !pf[i].revents)
                continue;
            char tmp[4096];
            ssize_t got = read(pf[i].fd, tmp, sizeof tmp);
            if (got < 0 && errno == EINTR)
                continue;
            if (got <= 0) {
                close(pf[i].fd);
                pf[i].fd = -1;
                open_fds--;
            } else if (i == 0) {
                append(r->out, &olen, tmp, (size_t)got);
            } else {
                append(r->err, &elen, tmp, (size_t)got);
            }
        }
    }
    for (int i = 0; i < 2; i++)
        if (pf[i].fd >= 0)
            close(pf[i].fd);
    if (timed_out)
        kill(pid, SIGKILL);
    int st;
    while (waitpid(pid, &st, 0) < 0 && errno == EINTR) {
    }
    if (!timed_out)
        r->status = WIFEXITED(st) ? WEXITSTATUS(st) : WIFSIGNALED(st) ? 128 + WTERMSIG(st) : -1;
}

static run *new_run(void) { return calloc(1, sizeof(run)); }

/* ---- single commands --------------------------------------------------------------------- */

static void t_ping(void)
{
    run *r = new_run();
    CHECK(r);
    fwcat(r, 1, NULL, (const char *const[]){"ping", "hi", NULL});
    CHECK_EQ_INT(r->status, 0);
    CHECK_EQ_STR(r->out, "hi\n");
    CHECK_EQ_STR(r->err, "");
    fwcat(r, 1, NULL, (const char *const[]){"ping", "two", "words", NULL});
    CHECK_EQ_INT(r->status, 0);
    CHECK_EQ_STR(r->out, "two words\n");
    fwcat(r, 1, NULL, (const char *const[]){"ping", NULL});
    CHECK_EQ_INT(r->status, 0);
    CHECK_EQ_STR(r->out, "\n");
    free(r);
}

static void t_json_escaping(void)
{
    run *r = new_run();
    CHECK(r);
    /* quote, backslash, a control byte, valid UTF-8 and an invalid byte */
    fwcat(r, 1, NULL, (const char *const[]){"--json", "ping", "q\"b\\\x01\xc3\xa9\xff", NULL});
    CHECK_EQ_INT(r->status, 0);
    CHECK_EQ_STR(r->out, "{\"echo\":\"q\\\"b\\\\\\u0001\xc3\xa9\\ufffd\"}\n");
    free(r);
}

static void t_info(void)
{
    run *r = new_run();
    CHECK(r);
    fwcat(r, 1, NULL, (const char *const[]){"info", NULL});
    CHECK_EQ_INT(r->status, 0);
    CHECK_MSG(strncmp(r->out, "version: ", 9) == 0, "info: %.80s", r->out);
    CHECK(strstr(r->out, "\nrequests_total: ") != NULL);
    fwcat(r, 1, NULL, (const char *const[]){"--json", "info", NULL});
    CHECK_EQ_INT(r->status, 0);
    CHECK_MSG(strncmp(r->out, "{\"info\":{\"version\":\"", 20) == 0, "info: %.80s", r->out);
    CHECK(strstr(r->out, ",\"requests_total\":\"") != NULL);
    CHECK(strcmp(r->out + strlen(r->out) - 3, "}}\n") == 0);
    free(r);
}

static void t_status_error(void)
{
    run *r = new_run();
    CHECK(r);
    fwcat(r, 1, NULL, (const char *const[]){"fail", NULL});
    CHECK_EQ_INT(r->status, 1);
    CHECK_EQ_STR(r->out, "");
    CHECK_EQ_STR(r->err, "fwcat: INTERNAL: test failure\n");
    fwcat(r, 1, NULL, (const char *const[]){"--json", "fail", NULL});
    CHECK_EQ_INT(r->status, 1);
    CHECK_EQ_STR(r->out, "{\"error\":\"test failure\",\"status\":\"INTERNAL\"}\n");
    fwcat(r, 1, NULL, (const char *const[]){"sleep", "1", NULL});
    CHECK_EQ_INT(r->status, 0);
    CHECK_EQ_STR(r->out, "OK\n");
    free(r);
}

static void t_timeout(void)
{
    run *r = new_run();
    CHECK(r);
    fwcat(r, 1, NULL, (const char *const[]){"--timeout", "200", "sleep", "1500", NULL});
    CHECK_EQ_INT(r->status, 2);
    CHECK_EQ_STR(r->err, "fwcat: timed out after 200 ms\n");
    fwcat(r, 1, NULL, (const char *const[]){"--json", "--timeout", "200", "sleep", "1500", NULL});
    CHECK_EQ_INT(r->status, 2);
    CHECK_EQ_STR(r->out, "{\"error\":\"timed out after 200 ms\",\"status\":\"FW_ERR_TIMEOUT\"}\n");
    free(r);
}

static void t_usage_errors(void)
{
    run *r = new_run();
    CHECK(r);
    fwcat(r, 0, NULL, (const char *const[]){"--help", NULL});
    CHECK_EQ_INT(r->status, 0);
    CHECK(strstr(r->out, "SYNOPSIS") && strstr(r->out, "EXIT STATUS") && strstr(r->out, "--raw"));
    fwcat(r, 1, NULL, (const char *const[]){"--bogus", NULL});
    CHECK_EQ_INT(r->status, 2);
    CHECK_EQ_STR(r->err, "fwcat: unknown option --bogus (see fwcat --help)\n");
    fwcat(r, 1, NULL, (const char *const[]){"frobnicate", NULL});
    CHECK_EQ_INT(r->status, 2);
    CHECK_EQ_STR(r->err, "fwcat: unknown command 'frobnicate' (see fwcat --help)\n");
    fwcat(r, 1, NULL, (const char *const[]){"verify", "only-one.jpg", NULL});
    CHECK_EQ_INT(r->status, 2);
    CHECK_EQ_STR(r->err, "fwcat: usage: verify A B [--threshold T]\n");
    fwcat(r, 1, NULL, (const char *const[]){"detect", "/nonexistent/x.jpg", NULL});
    CHECK_EQ_INT(r->status, 2);
    CHECK_EQ_STR(r->err, "fwcat: /nonexistent/x.jpg: No such file or directory\n");
    fwcat(r, 1, NULL, (const char *const[]){"--json", "delete", NULL});
    CHECK_EQ_INT(r->status, 2);
    CHECK_EQ_STR(r->out, "{\"error\":\"usage: delete --face ID | --subject S\",\"status\":\"USAGE\"}\n");
    free(r);
}

static void t_connect_refused(void)
{
    int p = tu_closed_port(); /* a port that was free a moment ago */
    CHECK(p > 0);
    char port[16], want[128];
    snprintf(port, sizeof port, "%d", p);
    snprintf(want, sizeof want, "fwcat: connect to 127.0.0.1:%s: Connection refused\n", port);
    run *r = new_run();
    CHECK(r);
    fwcat(r, 0, NULL, (const char *const[]){"-p", port, "ping", NULL});
    CHECK_EQ_INT(r->status, 2);
    CHECK_EQ_STR(r->err, want);
    free(r);
}

/* ---- stdin mode -------------------------------------------------------------------------- */

static void t_stdin_mode(void)
{
    run *r = new_run();
    CHECK(r);
    fwcat(r, 1, "ping a\n\n   # a comment\nping \"x  y\" 'z'\nping b\n", (const char *const[]){NULL});
    CHECK_EQ_INT(r->status, 0);
    CHECK_EQ_STR(r->out, "a\nx  y z\nb\n");
    /* errors do not stop it; the exit status is the worst line's */
    fwcat(r, 1, "ping a\nfail\nping b\n", (const char *const[]){NULL});
    CHECK_EQ_INT(r->status, 1);
    CHECK_EQ_STR(r->out, "a\nb\n");
    CHECK_EQ_STR(r->err, "fwcat: INTERNAL: test failure\n");
    fwcat(r, 1, "ping a\nnope\nfail\nping \"open\n", (const char *const[]){NULL});
    CHECK_EQ_INT(r->status, 2);
    CHECK_EQ_STR(r->out, "a\n");
    CHECK_EQ_STR(r->err, "fwcat: unknown command 'nope' (see fwcat --help)\n"
                         "fwcat: INTERNAL: test failure\n"
                         "fwcat: cannot parse line (unterminated quote or over 64 words)\n");
    /* --json: one object per line */
    fwcat(r, 1, "ping a\nfail\n", (const char *const[]){"--json", NULL});
    CHECK_EQ_INT(r->status, 1);
    CHECK_EQ_STR(r->out, "{\"echo\":\"a\"}\n{\"error\":\"test failure\",\"status\":\"INTERNAL\"}\n");
    free(r);
}

static void t_stdin_reconnects_after_timeout(void)
{
    /* A timed-out call closes the connection; the next line connects again. */
    run *r = new_run();
    CHECK(r);
    fwcat(r, 1, "sleep 1500\nping after\n", (const char *const[]){"--timeout", "200", NULL});
    CHECK_EQ_INT(r->status, 2);
    CHECK_EQ_STR(r->out, "after\n");
    CHECK_EQ_STR(r->err, "fwcat: timed out after 200 ms\n");
    free(r);
}

/* ---- --raw ------------------------------------------------------------------------------- */

static void t_raw(void)
{
    run *r = new_run();
    CHECK(r);
    /* The worked PING example of docs/protocol.md, with blanks and a comment. */
    fwcat(r, 1, "face 01 01 00 00 0000 00000007 00000000 00000002 6869  # ping hi\n",
          (const char *const[]){"--raw", NULL});
    CHECK_EQ_INT(r->status, 0);
    CHECK_EQ_STR(r->out, "face010101000000000000070000000000000002 6869\n");
    /* Unknown opcode 0x55: UNKNOWN_OP and its message, exit 1. */
    fwcat(r, 1, "FACE0155000000000000000800000000 00000000\n", (const char *const[]){"--raw", NULL});
    CHECK_EQ_INT(r->status, 1);
    CHECK_EQ_STR(r->out, "face015501000002000000080000000000000015 0013756e6b6e6f776e206f70636f64652030783535\n");
    /* Two frames on one line: two answers. A bad line is reported and skipped. */
    fwcat(r, 1,
          "face01010000000000000001000000000000000161 face010100000000000000020000000000000000\n"
          "xyz\n"
          "face01010000000000000003000000000000000162\n",
          (const char *const[]){"--raw", NULL});
    CHECK_EQ_INT(r->status, 2);
    CHECK_EQ_STR(r->err, "fwcat: raw: not a hex digit\n");
    CHECK_EQ_STR(r->out, "face010101000000000000010000000000000001 61\n"
                         "face010101000000000000020000000000000000 \n"
                         "face010101000000000000030000000000000001 62\n");
    free(r);
}

static void t_raw_bad_magic_then_recovers(void)
{
    /* Bad magic: the server closes without answering; the next line reconnects. */
    run *r = new_run();
    CHECK(r);
    fwcat(r, 1,
          "beef0101000000000000000900000000 00000000\n"
          "face0101000000000000000a0000000000000000\n",
          (const char *const[]){"--raw", NULL});
    CHECK_EQ_INT(r->status, 2);
    CHECK_EQ_STR(r->err, "fwcat: connection closed by the server\n");
    CHECK_EQ_STR(r->out, "face0101010000000000000a0000000000000000 \n");
    free(r);
}

/* ---- face ops (models + ../shared/eval) -------------------------------------------------- */

static void eval_pic(char *buf, size_t cap, const char *name)
{
    snprintf(buf, cap, "%s/eval/%s", tu_shared_dir(), name);
}

/* Count occurrences of needle in hay. */
static int count(const char *hay, const char *needle)
{
    int n = 0;
    for (const char *p = strstr(hay, needle); p; p = strstr(p + 1, needle))
        n++;
    return n;
}

static void t_detect_embed(void)
{
    char pic[512];
    eval_pic(pic, sizeof pic, "barack_obama_1.jpg");
    run *r = new_run();
    CHECK(r);
    fwcat(r, 1, NULL, (const char *const[]){"detect", pic, NULL});
    CHECK_EQ_INT(r->status, 0);
    CHECK_MSG(strstr(r->out, ", 1 face\nface 0: box ") != NULL, "detect: %.200s", r->out);
    fwcat(r, 1, NULL, (const char *const[]){"--json", "detect", pic, NULL});
    CHECK_EQ_INT(r->status, 0);
    CHECK(strncmp(r->out, "{\"width\":", 9) == 0);
    CHECK_EQ_INT(count(r->out, "\"box\":["), 1);
    CHECK_EQ_INT(count(r->out, "\"score\":"), 1);
    CHECK_EQ_INT(count(r->out, "],["), 67); /* 68 landmark pairs */
    CHECK_EQ_INT(count(r->out, "\"descriptor\""), 0);
    fwcat(r, 1, NULL, (const char *const[]){"--json", "embed", pic, NULL});
    CHECK_EQ_INT(r->status, 0);
    const char *d = strstr(r->out, "\"descriptor\":[");
    CHECK(d != NULL);
    const char *end = strchr(d, ']');
    CHECK(end != NULL);
    int commas = 0;
    for (const char *p = d; p < end; p++)
        commas += *p == ',';
    CHECK_EQ_INT(commas, 127); /* 128 numbers */
    free(r);
}

static void t_verify(void)
{
    char a[512], b[512], c[512];
    eval_pic(a, sizeof a, "barack_obama_1.jpg");
    eval_pic(b, sizeof b, "barack_obama_2.jpg");
    eval_pic(c, sizeof c, "alex_lacamoire_1.jpg");
    run *r = new_run();
    CHECK(r);
    fwcat(r, 1, NULL, (const char *const[]){"verify", a, b, NULL});
    CHECK_EQ_INT(r->status, 0);
    CHECK_MSG(strncmp(r->out, "same (distance ", 15) == 0, "verify: %s", r->out);
    fwcat(r, 1, NULL, (const char *const[]){"--json", "verify", a, c, NULL});
    CHECK_EQ_INT(r->status, 0);
    CHECK_MSG(strncmp(r->out, "{\"distance\":", 12) == 0 && strstr(r->out, ",\"same\":false,\"threshold\":0.6}\n"),
              "verify: %s", r->out);
    /* the caller's threshold is used and reported back */
    fwcat(r, 1, NULL, (const char *const[]){"--json", "verify", a, c, "--threshold", "2", NULL});
    CHECK_EQ_INT(r->status, 0);
    CHECK_MSG(strstr(r->out, ",\"same\":true,\"threshold\":2}\n") != NULL, "verify: %s", r->out);
    free(r);
}

static void t_bad_image(void)
{
    char path[] = "/tmp/fwcat-badimg-XXXXXX";
    int fd = mkstemp(path);
    CHECK(fd >= 0);
    int ok = write(fd, "this is not a jpeg", 18) == 18;
    close(fd);
    run *r = new_run();
    if (ok && r)
        fwcat(r, 1, NULL, (const char *const[]){"--json", "detect", path, NULL});
    unlink(path);
    CHECK(ok && r);
    CHECK_EQ_INT(r->status, 1);
    CHECK_MSG(strncmp(r->out, "{\"error\":", 9) == 0 && strstr(r->out, ",\"status\":\"BAD_IMAGE\"}\n"),
              "detect: %s", r->out);
    free(r);
}

/* ---- gallery commands against the real server (its gallery is the mkdtemp dir of main) ---- */

static int starts_with(const char *s, const char *prefix) { return strncmp(s, prefix, strlen(prefix)) == 0; }

static int ends_with(const char *s, const char *suffix)
{
    size_t n = strlen(s), k = strlen(suffix);
    return n >= k && strcmp(s + n - k, suffix) == 0;
}

static void gallery_real_server(run *r)
{
    char o1[512], o2[512], b1[512];
    eval_pic(o1, sizeof o1, "barack_obama_1.jpg");
    eval_pic(o2, sizeof o2, "barack_obama_2.jpg");
    eval_pic(b1, sizeof b1, "joe_biden_1.jpg");
    /* the first face of a fresh gallery gets id 1 */
    fwcat(r, 1, NULL, (const char *const[]){"enroll", "obama", o1, NULL});
    CHECK_MSG(r->status == 0, "enroll: %d %s%s", r->status, r->out, r->err);
    CHECK_EQ_STR(r->out, "1\n");
    fwcat(r, 1, NULL, (const char *const[]){"--json", "enroll", "biden", b1, "--meta", "vp", NULL});
    CHECK_EQ_INT(r->status, 0);
    CHECK_EQ_STR(r->out, "{\"face_id\":2}\n");

    fwcat(r, 1, NULL, (const char *const[]){"--json", "identify", o2, NULL});
    CHECK_EQ_INT(r->status, 0);
    CHECK_MSG(starts_with(r->out, "{\"faces\":[{\"box\":[") &&
              strstr(r->out, "],\"matches\":[{\"subject\":\"obama\",\"face_id\":1,\"distance\":0.") &&
              ends_with(r->out, "}]}]}\n"), "identify: %s", r->out);
    CHECK_EQ_INT(count(r->out, "\"box\""), 1);
    CHECK_EQ_INT(count(r->out, "\"subject\""), 2); /* k = 5, two faces enrolled */

    fwcat(r, 1, NULL, (const char *const[]){"--json", "list", NULL});
    CHECK_EQ_INT(r->status, 0);
    CHECK_EQ_STR(r->out, "{\"subjects\":[{\"subject\":\"biden\",\"faces\":1},"
                         "{\"subject\":\"obama\",\"faces\":1}]}\n");
    fwcat(r, 1, NULL, (const char *const[]){"--json", "gallery", NULL});
    CHECK_EQ_INT(r->status, 0);
    CHECK_MSG(starts_with(r->out, "{\"faces\":2,\"subjects\":2,\"bytes\":") &&
              ends_with(r->out, ",\"last_seq\":2}\n") && !strstr(r->out, "\"bytes\":0,"),
              "gallery: %s", r->out);

    fwcat(r, 1, NULL, (const char *const[]){"delete", "--face", "2", NULL});
    CHECK_EQ_INT(r->status, 0);
    CHECK_EQ_STR(r->out, "deleted 1\n");
    fwcat(r, 1, NULL, (const char *const[]){"--json", "delete", "--subject", "obama", NULL});
    CHECK_EQ_INT(r->status, 0);
    CHECK_EQ_STR(r->out, "{\"deleted\":1}\n");
    fwcat(r, 1, NULL, (const char *const[]){"--json", "delete", "--subject", "obama", NULL});
    CHECK_EQ_INT(r->status, 1);
    CHECK_EQ_STR(r->out, "{\"error\":\"no subject \\\"obama\\\"\",\"status\":\"NOT_FOUND\"}\n");
    fwcat(r, 1, NULL, (const char *const[]){"--json", "list", NULL});
    CHECK_EQ_INT(r->status, 0);
    CHECK_EQ_STR(r->out, "{\"subjects\":[]}\n");
    fwcat(r, 1, NULL, (const char *const[]){"--json", "gallery", NULL});
    CHECK_EQ_INT(r->status, 0);
    CHECK_MSG(starts_with(r->out, "{\"faces\":0,\"subjects\":0,") && ends_with(r->out, ",\"last_seq\":4}\n"),
              "gallery: %s", r->out);
}

static void t_gallery_real_server(void)
{
    run *r = new_run();
    CHECK(r);
    gallery_real_server(r);
    free(r);
}

/* ---- gallery commands, against a scripted fake ------------------------------------------
 * What the real server cannot be made to answer on demand (argument encoding, following LIST
 * cursors over several pages, escaping of hostile subject names) is tested here against a
 * fake in this process that answers each op with a canned body. */

typedef struct gfake {
    int lfd;
    int port;
    pthread_t th;
    int nlist;                  /* LIST requests seen */
    char cursors[4][16];        /* their cursors */
    unsigned limits[4];
    char enroll_subject[32], enroll_meta[32];
    uint8_t delete_body[16];
    size_t delete_len;
    int pings;                  /* PING: the first is answered BUSY, retry_after 1 ms */
} gfake;

static int gf_read(int fd, void *p, size_t n)
{
    uint8_t *b = p;
    while (n > 0) {
        ssize_t r = read(fd, b, n);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            return -1;
        b += r, n -= (size_t)r;
    }
    return 0;
}

static void gf_answer(gfake *g, int fd, const fw_header *req, const uint8_t *body, uint32_t len)
{
    uint8_t out[512];
    fw_writer w;
    fw_writer_init(&w, out + FW_HEADER_LEN, sizeof out - FW_HEADER_LEN);
    fw_reader r;
    fw_reader_init(&r, body, len);
    uint16_t n;
    const char *str;
    uint16_t status = FW_STATUS_OK;
    switch (req->opcode) {
    case FW_OP_PING:
        if (g->pings++ == 0) {
            status = FW_STATUS_BUSY;
            fw_put_str(&w, "queue full", 10);
            fw_put_u32(&w, 1);
        } else {
            fw_put_raw(&w, body, len < 64 ? len : 64);
        }
        break;
    case FW_OP_LIST:
        str = fw_get_str(&r, &n);
        if (g->nlist < 4) {
            snprintf(g->cursors[g->nlist], sizeof g->cursors[0], "%.*s", (int)n, str ? str : "");
            g->limits[g->nlist] = fw_get_u16(&r);
        }
        g->nlist++;
        if (n == 0) {
            fw_put_u16(&w, 2);
            fw_put_str(&w, "alice", 5), fw_put_u32(&w, 2);
            fw_put_str(&w, "bob", 3), fw_put_u32(&w, 1);
            fw_put_str(&w, "p2", 2);
        } else {
            fw_put_u16(&w, 1);
            fw_put_str(&w, "q\"\xff", 3), fw_put_u32(&w, 3);
            fw_put_str(&w, "", 0);
        }
        break;
    case FW_OP_GALLERY_INFO:
        fw_put_u64(&w, 3), fw_put_u64(&w, 3), fw_put_u64(&w, 1234), fw_put_u64(&w, 42);
        break;
    case FW_OP_ENROLL:
        str = fw_get_str(&r, &n);
        snprintf(g->enroll_subject, sizeof g->enroll_subject, "%.*s", (int)n, str ? str : "");
        {
            uint32_t ml;
            const uint8_t *m = fw_get_bytes(&r, 1024, &ml);
            snprintf(g->enroll_meta, sizeof g->enroll_meta, "%.*s", (int)ml, m ? (const char *)m : "");
        }
        fw_put_u64(&w, 77);
        break;
    case FW_OP_IDENTIFY:
        fw_put_u16(&w, 1);
        fw_put_f32(&w, 1), fw_put_f32(&w, 2), fw_put_f32(&w, 3), fw_put_f32(&w, 4);
        fw_put_u16(&w, 2);
        fw_put_str(&w, "alice", 5), fw_put_u64(&w, 11), fw_put_f32(&w, 0.25f);
        fw_put_str(&w, "bob", 3), fw_put_u64(&w, 12), fw_put_f32(&w, 0.5f);
        break;
    case FW_OP_DELETE:
        g->delete_len = len < sizeof g->delete_body ? len : sizeof g->delete_body;
        memcpy(g->delete_body, body, g->delete_len);
        fw_put_u32(&w, 1);
        break;
    default:
        break;
    }
    fw_header h = *req;
    h.flags = FW_FLAG_RESPONSE;
    h.status = status;
    h.body_len = (uint32_t)w.len;
    fw_header_encode(&h, out);
    (void)tu_send_all(fd, out, FW_HEADER_LEN + w.len);
}

static void *gf_main(void *arg)
{
    gfake *g = arg;
    int fd = accept(g->lfd, NULL, NULL); /* fwcat uses one connection while all goes well */
    if (fd < 0)
        return NULL;
    static const size_t cap = 1u << 20;
    uint8_t *body = malloc(cap);
    for (;;) {
        uint8_t hb[FW_HEADER_LEN];
        fw_header h;
        if (!body || gf_read(fd, hb, sizeof hb) != 0)
            break;
        fw_header_decode(hb, &h);
        if (h.body_len > cap || gf_read(fd, body, h.body_len) != 0)
            break;
        gf_answer(g, fd, &h, body, h.body_len);
    }
    free(body);
    close(fd);
    return NULL;
}

static int gf_start(gfake *g)
{
    memset(g, 0, sizeof *g);
    g->lfd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a;
    memset(&a, 0, sizeof a);
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t sl = sizeof a;
    if (g->lfd < 0 || bind(g->lfd, (struct sockaddr *)&a, sizeof a) != 0 || listen(g->lfd, 1) != 0 ||
        getsockname(g->lfd, (struct sockaddr *)&a, &sl) != 0 || pthread_create(&g->th, NULL, gf_main, g) != 0) {
        if (g->lfd >= 0)
            close(g->lfd);
        return -1;
    }
    g->port = ntohs(a.sin_port);
    return 0;
}

/* fwcat has exited, so the fake sees EOF; if fwcat never connected, a dummy connection
 * wakes the fake's accept() instead of leaving the join hanging. */
static void gf_finish(gfake *g)
{
    int d = tu_connect("127.0.0.1", g->port);
    if (d >= 0)
        close(d);
    pthread_join(g->th, NULL);
}

static void t_gallery_commands_json(void)
{
    char pic[] = "/tmp/fwcat-pic-XXXXXX";
    int fd = mkstemp(pic);
    CHECK(fd >= 0);
    int wrote = write(fd, "\xff\xd8not-decoded-by-the-fake", 24) == 24;
    close(fd);
    gfake *g = calloc(1, sizeof *g);
    run *r = new_run();
    int started = wrote && g && r && gf_start(g) == 0;
    if (started) {
        char port[16], input[512];
        snprintf(port, sizeof port, "%d", g->port);
        snprintf(input, sizeof input,
                 "list\ngallery\nenroll 'bob b' %s --meta \"door 3\"\nidentify %s -k 2\n"
                 "delete --face 7\ndelete --subject bob\n",
                 pic, pic);
        fwcat(r, 0, input, (const char *const[]){"-p", port, "--json", NULL});
        gf_finish(g);
        close(g->lfd);
    }
    unlink(pic);
    CHECK(started);
    CHECK_EQ_INT(r->status, 0);
    CHECK_EQ_STR(r->out,
                 "{\"subjects\":[{\"subject\":\"alice\",\"faces\":2},{\"subject\":\"bob\",\"faces\":1},"
                 "{\"subject\":\"q\\\"\\ufffd\",\"faces\":3}]}\n"
                 "{\"faces\":3,\"subjects\":3,\"bytes\":1234,\"last_seq\":42}\n"
                 "{\"face_id\":77}\n"
                 "{\"faces\":[{\"box\":[1,2,3,4],\"matches\":[{\"subject\":\"alice\",\"face_id\":11,"
                 "\"distance\":0.25},{\"subject\":\"bob\",\"face_id\":12,\"distance\":0.5}]}]}\n"
                 "{\"deleted\":1}\n"
                 "{\"deleted\":1}\n");
    /* LIST followed the cursor: two pages, the second from "p2". */
    CHECK_EQ_INT(g->nlist, 2);
    CHECK_EQ_STR(g->cursors[0], "");
    CHECK_EQ_STR(g->cursors[1], "p2");
    CHECK_EQ_INT(g->limits[0], 256);
    CHECK_EQ_STR(g->enroll_subject, "bob b");
    CHECK_EQ_STR(g->enroll_meta, "door 3");
    /* the last DELETE: kind 1 (subject), str "bob" */
    static const uint8_t del[] = {1, 0, 3, 'b', 'o', 'b'};
    CHECK_EQ_INT(g->delete_len, sizeof del);
    CHECK(memcmp(g->delete_body, del, sizeof del) == 0);
    free(g);
    free(r);
}

static void t_gallery_commands_text(void)
{
    gfake *g = calloc(1, sizeof *g);
    run *r = new_run();
    int started = g && r && gf_start(g) == 0;
    if (started) {
        char port[16];
        snprintf(port, sizeof port, "%d", g->port);
        fwcat(r, 0, "list\ngallery\n", (const char *const[]){"-p", port, NULL});
        gf_finish(g);
        close(g->lfd);
    }
    CHECK(started);
    CHECK_EQ_INT(r->status, 0);
    CHECK_EQ_STR(r->out, "alice 2\nbob 1\nq\"\\xff 3\n"
                         "faces: 3\nsubjects: 3\nbytes: 1234\nlast_seq: 42\n");
    free(g);
    free(r);
}

static void t_busy_and_retry(void)
{
    gfake *g = calloc(1, sizeof *g);
    run *r = new_run();
    CHECK(g && r);
    char port[16];
    /* without --retry: the BUSY answer is the result, exit 1 */
    CHECK(gf_start(g) == 0);
    snprintf(port, sizeof port, "%d", g->port);
    fwcat(r, 0, "ping x\nping y\n", (const char *const[]){"-p", port, NULL});
    gf_finish(g);
    close(g->lfd);
    CHECK_EQ_INT(r->status, 1);
    CHECK_EQ_STR(r->err, "fwcat: BUSY: queue full (retry after 1 ms)\n");
    CHECK_EQ_STR(r->out, "y\n");
    CHECK(gf_start(g) == 0);
    snprintf(port, sizeof port, "%d", g->port);
    fwcat(r, 0, NULL, (const char *const[]){"-p", port, "--json", "ping", "x", NULL});
    gf_finish(g);
    close(g->lfd);
    CHECK_EQ_INT(r->status, 1);
    CHECK_EQ_STR(r->out, "{\"error\":\"queue full\",\"status\":\"BUSY\",\"retry_after_ms\":1}\n");
    /* with --retry: backs off, asks again, OK */
    CHECK(gf_start(g) == 0);
    snprintf(port, sizeof port, "%d", g->port);
    fwcat(r, 0, NULL, (const char *const[]){"-p", port, "--retry", "ping", "x", NULL});
    gf_finish(g);
    close(g->lfd);
    CHECK_EQ_INT(r->status, 0);
    CHECK_EQ_STR(r->out, "x\n");
    CHECK_EQ_INT(g->pings, 2);
    free(g);
    free(r);
}

static const struct check_test tests[] = {
    CHECK_TEST(t_ping),
    CHECK_TEST(t_json_escaping),
    CHECK_TEST(t_info),
    CHECK_TEST(t_status_error),
    CHECK_TEST(t_timeout),
    CHECK_TEST(t_usage_errors),
    CHECK_TEST(t_connect_refused),
    CHECK_TEST(t_stdin_mode),
    CHECK_TEST(t_stdin_reconnects_after_timeout),
    CHECK_TEST(t_raw),
    CHECK_TEST(t_raw_bad_magic_then_recovers),
    CHECK_TEST(t_detect_embed),
    CHECK_TEST(t_verify),
    CHECK_TEST(t_bad_image),
    CHECK_TEST(t_gallery_real_server),
    CHECK_TEST(t_gallery_commands_json),
    CHECK_TEST(t_gallery_commands_text),
    CHECK_TEST(t_busy_and_retry),
};

int main(int argc, char **argv)
{
    char data[] = "/tmp/fwcat-data-XXXXXX";
    if (!mkdtemp(data)) {
        printf("0 passed, 1 failed\n");
        return 1;
    }
    const char *models = getenv("FW_MODELS");
    const char *args[] = {"--enable-test-ops", "--data", data, "--models", models && *models ? models : "models", NULL};
    srv = calloc(1, sizeof *srv);
    if (!srv || tu_server_start(srv, args) != 0) {
        printf("0 passed, 1 failed\n");
        return 1;
    }
    int rc = check_main(tests, CHECK_COUNT(tests), argc, argv);
    int st = tu_server_stop(srv);
    free(srv);
    (void)tu_rmtree(data);
    if (st != 0) {
        printf("server exit status %d\n0 passed, 1 failed\n", st);
        return 1;
    }
    return rc;
}
