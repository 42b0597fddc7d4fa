/*
 * tu_pg.h — test utility: a throw-away PostgreSQL instance on a loopback port.
 *
 * tu_pg_init runs initdb into a fresh temporary directory; tu_pg_start/tu_pg_stop run pg_ctl
 * (both may be called again: stopping and restarting the database is part of what the tests
 * exercise, and a restart keeps the port so clients reconnect to the same address);
 * tu_pg_destroy stops it and removes the directory. tu_pg_psql runs one SQL string through
 * psql, for setting up or inspecting the database from a test.
 *
 * PostgreSQL refuses to run as root, so when the test runs as root every PostgreSQL program
 * runs as `nobody` (uid/gid switched in the child before exec) and the directory belongs to
 * nobody. The cluster trusts local connections (initdb --auth=trust) and has one superuser,
 * "fw". fsync stays on: tests that claim "acknowledged means durable" must not be run against
 * a database that does not sync.
 *
 * Where the programs are: $FW_PG_BIN if set, else the newest /usr/lib/postgresql/N/bin, else
 * $PATH. If they are missing tu_pg_init fails loudly: a test that needs PostgreSQL fails, it is
 * never skipped.
 *
 * POSIX only (fork/exec, sockets, no libpq, no threads), because tests/tu_*.o are also linked
 * into the ARM client tests. Every wait is for a child process with the usual generous timeout
 * (tu_timeout_ms), never a sleep.
 */
#ifndef TU_PG_H
#define TU_PG_H

#include <stddef.h>

typedef struct tu_pg {
    char dir[128];     /* the temporary directory: data/, the server log, the socket */
    int port;          /* loopback TCP port */
    char url[256];     /* libpq connection string, set by tu_pg_start:
                        * "host=127.0.0.1 port=P user=fw dbname=postgres" */
    int running;       /* started and not stopped */
    int started_once;  /* the port has been handed out: a restart must keep it */
} tu_pg;

/* initdb into a new temporary directory and pick a free loopback port. 0, or -1 after
 * printing why (initdb's output included). On failure nothing is left behind. */
int tu_pg_init(tu_pg *pg);
/* pg_ctl -w start. The first start retries on other ports if the chosen one was taken in the
 * meantime; later starts keep the port. 0, or -1 after printing the server log. */
int tu_pg_start(tu_pg *pg);
/* pg_ctl -m fast -w stop. 0, or -1 after printing why. */
int tu_pg_stop(tu_pg *pg);
/* Stop if running, remove the directory. Safe on a zeroed or failed tu_pg. */
void tu_pg_destroy(tu_pg *pg);
/* psql -XAtq -c sql against the instance as user fw. out (may be NULL) receives psql's
 * standard output, NUL-terminated and truncated to cap. 0 when psql succeeded, else -1 after
 * printing psql's error output. */
int tu_pg_psql(tu_pg *pg, const char *sql, char *out, size_t cap);

#endif
