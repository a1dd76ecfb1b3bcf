package embedded

import (
	"errors"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"
)

// DefaultIntakeWait bounds how long a device's request waits inside the
// broker for its Kafka write before the broker gives up on it. It stays
// well below what devices tolerate without an answer to their keepalive:
// paho's defaults (30 s keepalive, 10 s ping timeout) drop a connection
// about 40 s after the last packet received.
const DefaultIntakeWait = 10 * time.Second

// Taker takes device requests inside the broker (mqttin.Intake): the
// broker PUBACKs a request only after Take returned true.
type Taker interface {
	// Takes reports whether a publish to topic is a request.
	Takes(topic string) bool
	// Take blocks until the request was written (true) or wait passed
	// (false).
	Take(topic string, payload []byte, dup bool, wait time.Duration) bool
}

// Replies is a Taker that also publishes the bridge's replies through
// the broker (mqttin.Intake): ListenMQTT gives it the broker's in-process
// publish, so replies do not cross a connection to the broker either.
type Replies interface {
	SetReplier(publish func(topic string, payload []byte) error)
}

// errIntakeBusy is why the broker closes a device's connection whose
// request the bridge did not take in time.
var errIntakeBusy = errors.New("embedded: request not taken in time (intake held back); the device resends it after reconnecting")

// intakeHook hands device requests to a Taker before mochi writes the
// PUBACK (mochi runs OnPublish hooks first): a taken request is PUBACKed
// and kept away from subscribers and the retained store; one not taken in
// time gets no PUBACK (ErrRejectPacket is the only answer that withholds it
// from an MQTT 3.1.1 client) and its connection is closed, so the device
// sends it again once it reconnects.
//
// mochi reads each client on its own goroutine, so a waiting hook holds
// back only its device. The wait is bounded: mochi refreshes a connection's
// read and write deadline (1.5 x keepalive) only before each read, and a
// device whose keepalive ping goes unanswered gives up on the connection.
type intakeHook struct {
	mqtt.HookBase
	in   Taker
	wait time.Duration
}

func (h *intakeHook) ID() string { return "edgebridge-intake" }

func (h *intakeHook) Provides(b byte) bool { return b == mqtt.OnPublish }

func (h *intakeHook) OnPublish(cl *mqtt.Client, pk packets.Packet) (packets.Packet, error) {
	if cl.Net.Inline || !h.in.Takes(pk.TopicName) {
		return pk, nil
	}
	wait := h.wait
	if ka := time.Duration(cl.State.Keepalive) * time.Second; ka > 0 {
		wait = min(wait, ka/2)
	}
	if h.in.Take(pk.TopicName, pk.Payload, pk.FixedHeader.Dup, wait) {
		return pk, packets.CodeSuccessIgnore // PUBACK, routed nowhere
	}
	if cl.Properties.ProtocolVersion == 5 {
		_ = cl.WritePacket(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Disconnect},
			ReasonCode: packets.ErrServerBusy.Code, Properties: packets.Properties{ReasonString: packets.ErrServerBusy.Reason}})
	}
	cl.Stop(errIntakeBusy)
	return pk, packets.ErrRejectPacket
}

// inlineIDHook refuses a client connecting with the inline client's id
// (with Replies on): mochi would give it the inline client's place, a
// session takeover, and the bridge's replies would stop.
type inlineIDHook struct{ mqtt.HookBase }

func (h *inlineIDHook) ID() string { return "edgebridge-inline-id" }

func (h *inlineIDHook) Provides(b byte) bool { return b == mqtt.OnConnect }

func (h *inlineIDHook) OnConnect(cl *mqtt.Client, _ packets.Packet) error {
	if cl.ID == mqtt.InlineClientId {
		return packets.ErrClientIdentifierNotValid
	}
	return nil
}
