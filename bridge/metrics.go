package bridge

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/edgebridge/edgebridge/ackwindow"
	"github.com/edgebridge/edgebridge/grpcout"
)

// Metrics are the bridge's Prometheus metrics:
//
//	edgebridge_mqtt_messages_received_total
//	edgebridge_kafka_records_produced_total
//	edgebridge_kafka_produce_errors_total
//	edgebridge_kafka_commits_total
//	edgebridge_dlq_messages_total{reason}
//	edgebridge_grpc_deliveries_total
//	edgebridge_grpc_acks_total{outcome}
//	edgebridge_grpc_ack_latency_seconds
//	edgebridge_grpc_redeliveries_total
//	edgebridge_grpc_reconnects_total{target}
//	edgebridge_grpc_heartbeat_rtt_seconds
//	edgebridge_mqtt_replies_published_total
//	edgebridge_window_in_flight
type Metrics struct {
	Registry      *prometheus.Registry
	Received      prometheus.Counter
	Produced      prometheus.Counter
	ProduceErrors prometheus.Counter
	Commits       prometheus.Counter
	DLQ           *prometheus.CounterVec
	Delivered     prometheus.Counter
	Acks          *prometheus.CounterVec
	AckLatency    prometheus.Histogram
	Redeliveries  prometheus.Counter
	Reconnects    *prometheus.CounterVec
	HeartbeatRTT  prometheus.Histogram
	Replies       prometheus.Counter
}

// NewMetrics registers the bridge's metrics in a new registry.
func NewMetrics() *Metrics {
	r := prometheus.NewRegistry()
	f := func(name, help string) prometheus.Counter {
		c := prometheus.NewCounter(prometheus.CounterOpts{Name: name, Help: help})
		r.MustRegister(c)
		return c
	}
	m := &Metrics{
		Registry:      r,
		Received:      f("edgebridge_mqtt_messages_received_total", "Device messages received over MQTT."),
		Produced:      f("edgebridge_kafka_records_produced_total", "Records acknowledged by Kafka (requests and dead letters)."),
		ProduceErrors: f("edgebridge_kafka_produce_errors_total", "Failed Kafka produce attempts (retried)."),
		Commits:       f("edgebridge_kafka_commits_total", "Partition offsets committed."),
		Delivered:     f("edgebridge_grpc_deliveries_total", "Deliveries handed to a backend stream, retries included."),
		Redeliveries:  f("edgebridge_grpc_redeliveries_total", "Deliveries scheduled again after a RETRY."),
		Replies:       f("edgebridge_mqtt_replies_published_total", "Replies acknowledged by the MQTT broker."),
		DLQ: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "edgebridge_dlq_messages_total", Help: "Messages dead-lettered, by reason."}, []string{"reason"}),
		Acks: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "edgebridge_grpc_acks_total", Help: "Backend ACKs by outcome."}, []string{"outcome"}),
		Reconnects: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "edgebridge_grpc_reconnects_total", Help: "Backend streams that ended and were reopened."}, []string{"target"}),
		AckLatency: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "edgebridge_grpc_ack_latency_seconds", Help: "Time from delivery to the backend's ACK.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 14)}),
		HeartbeatRTT: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "edgebridge_grpc_heartbeat_rtt_seconds", Help: "Ping/pong round-trip time on backend streams.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 14)}),
	}
	r.MustRegister(m.DLQ, m.Acks, m.Reconnects, m.AckLatency, m.HeartbeatRTT)
	return m
}

func (m *Metrics) observeWindow(w *ackwindow.Window) {
	m.Registry.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "edgebridge_window_in_flight", Help: "Kafka records fetched and not yet committable.",
	}, func() float64 { return float64(w.InFlight()) }))
}

func (m *Metrics) streamEvent(e grpcout.Event) {
	switch e.Kind {
	case grpcout.StreamDown:
		m.Reconnects.WithLabelValues(e.Target).Inc()
	case grpcout.Pong:
		m.HeartbeatRTT.Observe(e.RTT.Seconds())
	}
}
