#!/usr/bin/env bash
# Start a throwaway PostgreSQL server on 127.0.0.1 for the registry tests (idempotent).
#
#   .ci/postgres.sh [ENV_FILE]     start (or find running) and write ENV_FILE
#   .ci/postgres.sh stop           stop the server (its files stay; start again any time)
#
# ENV_FILE (default: $IMLOSS_PG_DIR/env) gets one line,
#   export IMLOSS_TEST_POSTGRES_URL='postgresql+psycopg://imloss:PASSWORD@127.0.0.1:PORT/imloss_test'
# and the same line goes to stdout, so both `source ENV_FILE` and `eval "$(.ci/postgres.sh)"` work.
# Progress goes to stderr. The cluster lives in $IMLOSS_PG_DIR (default /tmp/imloss-ci-postgres).
#
# Installs Debian's postgresql package only when no server binaries are found. PostgreSQL refuses
# to run as root, so as root the cluster belongs to the `postgres` system user (created if
# missing). The superuser logs in only through a Unix socket inside the 0700 cluster directory;
# TCP logins (127.0.0.1 only) need the random password of the `imloss` role, which owns the
# database imloss_test (tests create and drop their own schemas in it).
set -euo pipefail

DIR="${IMLOSS_PG_DIR:-/tmp/imloss-ci-postgres}"
DATA="$DIR/data"
ROLE=imloss
DB=imloss_test
log() { echo "postgres.sh: $*" >&2; }

find_bindir() {
    local dir
    dir=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)
    if [[ -n "$dir" && -x "$dir/initdb" ]]; then echo "$dir"; return; fi
    if command -v initdb >/dev/null 2>&1; then dirname "$(command -v initdb)"; fi
}

BIN=$(find_bindir)
if [[ -z "$BIN" ]]; then
    [[ $(id -u) -eq 0 ]] || { log "no PostgreSQL binaries and not root: install postgresql"; exit 1; }
    log "installing Debian's postgresql package"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >&2
    apt-get install -y -qq postgresql >&2
    BIN=$(find_bindir)
    [[ -n "$BIN" ]] || { log "postgresql installed but no initdb found"; exit 1; }
fi

if [[ $(id -u) -eq 0 ]]; then
    OWNER=postgres
    if ! id "$OWNER" >/dev/null 2>&1; then
        useradd --system --user-group --no-create-home --shell /usr/sbin/nologin "$OWNER"
    fi
    # From /: the postgres user may not be allowed into the caller's directory.
    as_owner() { (cd / && runuser -u "$OWNER" -- "$@"); }
else
    OWNER=$(id -un)
    as_owner() { "$@"; }
fi
pg_ctl() { as_owner "$BIN/pg_ctl" -D "$DATA" "$@"; }
psql_admin() {  # superuser over the private socket; -v ON_ERROR_STOP so failures stop the script
    as_owner "$BIN/psql" -X -q -v ON_ERROR_STOP=1 -h "$DIR" -p "$(cat "$DIR/port")" -U postgres \
        -d postgres "$@"
}
# Running = it answers. A machine that was rebooted, or whose processes were ended, leaves a
# postmaster.pid behind whose pid may now belong to another process: pg_ctl status alone would
# believe that.
running() {
    [[ -f "$DIR/port" ]] && pg_ctl status >/dev/null 2>&1 \
        && psql_admin -tA <<<'SELECT 1;' >/dev/null 2>&1
}

if [[ "${1:-}" == stop ]]; then
    if running; then pg_ctl stop -m fast >&2; else log "not running"; fi
    exit 0
fi
ENV_FILE=$(realpath -m "${1:-$DIR/env}")

if [[ ! -f "$DATA/PG_VERSION" ]]; then
    log "creating a cluster in $DATA"
    mkdir -p "$DIR"
    chown "$OWNER" "$DIR"
    chmod 700 "$DIR"
    rm -rf "$DATA"
    head -c 18 /dev/urandom | base64 | tr -d '/+=' > "$DIR/password"
    chown "$OWNER" "$DIR/password"
    chmod 600 "$DIR/password"
    as_owner "$BIN/initdb" -D "$DATA" -U postgres --auth-local=trust --auth-host=scram-sha-256 \
        --encoding=UTF8 --locale=C.UTF-8 >"$DIR/initdb.log" 2>&1 \
        || { cat "$DIR/initdb.log" >&2; exit 1; }
fi

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

if ! running; then
    if [[ -f "$DATA/postmaster.pid" ]] && ! pg_ctl status >/dev/null 2>&1; then
        rm -f "$DATA/postmaster.pid"  # left by a server that was killed (pg_ctl saw no process)
    elif [[ -f "$DATA/postmaster.pid" ]]; then
        pg_ctl stop -m immediate >/dev/null 2>&1 || rm -f "$DATA/postmaster.pid"
    fi
    started=
    for attempt in 1 2 3; do  # another program may take the free port before the server does
        PORT=$(free_port)
        echo "$PORT" > "$DIR/port"
        log "starting on 127.0.0.1:$PORT"
        # A throwaway server: no fsync; room for the tests' concurrent writers.
        if pg_ctl start -w -t 60 -l "$DIR/server.log" -o "-h 127.0.0.1 -p $PORT -k $DIR \
                -c fsync=off -c synchronous_commit=off -c full_page_writes=off \
                -c max_connections=200" >&2; then
            started=yes
            break
        fi
        tail -n 5 "$DIR/server.log" >&2
    done
    [[ -n "$started" ]] || { log "server did not start; see $DIR/server.log"; exit 1; }
fi
PORT=$(cat "$DIR/port")
PASSWORD=$(cat "$DIR/password")

# psql quotes :'var' as a literal and :"var" as an identifier (in SQL read from stdin, not -c):
# no password or name is pasted into SQL by hand.
if [[ -z $(psql_admin -tA -v role="$ROLE" <<<"SELECT 1 FROM pg_roles WHERE rolname = :'role';") ]]; then
    psql_admin -v role="$ROLE" -v password="$PASSWORD" \
        <<<"CREATE ROLE :\"role\" LOGIN CREATEDB PASSWORD :'password';"
fi
if [[ -z $(psql_admin -tA -v db="$DB" <<<"SELECT 1 FROM pg_database WHERE datname = :'db';") ]]; then
    psql_admin -v role="$ROLE" -v db="$DB" <<<"CREATE DATABASE :\"db\" OWNER :\"role\";"
fi

URL="postgresql+psycopg://$ROLE:$PASSWORD@127.0.0.1:$PORT/$DB"
LINE="export IMLOSS_TEST_POSTGRES_URL='$URL'"
mkdir -p "$(dirname "$ENV_FILE")"
echo "$LINE" > "$ENV_FILE"
log "ready: postgresql://$ROLE@127.0.0.1:$PORT/$DB (URL in $ENV_FILE)"
echo "$LINE"
