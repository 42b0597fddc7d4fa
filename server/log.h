/*
 * log.h — logfmt lines on stderr, one write(2) per line:
 *
 *   ts=2026-11-23T15:20:10.123Z level=info msg="listening" addr=127.0.0.1:7420
 *
 * Why logfmt: a line is both readable by a person and parseable by a machine (the tests find
 * the bound port in the "listening" line; log shippers split on spaces and '=').
 *
 * There is no global logger: the level lives in a fw_log that the server context owns and
 * passes down. A NULL fw_log logs at info level, so code that has none (a test helper, early
 * startup) still reports errors. Each line is formatted into a stack buffer and written with
 * a single write(2), so lines from several threads never interleave; fw_log is read-only once
 * the loop runs, so sharing a pointer to it across threads is safe.
 */
#ifndef FW_LOG_H
#define FW_LOG_H

#include <stddef.h>

typedef enum fw_log_level {
    FW_LOG_DEBUG = 0,
    FW_LOG_INFO = 1,
    FW_LOG_WARN = 2,
    FW_LOG_ERROR = 3,
    FW_LOG_OFF = 4
} fw_log_level;

typedef struct fw_log {
    fw_log_level level; /* lines below this level are dropped */
    int fd;             /* where lines go; 2 (stderr) by default */
} fw_log;

void fw_log_init(fw_log *lg, fw_log_level level);
/* "debug", "info", "warn"/"warning", "error", "off" -> level; -1 if none. */
int fw_log_level_parse(const char *name);
const char *fw_log_level_name(fw_log_level level);
int fw_log_enabled(const fw_log *lg, fw_log_level level);

/* One line: ts, level, msg (quoted and escaped here), then the caller's key=value pairs from
 * kv_fmt (printf format, may be NULL). Values that may hold spaces or quotes must go through
 * fw_log_quote(). Lines longer than 1 KiB are truncated. */
void fw_log_emit(const fw_log *lg, fw_log_level level, const char *msg, const char *kv_fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 4, 5)))
#endif
    ;

/* Writes s as a logfmt quoted value ("..." with \" \\ escaped, control bytes as \xNN) into
 * buf (always NUL-terminated, truncated to cap) and returns buf, for use as a %s argument. */
const char *fw_log_quote(char *buf, size_t cap, const char *s);

#define fw_log_debug(lg, msg, ...) fw_log_emit((lg), FW_LOG_DEBUG, (msg), __VA_ARGS__)
#define fw_log_info(lg, msg, ...) fw_log_emit((lg), FW_LOG_INFO, (msg), __VA_ARGS__)
#define fw_log_warn(lg, msg, ...) fw_log_emit((lg), FW_LOG_WARN, (msg), __VA_ARGS__)
#define fw_log_error(lg, msg, ...) fw_log_emit((lg), FW_LOG_ERROR, (msg), __VA_ARGS__)

#endif
