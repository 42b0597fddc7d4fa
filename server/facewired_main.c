/*
 * facewired_main.c — the facewired program: parse the command line, raise the descriptor
 * limit to fit --max-connections, run the server on one libuv loop until a signal has shut
 * it down cleanly. Everything else lives in server.c (context) and conn.c (connections).
 *
 * Exit status: 0 after a clean shutdown, 1 when the server cannot start, 2 on a usage error.
 */
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/resource.h>

#include "server/server.h"

/* Each connection is a descriptor; keep some for listeners, models, the gallery, logs. */
static void raise_nofile(const fw_log *lg, uint32_t max_connections)
{
    struct rlimit rl;
    rlim_t want = (rlim_t)max_connections + 64;
    if (getrlimit(RLIMIT_NOFILE, &rl) != 0 || rl.rlim_cur >= want)
        return;
    rl.rlim_cur = rl.rlim_max != RLIM_INFINITY && rl.rlim_max < want ? rl.rlim_max : want;
    if (setrlimit(RLIMIT_NOFILE, &rl) != 0 || getrlimit(RLIMIT_NOFILE, &rl) != 0 || rl.rlim_cur < want)
        fw_log_warn(lg, "descriptor limit below --max-connections", "nofile=%llu max_connections=%u",
                    (unsigned long long)rl.rlim_cur, max_connections);
}

int main(int argc, char **argv)
{
    fw_server_config cfg;
    fw_server srv;
    uv_loop_t loop;
    fw_log early;
    int r;

    fw_server_config_default(&cfg);
    r = fw_server_parse_args(&cfg, argc, argv, stdout, stderr);
    if (r > 0)
        return 0;
    if (r < 0)
        return 2;

    /* A peer that resets while we write must give EPIPE, not kill the process. */
    signal(SIGPIPE, SIG_IGN);
    fw_log_init(&early, cfg.log_level);
    raise_nofile(&early, cfg.max_connections);

    r = uv_loop_init(&loop);
    if (r != 0) {
        fw_log_error(&early, "cannot create event loop", "err=%s", uv_err_name(r));
        return 1;
    }
    int started = fw_server_start(&srv, &loop, &cfg) == 0;
    /* Runs until the shutdown sequence (or the failed start) has closed every handle. */
    uv_run(&loop, UV_RUN_DEFAULT);
    fw_server_free(&srv);
    r = uv_loop_close(&loop);
    if (r != 0)
        fw_log_warn(&early, "event loop closed with handles open", "err=%s", uv_err_name(r));
    return started ? 0 : 1;
}
