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

#include "server/keys.h"
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

/* facewired keygen PREFIX [COMMENT] | keygen --symmetric FILE. Exit 0, 1 (failed), 2 (usage). */
static int keygen_main(int argc, char **argv)
{
    char err[600];
    if (argc == 4 && strcmp(argv[2], "--symmetric") == 0) {
        if (fw_keys_write_symmetric(argv[3], err, sizeof err) != 0) {
            fprintf(stderr, "%s keygen: %s\n", argv[0], err);
            return 1;
        }
        printf("wrote %s (mode 0600): use it as --gallery-key\n", argv[3]);
        return 0;
    }
    if (argc < 3 || argc > 4 || argv[2][0] == '-') {
        fprintf(stderr, "usage: %s keygen PREFIX [COMMENT]\n"
                        "       %s keygen --symmetric FILE\n", argv[0], argv[0]);
        return 2;
    }
    if (fw_keys_keygen(argv[2], argc == 4 ? argv[3] : NULL, NULL, err, sizeof err) != 0) {
        fprintf(stderr, "%s keygen: %s\n", argv[0], err);
        return 1;
    }
    printf("wrote %s.key (secret, mode 0600) and %s.pub\n", argv[2], argv[2]);
    return 0;
}

int main(int argc, char **argv)
{
    fw_server_config cfg;
    fw_server srv;
    uv_loop_t loop;
    fw_log early;
    int r;

    if (argc >= 2 && strcmp(argv[1], "keygen") == 0)
        return keygen_main(argc, argv);

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
