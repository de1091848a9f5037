#!/usr/bin/env bash
# build.sh — build a real Frappe v15 bench from a local Frappe source folder, with its own
# MariaDB, Redis and Frappe RQ worker, without network access other than PyPI (and Debian
# packages when run as root and some are missing). Used by `make test-real` and
# tests/realbench/run.py; never by CI (CI has no Frappe source).
#
# Usage:
#   tests/realbench/build.sh FRAPPE_SRC
#
#   FRAPPE_SRC  a git checkout (or bare git folder) of Frappe: a clone of frappe/frappe or of a
#               smaller copy of a release; the branch RB_FRAPPE_BRANCH of it is used.
#
# Settings (environment variables, all optional):
#   RB_ROOT              where everything goes (default tests/.run/realbench-bench of this checkout)
#   RB_USER              system user that owns and runs the bench (default frappe; created when
#                        this runs as root). bench refuses to run as root.
#   RB_FRAPPE_BRANCH     branch of FRAPPE_SRC (default version-15)
#   RB_GUNICORN_SRC      a local git checkout of frappe/gunicorn holding the commit Frappe pins;
#                        empty: the released RB_GUNICORN_FALLBACK from PyPI replaces the pin
#   RB_GUNICORN_FALLBACK (default gunicorn==23.0.0)
#   RB_BENCH_VERSION     frappe-bench version from PyPI (default 5.31.1)
#   RB_DB_PORT, RB_REDIS_CACHE_PORT, RB_REDIS_QUEUE_PORT
#                        loopback ports of the private MariaDB and Redis instances; unset: free
#                        ports are chosen on the first run and kept in RB_ROOT/ports.env
#   RB_SITE              when set, a site of this name is created
#   RB_PYTHON            Python 3.10-3.12 for the bench (default /usr/bin/python3: a Python
#                        under /root, such as a pyenv shim, is not usable by RB_USER)
#
# Passwords are generated on the first run and kept, mode 600, in RB_ROOT/mariadb/root-password
# (MariaDB root) and RB_ROOT/admin-password (Administrator of RB_SITE). They reach MariaDB and
# bench on standard input, never on a command line.
#
# What it makes under RB_ROOT:
#   src/frappe       clone of FRAPPE_SRC (bench init clones apps/frappe from it)
#   cli/             virtualenv with the `bench` CLI
#   frappe-bench/    the bench (no assets: `bench build` needs node/yarn and GitHub)
#   mariadb/, redis/ data, sockets, pid and log files of the private servers
#   start.sh         starts MariaDB, both Redis and a Frappe RQ worker when not running
#   stop.sh          stops what start.sh started (by the pids in their pid files)
#   bench            wrapper: runs the bench CLI in frappe-bench as RB_USER, from any user
#
# Run it as root (it creates RB_USER and hands RB_ROOT to it) or as RB_USER when everything is
# in place. A rerun keeps what exists and only regenerates start.sh, stop.sh and the wrapper.
# From scratch on 2 cores: 1-2 minutes (bench init ~20-40 s, new-site 25-90 s).
set -euo pipefail

die() { printf 'build.sh: %s\n' "$*" >&2; exit 1; }
step() { printf '\n=== %s (%s)\n' "$*" "$(date -u +%H:%M:%S)"; }
q() { printf '%q' "$1"; }

[[ $# -eq 1 ]] || die "usage: build.sh FRAPPE_SRC"
FRAPPE_SRC=$(realpath -e -- "$1" 2>/dev/null) || die "no such folder: $1"
[[ -d $FRAPPE_SRC ]] || die "not a folder: $FRAPPE_SRC"
[[ -e $FRAPPE_SRC/.git || (-f $FRAPPE_SRC/HEAD && -d $FRAPPE_SRC/objects) ]] || die "not a git repository: $FRAPPE_SRC"

here=$(cd -- "$(dirname -- "$0")" && pwd)
RB_ROOT=${RB_ROOT:-$here/../.run/realbench-bench}
mkdir -p -- "$RB_ROOT"
RB_ROOT=$(realpath -e -- "$RB_ROOT")
RB_USER=${RB_USER:-frappe}
RB_FRAPPE_BRANCH=${RB_FRAPPE_BRANCH:-version-15}
RB_GUNICORN_SRC=${RB_GUNICORN_SRC:-}
RB_GUNICORN_FALLBACK=${RB_GUNICORN_FALLBACK:-gunicorn==23.0.0}
RB_BENCH_VERSION=${RB_BENCH_VERSION:-5.31.1}
RB_SITE=${RB_SITE:-}
PYTHON=${RB_PYTHON:-/usr/bin/python3}

[[ $RB_USER =~ ^[a-z_][a-z0-9_-]*$ ]] || die "RB_USER is not a user name: $RB_USER"
[[ $RB_FRAPPE_BRANCH =~ ^[A-Za-z0-9._/-]+$ && $RB_FRAPPE_BRANCH != -* ]] || die "bad RB_FRAPPE_BRANCH: $RB_FRAPPE_BRANCH"
[[ $RB_BENCH_VERSION =~ ^[0-9][0-9A-Za-z.]*$ ]] || die "bad RB_BENCH_VERSION: $RB_BENCH_VERSION"
[[ -z $RB_SITE || $RB_SITE =~ ^[a-z0-9]([a-z0-9.-]*[a-z0-9])?$ ]] || die "RB_SITE must be a DNS name: $RB_SITE"
[[ -x $PYTHON ]] || die "no Python at $PYTHON (RB_PYTHON)"

BENCH_DIR=$RB_ROOT/frappe-bench
MY_DIR=$RB_ROOT/mariadb
REDIS_DIR=$RB_ROOT/redis

free_port() { "$PYTHON" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

# Ports: given, else those of an earlier run (ports.env, KEY=number lines, read without eval),
# else free ones.
ports_file=$RB_ROOT/ports.env
saved_port() {
	[[ -f $ports_file ]] || return 0
	local key value
	while IFS='=' read -r key value; do
		[[ $key == "$1" && $value =~ ^[0-9]+$ ]] && { printf '%s' "$value"; return 0; }
	done <"$ports_file"
}
RB_DB_PORT=${RB_DB_PORT:-$(saved_port RB_DB_PORT)}
RB_REDIS_CACHE_PORT=${RB_REDIS_CACHE_PORT:-$(saved_port RB_REDIS_CACHE_PORT)}
RB_REDIS_QUEUE_PORT=${RB_REDIS_QUEUE_PORT:-$(saved_port RB_REDIS_QUEUE_PORT)}
RB_DB_PORT=${RB_DB_PORT:-$(free_port)}
RB_REDIS_CACHE_PORT=${RB_REDIS_CACHE_PORT:-$(free_port)}
RB_REDIS_QUEUE_PORT=${RB_REDIS_QUEUE_PORT:-$(free_port)}
for port in "$RB_DB_PORT" "$RB_REDIS_CACHE_PORT" "$RB_REDIS_QUEUE_PORT"; do
	if ! [[ $port =~ ^[0-9]+$ ]] || ((port < 1 || port > 65535)); then die "bad port: $port"; fi
done
printf 'RB_DB_PORT=%s\nRB_REDIS_CACHE_PORT=%s\nRB_REDIS_QUEUE_PORT=%s\n' \
	"$RB_DB_PORT" "$RB_REDIS_CACHE_PORT" "$RB_REDIS_QUEUE_PORT" >"$ports_file"

# Run a command as RB_USER, with that user's home.
as_user() {
	local home
	home=$(getent passwd "$RB_USER" | cut -d: -f6)
	if [[ $(id -un) == "$RB_USER" ]]; then
		env HOME="$home" "$@"
	else
		runuser -u "$RB_USER" -- env HOME="$home" "$@"
	fi
}

# A secret generated once, kept mode 600 and owned by RB_USER.
secret_file() {
	local file=$1
	if [[ ! -s $file ]]; then
		(umask 077; "$PYTHON" -c 'import secrets; print(secrets.token_urlsafe(18), end="")' >"$file")
	fi
	[[ $(id -u) -ne 0 ]] || chown "$RB_USER:" "$file"
}

# ---------------------------------------------------------------------------------------------
step "0. prerequisites"
if [[ $(id -u) -eq 0 ]]; then
	need=()
	command -v mariadbd >/dev/null || need+=(mariadb-server)
	command -v mariadb >/dev/null || need+=(mariadb-client)
	command -v redis-server >/dev/null || need+=(redis-server)
	command -v git >/dev/null || need+=(git)
	"$PYTHON" -c 'import venv, ensurepip' 2>/dev/null || need+=(python3-venv)
	"$PYTHON" -c 'import os, sys, sysconfig; sys.exit(not os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")))' \
		2>/dev/null || need+=(python3-dev)
	if ((${#need[@]})); then
		apt-get update
		# Only the binaries are used: keep the packages' scripts from starting Debian's own
		# mariadb/redis services (policy-rc.d exit 101 = "action forbidden").
		made_policy=
		if [[ ! -e /usr/sbin/policy-rc.d ]]; then
			printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
			chmod 755 /usr/sbin/policy-rc.d
			made_policy=1
		fi
		status=0
		DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${need[@]}" || status=$?
		[[ -z $made_policy ]] || rm -f /usr/sbin/policy-rc.d
		((status == 0)) || die "apt-get install ${need[*]} failed"
	fi
	getent passwd "$RB_USER" >/dev/null || useradd --create-home --shell /bin/bash -- "$RB_USER"
	chown "$RB_USER:" "$RB_ROOT"
else
	[[ $(id -un) == "$RB_USER" ]] || die "run as root or as $RB_USER"
fi
for bin in mariadbd mariadb mariadb-install-db mariadb-admin redis-server redis-cli git; do
	command -v "$bin" >/dev/null || die "missing $bin (Debian packages mariadb-server mariadb-client redis-server git)"
done
as_user test -x "$RB_ROOT" || die "$RB_USER cannot enter $RB_ROOT (a folder on the way is not searchable)"

# ---------------------------------------------------------------------------------------------
step "1. Frappe source -> $RB_ROOT/src/frappe"
# Cloned by the invoking user, then handed to RB_USER. git's safe.directory check refuses a
# local clone from a repository another user owns: give a FRAPPE_SRC the invoking user owns.
mkdir -p -- "$RB_ROOT/src"
if [[ ! -d $RB_ROOT/src/frappe/.git ]]; then
	git clone --quiet --branch "$RB_FRAPPE_BRANCH" --single-branch -- "$FRAPPE_SRC" "$RB_ROOT/src/frappe"
fi
if [[ -n $RB_GUNICORN_SRC && ! -d $RB_ROOT/src/gunicorn/.git ]]; then
	git clone --quiet -- "$(realpath -e -- "$RB_GUNICORN_SRC")" "$RB_ROOT/src/gunicorn"
fi
[[ $(id -u) -ne 0 ]] || chown -R "$RB_USER:" "$RB_ROOT"
as_user git -C "$RB_ROOT/src/frappe" log -1 --format='frappe commit %H (%s)'

# ---------------------------------------------------------------------------------------------
step "2. start.sh / stop.sh: MariaDB on 127.0.0.1:$RB_DB_PORT, Redis on $RB_REDIS_CACHE_PORT and $RB_REDIS_QUEUE_PORT"
# Both scripts are written with the values baked in, so they can be run later on their own.
header() {
	printf '#!/usr/bin/env bash\n# %s Generated by tests/realbench/build.sh.\nset -euo pipefail\n' "$1"
	printf 'RB_USER=%s\nRB_ROOT=%s\nMY_DIR=%s\nREDIS_DIR=%s\nDB_PORT=%s\nREDIS_PORTS=(%s %s)\n' \
		"$(q "$RB_USER")" "$(q "$RB_ROOT")" "$(q "$MY_DIR")" "$(q "$REDIS_DIR")" "$(q "$RB_DB_PORT")" \
		"$(q "$RB_REDIS_CACHE_PORT")" "$(q "$RB_REDIS_QUEUE_PORT")"
	cat <<'EOF'
as_user() {
	if [[ $(id -un) == "$RB_USER" ]]; then "$@"; else runuser -u "$RB_USER" -- "$@"; fi
}
alive() { [[ -s $1 ]] && kill -0 "$(cat -- "$1")" 2>/dev/null; }
EOF
}
{
	header "Start this bench's MariaDB, Redis (cache, queue) and Frappe RQ worker when they are not running; idempotent, as root or RB_USER."
	cat <<'EOF'
mkdir -p -- "$MY_DIR" "$REDIS_DIR"
[[ $(id -u) -ne 0 ]] || chown "$RB_USER:" "$MY_DIR" "$REDIS_DIR"

# MariaDB with the settings Frappe requires (utf8mb4, no client charset handshake, ...).
cat >"$MY_DIR/my.cnf" <<CNF
[mysqld]
datadir=$MY_DIR/data
port=$DB_PORT
bind-address=127.0.0.1
socket=$MY_DIR/mariadb.sock
pid-file=$MY_DIR/mariadb.pid
log-error=$MY_DIR/mariadb.log
character-set-client-handshake=FALSE
character-set-server=utf8mb4
collation-server=utf8mb4_unicode_ci
innodb-read-only-compressed=OFF
innodb-buffer-pool-size=256M
skip-log-bin
[client]
default-character-set=utf8mb4
CNF
[[ $(id -u) -ne 0 ]] || chown "$RB_USER:" "$MY_DIR/my.cnf"
if [[ ! -d $MY_DIR/data/mysql ]]; then
	as_user mariadb-install-db --defaults-file="$MY_DIR/my.cnf" --auth-root-authentication-method=normal \
		--skip-test-db >"$MY_DIR/install-db.log" 2>&1
fi
if alive "$MY_DIR/mariadb.pid"; then
	echo "mariadb running (pid $(cat -- "$MY_DIR/mariadb.pid"), port $DB_PORT)"
else
	as_user setsid -f mariadbd --defaults-file="$MY_DIR/my.cnf" </dev/null >/dev/null 2>&1
	for _ in $(seq 1 60); do
		# ping exits 0 once the server answers, even with "Access denied".
		[[ -S $MY_DIR/mariadb.sock ]] && mariadb-admin --no-defaults -S "$MY_DIR/mariadb.sock" -u root ping >/dev/null 2>&1 && break
		sleep 1
	done
	alive "$MY_DIR/mariadb.pid" || { echo "mariadb did not start, see $MY_DIR/mariadb.log" >&2; exit 1; }
	echo "mariadb started (pid $(cat -- "$MY_DIR/mariadb.pid"), port $DB_PORT)"
fi

for port in "${REDIS_PORTS[@]}"; do
	pidf=$REDIS_DIR/redis-$port.pid
	if alive "$pidf"; then
		echo "redis running (pid $(cat -- "$pidf"), port $port)"
		continue
	fi
	# No persistence: the cache and queue of a test bench need none.
	as_user redis-server --port "$port" --bind 127.0.0.1 --daemonize yes --pidfile "$pidf" \
		--logfile "$REDIS_DIR/redis-$port.log" --dir "$REDIS_DIR" --save "" --appendonly no
	for _ in $(seq 1 20); do redis-cli -p "$port" ping >/dev/null 2>&1 && break; sleep 0.5; done
	echo "redis started (pid $(cat -- "$pidf"), port $port)"
done

# The Frappe RQ worker (bench migrate queues a job that ready-for-migration waits for); only
# once the bench exists.
if [[ -x $RB_ROOT/bench && -f $RB_ROOT/frappe-bench/sites/apps.txt ]]; then
	if alive "$RB_ROOT/worker.pid"; then
		echo "frappe worker running (pid $(cat -- "$RB_ROOT/worker.pid"))"
	else
		setsid "$RB_ROOT/bench" worker --queue long,default,short </dev/null >>"$RB_ROOT/worker.log" 2>&1 &
		echo $! >"$RB_ROOT/worker.pid"
		echo "frappe worker started (pid $!, log $RB_ROOT/worker.log)"
	fi
fi
EOF
} >"$RB_ROOT/start.sh"
{
	header "Stop what start.sh started, by the pids in its pid files."
	cat <<'EOF'
stop() {  # stop NAME PIDFILE
	if alive "$2"; then
		kill -- "$(cat -- "$2")" && echo "stopped $1 (pid $(cat -- "$2"))"
	fi
}
# The worker first (its session: runuser and the worker process below it).
if alive "$RB_ROOT/worker.pid"; then
	kill -- "-$(cat -- "$RB_ROOT/worker.pid")" 2>/dev/null || kill -- "$(cat -- "$RB_ROOT/worker.pid")"
	echo "stopped the frappe worker"
fi
stop mariadb "$MY_DIR/mariadb.pid"
for port in "${REDIS_PORTS[@]}"; do stop "redis $port" "$REDIS_DIR/redis-$port.pid"; done
EOF
} >"$RB_ROOT/stop.sh"
chmod 755 "$RB_ROOT/start.sh" "$RB_ROOT/stop.sh"
[[ $(id -u) -ne 0 ]] || chown "$RB_USER:" "$RB_ROOT/start.sh" "$RB_ROOT/stop.sh"
"$RB_ROOT/start.sh"

# The MariaDB root password (TCP logins from Frappe for new-site and restore); SQL on stdin.
if [[ ! -s $MY_DIR/root-password ]]; then
	secret_file "$MY_DIR/root-password.new"
	pw=$(cat -- "$MY_DIR/root-password.new")
	as_user mariadb --no-defaults -S "$MY_DIR/mariadb.sock" -u root <<SQL
ALTER USER 'root'@'localhost' IDENTIFIED BY '$pw';
CREATE USER IF NOT EXISTS 'root'@'127.0.0.1' IDENTIFIED BY '$pw';
GRANT ALL PRIVILEGES ON *.* TO 'root'@'127.0.0.1' WITH GRANT OPTION;
FLUSH PRIVILEGES;
SQL
	mv -- "$MY_DIR/root-password.new" "$MY_DIR/root-password"
fi

# ---------------------------------------------------------------------------------------------
step "3. bench CLI (frappe-bench==$RB_BENCH_VERSION) in $RB_ROOT/cli"
if [[ ! -x $RB_ROOT/cli/bin/bench ]]; then
	as_user "$PYTHON" -m venv "$RB_ROOT/cli"
	as_user "$RB_ROOT/cli/bin/pip" install --quiet "frappe-bench==$RB_BENCH_VERSION"
fi
as_user "$RB_ROOT/cli/bin/bench" --version

# The wrapper for every later bench call: right user, right folder, no TTY needed.
{
	printf '#!/usr/bin/env bash\n# Run the bench CLI in %s as %s. Generated by tests/realbench/build.sh.\nset -euo pipefail\n' \
		"$BENCH_DIR" "$RB_USER"
	printf 'cd %s\nBENCH=%s\nUSER_NAME=%s\nP=%s:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin\n' \
		"$(q "$BENCH_DIR")" "$(q "$RB_ROOT/cli/bin/bench")" "$(q "$RB_USER")" "$(q "$RB_ROOT/cli/bin")"
	cat <<'EOF'
H=$(getent passwd "$USER_NAME" | cut -d: -f6)
if [[ $(id -un) == "$USER_NAME" ]]; then
	exec env PATH="$P" HOME="$H" "$BENCH" "$@"
fi
exec runuser -u "$USER_NAME" -- env PATH="$P" HOME="$H" "$BENCH" "$@"
EOF
} >"$RB_ROOT/bench"
chmod 755 "$RB_ROOT/bench"
[[ $(id -u) -ne 0 ]] || chown "$RB_USER:" "$RB_ROOT/bench"

# ---------------------------------------------------------------------------------------------
step "4. bench init $BENCH_DIR"
if [[ ! -f $BENCH_DIR/sites/apps.txt ]]; then
	rm -rf -- "$BENCH_DIR"  # a half-made bench of an earlier failed run
	# bench init installs each app's JS packages with yarn; with no node/yarn and no npm
	# registry, a `yarn` that does nothing goes first on PATH, for bench init only.
	stub=$RB_ROOT/tools/no-yarn
	mkdir -p -- "$stub"
	printf '#!/bin/sh\necho "realbench: no yarn here; skipped: yarn $*" >&2\nexit 0\n' >"$stub/yarn"
	chmod 755 "$stub/yarn"
	[[ $(id -u) -ne 0 ]] || chown -R "$RB_USER:" "$RB_ROOT/tools"
	extra_env=()
	if [[ -n $RB_GUNICORN_SRC ]]; then
		# Frappe pins "gunicorn @ git+https://github.com/frappe/gunicorn@<commit>": git fetches
		# it from the local clone (git configuration through the environment, not a file).
		extra_env=(GIT_CONFIG_COUNT=1
			"GIT_CONFIG_KEY_0=url.file://$RB_ROOT/src/gunicorn.insteadOf"
			"GIT_CONFIG_VALUE_0=https://github.com/frappe/gunicorn")
	else
		# No gunicorn source: a released gunicorn replaces the git pin (a uv override file).
		printf '%s\n' "$RB_GUNICORN_FALLBACK" >"$RB_ROOT/tools/gunicorn-override.txt"
		extra_env=("UV_OVERRIDE=$RB_ROOT/tools/gunicorn-override.txt")
	fi
	(cd -- "$RB_ROOT" && as_user "${extra_env[@]}" PATH="$stub:$RB_ROOT/cli/bin:/usr/local/bin:/usr/bin:/bin" \
		"$RB_ROOT/cli/bin/bench" init --frappe-path "$RB_ROOT/src/frappe" \
		--frappe-branch "$RB_FRAPPE_BRANCH" --python "$PYTHON" \
		--skip-assets --skip-redis-config-generation --no-backups --no-procfile \
		"$(basename -- "$BENCH_DIR")" </dev/null)
fi
# googleapiclient (a Frappe dependency) imports pkg_resources, gone from setuptools 81 on.
as_user "$RB_ROOT/cli/bin/uv" pip install --quiet "setuptools<81" --python "$BENCH_DIR/env/bin/python"

# ---------------------------------------------------------------------------------------------
step "5. bench config: the private MariaDB and Redis"
"$RB_ROOT/bench" set-config -g db_host 127.0.0.1
"$RB_ROOT/bench" set-config -g --parse db_port "$RB_DB_PORT"
"$RB_ROOT/bench" set-config -g redis_cache "redis://127.0.0.1:$RB_REDIS_CACHE_PORT"
"$RB_ROOT/bench" set-config -g redis_queue "redis://127.0.0.1:$RB_REDIS_QUEUE_PORT"
"$RB_ROOT/bench" set-config -g redis_socketio "redis://127.0.0.1:$RB_REDIS_QUEUE_PORT"
"$RB_ROOT/start.sh"  # now that the bench exists: the Frappe RQ worker

# ---------------------------------------------------------------------------------------------
if [[ -n $RB_SITE ]]; then
	step "6. new-site $RB_SITE"
	if [[ ! -f $BENCH_DIR/sites/$RB_SITE/site_config.json ]]; then
		secret_file "$RB_ROOT/admin-password"
		# Without a TTY, bench's password prompts read lines from stdin: MariaDB root password,
		# Administrator password, and the same again.
		{
			cat -- "$MY_DIR/root-password"; echo
			cat -- "$RB_ROOT/admin-password"; echo
			cat -- "$RB_ROOT/admin-password"; echo
		} | "$RB_ROOT/bench" new-site "$RB_SITE" --mariadb-user-host-login-scope=%
	fi
	"$RB_ROOT/bench" --site "$RB_SITE" execute frappe.ping </dev/null
fi

step "done: $RB_ROOT/bench --site SITE ...; services: $RB_ROOT/start.sh, $RB_ROOT/stop.sh"
