#!/bin/sh
# First start: create the data folder and give root the password from the environment, for
# connections from anywhere (the sites' users are created by bench with their own scope).
set -eu

if [ $# -eq 0 ] || [ "${1#-}" != "$1" ]; then
    set -- mariadbd "$@"
fi

initialize() {
    password=${MARIADB_ROOT_PASSWORD:-${MYSQL_ROOT_PASSWORD:-}}
    if [ -z "$password" ]; then
        echo "error: set MARIADB_ROOT_PASSWORD" >&2
        exit 1
    fi
    quoted=$(printf '%s' "$password" | sed "s/\\\\/\\\\\\\\/g; s/'/\\\\'/g")
    mariadb-install-db --datadir=/var/lib/mysql --auth-root-authentication-method=normal \
        --skip-test-db >/dev/null
    sock=/run/mysqld/init.sock
    mariadbd --datadir=/var/lib/mysql --skip-networking --socket="$sock" &
    pid=$!
    tries=0
    until mariadb-admin --socket="$sock" -uroot ping >/dev/null 2>&1; do
        tries=$((tries + 1))
        if [ "$tries" -gt 120 ]; then echo "error: mariadbd did not start" >&2; exit 1; fi
        sleep 0.5
    done
    mariadb --socket="$sock" -uroot <<SQL
DELETE FROM mysql.global_priv WHERE User = '';
ALTER USER 'root'@'localhost' IDENTIFIED BY '$quoted';
CREATE USER 'root'@'%' IDENTIFIED BY '$quoted';
GRANT ALL PRIVILEGES ON *.* TO 'root'@'%' WITH GRANT OPTION;
CREATE USER 'mysql'@'localhost' IDENTIFIED VIA unix_socket;
FLUSH PRIVILEGES;
SQL
    MYSQL_PWD=$password mariadb-admin --socket="$sock" -uroot shutdown
    wait "$pid" || true
}

if [ "$1" = mariadbd ] && [ ! -d /var/lib/mysql/mysql ]; then
    initialize
fi
exec "$@"
