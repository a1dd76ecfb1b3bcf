package bridge

// The one place config becomes the components' configs: each function
// maps the product's settings (package config, defaults applied) onto
// one component. Components fall back to the same named defaults when
// used without config (their defaults_test.go files check they agree).

import (
	"crypto/tls"
	"path/filepath"

	"github.com/edgebridge/edgebridge/config"
	"github.com/edgebridge/edgebridge/daprcomp"
	"github.com/edgebridge/edgebridge/grpcout"
	"github.com/edgebridge/edgebridge/kafkapipe"
	"github.com/edgebridge/edgebridge/mqttin"
	"github.com/edgebridge/edgebridge/settle"
)

// settleConfig: one finisher per record the configured streams hold: a
// reply publish waits for Mosquitto's PUBACK before its record is ACKed,
// so with fewer finishers the replies in flight, not the CPU, capped
// throughput (8 finishers: ~8k msg/s at a 1 ms PUBACK round trip; see
// docs/PERFORMANCE.md). Idle finishers cost a few KB each.
func settleConfig(cfg config.Config) settle.Config {
	return settle.Config{
		Policy:          settle.Policy{MaxAttempts: cfg.Backend.MaxAttempts, Backoff: cfg.Backend.RetryBackoff},
		Finishers:       cfg.Backend.Window * max(len(cfg.Backend.Targets), 1),
		DLQTopic:        cfg.Kafka.DLQTopic,
		MaxMessageBytes: cfg.Kafka.MaxMessageBytes,
		WantReply:       true,
	}
}

func mqttConfig(cfg config.Config, user string, password func() (string, error), tc *tls.Config) mqttin.Config {
	return mqttin.Config{
		Broker:    cfg.MQTT.Broker,
		ClientID:  cfg.MQTT.ClientID,
		Subscribe: cfg.MQTT.Subscribe,
		Username:  user,
		Password:  password,
		TLS:       tc,
	}
}

func producerConfig(cfg config.Config, sec kafkapipe.Security) kafkapipe.ProducerConfig {
	return kafkapipe.ProducerConfig{Brokers: cfg.Kafka.Brokers, MaxRequestBytes: cfg.Kafka.MaxMessageBytes, Security: sec,
		TopicConfigs: cfg.Kafka.TopicConfigs()}
}

// consumerConfig is the backends' consumer group.
func consumerConfig(cfg config.Config, sec kafkapipe.Security) kafkapipe.ConsumerConfig {
	c := kafkapipe.ConsumerConfig{
		Brokers:           cfg.Kafka.Brokers,
		Security:          sec,
		GroupID:           cfg.Kafka.GroupID,
		Topic:             cfg.Kafka.Topic,
		CommitInterval:    cfg.Kafka.CommitInterval,
		SessionTimeout:    cfg.Kafka.SessionTimeout,
		HeartbeatInterval: cfg.Kafka.HeartbeatInterval,
		DrainTimeout:      cfg.Shutdown.DrainTimeout,
		// A restart after a crash takes the partitions at once.
		MemberFile: filepath.Join(cfg.Kafka.DataDir, backendMemberFile),
	}
	// What the consumer handed out: only needed (and written) with
	// backend.max_request_age.
	if cfg.Backend.MaxRequestAge > 0 {
		c.HandedFile = filepath.Join(cfg.Kafka.DataDir, handedFile)
	}
	return c
}

// poolConfig is the pool of backend streams; token, if set, is read at
// every call (a rotated token needs no restart).
func poolConfig(cfg config.Config, tc *tls.Config, token func() (string, error)) grpcout.Config {
	be := cfg.Backend
	return grpcout.Config{
		Targets:          be.Targets,
		BridgeID:         cfg.MQTT.ClientID,
		Window:           be.Window,
		OpenTimeout:      be.OpenTimeout,
		AckTimeout:       be.AckTimeout,
		ResolveInterval:  be.ResolveInterval,
		HealthCheckAfter: be.Reconnect.HealthCheckAfter,
		Backoff: grpcout.Backoff{Initial: be.Reconnect.Initial, Max: be.Reconnect.Max,
			Jitter: be.Reconnect.Jitter, ResetAfter: be.Reconnect.ResetAfter},
		Heartbeat: grpcout.Heartbeat{Interval: be.Heartbeat.Interval, MinInterval: be.Heartbeat.MinInterval,
			MaxInterval: be.Heartbeat.MaxInterval, Timeout: be.Heartbeat.Timeout, SlowRTT: be.Heartbeat.SlowRTT},
		Keepalive:   grpcout.Keepalive{Time: be.Keepalive.Time, Timeout: be.Keepalive.Timeout},
		TLS:         tc,
		TokenSource: token,
	}
}

func daprConfig(cfg config.Config, sec kafkapipe.Security) daprcomp.Config {
	return daprcomp.Config{
		SocketPath:        cfg.Dapr.SocketPath(),
		Brokers:           cfg.Kafka.Brokers,
		Security:          sec,
		Partitions:        cfg.Kafka.Partitions,
		RequestTopic:      cfg.Kafka.Topic,
		DLQTopic:          cfg.Kafka.DLQTopic,
		BackendGroup:      cfg.Kafka.GroupID,
		ReplyTopic:        cfg.Dapr.ReplyTopic,
		DeviceReplyTopic:  cfg.MQTT.ReplyTopic,
		BindingTopics:     cfg.Dapr.BindingTopics,
		Source:            "edgebridge/" + cfg.MQTT.ClientID,
		Window:            cfg.Dapr.Window,
		MaxAttempts:       cfg.Dapr.MaxAttempts,
		MaxMessageBytes:   cfg.Kafka.MaxMessageBytes,
		RetryBackoff:      cfg.Dapr.RetryBackoff,
		CommitInterval:    cfg.Kafka.CommitInterval,
		SessionTimeout:    cfg.Kafka.SessionTimeout,
		HeartbeatInterval: cfg.Kafka.HeartbeatInterval,
		DrainTimeout:      cfg.Shutdown.DrainTimeout,
	}
}
