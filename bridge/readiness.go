package bridge

// Readiness: what /readyz and edgebridge_broker_problem say, from the
// brokers' state and the backend streams, and the watcher that keeps the
// Kafka side of it current.

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/edgebridge/edgebridge/grpcout"
	"github.com/edgebridge/edgebridge/internal/schedule"
	"github.com/edgebridge/edgebridge/kafkapipe"
)

// brokerProblems says what is wrong with the bridge's MQTT and Kafka
// connections; none when both are fine.
func (b *Bridge) brokerProblems() []string {
	var why []string
	if !b.mqtt.Subscribed() {
		reason, detail := b.mqtt.Problem()
		b.metrics.brokerProblem("mqtt", reason)
		switch reason {
		case "auth":
			why = append(why, "mqtt: login refused (mqtt.username, mqtt.password_file): "+clipErr(detail))
		case "tls":
			why = append(why, "mqtt: TLS failed (mqtt.tls): "+clipErr(detail))
		default:
			why = append(why, "mqtt not subscribed")
		}
	} else {
		b.metrics.brokerProblem("mqtt", "")
	}
	if !b.kafkaOK.Load() {
		if w := b.kafkaWhy.Load(); w != nil {
			why = append(why, w.why)
		} else {
			why = append(why, "kafka unreachable or refusing writes")
		}
	}
	if paused, w := b.diskPaused(); paused {
		why = append(why, w)
	}
	if w := b.stalled.Load(); w != nil {
		why = append(why, "intake paused, kafka writes failing: "+w.why)
	}
	return why
}

// healthy is nil while MQTT is subscribed and Kafka answers: what the
// Dapr component needs.
func (b *Bridge) healthy() error {
	if why := b.brokerProblems(); len(why) > 0 {
		return errors.New(strings.Join(why, "; "))
	}
	return nil
}

// Ready reports whether MQTT is subscribed, Kafka answered recently, the
// backends' consumer group gave this bridge its partitions, at least one
// backend stream is up and no backend refuses the bridge's TLS or
// credentials (a configuration problem must not hide behind a healthy
// peer); the reasons it is not, otherwise.
func (b *Bridge) Ready() (bool, []string) {
	why := b.brokerProblems()
	if b.dapr != nil && !b.dapr.Serving() {
		why = append(why, "dapr component socket not serving")
	}
	if b.pool == nil {
		return len(why) == 0, why
	}
	if b.consumer != nil && !b.consumer.Joined() {
		// A restarted bridge waits for the group to let its crashed
		// predecessor go (kafka.session_timeout): nothing is delivered.
		if err := b.consumer.JoinError(); err != nil {
			why = append(why, "kafka consumer group: join refused: "+clipErr(err.Error()))
		} else {
			why = append(why, "kafka consumer group: waiting for partitions")
		}
	}
	up := false
	for _, s := range b.pool.Status() {
		up = up || s.Up
		if !s.Up && (s.Reason == grpcout.ReasonTLS || s.Reason == grpcout.ReasonAuth) {
			why = append(why, fmt.Sprintf("backend %s (%s): %s: %v", s.Target, s.Addr, s.Reason, s.Err))
		}
	}
	if !up {
		why = append(why, "no backend stream up")
	}
	return len(why) == 0, why
}

// noteKafka records the outcome of talking to Kafka: for /readyz and the
// edgebridge_broker_problem metric, the cause of a failure (a refused
// login or certificate is a configuration problem, not an outage), which
// it returns (nil for success).
func (b *Bridge) noteKafka(err error) *brokerProblem {
	if err == nil {
		b.kafkaOK.Store(true)
		b.metrics.brokerProblem("kafka", "")
		return nil
	}
	reason, why := kafkapipe.Problem(err)
	p := &brokerProblem{reason: reason, why: why}
	b.kafkaWhy.Store(p)
	b.kafkaOK.Store(false)
	b.metrics.brokerProblem("kafka", reason)
	return p
}

// brokerProblem is why a broker connection fails: a reason word (see
// kafkapipe.Problem) and the text /readyz shows.
type brokerProblem struct{ reason, why string }

func clipErr(s string) string {
	if len(s) > 300 {
		return s[:300] + "…"
	}
	return s
}

func (b *Bridge) watchKafka(ctx context.Context) {
	schedule.Every(ctx, 5*time.Second, func(time.Time) {
		pctx, cancel := context.WithTimeout(ctx, 4*time.Second)
		defer cancel()
		b.noteKafka(kafkapipe.Ping(pctx, b.cfg.Kafka.Brokers, b.kafkaSec))
		b.brokerProblems() // refreshes edgebridge_broker_problem for MQTT
		if b.consumer != nil {
			if lag, err := b.consumer.Lag(pctx); err == nil {
				b.lag.Store(&lag)
				b.metrics.setLag(lag)
			}
		}
	})
}
