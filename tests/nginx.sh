# nginx.sh: starts and stops a private nginx on a free loopback port, for
# the pull tests, the pull benchmark and the demo. Source it from bash:
#
#   . tests/nginx.sh
#   trap 'nginx_stop; rm -rf "$TMP"' EXIT      # the caller's trap stops it
#   if nginx_start ROOT [LOCATIONS_FILE] [WORKERS]; then
#       curl "$NGINX_URL/some/file"              # http://127.0.0.1:PORT
#   else
#       echo "SKIP: $NGINX_ERROR"; exit 0
#   fi
#
# ROOT is the directory served. LOCATIONS_FILE, when given, is copied into
# the server block (tests/nginx.conf.in includes it): location blocks that add
# headers or redirect. WORKERS defaults to 1.
#
# The configuration comes from tests/nginx.conf.in, filled in with sed. nginx
# runs in the foreground (daemon off) as a background job of the caller, with
# its pid file, logs and temporary files in a mktemp directory
# ($NGINX_PREFIX), so any user can run it; `user` is set only when running as
# root (nginx would otherwise switch its workers to nobody, who cannot read a
# mktemp directory). The port is picked by binding port 0 and closing; a
# collision with another process in the meantime is retried on a new port.
#
# After nginx_start: NGINX_PORT, NGINX_URL, NGINX_PREFIX, NGINX_PID and
# NGINX_LOG (the access log: "status body_bytes method uri "range" "inm""
# per request). On failure it returns 1 with the reason in NGINX_ERROR and
# leaves nothing running. Safe under `set -euo pipefail`.

NGINX_TEMPLATE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/nginx.conf.in
NGINX_PID=
NGINX_PREFIX=

# The nginx binary: on PATH, else where Debian puts it (/usr/sbin is not on
# an unprivileged user's PATH everywhere).
nginx_find() {
    local b
    for b in "$(command -v nginx 2>/dev/null)" /usr/sbin/nginx /usr/local/sbin/nginx \
        /usr/local/nginx/sbin/nginx; do
        if [ -n "$b" ] && [ -x "$b" ]; then
            echo "$b"
            return 0
        fi
    done
    return 1
}

# A port that was free a moment ago.
nginx_free_port() {
    python3 -c 'import socket
s = socket.socket()
s.bind(("127.0.0.1", 0))
print(s.getsockname()[1])
s.close()'
}

# Stops the master (TERM: workers exit with it) and its workers; waits for
# them; removes $NGINX_PREFIX unless NGINX_KEEP is set. Safe to call twice or
# when nothing was started.
nginx_stop() {
    local pid=$NGINX_PID workers i
    NGINX_PID=
    if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
        workers=$(ps -o pid= --ppid "$pid" 2>/dev/null || true)
        kill -TERM "$pid" 2>/dev/null
        for i in $(seq 100); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.05
        done
        if kill -0 "$pid" 2>/dev/null; then
            # Did not stop in 5 s: its workers first, so none outlives it.
            for i in $workers; do kill -KILL "$i" 2>/dev/null; done
            kill -KILL "$pid" 2>/dev/null
        fi
        wait "$pid" 2>/dev/null || true
    fi
    if [ -n "$NGINX_PREFIX" ] && [ -z "${NGINX_KEEP:-}" ]; then
        rm -rf "$NGINX_PREFIX"
    fi
    NGINX_PREFIX=
    return 0
}

nginx_start() {
    local root=$1 locations=${2:-} workers=${3:-1} bin user_line="" attempt i port
    local eflag=()
    NGINX_ERROR=
    if ! bin=$(nginx_find); then
        NGINX_ERROR="nginx is not installed (Debian package nginx)"
        return 1
    fi
    if [ ! -f "$NGINX_TEMPLATE" ]; then
        NGINX_ERROR="$NGINX_TEMPLATE is missing"
        return 1
    fi
    if ! command -v python3 >/dev/null; then
        NGINX_ERROR="python3 is needed to pick a free port"
        return 1
    fi
    root=$(cd "$root" && pwd) || { NGINX_ERROR="cannot enter '$1'"; return 1; }
    if [ "$(id -u)" = 0 ]; then user_line="user $(id -un) $(id -gn);"; fi
    # -e (nginx >= 1.19.5) keeps the startup log out of the compiled-in path,
    # which an unprivileged user may not be able to open.
    case "$("$bin" -h 2>&1 || true)" in *"-e filename"*) eflag=(-e stderr) ;; esac

    for attempt in 1 2 3 4 5; do
        NGINX_PREFIX=$(mktemp -d "${TMPDIR:-/tmp}/actl-nginx.XXXXXX") || {
            NGINX_ERROR="cannot create a temporary directory"
            return 1
        }
        mkdir -p "$NGINX_PREFIX/tmp"
        if [ -n "$locations" ]; then
            cp "$locations" "$NGINX_PREFIX/locations.conf"
        else
            : >"$NGINX_PREFIX/locations.conf"
        fi
        port=$(nginx_free_port) || { NGINX_ERROR="cannot pick a free port"; nginx_stop; return 1; }
        sed -e "s|@PREFIX@|$NGINX_PREFIX|g" -e "s|@PORT@|$port|g" -e "s|@ROOT@|$root|g" \
            -e "s|@USER@|$user_line|g" -e "s|@WORKERS@|$workers|g" \
            "$NGINX_TEMPLATE" >"$NGINX_PREFIX/nginx.conf"
        "$bin" -p "$NGINX_PREFIX" -c "$NGINX_PREFIX/nginx.conf" ${eflag[@]+"${eflag[@]}"} \
            >"$NGINX_PREFIX/stderr" 2>&1 </dev/null &
        NGINX_PID=$!
        # Ready when the pid file names it (nginx writes it after binding
        # the port) and the port answers; failed when the process is gone.
        for i in $(seq 200); do
            if ! kill -0 "$NGINX_PID" 2>/dev/null; then
                break
            fi
            if [ "$(cat "$NGINX_PREFIX/nginx.pid" 2>/dev/null)" = "$NGINX_PID" ] &&
                (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
                NGINX_PORT=$port
                NGINX_URL=http://127.0.0.1:$port
                NGINX_LOG=$NGINX_PREFIX/access.log
                return 0
            fi
            sleep 0.05
        done
        NGINX_ERROR="nginx did not start: $(cat "$NGINX_PREFIX/stderr" "$NGINX_PREFIX/error.log" 2>/dev/null | tr '\n' ' ' || true)"
        nginx_stop
        case "$NGINX_ERROR" in
        *"Address already in use"*) continue ;; # another process took the port: a new one
        *) return 1 ;;
        esac
    done
    return 1
}
