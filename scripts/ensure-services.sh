#!/usr/bin/env bash
# Makes sure everything fleetagg's demo and tests need is installed and running:
# a Rust toolchain, cmake and OpenSSL headers (paho-mqtt's bundled C build), Mosquitto on
# 127.0.0.1:1883, PostgreSQL on 127.0.0.1:5432 with a `fleetagg` role and database,
# PgBouncer (the pooler tests run one of their own), Chromium (the status page's test opens
# it in a real headless browser), `runuser` (the secret-rotation tests run `initdb`/`pg_ctl` of private password-checking
# PostgreSQL clusters as the postgres user) and a Python virtual environment in
# scripts/.venv with `moto[server]` (a local AWS Secrets Manager for those tests) and
# rmqttd, a clustered MQTT broker built once into ~/.cache/fleetagg (the scale-out tests
# run a private two-node cluster); those two only with --with-moto, which scripts/test
# passes.
# Idempotent: where things already run it only checks them. Needs root (or sudo) for apt.
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf '[ensure-services] %s\n' "$*" >&2; }
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

apt_updated=0
apt_install() {
    if [ "$apt_updated" = 0 ]; then
        say "apt-get update"
        as_root apt-get update -qq
        apt_updated=1
    fi
    say "installing: $*"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

# --- build tools -----------------------------------------------------------------------
missing=()
command -v cmake >/dev/null || missing+=(cmake)
command -v cc >/dev/null || missing+=(gcc)
command -v pkg-config >/dev/null || missing+=(pkg-config)
[ -f /usr/include/openssl/ssl.h ] || missing+=(libssl-dev)
# The PostgreSQL TLS tests make their certificates with the openssl command.
command -v openssl >/dev/null || missing+=(openssl)
command -v curl >/dev/null || missing+=(curl ca-certificates)
command -v python3 >/dev/null || missing+=(python3)
python3 -c 'import venv, ensurepip' 2>/dev/null || missing+=(python3-venv)
command -v mosquitto >/dev/null || missing+=(mosquitto)
command -v mosquitto_sub >/dev/null || missing+=(mosquitto-clients)
command -v psql >/dev/null || missing+=(postgresql postgresql-client)
command -v runuser >/dev/null || missing+=(util-linux)
# The pooler tests run a private PgBouncer in transaction mode.
[ -x /usr/sbin/pgbouncer ] || command -v pgbouncer >/dev/null || missing+=(pgbouncer)
# The status page's browser test runs Debian's Chromium headless (integration-tests/tests/status_page.rs).
command -v chromium >/dev/null || missing+=(chromium)
[ ${#missing[@]} -eq 0 ] || apt_install "${missing[@]}"

if ! command -v cargo >/dev/null; then
    [ -x "$HOME/.cargo/bin/cargo" ] || {
        say "installing the Rust toolchain with rustup"
        curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal -c clippy,rustfmt
    }
    export PATH="$HOME/.cargo/bin:$PATH"
fi

# --- Mosquitto ---------------------------------------------------------------------------
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
if ! port_open 1883; then
    say "starting Mosquitto on 127.0.0.1:1883"
    conf=/etc/mosquitto/mosquitto.conf
    if [ -f "$conf" ]; then as_root mosquitto -d -c "$conf"; else as_root mosquitto -d -p 1883; fi
    for _ in $(seq 50); do port_open 1883 && break; sleep 0.1; done
    port_open 1883 || { say "Mosquitto did not start"; exit 1; }
fi

# --- PostgreSQL --------------------------------------------------------------------------
if ! port_open 5432; then
    say "starting PostgreSQL"
    version=$(ls /etc/postgresql | sort -V | tail -n 1)
    as_root pg_ctlcluster --skip-systemctl-redirect "$version" main start || as_root service postgresql start
    for _ in $(seq 100); do port_open 5432 && break; sleep 0.1; done
    port_open 5432 || { say "PostgreSQL did not start"; exit 1; }
fi

superuser_sql() {
    # Trust auth (as on the project's machines) or, on a stock Debian install, peer auth
    # as the postgres system user.
    if PGCONNECT_TIMEOUT=5 psql -h 127.0.0.1 -U postgres -d postgres -Atqc 'select 1' >/dev/null 2>&1; then
        psql -h 127.0.0.1 -U postgres -d postgres -v ON_ERROR_STOP=1 -Atqc "$1"
    else
        as_root runuser -u postgres -- psql -d postgres -v ON_ERROR_STOP=1 -Atqc "$1"
    fi
}

if ! PGCONNECT_TIMEOUT=5 psql -h 127.0.0.1 -U postgres -d postgres -Atqc 'select 1' >/dev/null 2>&1; then
    # A stock install asks for passwords on 127.0.0.1. The demo and the tests connect as
    # local roles without one (the service's passwords come from secret sources, tested
    # against their own clusters), so trust loopback on this development machine only.
    hba=$(as_root runuser -u postgres -- psql -Atqc 'show hba_file')
    if ! as_root grep -q '# fleetagg: trust loopback' "$hba"; then
        say "allowing trust authentication on loopback in $hba (development machine)"
        as_root sed -i '1i host all all 127.0.0.1/32 trust # fleetagg: trust loopback\nhost all all ::1/128 trust # fleetagg: trust loopback' "$hba"
        as_root runuser -u postgres -- psql -Atqc 'select pg_reload_conf()' >/dev/null
    fi
fi

if [ "$(superuser_sql "select count(*) from pg_roles where rolname = 'fleetagg'")" = 0 ]; then
    say "creating role fleetagg"
    superuser_sql "create role fleetagg login createdb" >/dev/null
fi
if [ "$(superuser_sql "select count(*) from pg_database where datname = 'fleetagg'")" = 0 ]; then
    say "creating database fleetagg"
    superuser_sql "create database fleetagg owner fleetagg" >/dev/null
fi

# --- moto (a local AWS Secrets Manager for the secret-rotation tests) --------------------
# integration-tests/src/moto.rs runs scripts/.venv/bin/moto_server (or $FLEETAGG_MOTO_SERVER).
venv=scripts/.venv
if [ "${1:-}" = "--with-moto" ] && [ ! -x "$venv/bin/moto_server" ]; then
    if [ ! -x "$venv/bin/python" ]; then
        say "creating the Python virtual environment $venv"
        rm -rf "$venv"
        python3 -m venv "$venv"
    fi
    say "installing moto[server] into $venv"
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check 'moto[server]'
    [ -x "$venv/bin/moto_server" ] || { say "moto_server missing after installing moto[server]"; exit 1; }
fi

# --- rmqttd (a two-node clustered broker for the scale-out tests) ----------------------
# integration-tests/src/rmqtt.rs runs $FLEETAGG_RMQTTD (scripts/test sets it to the path
# below). Built once from crates.io into a cache outside the repository and never rebuilt
# while the binary is there: a cold build takes about 22 minutes on 2 cores. Its build
# needs protoc (Debian's protobuf-compiler). Only with --with-moto, like moto: the demo
# does not need it.
rmqttd_version=0.24.0
rmqttd_root="${XDG_CACHE_HOME:-$HOME/.cache}/fleetagg/rmqttd-$rmqttd_version"
ensure_rmqttd() {
    if [ -x "$rmqttd_root/bin/rmqttd" ]; then
        return
    fi
    command -v protoc >/dev/null || apt_install protobuf-compiler
    say "building rmqttd $rmqttd_version into $rmqttd_root (once; about 22 minutes on 2 cores)"
    CARGO_TARGET_DIR="$(dirname "$rmqttd_root")/rmqttd-build" \
        nice -n 19 cargo install --locked --quiet rmqttd --version "$rmqttd_version" --root "$rmqttd_root"
    [ -x "$rmqttd_root/bin/rmqttd" ] || { say "rmqttd missing after cargo install"; exit 1; }
}
if [ "${1:-}" = "--with-moto" ]; then
    ensure_rmqttd
    say "rmqttd: $rmqttd_root/bin/rmqttd"
fi

say "Mosquitto and PostgreSQL are ready${1:+ (and moto, rmqttd)}"
