package bridge

import (
	"context"
	"log/slog"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	dto "github.com/prometheus/client_model/go"

	"github.com/edgebridge/edgebridge/config"
)

// Status is a snapshot of one bridge for operators: GET /status on the
// admin endpoint, and what `edgebridge status` shows. Counters are totals
// since start; a viewer computes rates from two snapshots.
type Status struct {
	Time     time.Time `json:"time"`
	Version  string    `json:"version,omitempty"`
	Revision string    `json:"revision,omitempty"`
	Ready    bool      `json:"ready"`
	NotReady []string  `json:"not_ready,omitempty"`
	MQTT     Broker    `json:"mqtt"`
	Kafka    Broker    `json:"kafka"`
	// Backends is every backend address, sorted; empty without targets.
	Backends []Backend `json:"backends"`
	Window   Window    `json:"window"`
	// Lag is the backends' consumer group lag by partition (refreshed
	// every 5s); nil before the first refresh or without backends.
	Lag      map[string]int64 `json:"lag"`
	Counters Counters         `json:"counters"`
	// DeadLetters counts dead-lettered messages by reason.
	DeadLetters map[string]int64 `json:"dead_letters"`
	// RecentErrors are the last warnings and errors the bridge logged,
	// oldest first.
	RecentErrors []LogEntry `json:"recent_errors"`
}

// Broker is the state of the connection to a broker.
type Broker struct {
	Address   string `json:"address"`
	Connected bool   `json:"connected"`
	// Problem is why not: auth, tls or unreachable; Detail says more.
	Problem string `json:"problem,omitempty"`
	Detail  string `json:"detail,omitempty"`
}

// Backend is one backend address and its stream.
type Backend struct {
	Target string `json:"target"`
	Addr   string `json:"addr"`
	Up     bool   `json:"up"`
	// While up.
	UpSince   *time.Time `json:"up_since,omitempty"`
	Credits   int        `json:"credits"`
	InFlight  int        `json:"in_flight"`
	RTTMillis float64    `json:"rtt_ms"`
	Load      int        `json:"load_percent"`
	// Deliveries waiting for this address and the partitions it serves.
	Queued     int `json:"queued"`
	Partitions int `json:"partitions"`
	// While down: why.
	Reason string `json:"reason,omitempty"`
	Error  string `json:"error,omitempty"`
}

// Window is the ACK window's use.
type Window struct {
	Capacity int `json:"capacity"`
	InFlight int `json:"in_flight"`
}

// Counters are totals since start.
type Counters struct {
	Received     int64 `json:"received"`
	Produced     int64 `json:"produced"`
	Replies      int64 `json:"replies"`
	Commits      int64 `json:"commits"`
	DeadLettered int64 `json:"dead_lettered"`
}

// LogEntry is one logged warning or error.
type LogEntry struct {
	Time    time.Time `json:"time"`
	Level   string    `json:"level"`
	Message string    `json:"message"`
	// Attrs are the record's attributes as key=value, as the text log has them.
	Attrs string `json:"attrs,omitempty"`
}

// Status returns a snapshot of the bridge. It is safe for concurrent use.
func (b *Bridge) Status() Status {
	s := Status{Time: time.Now(), Backends: []Backend{}, DeadLetters: map[string]int64{}}
	if b.build != nil {
		s.Version, s.Revision = b.build.Version, b.build.Revision
	}
	s.Ready, s.NotReady = b.Ready()
	s.MQTT = Broker{Address: config.RedactedURL(b.cfg.MQTT.Broker), Connected: b.mqtt.Subscribed()}
	s.MQTT.Problem, s.MQTT.Detail = b.mqtt.Problem()
	s.Kafka = Broker{Address: strings.Join(b.cfg.Kafka.Brokers, ","), Connected: b.kafkaOK.Load()}
	if !s.Kafka.Connected {
		if p := b.kafkaWhy.Load(); p != nil {
			s.Kafka.Problem, s.Kafka.Detail = p.reason, p.why
		}
	}
	if b.pool != nil {
		for _, l := range b.pool.Status() {
			be := Backend{Target: l.Target, Addr: l.Addr, Up: l.Up, Credits: l.Credits, InFlight: l.InFlight,
				RTTMillis: float64(l.RTT.Microseconds()) / 1000, Load: l.Load, Queued: l.Queued, Partitions: l.Partitions}
			if l.Up {
				since := l.Since
				be.UpSince = &since
			} else {
				be.Reason = string(l.Reason)
				if l.Err != nil {
					be.Error = clipErr(l.Err.Error())
				}
			}
			s.Backends = append(s.Backends, be)
		}
	}
	s.Window = Window{Capacity: b.win.Cap(), InFlight: b.win.InFlight()}
	if lag := b.lag.Load(); lag != nil {
		s.Lag = make(map[string]int64, len(*lag))
		for p, n := range *lag {
			s.Lag[strconv.Itoa(int(p))] = n
		}
	}
	m := b.metrics
	s.Counters = Counters{Received: counter(m.Received), Produced: counter(m.Produced), Replies: counter(m.Replies), Commits: counter(m.Commits)}
	if families, err := m.Registry.Gather(); err == nil {
		for _, f := range families {
			if f.GetName() != "edgebridge_dlq_messages_total" {
				continue
			}
			for _, mm := range f.GetMetric() {
				n := int64(mm.GetCounter().GetValue())
				s.DeadLetters[label(mm, "reason")] = n
				s.Counters.DeadLettered += n
			}
		}
	}
	s.RecentErrors = b.recent.entries()
	return s
}

func counter(c interface{ Write(*dto.Metric) error }) int64 {
	var m dto.Metric
	if c.Write(&m) != nil {
		return 0
	}
	return int64(m.GetCounter().GetValue())
}

func label(m *dto.Metric, name string) string {
	for _, l := range m.GetLabel() {
		if l.GetName() == name {
			return l.GetValue()
		}
	}
	return ""
}

// recentLog keeps the last warnings and errors logged through it.
type recentLog struct {
	mu   sync.Mutex
	ring []LogEntry
	next int
	full bool
}

// recentErrors is how many warnings and errors Status reports.
const recentErrors = 20

func newRecentLog() *recentLog { return &recentLog{ring: make([]LogEntry, recentErrors)} }

func (r *recentLog) add(e LogEntry) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.ring[r.next] = e
	r.next = (r.next + 1) % len(r.ring)
	r.full = r.full || r.next == 0
}

func (r *recentLog) entries() []LogEntry {
	r.mu.Lock()
	defer r.mu.Unlock()
	if !r.full {
		return slices.Clone(r.ring[:r.next])
	}
	return append(slices.Clone(r.ring[r.next:]), r.ring[:r.next]...)
}

// teeHandler passes every record to next and keeps warnings and errors
// in a recentLog.
type teeHandler struct {
	next   slog.Handler
	recent *recentLog
	attrs  []slog.Attr // from WithAttrs, rendered into each entry
	group  string
}

func (h teeHandler) Enabled(ctx context.Context, l slog.Level) bool {
	return l >= slog.LevelWarn || h.next.Enabled(ctx, l)
}

func (h teeHandler) Handle(ctx context.Context, r slog.Record) error {
	if r.Level >= slog.LevelWarn {
		var b strings.Builder
		add := func(a slog.Attr) bool {
			if b.Len() > 0 {
				b.WriteByte(' ')
			}
			if h.group != "" {
				b.WriteString(h.group + ".")
			}
			b.WriteString(a.Key + "=" + a.Value.String())
			return true
		}
		for _, a := range h.attrs {
			add(a)
		}
		r.Attrs(add)
		h.recent.add(LogEntry{Time: r.Time, Level: r.Level.String(), Message: r.Message, Attrs: clipErr(b.String())})
	}
	if !h.next.Enabled(ctx, r.Level) {
		return nil
	}
	return h.next.Handle(ctx, r)
}

func (h teeHandler) WithAttrs(as []slog.Attr) slog.Handler {
	h.next = h.next.WithAttrs(as)
	h.attrs = append(slices.Clip(h.attrs), as...)
	return h
}

func (h teeHandler) WithGroup(name string) slog.Handler {
	h.next = h.next.WithGroup(name)
	h.group = strings.TrimPrefix(h.group+"."+name, ".")
	return h
}
