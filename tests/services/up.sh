#!/usr/bin/env bash
# Start the real services the test suite (and `make demo`) use, private to this checkout, on
# loopback, each on a free port:
#   Redis    AOF on, maxmemory-policy noeviction
#   MariaDB  own datadir, root password generated once, the settings Frappe needs
# State lives under $JERP_SERVICES_DIR (default tests/.run/, ignored by git): pid, port and log
# of each server, and the root password. A running server is reused only when this folder's pid
# file names it and it answers on the recorded port (for MariaDB: with this folder's password and
# datadir); a server started by anyone else is never reused, flushed or stopped.
# JERP_TEST_REDIS_PORT / JERP_TEST_MARIADB_PORT ask for a fixed port (an error if it is taken).
#
#   tests/services/up.sh        start (or keep) both; prints their addresses
#   tests/services/up.sh down   stop the servers this folder started
#   tests/services/up.sh env    print JERP_TEST_REDIS_PORT=... and JERP_TEST_MARIADB_PORT=...
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
run_dir=${JERP_SERVICES_DIR:-$(cd "$here/.." && pwd)/.run}
mkdir -p "$run_dir"
run_dir=$(cd "$run_dir" && pwd)

need() {
    command -v "$1" >/dev/null 2>&1 || {
        echo "error: $1 not found: install the Debian packages redis-server mariadb-server mariadb-client" >&2
        exit 1
    }
}

# A TCP port on 127.0.0.1 that nothing listens on now (the kernel's choice).
free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

port_taken() {
    python3 - "$1" <<'PY'
import socket, sys
s = socket.socket()
try:
    s.bind(("127.0.0.1", int(sys.argv[1])))
except OSError:
    sys.exit(0)
sys.exit(1)
PY
}

our_pid() {  # our_pid NAME: the pid in NAME.pid when that process is alive
    local file=$run_dir/$1.pid pid
    [ -f "$file" ] || return 1
    pid=$(cat "$file" 2>/dev/null) || return 1
    [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null && echo "$pid"
}

recorded_port() { cat "$run_dir/$1.port" 2>/dev/null || true; }

choose_port() {  # choose_port NAME REQUESTED
    local name=$1 requested=$2 port
    if [ -n "$requested" ]; then
        if port_taken "$requested"; then
            echo "error: port $requested for $name is taken by a server this checkout did not start" >&2
            exit 1
        fi
        echo "$requested"
        return
    fi
    port=$(recorded_port "$name")
    if [ -n "$port" ] && ! port_taken "$port"; then echo "$port"; return; fi
    free_port
}

wait_for() {
    local what=$1 check=$2
    for _ in $(seq 1 120); do
        if $check; then return 0; fi
        sleep 0.5
    done
    echo "error: $what did not come up; see $run_dir/$what.log" >&2
    return 1
}

# --- Redis -------------------------------------------------------------------------------------

redis_port=""

redis_ours() {  # our Redis answers on the recorded port, and it is the process of our pid file
    local pid port
    pid=$(our_pid redis) || return 1
    port=$(recorded_port redis)
    [ -n "$port" ] || return 1
    redis-cli -p "$port" info server 2>/dev/null | tr -d '\r' | grep -qx "process_id:$pid"
}

redis_answers() { redis-cli -p "$redis_port" ping >/dev/null 2>&1; }

start_redis() {
    need redis-server
    if redis_ours; then
        redis_port=$(recorded_port redis)
        if [ -z "${JERP_TEST_REDIS_PORT:-}" ] || [ "$JERP_TEST_REDIS_PORT" = "$redis_port" ]; then return 0; fi
        stop_one redis
    fi
    redis_port=$(choose_port redis "${JERP_TEST_REDIS_PORT:-}")
    mkdir -p "$run_dir/redis"
    redis-server --port "$redis_port" --bind 127.0.0.1 --daemonize yes \
        --dir "$run_dir/redis" --appendonly yes --maxmemory-policy noeviction \
        --logfile "$run_dir/redis.log" --pidfile "$run_dir/redis.pid"
    echo "$redis_port" >"$run_dir/redis.port"
    wait_for redis redis_answers
    redis_ours || { echo "error: the Redis on $redis_port is not the one just started" >&2; exit 1; }
}

# --- MariaDB -----------------------------------------------------------------------------------

maria_port=""

maria_sql() {  # maria_sql PORT SQL: as root, with this folder's password (never on argv)
    MYSQL_PWD=$(cat "$run_dir/mariadb-root-password") mariadb --protocol=tcp -h 127.0.0.1 -P "$1" \
        -uroot -N -B -e "$2" 2>/dev/null
}

maria_ours() {  # answers with our password, and serves our datadir
    local port datadir
    our_pid mariadb >/dev/null || return 1
    port=$(recorded_port mariadb)
    [ -n "$port" ] || return 1
    datadir=$(maria_sql "$port" "SELECT @@datadir") || return 1
    [ "${datadir%/}" = "$run_dir/mariadb" ]
}

maria_socket_up() {
    mariadb-admin --socket="$run_dir/mariadb.sock" -uroot status >/dev/null 2>&1 \
        || maria_sql "$maria_port" "SELECT 1" >/dev/null
}

start_mariadb() {
    need mariadbd
    need mariadb
    local datadir=$run_dir/mariadb
    if [ ! -f "$run_dir/mariadb-root-password" ]; then
        (umask 077; head -c 18 /dev/urandom | base64 | tr -d '/+=' >"$run_dir/mariadb-root-password")
    fi
    if maria_ours; then
        maria_port=$(recorded_port mariadb)
        if [ -z "${JERP_TEST_MARIADB_PORT:-}" ] || [ "$JERP_TEST_MARIADB_PORT" = "$maria_port" ]; then return 0; fi
        stop_one mariadb
    fi
    maria_port=$(choose_port mariadb "${JERP_TEST_MARIADB_PORT:-}")
    local fresh=0
    if [ ! -d "$datadir/mysql" ]; then
        mariadb-install-db --user=root --datadir="$datadir" --auth-root-authentication-method=normal \
            >"$run_dir/mariadb-install.log" 2>&1
        fresh=1
    fi
    # Frappe needs these settings (frappe_docker's MariaDB runs with them).
    mariadbd --user=root --datadir="$datadir" --port="$maria_port" --bind-address=127.0.0.1 \
        --socket="$run_dir/mariadb.sock" --pid-file="$run_dir/mariadb.pid" \
        --character-set-server=utf8mb4 --collation-server=utf8mb4_unicode_ci \
        --skip-character-set-client-handshake --skip-innodb-read-only-compressed \
        --innodb-buffer-pool-size=256M --log-error="$run_dir/mariadb.log" >>"$run_dir/mariadb.log" 2>&1 &
    disown
    echo "$maria_port" >"$run_dir/mariadb.port"
    wait_for mariadb maria_socket_up
    if [ "$fresh" = 1 ]; then
        local pw
        pw=$(cat "$run_dir/mariadb-root-password")
        mariadb --socket="$run_dir/mariadb.sock" -uroot <<SQL
ALTER USER 'root'@'localhost' IDENTIFIED BY '$pw';
CREATE USER IF NOT EXISTS 'root'@'127.0.0.1' IDENTIFIED BY '$pw';
GRANT ALL PRIVILEGES ON *.* TO 'root'@'127.0.0.1' WITH GRANT OPTION;
CREATE USER IF NOT EXISTS 'root'@'%' IDENTIFIED BY '$pw';
GRANT ALL PRIVILEGES ON *.* TO 'root'@'%' WITH GRANT OPTION;
FLUSH PRIVILEGES;
SQL
    fi
    maria_answers() { maria_sql "$maria_port" "SELECT 1" >/dev/null; }
    wait_for mariadb maria_answers
    maria_ours || { echo "error: the MariaDB on $maria_port is not the one just started" >&2; exit 1; }
    # Anonymous accounts shadow 'user'@'%' logins from 127.0.0.1 (sites use the login scope %).
    maria_sql "$maria_port" "DELETE FROM mysql.global_priv WHERE User=''; FLUSH PRIVILEGES;" >/dev/null
}

# --- stop ----------------------------------------------------------------------------------------

stop_one() {
    local name=$1 pid
    pid=$(our_pid "$name") || return 0
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 1 60); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.5
    done
    rm -f "$run_dir/$name.pid"
}

case "${1:-up}" in
    up)
        start_redis
        start_mariadb
        echo "redis   redis://127.0.0.1:$redis_port/0"
        echo "mariadb 127.0.0.1:$maria_port (root password in $run_dir/mariadb-root-password)"
        ;;
    env)
        redis_ours || { echo "error: the services are not running: run $0" >&2; exit 1; }
        maria_ours || { echo "error: the services are not running: run $0" >&2; exit 1; }
        echo "JERP_TEST_REDIS_PORT=$(recorded_port redis)"
        echo "JERP_TEST_MARIADB_PORT=$(recorded_port mariadb)"
        ;;
    down)
        stop_one redis
        stop_one mariadb
        ;;
    *) echo "usage: $0 [up|down|env]" >&2; exit 2 ;;
esac
