/*
 * tu_pg.c — a throw-away PostgreSQL instance for tests (see tu_pg.h).
 *
 * Every PostgreSQL program runs as a child process whose standard output and error come back
 * through pipes (printed when it fails). When we are root the child switches to nobody/nogroup
 * before exec, because initdb and postgres refuse to run as root. The child closes every
 * inherited descriptor above 2 first: pg_ctl leaves the postmaster running in the background,
 * and a postmaster holding one of the test's pipes or sockets open would keep it from ever
 * seeing EOF.
 */
#include "tests/tu_pg.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <glob.h>
#include <grp.h>
#include <netinet/in.h>
#include <poll.h>
#include <pwd.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "tests/tu_server.h"

extern char **environ;

#define TU_PG_START_TRIES 5
#define TU_PG_ENV_MAX 256

/* ---- running a program ---------------------------------------------------------------------- */

static long long mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Where PostgreSQL program `name` is: $FW_PG_BIN, the newest /usr/lib/postgresql/N/bin, or
 * just the name (then $PATH). */
static void pg_program(const char *name, char *buf, size_t cap)
{
    const char *dir = getenv("FW_PG_BIN");
    if (dir && *dir) {
        snprintf(buf, cap, "%s/%s", dir, name);
        return;
    }
    char pattern[128];
    glob_t gl;
    long best = -1;
    snprintf(pattern, sizeof pattern, "/usr/lib/postgresql/*/bin/%s", name);
    snprintf(buf, cap, "%s", name);
    if (glob(pattern, 0, NULL, &gl) != 0)
        return;
    for (size_t i = 0; i < gl.gl_pathc; i++) {
        /* "/usr/lib/postgresql/" is 20 bytes; the version follows ("15", "9.6"). */
        long v = strtol(gl.gl_pathv[i] + 20, NULL, 10);
        if (v > best && access(gl.gl_pathv[i], X_OK) == 0) {
            best = v;
            snprintf(buf, cap, "%s", gl.gl_pathv[i]);
        }
    }
    globfree(&gl);
}

/* The child's environment: ours without PG* (they would redirect psql/pg_ctl elsewhere) and
 * locale variables (initdb should not depend on the caller's locale), plus LC_ALL=C. */
static char **child_env(void)
{
    size_t n = 0;
    while (environ && environ[n])
        n++;
    if (n > TU_PG_ENV_MAX)
        n = TU_PG_ENV_MAX;
    char **env = calloc(n + 3, sizeof *env);
    if (!env)
        return NULL;
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        const char *e = environ[i];
        if (strncmp(e, "PG", 2) == 0 || strncmp(e, "LC_", 3) == 0 || strncmp(e, "LANG=", 5) == 0)
            continue;
        env[k++] = (char *)e;
    }
    env[k++] = (char *)"LC_ALL=C";
    env[k++] = (char *)"PGCONNECT_TIMEOUT=10";
    env[k] = NULL;
    return env;
}

/* Append what fd has to buf (NUL-terminated, truncated). 1 while open, 0 at EOF. */
static int drain(int fd, char *buf, size_t cap, size_t *len)
{
    char tmp[4096];
    ssize_t r = read(fd, tmp, sizeof tmp);
    if (r < 0)
        return errno == EINTR || errno == EAGAIN;
    if (r == 0)
        return 0;
    size_t room = cap > *len + 1 ? cap - *len - 1 : 0;
    size_t k = (size_t)r < room ? (size_t)r : room;
    if (k)
        memcpy(buf + *len, tmp, k);
    *len += k;
    if (cap)
        buf[*len] = '\0';
    return 1;
}

/* Run argv (argv[0] a path or a name looked up in $PATH) in dir, as nobody when we are root,
 * within timeout_ms (then SIGKILL). Its stdout goes to out, its stderr to errout (either may
 * be NULL with cap 0). Returns the exit status (0-255; 128+signal), or -1 if it could not run
 * or timed out. */
static int run(const char *dir, char *const *argv, int timeout_ms, char *out, size_t cap,
               char *errout, size_t errcap)
{
    int po[2] = { -1, -1 }, pe[2] = { -1, -1 }, st = 0, rc = -1;
    uid_t uid = 0;
    gid_t gid = 0;
    int drop = geteuid() == 0;
    long maxfd = sysconf(_SC_OPEN_MAX);
    char **env = NULL;
    pid_t pid = -1;
    size_t olen = 0, elen = 0;

    if (out && cap)
        out[0] = '\0';
    if (errout && errcap)
        errout[0] = '\0';
    if (maxfd < 0 || maxfd > 65536)
        maxfd = 65536;
    if (drop) {
        /* Looked up before fork: getpwnam is not async-signal-safe. */
        struct passwd *pw = getpwnam("nobody");
        struct group *gr = getgrnam("nogroup");
        if (!pw) {
            fprintf(stderr, "tu_pg: running as root but there is no user \"nobody\"\n");
            return -1;
        }
        uid = pw->pw_uid;
        gid = gr ? gr->gr_gid : pw->pw_gid;
    }
    if (!(env = child_env()) || pipe(po) != 0 || pipe(pe) != 0) {
        fprintf(stderr, "tu_pg: cannot prepare to run %s: %s\n", argv[0], strerror(errno));
        goto out;
    }
    pid = fork();
    if (pid < 0) {
        fprintf(stderr, "tu_pg: fork: %s\n", strerror(errno));
        goto out;
    }
    if (pid == 0) {
        /* Async-signal-safe calls only from here on. */
        int nul = open("/dev/null", O_RDONLY);
        if (nul < 0 || dup2(nul, 0) < 0 || dup2(po[1], 1) < 0 || dup2(pe[1], 2) < 0)
            _exit(126);
        for (long fd = 3; fd < maxfd; fd++)
            close((int)fd);
        if (drop && (setgroups(0, NULL) != 0 || setgid(gid) != 0 || setuid(uid) != 0)) {
            static const char m[] = "tu_pg: cannot switch to nobody\n";
            (void)!write(2, m, sizeof m - 1);
            _exit(126);
        }
        if (chdir(dir) != 0)
            _exit(126);
        if (strchr(argv[0], '/'))
            execve(argv[0], argv, env);
        else
            execvpe(argv[0], argv, env);
        static const char m[] = "tu_pg: exec failed (is PostgreSQL installed? set FW_PG_BIN)\n";
        (void)!write(2, m, sizeof m - 1);
        _exit(127);
    }
    close(po[1]);
    close(pe[1]);
    po[1] = pe[1] = -1;

    long long deadline = mono_ms() + timeout_ms;
    int open_o = 1, open_e = 1, timed_out = 0;
    while (open_o || open_e) {
        struct pollfd p[2] = { { .fd = open_o ? po[0] : -1, .events = POLLIN },
                               { .fd = open_e ? pe[0] : -1, .events = POLLIN } };
        long long left = deadline - mono_ms();
        if (left <= 0) {
            timed_out = 1;
            break;
        }
        int n = poll(p, 2, (int)left);
        if (n < 0 && errno != EINTR)
            break;
        if (n <= 0)
            continue;
        if (p[0].revents)
            open_o = drain(po[0], out, cap, &olen);
        if (p[1].revents)
            open_e = drain(pe[0], errout, errcap, &elen);
    }
    if (timed_out) {
        fprintf(stderr, "tu_pg: %s did not finish within %d ms; killed\n", argv[0], timeout_ms);
        kill(pid, SIGKILL);
    }
    while (waitpid(pid, &st, 0) < 0)
        if (errno != EINTR)
            goto out;
    if (!timed_out)
        rc = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
out:
    for (int i = 0; i < 2; i++) {
        if (po[i] >= 0)
            close(po[i]);
        if (pe[i] >= 0)
            close(pe[i]);
    }
    free(env);
    return rc;
}

/* Print the tail of the server's log (why it did not start, or what it said last). */
static void print_server_log(const tu_pg *pg)
{
    char path[192];
    snprintf(path, sizeof path, "%s/server.log", pg->dir);
    FILE *f = fopen(path, "r");
    if (!f)
        return;
    long size = fseek(f, 0, SEEK_END) == 0 ? ftell(f) : 0;
    if (size > 8192)
        fseek(f, size - 8192, SEEK_SET);
    else
        rewind(f);
    fprintf(stderr, "---- %s (tail) ----\n", path);
    char buf[1024];
    size_t n;
    while ((n = fread(buf, 1, sizeof buf, f)) > 0)
        fwrite(buf, 1, n, stderr);
    fprintf(stderr, "---- end of server log ----\n");
    fclose(f);
}

/* A loopback port nobody is listening on right now (the kernel picks it). */
static int free_port(void)
{
    struct sockaddr_in a;
    socklen_t len = sizeof a;
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0), port = -1;
    if (fd < 0)
        return -1;
    memset(&a, 0, sizeof a);
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (bind(fd, (struct sockaddr *)&a, sizeof a) == 0 &&
        getsockname(fd, (struct sockaddr *)&a, &len) == 0)
        port = ntohs(a.sin_port);
    close(fd);
    return port;
}

/* ---- the API ----------------------------------------------------------------------------------- */

int tu_pg_init(tu_pg *pg)
{
    char initdb[256], data[192], out[4096], errout[4096];
    memset(pg, 0, sizeof *pg);
    snprintf(pg->dir, sizeof pg->dir, "/tmp/fw-tu-pg-XXXXXX");
    if (!mkdtemp(pg->dir)) {
        fprintf(stderr, "tu_pg_init: mkdtemp: %s\n", strerror(errno));
        pg->dir[0] = '\0';
        return -1;
    }
    if (geteuid() == 0) {
        struct passwd *pw = getpwnam("nobody");
        if (!pw || chown(pg->dir, pw->pw_uid, pw->pw_gid) != 0) {
            fprintf(stderr, "tu_pg_init: cannot give %s to nobody: %s\n", pg->dir,
                    pw ? strerror(errno) : "no such user");
            goto err;
        }
    }
    pg_program("initdb", initdb, sizeof initdb);
    snprintf(data, sizeof data, "%s/data", pg->dir);
    char *argv[] = { initdb, (char *)"-D", data, (char *)"-U", (char *)"fw",
                     (char *)"--auth=trust", (char *)"-E", (char *)"UTF8",
                     (char *)"--locale=C", (char *)"--no-sync", (char *)"--no-instructions",
                     NULL };
    int rc = run(pg->dir, argv, 3 * tu_timeout_ms(), out, sizeof out, errout, sizeof errout);
    if (rc != 0) {
        fprintf(stderr, "tu_pg_init: %s failed (status %d):\n%s%s\n", initdb, rc, out, errout);
        goto err;
    }
    if ((pg->port = free_port()) <= 0) {
        fprintf(stderr, "tu_pg_init: no free loopback port: %s\n", strerror(errno));
        goto err;
    }
    return 0;
err:
    (void)tu_rmtree(pg->dir);
    pg->dir[0] = '\0';
    return -1;
}

static int pg_ctl(tu_pg *pg, const char *action, const char *mode)
{
    char prog[256], data[192], log[192], opts[320], tsecs[16], out[4096], errout[4096];
    int timeout = 3 * tu_timeout_ms();
    pg_program("pg_ctl", prog, sizeof prog);
    snprintf(data, sizeof data, "%s/data", pg->dir);
    snprintf(log, sizeof log, "%s/server.log", pg->dir);
    /* The socket directory is ours too: the default (/var/run/postgresql) belongs to the
     * system's cluster, and nobody may not even write there. */
    snprintf(opts, sizeof opts,
             "-p %d -k %s -c listen_addresses=127.0.0.1 -c fsync=on", pg->port, pg->dir);
    snprintf(tsecs, sizeof tsecs, "%d", timeout / 1000);
    char *argv[16];
    int n = 0;
    argv[n++] = prog;
    argv[n++] = (char *)action;
    argv[n++] = (char *)"-D";
    argv[n++] = data;
    argv[n++] = (char *)"-w";
    argv[n++] = (char *)"-t";
    argv[n++] = tsecs;
    if (strcmp(action, "start") == 0) {
        argv[n++] = (char *)"-l";
        argv[n++] = log;
        argv[n++] = (char *)"-o";
        argv[n++] = opts;
    } else {
        argv[n++] = (char *)"-m";
        argv[n++] = (char *)mode;
    }
    argv[n] = NULL;
    /* pg_ctl gives up on its own after -t seconds: wait a little longer than that. */
    int rc = run(pg->dir, argv, timeout + 5000, out, sizeof out, errout, sizeof errout);
    if (rc != 0)
        fprintf(stderr, "tu_pg: pg_ctl %s (port %d) failed (status %d):\n%s%s\n", action,
                pg->port, rc, out, errout);
    return rc == 0 ? 0 : -1;
}

int tu_pg_start(tu_pg *pg)
{
    if (!pg->dir[0])
        return -1;
    if (pg->running)
        return 0;
    for (int i = 0; i < TU_PG_START_TRIES; i++) {
        if (pg_ctl(pg, "start", NULL) == 0) {
            pg->running = 1;
            pg->started_once = 1;
            snprintf(pg->url, sizeof pg->url, "host=127.0.0.1 port=%d user=fw dbname=postgres",
                     pg->port);
            return 0;
        }
        print_server_log(pg);
        /* Somebody may have taken the port between tu_pg_init and now. Once a client has
         * the URL the port must stay, so only the first start may move. */
        int port;
        if (pg->started_once || (port = free_port()) <= 0)
            break;
        pg->port = port;
    }
    return -1;
}

int tu_pg_stop(tu_pg *pg)
{
    if (!pg->running)
        return 0;
    if (pg_ctl(pg, "stop", "fast") != 0) {
        print_server_log(pg);
        return -1;
    }
    pg->running = 0;
    return 0;
}

void tu_pg_destroy(tu_pg *pg)
{
    if (!pg->dir[0])
        return;
    if (pg->running && tu_pg_stop(pg) != 0 && pg_ctl(pg, "stop", "immediate") == 0)
        pg->running = 0;
    if (pg->running) /* leave the directory: removing it under a live server helps nobody */
        fprintf(stderr, "tu_pg_destroy: the server in %s would not stop\n", pg->dir);
    else
        (void)tu_rmtree(pg->dir);
    pg->dir[0] = '\0';
}

int tu_pg_psql(tu_pg *pg, const char *sql, char *out, size_t cap)
{
    char prog[256], port[16], errout[4096];
    if (!pg->running)
        return -1;
    pg_program("psql", prog, sizeof prog);
    snprintf(port, sizeof port, "%d", pg->port);
    char *argv[] = { prog, (char *)"-XAtq", (char *)"-v", (char *)"ON_ERROR_STOP=1",
                     (char *)"-h", (char *)"127.0.0.1", (char *)"-p", port, (char *)"-U",
                     (char *)"fw", (char *)"-d", (char *)"postgres", (char *)"-c", (char *)sql,
                     NULL };
    int rc = run(pg->dir, argv, tu_timeout_ms(), out, cap, errout, sizeof errout);
    if (rc != 0) {
        fprintf(stderr, "tu_pg_psql: status %d for: %.200s\n%s\n", rc, sql, errout);
        return -1;
    }
    return 0;
}
