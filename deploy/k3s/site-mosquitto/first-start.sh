#!/bin/sh
# Starts a site's Mosquitto: once the site files are there, with the
# bridge's session already in it, and reloaded when the site files change.
#
# 1. The site files. `edgebridge site mosquitto`, beside Mosquitto, writes
#    the server certificate, the CRL, the password file and the bridge's
#    password into the site directory; Mosquitto cannot start without
#    them, so this waits (up to 10 minutes) until they are there.
#
# 2. The bridge's session. Mosquitto keeps a QoS 1 message only for a
#    session subscribed to its topic. On a site's very first start, a
#    device can publish (and get its PUBACK) before the bridge has ever
#    connected: no session holds the request and Mosquitto discards it. So,
#    when Mosquitto has no persistence file yet, this first runs it on a
#    loopback-only listener, where no device can reach it, creates the
#    bridge's persistent session there (mosquitto_sub -c with the bridge's
#    client id, account and request filters, QoS 1), stops it (Mosquitto
#    writes the session to its persistence file on exit) and only then
#    starts Mosquitto with its real configuration. From the first request
#    on, Mosquitto queues every request for the bridge. With a persistence
#    file already there it starts Mosquitto at once: the bridge's session
#    may hold queued requests, and connecting as the bridge would take them.
#
# 3. Reloads. `edgebridge device add|remove` and the renewal of the
#    server certificate replace files Mosquitto reads only at start or on
#    SIGHUP: every 2 seconds this compares them with what Mosquitto loaded
#    and sends it SIGHUP when they changed. Mosquitto then refuses a removed
#    device's next login or handshake and disconnects its open connection.
#    SIGTERM and SIGINT are passed on to Mosquitto.
#
# Environment (defaults are the site-mosquitto base's):
#   EDGEBRIDGE_CLIENT_ID   the bridge's mqtt.client_id             (edgebridge-1)
#   EDGEBRIDGE_SUBSCRIBE   its mqtt.subscribe filters, space-separated (payment/request/+)
#   EDGEBRIDGE_SITE        the site directory Mosquitto reads      (/edgebridge/site);
#                          "none": no site files (a loopback test broker, anonymous)
#   MOSQUITTO_CONF         Mosquitto's configuration file          (/mosquitto/config/mosquitto.conf)
#   MOSQUITTO_DATA         its persistence_location                (/mosquitto/data)
#   MOSQUITTO_FIRST_PORT   the loopback port of the first run      (18830)
set -eu

client_id=${EDGEBRIDGE_CLIENT_ID:-edgebridge-1}
filters=${EDGEBRIDGE_SUBSCRIBE:-payment/request/+}
site=${EDGEBRIDGE_SITE:-/edgebridge/site}
conf=${MOSQUITTO_CONF:-/mosquitto/config/mosquitto.conf}
data=${MOSQUITTO_DATA:-/mosquitto/data}
port=${MOSQUITTO_FIRST_PORT:-18830}
db=$data/mosquitto.db
[ "$site" = none ] && site=

if [ -n "$site" ]; then
	tries=0
	until [ -s "$site/server.pem" ] && [ -s "$site/passwd" ] && [ -s "$site/crl.pem" ] && [ -s "$site/bridge.password" ]; do
		if [ $((tries % 30)) -eq 0 ]; then
			echo "first-start: waiting for edgebridge site mosquitto to write $site" >&2
		fi
		tries=$((tries + 1))
		if [ "$tries" -ge 600 ]; then
			echo "first-start: no site files in $site after 10 minutes" >&2
			exit 1
		fi
		sleep 1
	done
fi

if [ ! -e "$db" ]; then
	first=$data/first-start.conf
	set --
	{
		echo "listener $port 127.0.0.1"
		echo "persistence true"
		echo "persistence_location $data/"
		# The same user as the real run, so that it can write the file.
		grep '^user ' "$conf" || true
		if [ -n "$site" ]; then
			# The session must be the bridge's account's: Mosquitto queues
			# a request for it only where the ACL lets that account read.
			echo "allow_anonymous false"
			grep -E '^(password_file|acl_file) ' "$conf"
		else
			echo "allow_anonymous true"
		fi
	} >"$first"
	if [ -n "$site" ]; then
		set -- -u edgebridge -P "$(cat "$site/bridge.password")"
	fi
	for f in $filters; do
		set -- "$@" -t "$f"
	done
	mosquitto -c "$first" &
	pid=$!
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

# What Mosquitto loaded from the site directory.
loaded() {
	cat "$site/passwd" "$site/crl.pem" "$site/server.pem" "$site/server.key" 2>/dev/null | cksum
}
last=
if [ -n "$site" ]; then
	last=$(loaded)
fi
mosquitto -c "$conf" &
pid=$!
nap=
trap 'kill -TERM "$pid" $nap 2>/dev/null || true' TERM INT
while kill -0 "$pid" 2>/dev/null; do
	sleep 2 &
	nap=$!
	wait "$nap" || true # a signal ends the wait early: the trap runs at once
	nap=
	if [ -n "$site" ] && now=$(loaded) && [ "$now" != "$last" ]; then
		last=$now
		echo "first-start: site files changed: reloading Mosquitto" >&2
		kill -HUP "$pid" 2>/dev/null || true
	fi
done
status=0
wait "$pid" || status=$?
exit "$status"
