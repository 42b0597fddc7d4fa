/*
 * log.c — logfmt writer (see log.h). Formatting happens in a stack buffer and the line goes
 * out in one write(2): no stdio lock, no interleaving between threads, and a line is either
 * whole or absent even when stderr is a pipe.
 */
#include "server/log.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

#define FW_LOG_LINE_MAX 1024

static const char *const level_names[] = {"debug", "info", "warn", "error", "off"};

void fw_log_init(fw_log *lg, fw_log_level level)
{
    lg->level = level;
    lg->fd = 2;
}

int fw_log_level_parse(const char *name)
{
    if (strcasecmp(name, "warning") == 0)
        return FW_LOG_WARN;
    for (int i = 0; i <= FW_LOG_OFF; i++)
        if (strcasecmp(name, level_names[i]) == 0)
            return i;
    return -1;
}

const char *fw_log_level_name(fw_log_level level)
{
    return (unsigned)level <= FW_LOG_OFF ? level_names[level] : "unknown";
}

int fw_log_enabled(const fw_log *lg, fw_log_level level)
{
    fw_log_level min = lg ? lg->level : FW_LOG_INFO;
    return level >= min && level < FW_LOG_OFF;
}

const char *fw_log_quote(char *buf, size_t cap, const char *s)
{
    size_t o = 0;
    if (cap < 3) {
        if (cap)
            buf[0] = '\0';
        return buf;
    }
    buf[o++] = '"';
    /* Keep room for the closing quote and the NUL. */
    for (; s && *s && o + 2 < cap; s++) {
        unsigned char ch = (unsigned char)*s;
        if (ch == '"' || ch == '\\') {
            if (o + 3 >= cap)
                break;
            buf[o++] = '\\';
            buf[o++] = (char)ch;
        } else if (ch < 0x20 || ch == 0x7f) {
            if (o + 5 >= cap)
                break;
            snprintf(buf + o, cap - o, "\\x%02x", ch);
            o += 4;
        } else {
            buf[o++] = (char)ch;
        }
    }
    buf[o++] = '"';
    buf[o] = '\0';
    return buf;
}

void fw_log_emit(const fw_log *lg, fw_log_level level, const char *msg, const char *kv_fmt, ...)
{
    char line[FW_LOG_LINE_MAX];
    char qmsg[256];
    struct timespec ts;
    struct tm tm;
    size_t n;
    int r;

    if (!fw_log_enabled(lg, level))
        return;
    clock_gettime(CLOCK_REALTIME, &ts);
    gmtime_r(&ts.tv_sec, &tm);
    r = snprintf(line, sizeof line, "ts=%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ level=%s msg=%s",
                 tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec,
                 ts.tv_nsec / 1000000L, level_names[level], fw_log_quote(qmsg, sizeof qmsg, msg));
    n = r < 0 ? 0 : (size_t)r;
    if (n > sizeof line - 2)
        n = sizeof line - 2;
    if (kv_fmt && *kv_fmt && n < sizeof line - 2) {
        va_list ap;
        line[n++] = ' ';
        va_start(ap, kv_fmt);
        r = vsnprintf(line + n, sizeof line - 1 - n, kv_fmt, ap);
        va_end(ap);
        if (r > 0)
            n += (size_t)r;
        if (n > sizeof line - 2)
            n = sizeof line - 2;
    }
    line[n++] = '\n';
    int fd = lg ? lg->fd : 2;
    for (size_t off = 0; off < n;) {
        ssize_t w = write(fd, line + off, n - off);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            break; /* nowhere to report a failing stderr */
        off += (size_t)w;
    }
}
