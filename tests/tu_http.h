/*
 * tu_http.h — test utility: HTTP/1.x requests to facewired's metrics port (/health,
 * /metrics) and to anything else that speaks HTTP, over a blocking loopback socket.
 *
 * One exchange is one connection: the request goes out as given (tests send malformed ones
 * on purpose) and the response is whatever arrives until the server closes. The read is
 * bounded by tu_timeout_ms(), so a server that never answers or never closes fails the test
 * instead of hanging it.
 *
 * POSIX only, no libuv and no server code: tests/tu_*.o are also linked into the ARM client
 * tests.
 */
#ifndef TU_HTTP_H
#define TU_HTTP_H

#include <stddef.h>
#include <sys/types.h>

/* Connect to host:port (an IPv4 or IPv6 literal), send the len bytes of req as they are, and
 * read until the server closes the connection (EOF or reset) or out is full. The response,
 * NUL-terminated and truncated to cap-1 bytes, into out ("" on failure). Returns its length,
 * or -1 when there was no connection, the send failed, or the server neither closed nor
 * filled out within the timeout. */
ssize_t tu_http_exchange(const char *host, int port, const void *req, size_t len, char *out, size_t cap);

/* The body of a response (what follows the blank line), or "" when there is none. */
const char *tu_http_body(const char *resp);

/* GET path over HTTP/1.0 from host:port, within the timeout. Returns the response's status
 * code with the body (NUL-terminated, truncated) in body, or -1 when there was no well-formed
 * response. */
int tu_http_get(const char *host, int port, const char *path, char *body, size_t cap);

#endif
