package kafkapipe

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/segmentio/kafka-go"
)

// Header names set on the records the bridge writes.
const (
	HeaderMessageID   = "edgebridge-message-id"
	HeaderDeviceID    = "edgebridge-device-id"
	HeaderContentType = "content-type"
	HeaderSourceTopic = "edgebridge-source-topic"
	// HeaderTraceParent is the W3C traceparent of the request's trace (when traced).
	HeaderTraceParent = "traceparent"
	// Dead letters only (see DeadLetter).
	HeaderReason = "edgebridge-dlq-reason"
	HeaderDetail = "edgebridge-dlq-detail"
	// HeaderDeadLetteredAt is when a record was dead-lettered, Unix milliseconds.
	HeaderDeadLetteredAt = "edgebridge-dead-lettered-at"
	// HeaderOriginalSize is the dead payload's size in bytes (decimal) and
	// HeaderOriginalSHA256 its SHA-256 (hex), whether or not the record
	// carries all of it.
	HeaderOriginalSize   = "edgebridge-original-size"
	HeaderOriginalSHA256 = "edgebridge-original-sha256"
	// HeaderTruncated is "true" when the record's value is only the first
	// bytes of the payload.
	HeaderTruncated = "edgebridge-truncated"
)

// ContentTypeEnvelope is the content-type header of the bridge's request
// records: each value is an edgebridge.v1.Envelope.
const ContentTypeEnvelope = "application/x-protobuf; messageType=edgebridge.v1.Envelope"

// Record is one record to produce.
type Record struct {
	Topic   string
	Key     []byte
	Value   []byte
	Headers []kafka.Header
}

// batchHeaderBytes is the fixed header of a record batch (format v2).
const batchHeaderBytes = 61

// recordBytes is an upper bound of r's encoded size inside a record batch:
// its varint lengths and fields at their widest.
func (r Record) recordBytes() int {
	n := 36 + len(r.Key) + len(r.Value)
	for _, h := range r.Headers {
		n += 10 + len(h.Key) + len(h.Value)
	}
	return n
}

// Size is an upper bound of r's size as Kafka measures it against
// message.max.bytes when r is produced alone: the record and its batch
// header.
func (r Record) Size() int { return batchHeaderBytes + r.recordBytes() }

// Header returns the value of the first header named key, or nil.
func Header(hs []kafka.Header, key string) []byte {
	for _, h := range hs {
		if h.Key == key {
			return h.Value
		}
	}
	return nil
}

// Bounds of a dead letter's key and header values.
const (
	maxDeadLetterField  = 1024 // key, device id, source topic, detail
	maxDeadLetterReason = 64
)

// DeadLetterOverhead bounds what a dead letter adds to the payload bytes it
// keeps: key, headers and batch header. A dead letter whose kept payload
// is at most limit-DeadLetterOverhead fits a broker whose
// message.max.bytes is limit.
const DeadLetterOverhead = 8 << 10

// DeadLetter is a record that cannot go where it was meant to, as the DLQ
// topic receives it.
type DeadLetter struct {
	Topic    string // the DLQ topic
	DeviceID string // the record key; first 1024 bytes
	Source   string // the MQTT or Kafka topic it came from; first 1024 bytes
	Payload  []byte
	Reason   string // a stable code: DLQ consumers and metrics use it; first 64 bytes
	Detail   string // first 1024 bytes
	// Keep is the most bytes of Payload the record carries (a stub of a
	// payload too large to store); 0 keeps it all.
	Keep int
}

// Record builds the DLQ record: the payload (or its first Keep bytes) as
// the value, and in headers the reason, the detail, the device, the source
// topic, when, and the payload's original size and SHA-256. Its Size is at
// most DeadLetterOverhead plus the payload bytes kept.
func (d DeadLetter) Record() Record {
	sum := sha256.Sum256(d.Payload)
	value := d.Payload
	hs := []kafka.Header{
		{Key: HeaderReason, Value: clip(d.Reason, maxDeadLetterReason)},
		{Key: HeaderDetail, Value: clip(d.Detail, maxDeadLetterField)},
		{Key: HeaderDeviceID, Value: clip(d.DeviceID, maxDeadLetterField)},
		{Key: HeaderSourceTopic, Value: clip(d.Source, maxDeadLetterField)},
		{Key: HeaderDeadLetteredAt, Value: strconv.AppendInt(nil, time.Now().UnixMilli(), 10)},
		{Key: HeaderOriginalSize, Value: strconv.AppendInt(nil, int64(len(d.Payload)), 10)},
		{Key: HeaderOriginalSHA256, Value: hex.AppendEncode(nil, sum[:])},
	}
	if d.Keep > 0 && len(value) > d.Keep {
		value = value[:d.Keep]
		hs = append(hs, kafka.Header{Key: HeaderTruncated, Value: []byte("true")})
	}
	return Record{Topic: d.Topic, Key: clip(d.DeviceID, maxDeadLetterField), Value: value, Headers: hs}
}

func clip(s string, n int) []byte { return []byte(s[:min(len(s), n)]) }

// refusals are the produce errors that are final for the records they
// concern, each with the DLQ reason of a record Kafka refused.
var refusals = map[kafka.Error]string{
	kafka.InvalidMessageSize:          "kafka_record_too_large",
	kafka.MessageSizeTooLarge:         "kafka_record_too_large",
	kafka.RecordListTooLarge:          "kafka_record_too_large",
	kafka.InvalidRecord:               "kafka_record_invalid",
	kafka.InvalidTimestamp:            "kafka_record_invalid",
	kafka.UnsupportedForMessageFormat: "kafka_record_invalid",
	kafka.PolicyViolation:             "kafka_record_invalid",
	kafka.InvalidTopic:                "kafka_invalid_topic",
	kafka.TopicAuthorizationFailed:    "kafka_not_authorized",
	kafka.ClusterAuthorizationFailed:  "kafka_not_authorized",
}

// Problem classifies a Kafka failure for /readyz and the
// edgebridge_broker_problem metric: auth (a refused login, or a
// write not authorized), tls, no_space (the broker's disk is full or below
// its floor), too_large (over max.message.bytes), refused (the broker
// answered with another error) or unreachable.
func Problem(err error) (reason, why string) {
	msg := err.Error()
	var kerr kafka.Error // the broker's error code, if it answered with one
	errors.As(err, &kerr)
	switch {
	case errors.Is(err, kafka.SASLAuthenticationFailed) || errors.Is(err, kafka.IllegalSASLState) || errors.Is(err, kafka.UnsupportedSASLMechanism) ||
		strings.Contains(msg, "SASL"):
		return "auth", "kafka: SASL login refused (kafka.sasl): " + clipText(msg)
	case strings.Contains(msg, "tls:") || strings.Contains(msg, "x509:") || strings.Contains(msg, "certificate"):
		return "tls", "kafka: TLS failed (kafka.tls): " + clipText(msg)
	case kerr == kafka.TopicAuthorizationFailed || kerr == kafka.ClusterAuthorizationFailed || kerr == kafka.GroupAuthorizationFailed:
		return "auth", "kafka refused the write: not authorized (the broker's ACLs for kafka.sasl's user): " + clipText(msg)
	case kerr == kafka.KafkaStorageError:
		return "no_space", "kafka refused the write: no space on the broker's disk, or below its floor (KAFKA_STORAGE_ERROR): " + clipText(msg)
	case kerr == kafka.MessageSizeTooLarge || kerr == kafka.RecordListTooLarge:
		return "too_large", "kafka refused the write: too large for the topic's max.message.bytes (kafka.max_message_bytes must not exceed it): " + clipText(msg)
	case kerr != 0:
		return "refused", fmt.Sprintf("kafka refused the write: %s (the broker's log says why)", clipText(msg))
	}
	return "unreachable", "kafka unreachable or refusing writes: " + clipText(msg)
}

// clipText bounds an error text shown to operators.
func clipText(s string) string {
	if len(s) > 300 {
		return s[:300] + "…"
	}
	return s
}

// IsRetryable reports whether sending a record again after err can
// succeed. Kafka's refusals of the record itself (too large, invalid, not
// authorized) are not; everything else (network errors, leader changes, a
// topic still being created, timeouts) is.
func IsRetryable(err error) bool {
	return err != nil && RefusalReason(err) == ""
}

// RefusalReason is the DLQ reason for a record Kafka refused with err
// (kafka_record_too_large, kafka_record_invalid, kafka_invalid_topic,
// kafka_not_authorized), or "" when err is not such a refusal.
func RefusalReason(err error) string {
	var ke kafka.Error
	if errors.As(err, &ke) {
		return refusals[ke]
	}
	return ""
}
