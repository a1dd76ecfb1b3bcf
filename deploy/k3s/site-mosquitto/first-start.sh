#!/bin/sh
# Starts Mosquitto with the bridge's session already in it.
#
# Mosquitto keeps a QoS 1 message only for a session subscribed to its
# topic. On a site's very first start, a device can publish (and get its
# PUBACK) before the bridge has ever connected: no session holds the
# request and Mosquitto discards it. So, when Mosquitto has no persistence
# file yet, this script first runs it on a loopback-only listener, where no
# device can reach it, creates the bridge's persistent session there
# (mosquitto_sub -c with the bridge's client id and request filters, QoS 1),
# stops it (Mosquitto writes the session to its persistence file on exit)
# and only then starts Mosquitto with its real configuration. From the first
# request on, Mosquitto queues every request for the bridge.
#
# With a persistence file already there it starts Mosquitto at once: the
# bridge's session may hold queued requests, and connecting as the bridge
# would take them.
#
# Environment (defaults are the site-mosquitto base's):
#   EDGEBRIDGE_CLIENT_ID   the bridge's mqtt.client_id             (edgebridge-1)
#   EDGEBRIDGE_SUBSCRIBE   its mqtt.subscribe filters, space-separated (payment/request/+)
#   MOSQUITTO_CONF         Mosquitto's configuration file          (/mosquitto/config/mosquitto.conf)
#   MOSQUITTO_DATA         its persistence_location                (/mosquitto/data)
#   MOSQUITTO_FIRST_PORT   the loopback port of the first run      (18830)
set -eu

client_id=${EDGEBRIDGE_CLIENT_ID:-edgebridge-1}
filters=${EDGEBRIDGE_SUBSCRIBE:-payment/request/+}
conf=${MOSQUITTO_CONF:-/mosquitto/config/mosquitto.conf}
data=${MOSQUITTO_DATA:-/mosquitto/data}
port=${MOSQUITTO_FIRST_PORT:-18830}
db=$data/mosquitto.db

if [ ! -e "$db" ]; then
	first=$data/first-start.conf
	{
		echo "listener $port 127.0.0.1"
		echo "allow_anonymous true"
		echo "persistence true"
		echo "persistence_location $data/"
		# The same user as the real run, so that it can write the file.
		grep '^user ' "$conf" || true
	} >"$first"
	mosquitto -c "$first" &
	pid=$!
	set --
	for f in $filters; do
		set -- "$@" -t "$f"
	done
	tries=0
	# -E: exit once the subscriptions are acknowledged; -c: keep the session.
	until mosquitto_sub -h 127.0.0.1 -p "$port" -i "$client_id" -c -q 1 -E -W 5 "$@"; do
		tries=$((tries + 1))
		if [ "$tries" -ge 50 ] || ! kill -0 "$pid" 2>/dev/null; then
			echo "first-start: could not create the session of $client_id" >&2
			kill "$pid" 2>/dev/null || true
			exit 1
		fi
		sleep 0.2
	done
	kill -TERM "$pid"
	wait "$pid" || true
	rm -f "$first"
	if [ ! -e "$db" ]; then
		echo "first-start: Mosquitto wrote no $db" >&2
		exit 1
	fi
	echo "first-start: created the session of $client_id ($filters) in $db" >&2
fi
exec mosquitto -c "$conf"
