package mqttin

import (
	"errors"
	"sync"
	"sync/atomic"
	"time"
)

// Message states of a message taken by an Intake.
const (
	msgPending   int32 = iota // queued, not yet written
	msgClaimed                // the pipeline is writing it
	msgAbandoned              // Take gave up first: never written, never PUBACKed
	msgAcked                  // written and acknowledged
)

// Intake takes device requests inside the MQTT broker's own process (the
// embedded broker's publish hook) rather than over a subscription, so that
// the broker PUBACKs a device only after the pipeline acknowledged the
// message: a PUBACK then means "written to Kafka", and nothing the broker
// acknowledged waits in the broker's memory or session store.
//
// Take is called on the publishing connection's own goroutine and blocks
// it; the pipeline reads Messages, claims each (Message.Claim) and calls
// Message.Ack after the write. Safe for concurrent use.
//
// Replies go back the same way: the broker sets its in-process publish
// (SetReplier) and the bridge publishes each reply through Reply instead
// of over a connection to the broker.
type Intake struct {
	filters []string
	msgs    chan Message
	done    chan struct{}
	once    sync.Once
	refused atomic.Int64
	replier atomic.Pointer[func(topic string, payload []byte) error]
}

// ErrNoReplier is Reply's error while no broker set its replier.
var ErrNoReplier = errors.New("mqttin: no broker publishes the intake's replies")

// NewIntake returns an Intake for the request topic filters, holding at
// most queue messages that wait for the pipeline (default 4096 when
// queue <= 0). It does no I/O.
func NewIntake(filters []string, queue int) *Intake {
	if queue <= 0 {
		queue = DefaultQueueSize
	}
	return &Intake{filters: filters, msgs: make(chan Message, queue), done: make(chan struct{})}
}

// Takes reports whether a publish to topic is a request the intake takes
// (it matches one of the filters).
func (in *Intake) Takes(topic string) bool {
	for _, f := range in.filters {
		if FilterMatches(f, topic) {
			return true
		}
	}
	return false
}

// Take hands one device publish to the pipeline and blocks until the
// pipeline acknowledged it (true: the broker may PUBACK) or until wait
// passed or the intake closed (false: the broker must not PUBACK, and
// closes the connection so the device sends it again after reconnecting).
// A message given up on before the pipeline claimed it is never written;
// one given up on while its write was under way may be written and then
// sent again by the device: a redelivery, deduplicated by its message id.
func (in *Intake) Take(topic string, payload []byte, dup bool, wait time.Duration) bool {
	timer := time.NewTimer(wait)
	defer timer.Stop()
	state := new(atomic.Int32)
	acked := make(chan struct{})
	m := Message{Topic: topic, DeviceID: DeviceID(topic), Payload: payload, ReceivedAt: time.Now(), Duplicate: dup,
		state: state, ack: func() {
			if state.Swap(msgAcked) != msgAcked {
				close(acked)
			}
		}}
	select {
	case in.msgs <- m:
	case <-timer.C:
		in.refused.Add(1)
		return false
	case <-in.done:
		in.refused.Add(1)
		return false
	}
	select {
	case <-acked:
		return true
	case <-timer.C:
	case <-in.done:
	}
	if state.CompareAndSwap(msgPending, msgAbandoned) || state.Load() != msgAcked {
		in.refused.Add(1)
		return false
	}
	return true // acknowledged as the wait ended
}

// Messages returns the taken messages, each device's in the order it sent them.
func (in *Intake) Messages() <-chan Message { return in.msgs }

// Refused counts the publishes Take gave up on (the devices were not
// PUBACKed and send them again).
func (in *Intake) Refused() int64 { return in.refused.Load() }

// SetReplier sets how the broker publishes a device reply inside its
// process: QoS 1 to the topic's subscribers, kept in an offline device's
// session, returning once that is done (what the broker's PUBACK to a
// client means).
func (in *Intake) SetReplier(publish func(topic string, payload []byte) error) {
	in.replier.Store(&publish)
}

// CanReply reports whether a broker set its replier.
func (in *Intake) CanReply() bool { return in.replier.Load() != nil }

// Reply publishes a device reply through the broker's replier. A topic no
// broker accepts is ErrInvalidTopic (the broker's in-process publish does
// not check it). Close does not stop replies: a draining bridge still
// answers what it settles, until the broker itself closes (its replier
// then fails).
func (in *Intake) Reply(topic string, payload []byte) error {
	if err := ValidTopic(topic); err != nil {
		return err
	}
	r := in.replier.Load()
	if r == nil {
		return ErrNoReplier
	}
	return (*r)(topic, payload)
}

// Close makes every waiting and later Take return false at once: the
// pipeline takes no more. Safe to call more than once.
func (in *Intake) Close() { in.once.Do(func() { close(in.done) }) }
