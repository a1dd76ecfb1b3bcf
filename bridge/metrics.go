package bridge

import (
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/edgebridge/edgebridge/ackwindow"
	"github.com/edgebridge/edgebridge/daprcomp"
	"github.com/edgebridge/edgebridge/grpcmetrics"
)

// Metrics are the bridge's Prometheus metrics:
//
//	edgebridge_mqtt_messages_received_total
//	edgebridge_kafka_records_produced_total
//	edgebridge_kafka_produce_errors_total
//	edgebridge_kafka_commits_total
//	edgebridge_dlq_messages_total{reason}
//	edgebridge_mqtt_replies_published_total
//	edgebridge_mqtt_invalid_topics_total       publishes refused because no broker accepts the topic
//	edgebridge_window_in_flight
//	edgebridge_window_capacity                 backend.window per open backend stream (at least one)
//	edgebridge_delivery_latency_seconds        delivery to final ACK, retries included
//	edgebridge_end_to_end_latency_seconds      MQTT receipt of a request to its reply's PUBACK (backend path)
//	edgebridge_kafka_produce_latency_seconds   one produce of a batch of requests, send to acks=all
//	edgebridge_kafka_consumer_lag{partition}   records of the requests topic the backends' group has not committed
//	edgebridge_mqtt_connected                  1 while connected to the MQTT broker and subscribed
//	edgebridge_data_disk_free_bytes            free space on the embedded Kafka's data disk
//	edgebridge_intake_paused                   1 while intake waits for disk space (kafka.min_free_bytes)
//	edgebridge_dapr_events_total{event}        Dapr component: delivered, redelivered, acked, failed,
//	                                           dead_lettered, published, replied, commanded
//	edgebridge_dapr_subscriptions              Dapr subscription streams open
//	edgebridge_mqtt_server_cert_expiry_timestamp_seconds  when the embedded broker's TLS certificate expires
//	edgebridge_mqtt_login_failures_total       CONNECTs the embedded broker refused (bad login, or an address over its limit)
//	edgebridge_build_info{version,revision,goversion}  1 (with WithBuildInfo)
//
// and the gRPC stream metrics of package grpcmetrics (edgebridge_grpc_stream_*).
type Metrics struct {
	Registry      *prometheus.Registry
	Received      prometheus.Counter
	Produced      prometheus.Counter
	ProduceErrors prometheus.Counter
	Commits       prometheus.Counter
	DLQ           *prometheus.CounterVec
	Replies       prometheus.Counter
	InvalidTopics prometheus.Counter
	Latency       prometheus.Histogram
	EndToEnd      prometheus.Histogram
	Produce       prometheus.Histogram
	Lag           *prometheus.GaugeVec
	DiskFree      prometheus.Gauge
	IntakePaused  prometheus.Gauge
	GRPC          *grpcmetrics.Client
	DaprEvents    *prometheus.CounterVec
	DaprSubs      prometheus.Gauge
	// BrokerProblem is 1 for the reason a broker connection is failing
	// (auth, tls, unreachable), by broker (kafka, mqtt); 0 otherwise.
	BrokerProblem *prometheus.GaugeVec
}

// NewMetrics registers the bridge's metrics in a new registry.
func NewMetrics() *Metrics {
	r := prometheus.NewRegistry()
	r.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
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
		Replies:       f("edgebridge_mqtt_replies_published_total", "Replies acknowledged by the MQTT broker."),
		InvalidTopics: f("edgebridge_mqtt_invalid_topics_total", "Publishes not sent because no MQTT broker accepts the topic."),
		DLQ: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "edgebridge_dlq_messages_total", Help: "Messages dead-lettered, by reason."}, []string{"reason"}),
		Latency: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "edgebridge_delivery_latency_seconds", Help: "Time from handing a record to the backends to its final ACK, retries and resends included.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 16)}),
		EndToEnd: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "edgebridge_end_to_end_latency_seconds", Help: "Time from the MQTT receipt of a request to the PUBACK of its reply, for requests answered through a backend.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 16)}),
		Produce: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "edgebridge_kafka_produce_latency_seconds", Help: "Time of one produce of a batch of device requests, send to acknowledgement by all in-sync replicas.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 16)}),
		Lag: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "edgebridge_kafka_consumer_lag", Help: "Records of the requests topic the backends' consumer group has not committed, by partition (refreshed every 5s)."},
			[]string{"partition"}),
		DiskFree: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "edgebridge_data_disk_free_bytes", Help: "Free space on the embedded Kafka broker's data disk (read every second)."}),
		IntakePaused: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "edgebridge_intake_paused", Help: "1 while intake is paused because the data disk is below kafka.min_free_bytes."}),
		GRPC: grpcmetrics.NewClient(r),
		DaprEvents: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "edgebridge_dapr_events_total", Help: "What the Dapr component did, by event."}, []string{"event"}),
		DaprSubs: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "edgebridge_dapr_subscriptions", Help: "Dapr subscription streams open."}),
		BrokerProblem: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "edgebridge_broker_problem", Help: "1 while the connection to a broker fails for this reason (auth, tls, no_space, too_large, refused, unreachable)."},
			[]string{"broker", "reason"}),
	}
	for _, broker := range []string{"kafka", "mqtt"} {
		for _, reason := range brokerProblemReasons {
			m.BrokerProblem.WithLabelValues(broker, reason)
		}
	}
	r.MustRegister(m.DLQ, m.Latency, m.EndToEnd, m.Produce, m.Lag, m.DiskFree, m.IntakePaused, m.DaprEvents, m.DaprSubs, m.BrokerProblem)
	return m
}

var brokerProblemReasons = []string{"auth", "tls", "no_space", "too_large", "refused", "unreachable"}

// brokerProblem sets broker's problem to reason ("" for none).
func (m *Metrics) brokerProblem(broker, reason string) {
	for _, r := range brokerProblemReasons {
		v := 0.0
		if r == reason {
			v = 1
		}
		m.BrokerProblem.WithLabelValues(broker, r).Set(v)
	}
}

// observeMQTT registers edgebridge_mqtt_connected.
func (m *Metrics) observeMQTT(connected func() bool) {
	m.Registry.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "edgebridge_mqtt_connected", Help: "1 while the bridge is connected to the MQTT broker and subscribed.",
	}, func() float64 {
		if connected() {
			return 1
		}
		return 0
	}))
}

// observeIntake registers edgebridge_mqtt_intake_refused_total.
func (m *Metrics) observeIntake(refused func() int64) {
	m.Registry.MustRegister(prometheus.NewCounterFunc(prometheus.CounterOpts{
		Name: "edgebridge_mqtt_intake_refused_total",
		Help: "Device requests the embedded broker did not PUBACK because the bridge could not write them in time (the device was disconnected and sends them again).",
	}, func() float64 { return float64(refused()) }))
}

// observeServerCert registers edgebridge_mqtt_server_cert_expiry_timestamp_seconds.
func (m *Metrics) observeServerCert(notAfter func() time.Time) {
	m.Registry.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "edgebridge_mqtt_server_cert_expiry_timestamp_seconds",
		Help: "When the embedded MQTT broker's TLS certificate expires (Unix time). The site CA renews its own 30 days ahead.",
	}, func() float64 { return float64(notAfter().Unix()) }))
}

// observeLogins registers edgebridge_mqtt_login_failures_total.
func (m *Metrics) observeLogins(failed func() int64) {
	m.Registry.MustRegister(prometheus.NewCounterFunc(prometheus.CounterOpts{
		Name: "edgebridge_mqtt_login_failures_total",
		Help: "CONNECTs the embedded MQTT broker refused: a wrong or unknown login, or an address past 10 failures a minute (refused unchecked).",
	}, func() float64 { return float64(failed()) }))
}

// setLag replaces the consumer lag series with lag (partitions no longer
// assigned disappear).
func (m *Metrics) setLag(lag map[int32]int64) {
	m.Lag.Reset()
	for p, n := range lag {
		m.Lag.WithLabelValues(strconv.Itoa(int(p))).Set(float64(n))
	}
}

// observeDapr is the Dapr component's event hook.
func (m *Metrics) observeDapr(e daprcomp.Event) {
	switch e.Kind {
	case daprcomp.EventSubscribed:
		m.DaprSubs.Inc()
	case daprcomp.EventUnsubscribed:
		m.DaprSubs.Dec()
	default:
		m.DaprEvents.WithLabelValues(string(e.Kind)).Inc()
	}
}

// BuildInfo describes the running binary.
type BuildInfo struct {
	Version, Revision, Time, GoVersion string
}

// observeBuild registers edgebridge_build_info.
func (m *Metrics) observeBuild(bi BuildInfo) {
	g := prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "edgebridge_build_info",
		Help: "Always 1; the labels say which build is running."}, []string{"version", "revision", "goversion"})
	g.WithLabelValues(bi.Version, bi.Revision, bi.GoVersion).Set(1)
	m.Registry.MustRegister(g)
}

func (m *Metrics) observeWindow(w *ackwindow.Window) {
	m.Registry.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "edgebridge_window_in_flight", Help: "Kafka records fetched and not yet committable.",
	}, func() float64 { return float64(w.InFlight()) }))
	m.Registry.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "edgebridge_window_capacity", Help: "The most Kafka records held: backend.window per open backend stream (at least one).",
	}, func() float64 { return float64(w.Cap()) }))
	m.Registry.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "edgebridge_oldest_unprocessed_request_age_seconds",
		Help: "Age of the oldest request written to Kafka and not yet processed (ACKed by a backend) among those the bridge holds; 0 when none. With a backlog the oldest is held: the window fills from the committed offset.",
	}, func() float64 {
		at, ok := w.Oldest()
		if !ok {
			return 0
		}
		return max(time.Since(at).Seconds(), 0)
	}))
}
