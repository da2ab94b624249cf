# Shared by scripts/test and scripts/bench: installs (when missing) and starts real Postgres and
# Redis servers on free loopback ports under a scratch directory, and stops them by PID.
# Source it, then call start_services DIR; it exports KEYGATE_TEST_DATABASE_URL and
# KEYGATE_TEST_REDIS_URL and registers stop_services on EXIT. With PG_DURABLE=1 Postgres keeps
# its durable defaults (the benchmark's setting).

# The SMTP server the code tests and the benchmark's code scenario deliver to.
SMTP_SERVER_PACKAGE=aiosmtpd==1.4.6
pip_install() {
  python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore "$@"
}

apt_updated=0
apt_install() {
  if [ "$apt_updated" = 0 ]; then
    apt-get update -qq >/dev/null
    apt_updated=1
  fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

pg_bindir() {
  local d
  for d in /usr/lib/postgresql/*/bin; do
    [ -x "$d/initdb" ] && { echo "$d"; return 0; }
  done
  return 1
}

ensure_packages() {
  if ! pg_bindir >/dev/null; then
    echo "installing postgresql"
    apt_install postgresql
  fi
  if ! command -v redis-server >/dev/null; then
    echo "installing redis-server"
    apt_install redis-server
  fi
}

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}

SERVICES_DIR=""
PG_DATA=""
REDIS_PIDFILE=""

start_services() {
  SERVICES_DIR="$1"
  mkdir -p "$SERVICES_DIR"
  ensure_packages
  local bindir pg_port redis_port
  bindir=$(pg_bindir)
  pg_port=$(free_port)
  PG_DATA="$SERVICES_DIR/pg"
  mkdir -p "$PG_DATA"
  # Tests trade durability for speed; the benchmark (PG_DURABLE=1) keeps the defaults a
  # production database has (fsync, synchronous commit, full-page writes) and records every
  # statement's cost in pg_stat_statements.
  local pg_settings="-c fsync=off -c synchronous_commit=off -c full_page_writes=off"
  if [ "${PG_DURABLE:-0}" = 1 ]; then
    pg_settings="-c shared_preload_libraries=pg_stat_statements -c pg_stat_statements.track=all"
  fi
  local run=()
  if [ "$(id -u)" = 0 ]; then
    chown -R postgres:postgres "$SERVICES_DIR"
    chmod 755 "$SERVICES_DIR"
    run=(runuser -u postgres --)
  fi
  "${run[@]}" "$bindir/initdb" -D "$PG_DATA" -U postgres --auth=trust -E UTF8 >/dev/null
  "${run[@]}" "$bindir/pg_ctl" -D "$PG_DATA" -l "$SERVICES_DIR/pg.log" -w -t 60 \
    -o "-p $pg_port -k $PG_DATA -c listen_addresses=127.0.0.1 -c max_connections=300 $pg_settings" \
    start >/dev/null
  PG_CTL="${run[*]} $bindir/pg_ctl"
  export KEYGATE_TEST_DATABASE_URL="postgres://postgres@127.0.0.1:$pg_port/postgres"

  redis_port=$(free_port)
  REDIS_PIDFILE="$SERVICES_DIR/redis.pid"
  redis-server --port "$redis_port" --bind 127.0.0.1 --save "" --appendonly no \
    --daemonize yes --pidfile "$REDIS_PIDFILE" --logfile "$SERVICES_DIR/redis.log" --dir "$SERVICES_DIR"
  local up=0
  for _ in $(seq 100); do
    if redis-cli -p "$redis_port" ping >/dev/null 2>&1; then up=1; break; fi
    sleep 0.1
  done
  if [ "$up" = 0 ]; then
    echo "redis did not answer on 127.0.0.1:$redis_port within 10 s:" >&2
    cat "$SERVICES_DIR/redis.log" >&2 || true
    return 1
  fi
  export KEYGATE_TEST_REDIS_URL="redis://127.0.0.1:$redis_port"
  trap stop_services EXIT
  echo "postgres on 127.0.0.1:$pg_port, redis on 127.0.0.1:$redis_port"
}

KUBE_DIR=""

# Builds (cached) and starts the Kubernetes control plane; exports KEYGATE_TEST_KUBECONFIG and
# KEYGATE_TEST_KUBE_BIN. Call after start_services (it shares its scratch directory).
start_kube() {
  KUBE_DIR="$SERVICES_DIR/kube"
  local started=$SECONDS
  bash scripts/kube/build.sh >/dev/null
  echo "kubernetes binaries ready in $((SECONDS - started)) s (cached under ~/.cache/keygate/kube)"
  started=$SECONDS
  bash scripts/kube/controlplane.sh start "$KUBE_DIR"
  # shellcheck disable=SC1091
  . "$KUBE_DIR/env"
  echo "kube-apiserver ready in $((SECONDS - started)) s"
}

stop_services() {
  if [ -n "$KUBE_DIR" ] && [ -d "$KUBE_DIR" ]; then
    bash scripts/kube/controlplane.sh stop "$KUBE_DIR" || true
  fi
  if [ -n "$PG_DATA" ] && [ -f "$PG_DATA/postmaster.pid" ]; then
    $PG_CTL -D "$PG_DATA" -m immediate stop >/dev/null 2>&1 || true
  fi
  if [ -n "$REDIS_PIDFILE" ] && [ -f "$REDIS_PIDFILE" ]; then
    kill "$(cat "$REDIS_PIDFILE")" 2>/dev/null || true
  fi
  [ -n "$SERVICES_DIR" ] && rm -rf "$SERVICES_DIR"
}
