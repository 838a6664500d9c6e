#!/usr/bin/env bash
# Smoke benchmark of the Mosquitto plugin: the same QoS 1 load through Debian's Mosquitto 2.0,
# plain, then with the plugin storing into SQLite and into MariaDB (127.0.0.1:3306, root, no
# password). Prints, per run, the messages/s acknowledged to the publishers and the messages/s
# stored (until the last row is in the table).
#
#   benches/mosquitto_smoke.sh [messages] [publishers]     # defaults: 100000 4
#
# Needs mosquitto, mosquitto-clients, sqlite3 and mariadb-client; builds the release plugin.
set -euo pipefail
cd "$(dirname "$0")/.."
n=${1:-100000}
publishers=${2:-4}
each=$((n / publishers))
n=$((each * publishers))
plugin=$PWD/target/release/libmqtt_offline_messages_mosquitto.so
cargo build --release -q -p mqtt-offline-messages-mosquitto

dir=$(mktemp -d)
db=smoke_$$
pid=
cleanup() {
  [ -n "$pid" ] && kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null
  mariadb -h127.0.0.1 -uroot -e "drop database if exists $db" 2>/dev/null || true
  rm -rf "$dir"
}
trap cleanup EXIT
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
echo "topic readwrite #" > "$dir/acl"
# One file of 100-byte payloads per publisher.
for p in $(seq 1 "$publishers"); do
  seq -f "%0100g" "$((p * each))" "$(((p + 1) * each - 1))" > "$dir/load-$p"
done

# run NAME "EXTRA MOSQUITTO.CONF LINES" COUNT-COMMAND
run() {
  printf 'listener %s 127.0.0.1\nallow_anonymous true\nuser %s\nmax_queued_messages 0\nacl_file %s\nlog_dest file %s\n%b' \
    "$port" "$(id -un)" "$dir/acl" "$dir/$1.log" "$2" > "$dir/$1.conf"
  mosquitto -c "$dir/$1.conf" 2>>"$dir/$1.stderr" & pid=$!
  until grep -q running "$dir/$1.log" 2>/dev/null; do kill -0 "$pid"; sleep 0.1; done
  local start acked stored
  start=$(date +%s.%N)
  for p in $(seq 1 "$publishers"); do
    mosquitto_pub -p "$port" -q 1 -i "smoke-$p" -t "smoke/$p" -l < "$dir/load-$p" &
  done
  wait $(jobs -p | grep -v "^$pid$")
  acked=$(date +%s.%N)
  stored=$acked
  if [ -n "$3" ]; then
    until [ "$(eval "$3")" -ge "$n" ] 2>/dev/null; do sleep 0.05; done
    stored=$(date +%s.%N)
  fi
  kill "$pid"; wait "$pid" 2>/dev/null || true; pid=
  awk -v name="$1" -v n="$n" -v s="$start" -v a="$acked" -v d="$stored" -v c="$3" 'BEGIN {
    printf "%-18s %8d messages  acked %8.0f msg/s", name, n, n / (a - s)
    if (c != "") printf "  stored %8.0f msg/s", n / (d - s)
    printf "\n" }'
}

plugin_lines() { printf 'plugin %s\nplugin_opt_config %s\n' "$plugin" "$1"; }

run plain "" ""

cat > "$dir/sqlite.hocon" <<EOF
sqlite { enable = true, path = "$dir/smoke.db", init_default_schema = true, topics = ["#"], spool_dir = "$dir/spool-sqlite", dead_letter_file = "$dir/dead.jsonl" }
EOF
run plugin-sqlite "$(plugin_lines "$dir/sqlite.hocon")" "sqlite3 $dir/smoke.db 'select count(*) from mqtt_msg'"

mariadb -h127.0.0.1 -uroot -e "create database $db"
cat > "$dir/mysql.hocon" <<EOF
mysql { enable = true, server = "127.0.0.1:3306", username = root, password = "", database = $db, init_default_schema = true, topics = ["#"], spool_dir = "$dir/spool-mysql", dead_letter_file = "$dir/dead.jsonl" }
EOF
run plugin-mariadb "$(plugin_lines "$dir/mysql.hocon")" "mariadb -h127.0.0.1 -uroot -N -e 'select count(*) from $db.mqtt_msg'"
