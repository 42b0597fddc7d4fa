/*
 * tu_http.c — HTTP exchanges for tests (see tu_http.h).
 */
#include "tests/tu_http.h"

#include <errno.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "tests/tu_server.h"

ssize_t tu_http_exchange(const char *host, int port, const void *req, size_t len, char *out, size_t cap)
{
    size_t n = 0;
    ssize_t rc = -1;
    if (cap == 0)
        return -1;
    out[0] = '\0';
    int fd = tu_connect(host, port);
    if (fd < 0)
        return -1;
    if (tu_send_all(fd, req, len) != 0)
        goto out;
    int64_t deadline = tu_now_ms() + tu_timeout_ms();
    while (n < cap - 1) {
        struct pollfd pfd = { .fd = fd, .events = POLLIN };
        int64_t left = deadline - tu_now_ms();
        if (left <= 0)
            goto out;
        int pr = poll(&pfd, 1, (int)left);
        if (pr < 0 && errno == EINTR)
            continue;
        if (pr <= 0)
            goto out;
        ssize_t r = recv(fd, out + n, cap - 1 - n, 0);
        if (r < 0 && errno == EINTR)
            continue;
        /* A server that closes with our request partly unread resets the connection: that
         * is its answer being complete, not an error. */
        if (r == 0 || (r < 0 && errno == ECONNRESET))
            break;
        if (r < 0)
            goto out;
        n += (size_t)r;
        out[n] = '\0';
    }
    rc = (ssize_t)n;
out:
    close(fd);
    return rc;
}

const char *tu_http_body(const char *resp)
{
    const char *p = strstr(resp, "\r\n\r\n");
    return p ? p + 4 : "";
}

int tu_http_get(const char *host, int port, const char *path, char *body, size_t cap)
{
    char req[512], resp[8192];
    int minor, status;
    if (cap)
        body[0] = '\0';
    int n = snprintf(req, sizeof req, "GET %s HTTP/1.0\r\nHost: %s\r\n\r\n", path, host);
    if (n < 0 || (size_t)n >= sizeof req || tu_http_exchange(host, port, req, (size_t)n, resp, sizeof resp) < 0)
        return -1;
    if (!strstr(resp, "\r\n\r\n") || sscanf(resp, "HTTP/1.%d %3d", &minor, &status) != 2 || status < 100 ||
        status > 599)
        return -1;
    if (cap)
        snprintf(body, cap, "%s", tu_http_body(resp));
    return status;
}
