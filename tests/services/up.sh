#!/usr/bin/env bash
# Start the real services the test suite uses, private to this checkout, on loopback:
#   Redis   127.0.0.1:${JERP_TEST_REDIS_PORT:-16379}  (AOF on, maxmemory-policy noeviction)
#   MariaDB 127.0.0.1:${JERP_TEST_MARIADB_PORT:-13306} (own datadir, root password generated once)
# State lives under tests/.run/ (ignored by git). Safe to run again: running services are kept.
# `tests/services/up.sh down` stops them.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
run_dir=$(cd "$here/.." && pwd)/.run
redis_port=${JERP_TEST_REDIS_PORT:-16379}
maria_port=${JERP_TEST_MARIADB_PORT:-13306}
mkdir -p "$run_dir"

redis_up() {
    redis-cli -p "$redis_port" ping >/dev/null 2>&1
}

maria_up() {
    mariadb-admin --protocol=tcp -h 127.0.0.1 -P "$maria_port" -uroot \
        -p"$(cat "$run_dir/mariadb-root-password")" ping >/dev/null 2>&1
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

start_redis() {
    if redis_up; then return 0; fi
    mkdir -p "$run_dir/redis"
    redis-server --port "$redis_port" --bind 127.0.0.1 --daemonize yes \
        --dir "$run_dir/redis" --appendonly yes --maxmemory-policy noeviction \
        --logfile "$run_dir/redis.log" --pidfile "$run_dir/redis.pid"
    wait_for redis redis_up
}

start_mariadb() {
    local datadir=$run_dir/mariadb
    if [ ! -f "$run_dir/mariadb-root-password" ]; then
        head -c 18 /dev/urandom | base64 | tr -d '/+=' >"$run_dir/mariadb-root-password"
        chmod 600 "$run_dir/mariadb-root-password"
    fi
    if maria_up; then return 0; fi
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
    local sock_ok
    sock_ok() { mariadb-admin --socket="$run_dir/mariadb.sock" -uroot ping >/dev/null 2>&1 || maria_up; }
    wait_for mariadb sock_ok
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
    wait_for mariadb maria_up
    # Anonymous accounts shadow 'user'@'%' logins from 127.0.0.1 (sites use the login scope %).
    mariadb --protocol=tcp -h 127.0.0.1 -P "$maria_port" -uroot -p"$(cat "$run_dir/mariadb-root-password")" \
        -e "DELETE FROM mysql.global_priv WHERE User=''; FLUSH PRIVILEGES;"
}

stop_all() {
    for pidfile in "$run_dir/redis.pid" "$run_dir/mariadb.pid"; do
        if [ -f "$pidfile" ]; then
            kill "$(cat "$pidfile")" 2>/dev/null || true
        fi
    done
}

case "${1:-up}" in
    up)
        start_redis
        start_mariadb
        echo "redis   redis://127.0.0.1:$redis_port/0"
        echo "mariadb 127.0.0.1:$maria_port (root password in tests/.run/mariadb-root-password)"
        ;;
    down) stop_all ;;
    *) echo "usage: $0 [up|down]" >&2; exit 2 ;;
esac
