package integration

import (
	"context"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	mosquittoconf "github.com/edgebridge/edgebridge/deploy/mosquitto"
	"github.com/edgebridge/edgebridge/kit/devicesim"
	"github.com/edgebridge/edgebridge/kit/proc"
)

// TestMosquittoFirstStart: on a site's very first start, devices publish to
// a fresh Mosquitto (and get their PUBACKs) before the bridge has ever
// connected. Started through deploy/k3s/site-mosquitto/first-start.sh, as
// the site-mosquitto base and the upstream compose overlay start it,
// Mosquitto holds those requests in the bridge's session and the bridge
// answers every one. Started alone (the control), Mosquitto discards them:
// the bridge receives only a request published after it subscribed.
func TestMosquittoFirstStart(t *testing.T) {
	t.Run("first-start.sh", func(t *testing.T) { mosquittoFirstStart(t, true) })
	t.Run("mosquitto alone", func(t *testing.T) { mosquittoFirstStart(t, false) })
}

func mosquittoFirstStart(t *testing.T, script bool) {
	const clientID, devices, requests = "edgebridge-1", 5, 20
	dir := t.TempDir()
	addr := freeAddr(t)
	_, port, _ := net.SplitHostPort(addr)
	portN, _ := strconv.Atoi(port)
	conf := filepath.Join(dir, "mosquitto.conf")
	if err := os.WriteFile(conf, []byte(mosquittoconf.Local(portN, dir)), 0o644); err != nil {
		t.Fatal(err)
	}
	if script {
		_, firstPort, _ := net.SplitHostPort(freeAddr(t))
		sh := startEnv(t, []string{"EDGEBRIDGE_CLIENT_ID=" + clientID, "EDGEBRIDGE_SUBSCRIBE=payment/request/+", "EDGEBRIDGE_SITE=none",
			"MOSQUITTO_CONF=" + conf, "MOSQUITTO_DATA=" + dir, "MOSQUITTO_FIRST_PORT=" + firstPort},
			"sh", "../../deploy/k3s/site-mosquitto/first-start.sh")
		t.Cleanup(func() { stopScript(t, sh) })
	} else {
		start(t, "mosquitto", "-c", conf)
	}
	waitFor(t, 20*time.Second, "mosquitto to listen", func() bool { return dialable(addr) })

	// The devices publish first: Mosquitto PUBACKs every request.
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	counters := new(devicesim.Counters)
	type outcome struct {
		res devicesim.Result
		err error
	}
	done := make(chan outcome, 1)
	go func() {
		res, err := devicesim.Run(ctx, devicesim.Config{Broker: "tcp://" + addr, Devices: devices, Requests: requests,
			Outstanding: requests, Burst: true, Counters: counters, Drain: 2 * time.Minute}, nil)
		done <- outcome{res, err}
	}()
	waitFor(t, 30*time.Second, "Mosquitto to PUBACK every request", func() bool { return counters.Acked.Load() == devices*requests })

	// Then the bridge starts for the first time.
	pay := startPaymentd(t, freeAddr(t), filepath.Join(t.TempDir(), "ledger.jsonl"))
	cfgPath, admin := writeBridgeConfig(t, bridgeOpts{mqtt: "tcp://" + addr, kafka: "embedded", backend: pay.addr, clientID: clientID})
	br := startBridge(t, cfgPath, admin)

	if script {
		o := <-done
		if o.err != nil {
			t.Fatal(o.err)
		}
		if o.res.Replied != devices*requests || o.res.Lost() != 0 {
			t.Fatalf("PUBACKed before the bridge first connected: %d, answered %d, lost %d", len(o.res.Acked), o.res.Replied, o.res.Lost())
		}
		return
	}
	// The control: a request published now is answered, and by then the
	// bridge has received nothing else. (Had Mosquitto kept the earlier
	// requests, it would have sent them to the bridge's session first.)
	marker, err := devicesim.Run(context.Background(), devicesim.Config{Broker: "tcp://" + addr, Devices: 1, Requests: 1,
		DevicePrefix: "marker", Drain: time.Minute}, nil)
	if err != nil || marker.Replied != 1 {
		t.Fatalf("a request published after the bridge subscribed: answered %d, %v", marker.Replied, err)
	}
	received, err := br.Metric("edgebridge_mqtt_messages_received_total")
	if err != nil {
		t.Fatal(err)
	}
	if received != 1 || counters.Replied.Load() != 0 {
		t.Fatalf("without first-start.sh the bridge received %.0f requests and answered %d of those published before it connected; want 1 and 0 (is the gap gone? then drop the script)",
			received, counters.Replied.Load())
	}
	t.Logf("without first-start.sh Mosquitto PUBACKed %d requests before the bridge connected and discarded them", counters.Acked.Load())
}

// stopScript stops first-start.sh as a container engine does, with
// SIGTERM, and fails t unless it passes the signal on to Mosquitto and
// exits (a SIGKILL of the script alone would leave Mosquitto running).
func stopScript(t *testing.T, sh *proc.Process) {
	if err := sh.Stop(15 * time.Second); err != nil && !strings.Contains(err.Error(), "exit status") {
		t.Errorf("first-start.sh on SIGTERM: %v\n%s", err, sh.Output())
	}
}
