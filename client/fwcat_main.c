/*
 * fwcat_main.c — fwcat, the netcat-style client of facewired, built on libfacewire only.
 *
 * Three ways to use it (fwcat --help is the manual):
 *   fwcat [options] COMMAND ARGS...   run one command, exit 0 on OK;
 *   fwcat [options]                   read commands line by line from stdin, one answer per
 *                                     line, keep going after errors (scripts, netcat habit);
 *   fwcat [options] --raw             read hex frames from stdin, print the answers as hex.
 *
 * --json output is written by hand (this program must build for ARM, where no JSON library is
 * installed): every string goes through json_str(), which escapes quotes, backslashes and
 * control characters and replaces invalid UTF-8 (a hostile server's subject names) with
 * U+FFFD, and every float through fmt_float(), which gives the shortest text that reads back
 * to the same float and `null` for NaN / infinity, which JSON cannot express.
 */
#include "client/facewire.h"

#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#define EXIT_STATUS 1 /* the server answered with a status other than OK */
#define EXIT_USAGE 2  /* bad usage, cannot connect, transport or protocol failure */
#define MAX_FILE FW_DEFAULT_MAX_BODY
#define MAX_FACES 1024
#define MAX_MATCHES (MAX_FACES * FW_IDENTIFY_MAX_K)
#define LIST_PAGE 256
#define MAX_ARGS 64

typedef struct fwcat {
    fw_client_config cfg;
    fw_client *c;
    char *hosts[FW_MAX_ENDPOINTS];  /* -h values split at commas (into argv) */
    int n_hosts;
    const char *eps[FW_MAX_ENDPOINTS]; /* cfg.endpoints: hosts[] or ep_text[] */
    char ep_text[FW_MAX_ENDPOINTS][FW_ENDPOINT_MAX + 1]; /* HOST given without port, with -p's */
    int json;
    int retry;
    uint64_t stream_t0;  /* stream: monotonic us of the first frame; capture ts are relative */
} fwcat;

static void usage(FILE *out)
{
    fputs(
        "NAME\n"
        "    fwcat - send commands to a facewire server (facewired)\n"
        "\n"
        "SYNOPSIS\n"
        "    fwcat [-h SERVERS]... [-p PORT] [--timeout MS] [--json] [--retry] COMMAND [ARGS...]\n"
        "    fwcat [-h SERVERS]... [-p PORT] [--timeout MS] [--json] [--retry]  < commands.txt\n"
        "    fwcat [-h SERVERS]... [-p PORT] [--timeout MS] --raw  < frames.hex\n"
        "\n"
        "DESCRIPTION\n"
        "    With a COMMAND, fwcat runs it once and prints the answer. Without one it reads\n"
        "    commands from standard input, one per line (words split on blanks; \"double\" or\n"
        "    'single' quotes group words; empty lines and lines starting with # are skipped),\n"
        "    prints one answer per line and goes on after errors, like netcat.\n"
        "\n"
        "OPTIONS\n"
        "    -h, --host SERVERS\n"
        "                      the server: a name or an IPv4 or IPv6 address (default\n"
        "                      127.0.0.1), or several servers of one cluster to fail over\n"
        "                      between, HOST:PORT[,HOST:PORT...] (an IPv6 address with a\n"
        "                      port goes in brackets: [::1]:7420). May be repeated; at most\n"
        "                      8 servers in all. See FAILOVER\n"
        "    -p, --port PORT   the port of every server given without one (default 7420)\n"
        "    --timeout MS      bound on each command, connect included (default 5000)\n"
        "    --json            machine-readable output: one JSON object per answer, on one line\n"
        "    --retry           retry BUSY and UNAVAILABLE answers with jittered back-off,\n"
        "                      honouring the server's retry_after, within --timeout; with\n"
        "                      several servers, also send a command again to the next one\n"
        "                      when its connection broke (see FAILOVER)\n"
        "    --key FILE        this device's secret key (PREFIX.key from facewired keygen):\n"
        "                      talk over a secure session; needs --server-pub\n"
        "    --server-pub FILE the server's public key (its .pub file); the only one accepted\n"
        "    --raw             protocol debugging: read frames from stdin as hex, one frame per\n"
        "                      line (blanks allowed, # starts a comment), send them as they are\n"
        "                      and print each answer as hex (header, a blank, body)\n"
        "    --help            this text\n"
        "    --version         the version\n"
        "\n"
        "COMMANDS\n"
        "    ping [TEXT]                 echo TEXT (the words joined by one blank)\n"
        "    info                        server figures, key: value lines\n"
        "    detect PIC                  faces in a JPEG: box, score, 68 landmarks\n"
        "    embed PIC                   detect plus a 128-float descriptor per face\n"
        "    verify A B [--threshold T]  are the faces in JPEGs A and B the same person?\n"
        "    enroll SUBJECT PIC [--meta TEXT]\n"
        "                                add the one face in PIC to the gallery; prints its id\n"
        "    identify PIC [-k K] [--threshold T]\n"
        "                                the K (default 5) nearest gallery faces of each face\n"
        "    delete --face ID | --subject S\n"
        "                                remove one face, or every face of a subject\n"
        "    list                        every subject and its face count (all pages)\n"
        "    gallery                     gallery size: faces, subjects, bytes, last_seq\n"
        "    sleep MS, fail              test ops (server started with --enable-test-ops)\n"
        "    stream --frames DIR|FILE --fps F [--name N] [--identify] [--loop] [--count N]\n"
        "           [--fifo] [--capacity N] [--max-fps N] [--linger-ms MS] [--test-sleep MS]\n"
        "                                push the JPEGs of DIR (sorted by name) or of a JPEG /\n"
        "                                Motion-JPEG FILE as a camera stream at F frames per\n"
        "                                second (--loop: over and over; --count: that many\n"
        "                                frames); print every event, then the final statistics.\n"
        "                                A frame the socket cannot take at once is dropped here\n"
        "                                (dropped_at_source). --test-sleep MS: the server's test\n"
        "                                mode (--enable-test-ops; no analysis, sleeps MS)\n"
        "\n"
        "FAILOVER\n"
        "    With several servers fwcat connects to the first one that answers, in the\n"
        "    order given. When a connection fails (refused, reset, closed before the\n"
        "    answer) the command fails, and the next command connects to the next server.\n"
        "    With --retry the command itself is sent again to the next server, within\n"
        "    --timeout, if repeating it is harmless: every command but enroll, delete and\n"
        "    stream, which may have been carried out before the connection broke (check\n"
        "    with list or identify before sending them again).\n"
        "\n"
        "JSON OUTPUT\n"
        "    detect/embed {\"width\":W,\"height\":H,\"faces\":[{\"box\":[x,y,w,h],\"score\":S,\n"
        "                 \"landmarks\":[[x,y],...],\"descriptor\":[...]}]} (descriptor: embed only)\n"
        "    verify       {\"distance\":D,\"same\":true,\"threshold\":T}\n"
        "    enroll       {\"face_id\":N}\n"
        "    identify     {\"faces\":[{\"box\":[...],\"matches\":[{\"subject\":S,\"face_id\":N,\n"
        "                 \"distance\":D}]}]}\n"
        "    delete       {\"deleted\":N}\n"
        "    list         {\"subjects\":[{\"subject\":S,\"faces\":N}]}\n"
        "    gallery      {\"faces\":N,\"subjects\":N,\"bytes\":N,\"last_seq\":N}\n"
        "    stream       one line per event: {\"type\":\"faces\",\"stream\":ID,\"seq\":N,\n"
        "                 \"latency_ms\":L (server: receipt to result), \"age_ms\":A (capture to\n"
        "                 event here), \"t_ms\":T (since the first frame), \"faces\":[{\"box\":[...],\"score\":S,\"subject\":S,...}]},\n"
        "                 {\"type\":\"error\",...}; last {\"type\":\"stats\",\"final\":true,\"received\":N,\n"
        "                 \"analysed\":N,\"dropped\":N,\"p50_latency_ms\":L,\"p99_latency_ms\":L,...}\n"
        "    ping {\"echo\":TEXT}  info {\"info\":{KEY:VALUE,...}}  sleep, fail {\"ok\":true}\n"
        "    errors       {\"error\":MESSAGE,\"status\":NAME}: NAME is the server's status\n"
        "                 (BUSY, NO_FACE, ...) or a client-side FW_ERR_* (FW_ERR_TIMEOUT, ...)\n"
        "                 or USAGE\n"
        "\n"
        "EXIT STATUS\n"
        "    0  OK (stdin and --raw modes: every line was answered OK)\n"
        "    1  the server answered with a status other than OK\n"
        "    2  usage error, cannot connect, timeout, transport or protocol error\n"
        "    In stdin and --raw modes, the highest of these over all lines.\n"
        "\n"
        "EXAMPLES\n"
        "    fwcat -p 7420 ping hi            prints hi\n"
        "    fwcat -h 10.0.0.5:7420,10.0.0.6:7420 --retry identify face.jpg\n"
        "    fwcat -h node1 -h node2 -h '[fd00::3]:7421' -p 7420 info\n"
        "    fwcat --json verify a.jpg b.jpg\n"
        "    printf 'ping a\\ninfo\\n' | fwcat\n"
        "    echo 'face 01 01 00 00 0000 00000007 00000000 00000002 6869' | fwcat --raw\n",
        out);
}

/* ---- output helpers ---------------------------------------------------------------------- */

/* Shortest decimal text that reads back as the same float; JSON has no NaN / infinity. */
static const char *fmt_float(float v, char buf[32])
{
    if (!isfinite(v))
        return "null";
    for (int prec = 6; prec <= 9; prec++) {
        snprintf(buf, 32, "%.*g", prec, (double)v);
        if (strtof(buf, NULL) == v)
            break;
    }
    return buf;
}

static void put_float(float v)
{
    char b[32];
    fputs(fmt_float(v, b), stdout);
}

/* A face box as "x<sep>y<sep>w<sep>h": one place for every printer of faces. */
static void put_box(const fw_box *b, char sep)
{
    put_float(b->x), putchar(sep), put_float(b->y), putchar(sep);
    put_float(b->w), putchar(sep), put_float(b->h);
}

/* Length of a valid UTF-8 sequence at s (at most n bytes), or 0 if it is not one. */
static size_t utf8_len(const unsigned char *s, size_t n)
{
    unsigned c = s[0];
    size_t len;
    unsigned min;
    if (c < 0x80)
        return 1;
    if (c >= 0xC2 && c <= 0xDF)
        len = 2, min = 0x80;
    else if (c >= 0xE0 && c <= 0xEF)
        len = 3, min = 0x800;
    else if (c >= 0xF0 && c <= 0xF4)
        len = 4, min = 0x10000;
    else
        return 0;
    if (n < len)
        return 0;
    unsigned cp = c & (0x3Fu >> (len - 1));
    for (size_t i = 1; i < len; i++) {
        if ((s[i] & 0xC0) != 0x80)
            return 0;
        cp = (cp << 6) | (s[i] & 0x3F);
    }
    if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF))
        return 0; /* overlong, out of range, or a surrogate */
    return len;
}

static void json_str(const char *s, size_t n)
{
    const unsigned char *p = (const unsigned char *)s;
    putchar('"');
    for (size_t i = 0; i < n;) {
        unsigned char ch = p[i];
        if (ch == '"' || ch == '\\') {
            putchar('\\');
            putchar(ch);
            i++;
        } else if (ch < 0x20 || ch == 0x7F) {
            switch (ch) {
            case '\n': fputs("\\n", stdout); break;
            case '\r': fputs("\\r", stdout); break;
            case '\t': fputs("\\t", stdout); break;
            default: printf("\\u%04x", ch); break;
            }
            i++;
        } else if (ch < 0x80) {
            putchar(ch);
            i++;
        } else {
            size_t k = utf8_len(p + i, n - i);
            if (k == 0) {
                fputs("\\ufffd", stdout);
                i++;
            } else {
                fwrite(p + i, 1, k, stdout);
                i += k;
            }
        }
    }
    putchar('"');
}

static void json_cstr(const char *s) { json_str(s, strlen(s)); }

/* Text for a terminal: bytes that are not printable ASCII or UTF-8 shown as \xHH. */
static void text_str(FILE *out, const char *s, size_t n)
{
    const unsigned char *p = (const unsigned char *)s;
    for (size_t i = 0; i < n;) {
        size_t k = p[i] >= 0x80 ? utf8_len(p + i, n - i) : (isprint(p[i]) || p[i] == '\n' || p[i] == '\t');
        if (k == 0) {
            fprintf(out, "\\x%02x", p[i]);
            i++;
        } else {
            fwrite(p + i, 1, k, out);
            i += k;
        }
    }
}

/* Report a failed call; returns the exit code it maps to. */
static int report(fwcat *fc, int rc)
{
    const char *msg = fc->c ? fw_client_errmsg(fc->c) : "";
    if (!*msg)
        msg = fw_strerror(rc);
    if (fc->json) {
        /* The status has its own field: drop the library's "STATUS: " prefix from the text. */
        const char *name = fw_strerror(rc);
        size_t nl = strlen(name);
        if (rc > 0 && strncmp(msg, name, nl) == 0 && msg[nl] == ':' && msg[nl + 1] == ' ')
            msg += nl + 2;
        const char *ra = strstr(msg, " (retry after ");
        fputs("{\"error\":", stdout);
        json_str(msg, ra && fw_client_retry_after(fc->c) ? (size_t)(ra - msg) : strlen(msg));
        fputs(",\"status\":", stdout);
        json_cstr(name);
        if (rc > 0 && fw_client_retry_after(fc->c))
            printf(",\"retry_after_ms\":%lu", (unsigned long)fw_client_retry_after(fc->c));
        fputs("}\n", stdout);
    } else {
        fputs("fwcat: ", stderr);
        text_str(stderr, msg, strlen(msg));
        fputc('\n', stderr);
    }
    return rc > 0 ? EXIT_STATUS : EXIT_USAGE;
}

#if defined(__GNUC__)
__attribute__((format(printf, 2, 3)))
#endif
static int usage_error(fwcat *fc, const char *fmt, ...)
{
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    if (fc->json) {
        fputs("{\"error\":", stdout);
        json_cstr(msg);
        fputs(",\"status\":\"USAGE\"}\n", stdout);
    } else {
        fprintf(stderr, "fwcat: %s\n", msg);
    }
    return EXIT_USAGE;
}

/* ---- argument helpers -------------------------------------------------------------------- */

static int parse_u64(const char *s, uint64_t max, uint64_t *out)
{
    if (!s || !isdigit((unsigned char)*s))
        return -1;
    errno = 0;
    char *end;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno || *end || v > max)
        return -1;
    *out = v;
    return 0;
}

static int parse_float(const char *s, float *out)
{
    if (!s || !*s)
        return -1;
    errno = 0;
    char *end;
    float v = strtof(s, &end);
    if (errno || *end || !isfinite(v))
        return -1;
    *out = v;
    return 0;
}

/* Read a whole file (at most MAX_FILE bytes) into a malloc'd buffer the caller frees. */
static int read_file(fwcat *fc, const char *path, uint8_t **data, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return usage_error(fc, "%s: %s", path, strerror(errno));
    size_t cap = 64 * 1024, n = 0;
    uint8_t *buf = malloc(cap);
    if (!buf)
        goto nomem;
    for (;;) {
        if (n == cap) {
            if (cap >= MAX_FILE + 1) {
                free(buf);
                fclose(f);
                return usage_error(fc, "%s: larger than %u bytes", path, (unsigned)MAX_FILE);
            }
            size_t ncap = cap * 2 > MAX_FILE + 1 ? MAX_FILE + 1 : cap * 2;
            uint8_t *nb = realloc(buf, ncap);
            if (!nb)
                goto nomem;
            buf = nb;
            cap = ncap;
        }
        size_t r = fread(buf + n, 1, cap - n, f);
        n += r;
        if (r == 0)
            break;
    }
    if (ferror(f)) {
        int e = errno;
        free(buf);
        fclose(f);
        return usage_error(fc, "%s: %s", path, strerror(e));
    }
    fclose(f);
    if (n == 0) {
        free(buf);
        return usage_error(fc, "%s: empty file", path);
    }
    *data = buf;
    *len = n;
    return 0;
nomem:
    free(buf);
    fclose(f);
    return usage_error(fc, "%s: out of memory", path);
}

/* ---- commands ---------------------------------------------------------------------------- */

/* (Re)connect when the previous command left no connection. Called by each command after
 * its arguments checked out, so a usage error is reported as one even with no server. */
static int ensure_connected(fwcat *fc)
{
    if (fw_client_is_connected(fc->c))
        return 0;
    int rc = fw_client_connect(fc->c);
    return rc == FW_OK ? 0 : report(fc, rc);
}

static int cmd_ping(fwcat *fc, int argc, char **argv)
{
    char text[FW_PING_MAX_BODY];
    size_t n = 0;
    for (int i = 1; i < argc; i++) {
        size_t k = strlen(argv[i]);
        if (n + k + (i > 1) > sizeof text)
            return usage_error(fc, "ping: text over %u bytes", (unsigned)sizeof text);
        if (i > 1)
            text[n++] = ' ';
        memcpy(text + n, argv[i], k);
        n += k;
    }
    const uint8_t *echo;
    size_t len;
    int ec = ensure_connected(fc);
    if (ec)
        return ec;
    int rc = fw_ping(fc->c, text, n, &echo, &len);
    if (rc != FW_OK)
        return report(fc, rc);
    if (fc->json) {
        fputs("{\"echo\":", stdout);
        json_str((const char *)echo, len);
        fputs("}\n", stdout);
    } else {
        fwrite(echo, 1, len, stdout);
        putchar('\n');
    }
    return 0;
}

static int cmd_info(fwcat *fc, int argc, char **argv)
{
    const char *text;
    size_t len;
    int ec = ensure_connected(fc);
    if (ec)
        return ec;
    int rc = fw_info(fc->c, &text, &len);
    if (rc != FW_OK)
        return report(fc, rc);
    if (!fc->json) {
        text_str(stdout, text, len);
        if (len && text[len - 1] != '\n')
            putchar('\n');
        return 0;
    }
    /* "key: value" lines become {"key":"value"}; a line without ": " keeps an empty value. */
    fputs("{\"info\":{", stdout);
    int first = 1;
    for (size_t i = 0; i < len;) {
        const char *line = text + i;
        const char *nl = memchr(line, '\n', len - i);
        size_t ll = nl ? (size_t)(nl - line) : len - i;
        i += ll + (nl ? 1 : 0);
        if (ll == 0)
            continue;
        const char *colon = NULL;
        for (size_t k = 0; k + 1 < ll; k++)
            if (line[k] == ':' && line[k + 1] == ' ') {
                colon = line + k;
                break;
            }
        if (!first)
            putchar(',');
        first = 0;
        if (colon) {
            json_str(line, (size_t)(colon - line));
            putchar(':');
            json_str(colon + 2, ll - (size_t)(colon - line) - 2);
        } else {
            json_str(line, ll);
            fputs(":\"\"", stdout);
        }
    }
    fputs("}}\n", stdout);
    return 0;
}

static void print_faces(const fw_face *faces, const fw_image_result *res, int with_desc, int json)
{
    if (json) {
        printf("{\"width\":%lu,\"height\":%lu,\"faces\":[", (unsigned long)res->width, (unsigned long)res->height);
        for (size_t i = 0; i < res->nstored; i++) {
            const fw_face *f = &faces[i];
            fputs(i ? ",{\"box\":[" : "{\"box\":[", stdout);
            put_box(&f->box, ',');
            fputs("],\"score\":", stdout);
            put_float(f->score);
            fputs(",\"landmarks\":[", stdout);
            for (int k = 0; k < FW_LANDMARKS; k++) {
                fputs(k ? ",[" : "[", stdout);
                put_float(f->landmarks[k][0]), putchar(','), put_float(f->landmarks[k][1]);
                putchar(']');
            }
            putchar(']');
            if (with_desc) {
                fputs(",\"descriptor\":[", stdout);
                for (int k = 0; k < FW_DESCRIPTOR_DIM; k++) {
                    if (k)
                        putchar(',');
                    put_float(f->descriptor[k]);
                }
                putchar(']');
            }
            putchar('}');
        }
        fputs("]}\n", stdout);
        return;
    }
    printf("%lux%lu, %lu face%s\n", (unsigned long)res->width, (unsigned long)res->height,
           (unsigned long)res->nfaces, res->nfaces == 1 ? "" : "s");
    for (size_t i = 0; i < res->nstored; i++) {
        const fw_face *f = &faces[i];
        printf("face %lu: box ", (unsigned long)i);
        put_box(&f->box, ' ');
        fputs(" score ", stdout);
        put_float(f->score);
        putchar('\n');
        if (with_desc) {
            fputs("  descriptor", stdout);
            for (int k = 0; k < FW_DESCRIPTOR_DIM; k++)
                putchar(' '), put_float(f->descriptor[k]);
            putchar('\n');
        }
    }
}

static int cmd_image(fwcat *fc, int argc, char **argv)
{
    int embed = strcmp(argv[0], "embed") == 0;
    if (argc != 2)
        return usage_error(fc, "usage: %s PIC", argv[0]);
    uint8_t *jpeg;
    size_t len;
    int ec = read_file(fc, argv[1], &jpeg, &len);
    if (ec)
        return ec;
    fw_face *faces = malloc(sizeof *faces * MAX_FACES);
    if (!faces) {
        free(jpeg);
        return usage_error(fc, "out of memory");
    }
    fw_image_result res;
    if ((ec = ensure_connected(fc)) != 0) {
        free(faces);
        free(jpeg);
        return ec;
    }
    int rc = embed ? fw_embed(fc->c, jpeg, len, faces, MAX_FACES, &res)
                   : fw_detect(fc->c, jpeg, len, faces, MAX_FACES, &res);
    if (rc == FW_OK) {
        print_faces(faces, &res, embed, fc->json);
        if (res.nstored < res.nfaces)
            fprintf(stderr, "fwcat: %lu more faces not shown\n", (unsigned long)(res.nfaces - res.nstored));
    }
    else
        ec = report(fc, rc);
    free(faces);
    free(jpeg);
    return ec;
}

/* Options after the positional arguments: "-k K", "--threshold T", "--meta TEXT". Returns
 * the number of positional arguments, or -1 after reporting a usage error in *ec. */
typedef struct opts {
    const char *threshold, *meta, *k, *face, *subject;
} opts;

static int split_opts(fwcat *fc, int argc, char **argv, const char *allowed, char **pos, opts *o, int *ec)
{
    int npos = 0;
    memset(o, 0, sizeof *o);
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char **slot = NULL;
        if (strcmp(a, "--threshold") == 0 && strstr(allowed, "t"))
            slot = &o->threshold;
        else if (strcmp(a, "--meta") == 0 && strstr(allowed, "m"))
            slot = &o->meta;
        else if (strcmp(a, "-k") == 0 && strstr(allowed, "k"))
            slot = &o->k;
        else if (strcmp(a, "--face") == 0 && strstr(allowed, "f"))
            slot = &o->face;
        else if (strcmp(a, "--subject") == 0 && strstr(allowed, "s"))
            slot = &o->subject;
        else if (a[0] == '-' && a[1] != '\0') {
            *ec = usage_error(fc, "%s: unknown option %s", argv[0], a);
            return -1;
        }
        if (slot) {
            if (i + 1 >= argc) {
                *ec = usage_error(fc, "%s: %s needs a value", argv[0], a);
                return -1;
            }
            *slot = argv[++i];
        } else {
            if (npos == 4) {
                *ec = usage_error(fc, "%s: too many arguments", argv[0]);
                return -1;
            }
            pos[npos++] = argv[i];
        }
    }
    return npos;
}

static int get_threshold(fwcat *fc, const opts *o, float *thr, const float **out, int *ec)
{
    *out = NULL;
    if (!o->threshold)
        return 0;
    if (parse_float(o->threshold, thr) != 0 || *thr < 0) {
        *ec = usage_error(fc, "bad threshold %s", o->threshold);
        return -1;
    }
    *out = thr;
    return 0;
}

static int cmd_verify(fwcat *fc, int argc, char **argv)
{
    char *pos[4];
    opts o;
    int ec = 0;
    int n = split_opts(fc, argc, argv, "t", pos, &o, &ec);
    if (n < 0)
        return ec;
    if (n != 2)
        return usage_error(fc, "usage: verify A B [--threshold T]");
    float thr;
    const float *pthr;
    if (get_threshold(fc, &o, &thr, &pthr, &ec) != 0)
        return ec;
    uint8_t *a = NULL, *b = NULL;
    size_t la, lb;
    if ((ec = read_file(fc, pos[0], &a, &la)) != 0)
        return ec;
    if ((ec = read_file(fc, pos[1], &b, &lb)) != 0) {
        free(a);
        return ec;
    }
    fw_input ia = fw_input_jpeg(a, la), ib = fw_input_jpeg(b, lb);
    fw_verify_result v;
    ec = ensure_connected(fc);
    int rc = ec ? FW_OK : fw_verify(fc->c, &ia, &ib, pthr, &v);
    free(a);
    free(b);
    if (ec)
        return ec;
    if (rc != FW_OK)
        return report(fc, rc);
    if (fc->json) {
        fputs("{\"distance\":", stdout);
        put_float(v.distance);
        printf(",\"same\":%s,\"threshold\":", v.same ? "true" : "false");
        put_float(v.threshold);
        fputs("}\n", stdout);
    } else {
        fputs(v.same ? "same (distance " : "different (distance ", stdout);
        put_float(v.distance);
        fputs(", threshold ", stdout);
        put_float(v.threshold);
        fputs(")\n", stdout);
    }
    return 0;
}

static int cmd_enroll(fwcat *fc, int argc, char **argv)
{
    char *pos[4];
    opts o;
    int ec = 0;
    int n = split_opts(fc, argc, argv, "m", pos, &o, &ec);
    if (n < 0)
        return ec;
    if (n != 2)
        return usage_error(fc, "usage: enroll SUBJECT PIC [--meta TEXT]");
    size_t sl = strlen(pos[0]);
    if (sl == 0 || sl > FW_SUBJECT_MAX)
        return usage_error(fc, "enroll: SUBJECT must be 1..%d bytes", FW_SUBJECT_MAX);
    size_t ml = o.meta ? strlen(o.meta) : 0;
    if (ml > FW_METADATA_MAX)
        return usage_error(fc, "enroll: --meta over %d bytes", FW_METADATA_MAX);
    uint8_t *jpeg;
    size_t len;
    if ((ec = read_file(fc, pos[1], &jpeg, &len)) != 0)
        return ec;
    fw_input in = fw_input_jpeg(jpeg, len);
    uint64_t id;
    ec = ensure_connected(fc);
    int rc = ec ? FW_OK : fw_enroll(fc->c, pos[0], o.meta, ml, &in, &id);
    free(jpeg);
    if (ec)
        return ec;
    if (rc != FW_OK)
        return report(fc, rc);
    if (fc->json)
        printf("{\"face_id\":%llu}\n", (unsigned long long)id);
    else
        printf("%llu\n", (unsigned long long)id);
    return 0;
}

static int cmd_identify(fwcat *fc, int argc, char **argv)
{
    char *pos[4];
    opts o;
    int ec = 0;
    int n = split_opts(fc, argc, argv, "tk", pos, &o, &ec);
    if (n < 0)
        return ec;
    if (n != 1)
        return usage_error(fc, "usage: identify PIC [-k K] [--threshold T]");
    uint64_t k = 5;
    if (o.k && (parse_u64(o.k, FW_IDENTIFY_MAX_K, &k) != 0 || k == 0))
        return usage_error(fc, "identify: -k must be 1..%d", FW_IDENTIFY_MAX_K);
    float thr;
    const float *pthr;
    if (get_threshold(fc, &o, &thr, &pthr, &ec) != 0)
        return ec;
    uint8_t *jpeg;
    size_t len;
    if ((ec = read_file(fc, pos[0], &jpeg, &len)) != 0)
        return ec;
    fw_identify_face *faces = malloc(sizeof *faces * MAX_FACES);
    fw_match *m = malloc(sizeof *m * MAX_MATCHES);
    fw_identify_result res;
    int rc = FW_ERR_NOMEM;
    if (faces && m && (ec = ensure_connected(fc)) != 0) {
        rc = FW_OK; /* reported already */
    } else if (faces && m) {
        fw_input in = fw_input_jpeg(jpeg, len);
        rc = fw_identify(fc->c, &in, (unsigned)k, pthr, faces, MAX_FACES, m, MAX_MATCHES, &res);
    }
    free(jpeg);
    if (ec) {
        /* connection failure, reported */
    } else if (rc == FW_ERR_NOMEM) {
        ec = usage_error(fc, "out of memory");
    } else if (rc != FW_OK) {
        ec = report(fc, rc);
    } else if (fc->json) {
        fputs("{\"faces\":[", stdout);
        for (size_t i = 0; i < res.nstored; i++) {
            const fw_identify_face *f = &faces[i];
            fputs(i ? ",{\"box\":[" : "{\"box\":[", stdout);
            put_box(&f->box, ',');
            fputs("],\"matches\":[", stdout);
            for (size_t j = 0; j < f->nstored; j++) {
                fputs(j ? ",{\"subject\":" : "{\"subject\":", stdout);
                json_str(f->matches[j].subject, f->matches[j].subject_len);
                printf(",\"face_id\":%llu,\"distance\":", (unsigned long long)f->matches[j].face_id);
                put_float(f->matches[j].distance);
                putchar('}');
            }
            fputs("]}", stdout);
        }
        fputs("]}\n", stdout);
    } else {
        printf("%lu face%s\n", (unsigned long)res.nfaces, res.nfaces == 1 ? "" : "s");
        for (size_t i = 0; i < res.nstored; i++) {
            const fw_identify_face *f = &faces[i];
            printf("face %lu: box ", (unsigned long)i);
            put_box(&f->box, ' ');
            putchar('\n');
            if (f->nmatches == 0)
                fputs("  no match\n", stdout);
            for (size_t j = 0; j < f->nstored; j++) {
                fputs("  ", stdout);
                text_str(stdout, f->matches[j].subject, f->matches[j].subject_len);
                printf(" face_id %llu distance ", (unsigned long long)f->matches[j].face_id);
                put_float(f->matches[j].distance);
                putchar('\n');
            }
        }
    }
    if (rc == FW_OK && res.truncated)
        fprintf(stderr, "fwcat: more faces or matches than shown\n");
    free(faces);
    free(m);
    return ec;
}

static int cmd_delete(fwcat *fc, int argc, char **argv)
{
    char *pos[4];
    opts o;
    int ec = 0;
    int n = split_opts(fc, argc, argv, "fs", pos, &o, &ec);
    if (n < 0)
        return ec;
    if (n != 0 || !o.face == !o.subject)
        return usage_error(fc, "usage: delete --face ID | --subject S");
    uint32_t deleted = 0;
    uint64_t id = 0;
    if (o.face && parse_u64(o.face, UINT64_MAX, &id) != 0)
        return usage_error(fc, "delete: bad face id %s", o.face);
    size_t sl = o.subject ? strlen(o.subject) : 0;
    if (o.subject && (sl == 0 || sl > FW_SUBJECT_MAX))
        return usage_error(fc, "delete: SUBJECT must be 1..%d bytes", FW_SUBJECT_MAX);
    if ((ec = ensure_connected(fc)) != 0)
        return ec;
    int rc = o.face ? fw_delete_face(fc->c, id, &deleted) : fw_delete_subject(fc->c, o.subject, &deleted);
    if (rc != FW_OK)
        return report(fc, rc);
    if (fc->json)
        printf("{\"deleted\":%lu}\n", (unsigned long)deleted);
    else
        printf("deleted %lu\n", (unsigned long)deleted);
    return 0;
}

/* Every page, following the cursor. The JSON array is opened before the first page; an error
 * on a later page closes it and adds "error"/"status", so the output stays one valid object. */
static int cmd_list(fwcat *fc, int argc, char **argv)
{
    if (argc != 1)
        return usage_error(fc, "usage: list");
    int ec = ensure_connected(fc);
    if (ec)
        return ec;
    static const size_t cursor_cap = 65536;
    char *cursor = malloc(cursor_cap);
    fw_subject *subj = malloc(sizeof *subj * LIST_PAGE);
    if (!cursor || !subj) {
        free(cursor);
        free(subj);
        return usage_error(fc, "out of memory");
    }
    size_t clen = 0;
    int opened = 0, first = 1;
    for (;;) {
        fw_list_result res;
        int rc = fw_list(fc->c, cursor, clen, LIST_PAGE, subj, LIST_PAGE, &res);
        const char *bad = NULL;
        if (rc == FW_OK && res.n == 0 && res.next_cursor_len > 0)
            bad = "server returned an empty page that is not the last";
        else if (rc == FW_OK && res.next_cursor_len > 0 && res.next_cursor_len == clen &&
                 memcmp(res.next_cursor, cursor, clen) == 0)
            bad = "server returned the same cursor twice";
        if (rc != FW_OK || bad) {
            const char *msg = bad ? bad : fw_client_errmsg(fc->c);
            ec = bad ? EXIT_USAGE : rc > 0 ? EXIT_STATUS : EXIT_USAGE;
            if (fc->json && opened) {
                fputs("],\"error\":", stdout);
                json_cstr(msg);
                fputs(",\"status\":", stdout);
                json_cstr(bad ? "FW_ERR_PROTOCOL" : fw_strerror(rc));
                fputs("}\n", stdout);
            } else if (bad) {
                ec = usage_error(fc, "%s", bad);
            } else {
                ec = report(fc, rc);
            }
            break;
        }
        if (fc->json && !opened) {
            fputs("{\"subjects\":[", stdout);
            opened = 1;
        }
        for (size_t i = 0; i < res.nstored; i++) {
            if (fc->json) {
                fputs(first ? "{\"subject\":" : ",{\"subject\":", stdout);
                json_str(subj[i].subject, subj[i].subject_len);
                printf(",\"faces\":%lu}", (unsigned long)subj[i].faces);
            } else {
                text_str(stdout, subj[i].subject, subj[i].subject_len);
                printf(" %lu\n", (unsigned long)subj[i].faces);
            }
            first = 0;
        }
        if (res.next_cursor_len == 0) {
            if (fc->json)
                fputs("]}\n", stdout);
            break;
        }
        memcpy(cursor, res.next_cursor, res.next_cursor_len);
        clen = res.next_cursor_len;
    }
    free(cursor);
    free(subj);
    return ec;
}

static int cmd_gallery(fwcat *fc, int argc, char **argv)
{
    fw_gallery_info g;
    int ec = ensure_connected(fc);
    if (ec)
        return ec;
    int rc = fw_gallery(fc->c, &g);
    if (rc != FW_OK)
        return report(fc, rc);
    if (fc->json)
        printf("{\"faces\":%llu,\"subjects\":%llu,\"bytes\":%llu,\"last_seq\":%llu}\n",
               (unsigned long long)g.faces, (unsigned long long)g.subjects, (unsigned long long)g.bytes,
               (unsigned long long)g.last_seq);
    else
        printf("faces: %llu\nsubjects: %llu\nbytes: %llu\nlast_seq: %llu\n", (unsigned long long)g.faces,
               (unsigned long long)g.subjects, (unsigned long long)g.bytes, (unsigned long long)g.last_seq);
    return 0;
}

static int print_ok(fwcat *fc)
{
    puts(fc->json ? "{\"ok\":true}" : "OK");
    return 0;
}

static int cmd_sleep(fwcat *fc, int argc, char **argv)
{
    uint64_t ms;
    if (argc != 2 || parse_u64(argv[1], UINT32_MAX, &ms) != 0)
        return usage_error(fc, "usage: sleep MS");
    int ec = ensure_connected(fc);
    if (ec)
        return ec;
    int rc = fw_test_sleep(fc->c, (uint32_t)ms);
    return rc == FW_OK ? print_ok(fc) : report(fc, rc);
}

static int cmd_fail(fwcat *fc, int argc, char **argv)
{
    int ec = ensure_connected(fc);
    if (ec)
        return ec;
    int rc = fw_test_fail(fc->c);
    return rc == FW_OK ? print_ok(fc) : report(fc, rc);
}

/* ---- stream ------------------------------------------------------------------------------ */

static uint64_t mono_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}

#define STREAM_MAX_FRAMES 4096
#define STREAM_MAX_BYTES (512u << 20)

typedef struct frame_set {
    uint8_t **data;   /* data[i] is owned (a whole file) or points into blob */
    size_t *len;
    size_t n;
    uint8_t *blob;    /* a Motion-JPEG file, owned */
    int owns_each;
} frame_set;

static void frames_free(frame_set *fs)
{
    if (fs->owns_each)
        for (size_t i = 0; i < fs->n; i++)
            free(fs->data[i]);
    free(fs->data);
    free(fs->len);
    free(fs->blob);
    memset(fs, 0, sizeof *fs);
}

static int name_cmp(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

static int is_jpeg_name(const char *n)
{
    size_t l = strlen(n);
    return (l > 4 && strcasecmp(n + l - 4, ".jpg") == 0) || (l > 5 && strcasecmp(n + l - 5, ".jpeg") == 0);
}

/* A directory: every *.jpg / *.jpeg in it, sorted by name. A file: one JPEG, or a Motion-JPEG
 * file (JPEGs one after the other), split where an end-of-image marker (FF D9) is followed by
 * a start-of-image marker (FF D8) or by the end of the file. */
static int frames_load(fwcat *fc, const char *path, frame_set *fs)
{
    memset(fs, 0, sizeof *fs);
    fs->data = calloc(STREAM_MAX_FRAMES, sizeof *fs->data);
    fs->len = calloc(STREAM_MAX_FRAMES, sizeof *fs->len);
    if (!fs->data || !fs->len)
        goto nomem;
    DIR *d = opendir(path);
    if (d) {
        char **names = calloc(STREAM_MAX_FRAMES, sizeof *names);
        size_t nn = 0;
        struct dirent *e;
        int ec = 0;
        while (names && (e = readdir(d)) != NULL) {
            if (!is_jpeg_name(e->d_name))
                continue;
            if (nn == STREAM_MAX_FRAMES) {
                ec = usage_error(fc, "%s: more than %d JPEGs", path, STREAM_MAX_FRAMES);
                break;
            }
            size_t l = strlen(path) + 1 + strlen(e->d_name) + 1;
            if (!(names[nn] = malloc(l))) {
                ec = usage_error(fc, "out of memory");
                break;
            }
            snprintf(names[nn++], l, "%s/%s", path, e->d_name);
        }
        closedir(d);
        if (!names)
            goto nomem;
        qsort(names, nn, sizeof *names, name_cmp);
        fs->owns_each = 1;
        uint64_t total = 0;
        for (size_t i = 0; i < nn && !ec; i++) {
            ec = read_file(fc, names[i], &fs->data[fs->n], &fs->len[fs->n]);
            if (!ec) {
                total += fs->len[fs->n++];
                if (total > STREAM_MAX_BYTES)
                    ec = usage_error(fc, "%s: more than %u bytes of JPEGs", path, STREAM_MAX_BYTES);
            }
        }
        for (size_t i = 0; i < nn; i++)
            free(names[i]);
        free(names);
        if (!ec && fs->n == 0)
            ec = usage_error(fc, "%s: no .jpg or .jpeg files", path);
        if (ec)
            frames_free(fs);
        return ec;
    }
    size_t len = 0;
    int ec = read_file(fc, path, &fs->blob, &len);
    if (ec) {
        frames_free(fs);
        return ec;
    }
    const uint8_t *b = fs->blob;
    if (len < 4 || b[0] != 0xFF || b[1] != 0xD8) {
        frames_free(fs);
        return usage_error(fc, "%s: not a JPEG or Motion-JPEG file", path);
    }
    size_t start = 0;
    for (size_t i = 2; i + 1 < len; i++) {
        if (b[i] != 0xFF || b[i + 1] != 0xD9)
            continue;
        size_t end = i + 2;
        if (end != len && !(end + 1 < len && b[end] == 0xFF && b[end + 1] == 0xD8))
            continue;
        if (fs->n == STREAM_MAX_FRAMES) {
            frames_free(fs);
            return usage_error(fc, "%s: more than %d frames", path, STREAM_MAX_FRAMES);
        }
        fs->data[fs->n] = fs->blob + start;
        fs->len[fs->n++] = end - start;
        start = end;
        i = end;
    }
    if (fs->n == 0) { /* no end marker: send it whole, the server judges it */
        fs->data[0] = fs->blob;
        fs->len[0] = len;
        fs->n = 1;
    }
    return 0;
nomem:
    frames_free(fs);
    return usage_error(fc, "out of memory");
}


#define STREAM_FACES 64

/* Print a faces or error event. */
static void print_stream_event(fwcat *fc, const fw_stream_event *ev, const fw_stream_face *faces)
{
    if (ev->kind == FW_STREAM_EV_FACES) {
        if (fc->json) {
            /* age_ms: from the frame's capture (its push, on this client's clock) to the event */
            uint64_t now = mono_us() - fc->stream_t0;
            printf("{\"type\":\"faces\",\"stream\":%lu,\"seq\":%llu,\"latency_ms\":%.3f,\"age_ms\":%.3f,"
                   "\"t_ms\":%.3f,\"width\":%lu,\"height\":%lu,\"faces\":[", (unsigned long)ev->stream_id,
                   (unsigned long long)ev->seq, ev->latency_us / 1000.0,
                   now > ev->capture_us ? (double)(now - ev->capture_us) / 1000.0 : 0.0, now / 1000.0,
                   (unsigned long)ev->width, (unsigned long)ev->height);
            for (size_t i = 0; i < ev->nstored; i++) {
                const fw_stream_face *f = &faces[i];
                fputs(i ? ",{\"box\":[" : "{\"box\":[", stdout);
                put_box(&f->box, ',');
                fputs("],\"score\":", stdout);
                put_float(f->score);
                if (f->has_match) {
                    fputs(",\"subject\":", stdout);
                    json_str(f->subject, f->subject_len);
                    printf(",\"face_id\":%llu,\"distance\":", (unsigned long long)f->face_id);
                    put_float(f->distance);
                }
                putchar('}');
            }
            fputs("]}\n", stdout);
        } else {
            printf("faces stream=%lu seq=%llu latency_ms=%.3f n=%lu", (unsigned long)ev->stream_id,
                   (unsigned long long)ev->seq, ev->latency_us / 1000.0, (unsigned long)ev->nfaces);
            for (size_t i = 0; i < ev->nstored; i++) {
                const fw_stream_face *f = &faces[i];
                printf(" [%.1f,%.1f,%.1f,%.1f %.3f", (double)f->box.x, (double)f->box.y, (double)f->box.w,
                       (double)f->box.h, (double)f->score);
                if (f->has_match) {
                    putchar(' ');
                    text_str(stdout, f->subject, f->subject_len);
                    printf(" %.4f", (double)f->distance);
                }
                putchar(']');
            }
            putchar('\n');
        }
    } else if (ev->kind == FW_STREAM_EV_ERROR) {
        if (fc->json) {
            printf("{\"type\":\"error\",\"stream\":%lu,\"seq\":%llu,\"status\":", (unsigned long)ev->stream_id,
                   (unsigned long long)ev->seq);
            json_cstr(fw_status_name(ev->status));
            fputs(",\"error\":", stdout);
            json_str(ev->msg ? ev->msg : "", ev->msg ? ev->msg_len : 0);
            fputs("}\n", stdout);
        } else {
            printf("error stream=%lu seq=%llu %s: ", (unsigned long)ev->stream_id, (unsigned long long)ev->seq,
                   fw_status_name(ev->status));
            text_str(stdout, ev->msg ? ev->msg : "", ev->msg ? ev->msg_len : 0);
            putchar('\n');
        }
    }
}

static void print_stream_stats(fwcat *fc, const fw_stream_stats *s, int final, uint64_t at_source)
{
    uint64_t dropped = s->dropped_overflow + s->dropped_superseded + s->dropped_deadline + s->dropped_memory +
                       s->dropped_rate;
    if (fc->json) {
        printf("{\"type\":\"stats\",\"final\":%s,\"received\":%llu,\"analysed\":%llu,\"failed\":%llu,"
               "\"dropped\":%llu,\"dropped_overflow\":%llu,\"dropped_superseded\":%llu,\"dropped_deadline\":%llu,"
               "\"dropped_memory\":%llu,\"dropped_rate\":%llu,\"seq_gaps\":%llu,\"out_of_order\":%llu,\"p50_latency_ms\":%.3f,"
               "\"p99_latency_ms\":%.3f", final ? "true" : "false", (unsigned long long)s->received,
               (unsigned long long)s->analysed, (unsigned long long)s->failed, (unsigned long long)dropped,
               (unsigned long long)s->dropped_overflow, (unsigned long long)s->dropped_superseded,
               (unsigned long long)s->dropped_deadline, (unsigned long long)s->dropped_memory,
               (unsigned long long)s->dropped_rate, (unsigned long long)s->seq_gaps,
               (unsigned long long)s->out_of_order, s->latency_p50_us / 1000.0, s->latency_p99_us / 1000.0);
        if (final)
            printf(",\"dropped_at_source\":%llu", (unsigned long long)at_source);
        fputs("}\n", stdout);
    } else {
        printf("stats%s received=%llu analysed=%llu failed=%llu dropped=%llu (overflow=%llu superseded=%llu "
               "deadline=%llu memory=%llu rate=%llu) seq_gaps=%llu out_of_order=%llu p50_latency_ms=%.3f p99_latency_ms=%.3f",
               final ? " final" : "", (unsigned long long)s->received, (unsigned long long)s->analysed,
               (unsigned long long)s->failed, (unsigned long long)dropped, (unsigned long long)s->dropped_overflow,
               (unsigned long long)s->dropped_superseded, (unsigned long long)s->dropped_deadline,
               (unsigned long long)s->dropped_memory, (unsigned long long)s->dropped_rate,
               (unsigned long long)s->seq_gaps,
               (unsigned long long)s->out_of_order, s->latency_p50_us / 1000.0, s->latency_p99_us / 1000.0);
        if (final)
            printf(" dropped_at_source=%llu", (unsigned long long)at_source);
        putchar('\n');
    }
}

/* Wait for events until `until_us` (monotonic), printing them; 0, or an exit code. Stops
 * early (returning 0) once a faces or error event for seq `want` came, when want_seq is set. */
static int stream_events_until(fwcat *fc, uint64_t until_us, int want_seq, uint64_t want, int *got)
{
    fw_stream_event ev;
    fw_stream_face faces[STREAM_FACES];
    for (;;) {
        uint64_t now = mono_us();
        uint32_t wait = now >= until_us ? 0 : (uint32_t)((until_us - now + 999) / 1000);
        int rc = fw_stream_poll(fc->c, wait, &ev, faces, STREAM_FACES);
        if (rc == FW_ERR_WOULD_BLOCK)
            return 0;
        if (rc != FW_OK)
            return report(fc, rc);
        if (ev.kind == FW_STREAM_EV_STATS)
            print_stream_stats(fc, &ev.stats, 0, 0);
        else
            print_stream_event(fc, &ev, faces);
        fflush(stdout);
        if (want_seq && (ev.kind == FW_STREAM_EV_FACES || ev.kind == FW_STREAM_EV_ERROR) && ev.seq == want) {
            *got = 1;
            return 0;
        }
    }
}

static int cmd_stream(fwcat *fc, int argc, char **argv)
{
    const char *frames = NULL, *name = "fwcat";
    double fps = 0;
    int identify = 0, loop = 0, fifo = 0, test_mode = 0;
    uint64_t count = 0, capacity = 8, test_sleep = 0, linger_ms = 2000, max_fps = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        int has = i + 1 < argc;
        if (strcmp(a, "--identify") == 0) {
            identify = 1;
        } else if (strcmp(a, "--loop") == 0) {
            loop = 1;
        } else if (strcmp(a, "--fifo") == 0) {
            fifo = 1;
        } else if (!has && (strcmp(a, "--frames") == 0 || strcmp(a, "--fps") == 0 || strcmp(a, "--name") == 0 ||
                            strcmp(a, "--count") == 0 || strcmp(a, "--capacity") == 0 ||
                            strcmp(a, "--test-sleep") == 0 || strcmp(a, "--linger-ms") == 0 ||
                            strcmp(a, "--max-fps") == 0)) {
            return usage_error(fc, "stream: %s needs a value", a);
        } else if (strcmp(a, "--frames") == 0) {
            frames = argv[++i];
        } else if (strcmp(a, "--name") == 0) {
            name = argv[++i];
        } else if (strcmp(a, "--fps") == 0) {
            char *end;
            errno = 0;
            fps = strtod(argv[++i], &end);
            if (errno || *end || !(fps > 0 && fps <= 1000))
                return usage_error(fc, "stream: --fps must be a number in (0, 1000], not %s", argv[i]);
        } else if (strcmp(a, "--count") == 0) {
            if (parse_u64(argv[++i], UINT32_MAX, &count) != 0)
                return usage_error(fc, "stream: bad --count %s", argv[i]);
        } else if (strcmp(a, "--capacity") == 0) {
            if (parse_u64(argv[++i], 64, &capacity) != 0 || capacity == 0)
                return usage_error(fc, "stream: --capacity must be 1..64, not %s", argv[i]);
        } else if (strcmp(a, "--test-sleep") == 0) {
            if (parse_u64(argv[++i], 10000, &test_sleep) != 0)
                return usage_error(fc, "stream: bad --test-sleep %s", argv[i]);
            test_mode = 1;
        } else if (strcmp(a, "--max-fps") == 0) {
            if (parse_u64(argv[++i], 65535, &max_fps) != 0)
                return usage_error(fc, "stream: bad --max-fps %s", argv[i]);
        } else if (strcmp(a, "--linger-ms") == 0) {
            if (parse_u64(argv[++i], 600000, &linger_ms) != 0)
                return usage_error(fc, "stream: bad --linger-ms %s", argv[i]);
        } else {
            return usage_error(fc, "stream: unknown option %s", a);
        }
    }
    if (!frames || fps <= 0)
        return usage_error(fc, "usage: stream --frames DIR|FILE --fps F [--name N] [--identify] [--loop] "
                               "[--count N] [--fifo] [--capacity N]");
    size_t nlen = strlen(name);
    if (nlen < 1 || nlen > 64)
        return usage_error(fc, "stream: --name must be 1..64 bytes");
    frame_set fs;
    int ec = frames_load(fc, frames, &fs);
    if (ec)
        return ec;
    if (!count)
        count = loop ? UINT64_MAX : fs.n;
    if ((ec = ensure_connected(fc)) != 0) {
        frames_free(&fs);
        return ec;
    }
    fw_stream_config sc;
    memset(&sc, 0, sizeof sc);
    sc.name = name;
    sc.capacity = (uint8_t)capacity;
    sc.mode = test_mode ? FW_STREAM_TEST : identify ? FW_STREAM_IDENTIFY : FW_STREAM_DETECT;
    sc.policy = fifo ? FW_STREAM_FIFO : FW_STREAM_RING;
    sc.max_distance = identify ? 0.6f : 0.0f;
    sc.test_sleep_ms = (uint32_t)test_sleep;
    sc.max_fps = (uint16_t)max_fps;
    uint32_t id = 0;
    int rc = fw_stream_open(fc->c, &sc, &id);
    if (rc != FW_OK) {
        frames_free(&fs);
        return report(fc, rc);
    }
    uint64_t interval = (uint64_t)(1e6 / fps), t0 = mono_us(), at_source = 0, seq = 0;
    fc->stream_t0 = t0;
    for (uint64_t k = 0; k < count; k++) {
        if ((ec = stream_events_until(fc, t0 + k * interval, 0, 0, NULL)) != 0)
            goto out;
        size_t i = (size_t)(k % fs.n);
        seq = k + 1;
        rc = fw_stream_push(fc->c, id, seq, mono_us() - t0, fs.data[i], fs.len[i]);
        if (rc == FW_ERR_WOULD_BLOCK) {
            at_source++;
        } else if (rc != FW_OK) {
            ec = report(fc, rc);
            goto out;
        }
    }
    /* the last frame's result, if it comes within --linger-ms (a superseded frame's never does) */
    int got = 0;
    if ((ec = stream_events_until(fc, mono_us() + linger_ms * 1000, 1, seq, &got)) != 0)
        goto out;
    fw_stream_stats fin;
    rc = fw_stream_close(fc->c, id, &fin);
    if (rc != FW_OK) {
        ec = report(fc, rc);
        goto out;
    }
    print_stream_stats(fc, &fin, 1, at_source);
out:
    frames_free(&fs);
    return ec;
}

static const struct command {
    const char *name;
    int min_args, max_args; /* counting the command word; -1 = checked by the command */
    int (*run)(fwcat *fc, int argc, char **argv);
} commands[] = {
    {"ping", 1, -1, cmd_ping},       {"info", 1, 1, cmd_info},         {"detect", 1, -1, cmd_image},
    {"embed", 1, -1, cmd_image},     {"verify", 1, -1, cmd_verify},    {"enroll", 1, -1, cmd_enroll},
    {"identify", 1, -1, cmd_identify}, {"delete", 1, -1, cmd_delete}, {"list", 1, -1, cmd_list},
    {"gallery", 1, 1, cmd_gallery},  {"sleep", 1, -1, cmd_sleep},      {"fail", 1, 1, cmd_fail},
    {"stream", 1, -1, cmd_stream},
};

static int run_command(fwcat *fc, int argc, char **argv)
{
    for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++) {
        const struct command *cmd = &commands[i];
        if (strcmp(cmd->name, argv[0]) != 0)
            continue;
        if (argc < cmd->min_args || (cmd->max_args >= 0 && argc > cmd->max_args))
            return usage_error(fc, "%s: wrong number of arguments (see fwcat --help)", cmd->name);
        int ec = cmd->run(fc, argc, argv);
        fflush(stdout);
        return ec;
    }
    return usage_error(fc, "unknown command '%s' (see fwcat --help)", argv[0]);
}

/* ---- stdin modes ------------------------------------------------------------------------- */

/* Split a line into words in place: blanks separate, quotes group, backslash escapes in
 * double quotes. Returns the word count, or -1 for an unterminated quote / too many words. */
static int split_words(char *line, char **argv, int max)
{
    int argc = 0;
    char *r = line, *w = line;
    for (;;) {
        while (*r == ' ' || *r == '\t' || *r == '\r' || *r == '\n')
            r++;
        if (!*r)
            return argc;
        if (argc == max)
            return -1;
        argv[argc++] = w;
        while (*r && *r != ' ' && *r != '\t' && *r != '\r' && *r != '\n') {
            if (*r == '"' || *r == '\'') {
                char q = *r++;
                while (*r && *r != q) {
                    if (q == '"' && *r == '\\' && r[1])
                        r++;
                    *w++ = *r++;
                }
                if (*r != q)
                    return -1;
                r++;
            } else {
                *w++ = *r++;
            }
        }
        if (*r)
            r++;
        *w++ = '\0';
    }
}

static int run_stdin(fwcat *fc)
{
    char *line = NULL;
    size_t cap = 0;
    int worst = 0;
    while (getline(&line, &cap, stdin) >= 0) {
        char *argv[MAX_ARGS];
        char *p = line;
        while (*p == ' ' || *p == '\t')
            p++;
        if (*p == '#')
            continue;
        int argc = split_words(p, argv, MAX_ARGS);
        int ec;
        if (argc < 0)
            ec = usage_error(fc, "cannot parse line (unterminated quote or over %d words)", MAX_ARGS);
        else if (argc == 0)
            continue;
        else
            ec = run_command(fc, argc, argv);
        if (ec > worst)
            worst = ec;
        fflush(stdout);
    }
    free(line);
    return worst;
}

static int hexval(int ch)
{
    if (ch >= '0' && ch <= '9')
        return ch - '0';
    ch = tolower(ch);
    if (ch >= 'a' && ch <= 'f')
        return ch - 'a' + 10;
    return -1;
}

static void print_hex(const uint8_t *p, size_t n)
{
    for (size_t i = 0; i < n; i++)
        printf("%02x", p[i]);
}

/* One hex frame per line: send it as is, print every answer as "header body" in hex. A line
 * holding several complete frames expects that many answers. */
static int run_raw(fwcat *fc)
{
    char *line = NULL;
    size_t cap = 0;
    int worst = 0;
    uint8_t *frame = NULL;
    while (getline(&line, &cap, stdin) >= 0) {
        char *hash = strchr(line, '#');
        if (hash)
            *hash = '\0';
        size_t n = 0, digits = 0;
        int bad = 0;
        free(frame);
        frame = malloc(strlen(line) / 2 + 1);
        if (!frame) {
            worst = usage_error(fc, "out of memory");
            break;
        }
        int hi = -1;
        for (const char *p = line; *p; p++) {
            if (isspace((unsigned char)*p))
                continue;
            int v = hexval((unsigned char)*p);
            if (v < 0) {
                bad = 1;
                break;
            }
            digits++;
            if (hi < 0) {
                hi = v;
            } else {
                frame[n++] = (uint8_t)(hi << 4 | v);
                hi = -1;
            }
        }
        int ec = 0;
        if (bad || hi >= 0) {
            ec = usage_error(fc, "raw: %s", bad ? "not a hex digit" : "odd number of hex digits");
        } else if (digits > 0) {
            /* Count the complete frames in the line: one answer each, at least one. */
            size_t expect = 0, off = 0;
            for (;;) {
                fw_header h;
                int have;
                size_t k = fw_frame_scan(frame + off, n - off, &h, &have);
                if (k == 0)
                    break;
                expect++;
                off += k;
            }
            if (expect == 0)
                expect = 1;
            ec = ensure_connected(fc);
            int rc = ec ? FW_OK : fw_send_raw(fc->c, frame, n);
            if (!ec && rc != FW_OK)
                ec = report(fc, rc);
            for (size_t i = 0; !ec && i < expect; i++) {
                fw_response r;
                rc = fw_recv(fc->c, FW_ANY_REQUEST, &r);
                if (rc != FW_OK) {
                    ec = report(fc, rc);
                    break;
                }
                print_hex(r.frame, FW_HEADER_LEN);
                putchar(' ');
                print_hex(r.body, r.body_len);
                putchar('\n');
                if (r.hdr.status != FW_STATUS_OK)
                    ec = EXIT_STATUS;
            }
        }
        if (ec > worst)
            worst = ec;
        fflush(stdout);
    }
    free(frame);
    free(line);
    return worst;
}

/* ---- main -------------------------------------------------------------------------------- */

/* Does this -h piece name its port? "[v6]:P" and "host:P" do; "host", "[v6]" and a bare IPv6
 * address (two colons or more) do not. */
static int has_port(const char *h)
{
    if (h[0] == '[')
        return strstr(h, "]:") != NULL;
    const char *colon = strchr(h, ':');
    return colon && !strchr(colon + 1, ':');
}

/* The -h pieces into the client config. One server without a port stays the host/port pair
 * of old (fwcat connects to it, and to nothing else on its own). Otherwise the servers are an
 * endpoint list, those without a port taking -p's; the library checks them (exact messages). */
static int set_servers(fwcat *fc)
{
    if (fc->n_hosts == 0)
        return 0;
    if (fc->n_hosts == 1 && !has_port(fc->hosts[0])) {
        fc->cfg.host = fc->hosts[0];
        return 0;
    }
    const char *port = fc->cfg.port;
    for (int i = 0; i < fc->n_hosts; i++) {
        const char *h = fc->hosts[i];
        if (has_port(h)) {
            fc->eps[i] = h;
            continue;
        }
        int bare_v6 = h[0] != '[' && strchr(h, ':') != NULL;
        int n = snprintf(fc->ep_text[i], sizeof fc->ep_text[i], bare_v6 ? "[%s]:%s" : "%s:%s", h, port);
        if (n < 0 || (size_t)n >= sizeof fc->ep_text[i])
            return usage_error(fc, "bad endpoint %d: longer than %d bytes", i + 1, FW_ENDPOINT_MAX);
        fc->eps[i] = fc->ep_text[i];
    }
    fc->cfg.endpoints = fc->eps;
    fc->cfg.n_endpoints = fc->n_hosts;
    return 0;
}

int main(int argc, char **argv)
{
    fwcat fc;
    memset(&fc, 0, sizeof fc);
    fw_client_config_init(&fc.cfg);
    fc.cfg.rx_buf_size = 4u * 1024u * 1024u; /* a host tool: room for many faces per answer */
    int raw = 0, i = 1;
    const char *key_file = NULL, *server_pub = NULL;
    fw_client_secure sec;
    for (; i < argc && argv[i][0] == '-' && argv[i][1] != '\0'; i++) {
        const char *a = argv[i];
        int has_val = i + 1 < argc;
        if (strcmp(a, "--help") == 0) {
            usage(stdout);
            return 0;
        } else if (strcmp(a, "--version") == 0) {
            printf("fwcat %s\n", FW_VERSION_STRING);
            return 0;
        } else if (strcmp(a, "--json") == 0) {
            fc.json = 1;
        } else if (strcmp(a, "--raw") == 0) {
            raw = 1;
        } else if (strcmp(a, "--retry") == 0) {
            fc.cfg.retry.enabled = 1;
        } else if ((strcmp(a, "-h") == 0 || strcmp(a, "--host") == 0) && has_val) {
            /* HOST[:PORT][,HOST[:PORT]...]: split in place, -p is only known at the end. */
            for (char *list = argv[++i];;) {
                char *comma = strchr(list, ',');
                if (fc.n_hosts == FW_MAX_ENDPOINTS)
                    return usage_error(&fc, "%s: more than %d servers", a, FW_MAX_ENDPOINTS);
                fc.hosts[fc.n_hosts++] = list;
                if (!comma)
                    break;
                *comma = '\0';
                list = comma + 1;
            }
        } else if ((strcmp(a, "-p") == 0 || strcmp(a, "--port") == 0) && has_val) {
            fc.cfg.port = argv[++i];
        } else if (strcmp(a, "--key") == 0 && has_val) {
            key_file = argv[++i];
        } else if (strcmp(a, "--server-pub") == 0 && has_val) {
            server_pub = argv[++i];
        } else if (strcmp(a, "--timeout") == 0 && has_val) {
            uint64_t ms;
            if (parse_u64(argv[++i], UINT32_MAX, &ms) != 0 || ms == 0)
                return usage_error(&fc, "bad --timeout %s", argv[i]);
            fc.cfg.timeout_ms = (uint32_t)ms;
        } else if (!has_val && (strcmp(a, "-h") == 0 || strcmp(a, "--host") == 0 || strcmp(a, "-p") == 0 ||
                                strcmp(a, "--port") == 0 || strcmp(a, "--timeout") == 0 ||
                                strcmp(a, "--key") == 0 || strcmp(a, "--server-pub") == 0)) {
            return usage_error(&fc, "%s needs a value", a);
        } else if (strcmp(a, "--") == 0) {
            i++;
            break;
        } else {
            return usage_error(&fc, "unknown option %s (see fwcat --help)", a);
        }
    }
    if (raw && i < argc)
        return usage_error(&fc, "--raw reads frames from stdin and takes no command");
    if (!key_file != !server_pub)
        return usage_error(&fc, "--key and --server-pub go together");
    if (key_file) {
        char err[512];
        int src = fw_client_secure_load(&sec, key_file, server_pub, err, sizeof err);
        if (src != FW_OK)
            return usage_error(&fc, "%s", src == FW_ERR_UNSUPPORTED ? "this fwcat has no secure sessions (built without libsodium)" : err);
        if (raw)
            return usage_error(&fc, "--raw sends frames as they are: not with --key");
        fc.cfg.secure = &sec;
        /* A sealed request is assembled whole in tx: room for the largest picture. */
        fc.cfg.tx_buf_size = MAX_FILE + 64u * 1024u;
    }
    int ec = set_servers(&fc);
    if (ec)
        return ec;
    char err[512];
    if (fw_client_config_check(&fc.cfg, err, sizeof err) != FW_OK)
        return usage_error(&fc, "%s", err);
    int rc = fw_client_open(&fc.cfg, &fc.c);
    if (rc != FW_OK)
        return usage_error(&fc, "cannot set up the client: %s", fw_strerror(rc));
    if (raw)
        ec = run_raw(&fc);
    else if (i < argc)
        ec = run_command(&fc, argc - i, argv + i);
    else
        ec = run_stdin(&fc);
    fw_client_close(fc.c);
    memset(&sec, 0, sizeof sec);
    return ec;
}
