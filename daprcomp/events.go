package daprcomp

// Event is something the component did; WithEventHook turns events into
// metrics outside this package.
type Event struct {
	Kind  EventKind
	Topic string // the pubsub topic; empty for replies and commands (MQTT topics, one per device)
}

// EventKind names an Event.
type EventKind string

// The events the component reports.
const (
	EventSubscribed   EventKind = "subscribed"    // a subscription stream opened
	EventUnsubscribed EventKind = "unsubscribed"  // ... and closed
	EventDelivered    EventKind = "delivered"     // a message sent to a subscriber, first attempt
	EventRedelivered  EventKind = "redelivered"   // sent again after an ACK with an error
	EventAcked        EventKind = "acked"         // ACKed without error
	EventFailed       EventKind = "failed"        // ACKed with an error
	EventDeadLettered EventKind = "dead_lettered" // written to the DLQ
	EventPublished    EventKind = "published"     // a record written to Kafka for an app
	EventReplied      EventKind = "replied"       // a reply sent to a device
	EventCommanded    EventKind = "commanded"     // an output binding "create" sent to a device
	EventRefused      EventKind = "refused"       // ... refused: a topic outside dapr.binding_topics
)

// WithEventHook calls fn for every event. fn is called from many
// goroutines and must not block.
func WithEventHook(fn func(Event)) Option { return func(s *Server) { s.onEvent = fn } }

func (s *Server) event(kind EventKind, topic string) {
	if s.onEvent != nil {
		s.onEvent(Event{Kind: kind, Topic: topic})
	}
}
