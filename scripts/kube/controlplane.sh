#!/usr/bin/env bash
# Starts and stops a Kubernetes control plane (etcd + kube-apiserver, no kubelet, scheduler or
# controller-manager) on loopback, on free ports, with verified TLS.
#
#   controlplane.sh start DIR [--watch-pid PID]   start; write DIR/kubeconfig, DIR/admin-token,
#                                                DIR/env (shell exports); with --watch-pid the
#                                                processes are stopped when PID exits
#   controlplane.sh stop DIR                      stop the processes started in DIR (by PID)
#
# Binaries come from scripts/kube/build.sh (cached under ~/.cache/keygate/kube).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}

stop() {
  local dir=$1 pid
  for f in kube-apiserver.pid etcd.pid watcher.pid; do
    if [ -f "$dir/$f" ]; then
      pid=$(cat "$dir/$f")
      kill "$pid" 2>/dev/null || true
      for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
      kill -9 "$pid" 2>/dev/null || true
      rm -f "$dir/$f"
    fi
  done
}

start() {
  local dir=$1 watch_pid=${2:-}
  mkdir -p "$dir/certs"
  dir=$(cd "$dir" && pwd)
  local bin
  bin=$("$here/build.sh")
  local etcd_port peer_port api_port token
  etcd_port=$(free_port); peer_port=$(free_port); api_port=$(free_port)
  token=$(python3 -c 'import secrets; print(secrets.token_hex(24))')
  echo "$token" > "$dir/admin-token"
  chmod 600 "$dir/admin-token"
  printf '%s,keygate-test-admin,keygate-test-admin,"system:masters"\n' "$token" > "$dir/tokens.csv"
  openssl genrsa -out "$dir/sa.key" 2048 2>/dev/null

  "$bin/etcd" --name testenv --data-dir "$dir/etcd" \
    --listen-client-urls "http://127.0.0.1:$etcd_port" --advertise-client-urls "http://127.0.0.1:$etcd_port" \
    --listen-peer-urls "http://127.0.0.1:$peer_port" --initial-advertise-peer-urls "http://127.0.0.1:$peer_port" \
    --initial-cluster "testenv=http://127.0.0.1:$peer_port" --unsafe-no-fsync \
    > "$dir/etcd.log" 2>&1 &
  echo $! > "$dir/etcd.pid"

  "$bin/kube-apiserver" \
    --etcd-servers "http://127.0.0.1:$etcd_port" --bind-address 127.0.0.1 --advertise-address 127.0.0.1 \
    --secure-port "$api_port" --cert-dir "$dir/certs" --service-cluster-ip-range 10.0.0.0/24 \
    --service-account-issuer "https://127.0.0.1:$api_port" \
    --service-account-key-file "$dir/sa.key" --service-account-signing-key-file "$dir/sa.key" \
    --token-auth-file "$dir/tokens.csv" --authorization-mode RBAC \
    --disable-admission-plugins ServiceAccount --allow-privileged=true \
    > "$dir/kube-apiserver.log" 2>&1 &
  echo $! > "$dir/kube-apiserver.pid"

  if [ -n "$watch_pid" ]; then
    # Stop everything when the process that asked for the control plane is gone, whatever
    # way it ended.
    ( while kill -0 "$watch_pid" 2>/dev/null; do sleep 1; done; "$0" stop "$dir"; rm -rf "$dir" ) >/dev/null 2>&1 &
    echo $! > "$dir/watcher.pid"
  fi

  local server="https://127.0.0.1:$api_port" ok=0
  for _ in $(seq 240); do
    if [ -s "$dir/certs/apiserver.crt" ] && curl -sf --cacert "$dir/certs/apiserver.crt" \
        -H "Authorization: Bearer $token" "$server/api/v1/namespaces/default" >/dev/null 2>&1; then
      ok=1; break
    fi
    if ! kill -0 "$(cat "$dir/kube-apiserver.pid")" 2>/dev/null; then break; fi
    sleep 0.5
  done
  if [ "$ok" != 1 ]; then
    echo "kube-apiserver did not become ready; last log lines:" >&2
    tail -n 30 "$dir/kube-apiserver.log" >&2 || true
    stop "$dir"
    exit 1
  fi

  cat > "$dir/kubeconfig" <<KC
apiVersion: v1
kind: Config
clusters:
- name: keygate-test
  cluster:
    server: $server
    certificate-authority: $dir/certs/apiserver.crt
users:
- name: keygate-test-admin
  user:
    token: $token
contexts:
- name: keygate-test
  context:
    cluster: keygate-test
    user: keygate-test-admin
current-context: keygate-test
KC
  chmod 600 "$dir/kubeconfig"
  cat > "$dir/env" <<ENV
export KEYGATE_TEST_KUBECONFIG=$dir/kubeconfig
export KEYGATE_TEST_KUBE_BIN=$bin
ENV
  echo "kube-apiserver ready at $server (kubeconfig: $dir/kubeconfig)" >&2
}

case "${1:-}" in
  start)
    [ -n "${2:-}" ] || { echo "usage: $0 start DIR [--watch-pid PID]" >&2; exit 2; }
    if [ "${3:-}" = "--watch-pid" ]; then start "$2" "${4:?pid}"; else start "$2"; fi ;;
  stop)
    [ -n "${2:-}" ] || { echo "usage: $0 stop DIR" >&2; exit 2; }
    stop "$2" ;;
  *) echo "usage: $0 start DIR [--watch-pid PID] | stop DIR" >&2; exit 2 ;;
esac
