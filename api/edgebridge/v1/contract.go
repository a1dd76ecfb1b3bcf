package edgebridgev1

// The parts of the wire contract that are computed rather than declared:
// limits every envelope keeps, and the derivations of the message id and
// the content fingerprint. Bridges, the backend helper and backends in
// other languages must compute them the same way.

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"strconv"
	"unicode/utf8"
)

// Names the bridge, its backends and their dashboards share: protocol
// problems (the error label of edgebridge_grpc_stream_protocol_errors_total)
// and the dead-letter reason of a record that is not an envelope.
const (
	ProblemUnknownOutcome = "unknown_outcome" // an unset outcome or a number this version does not know (handled as RETRY)
	ProblemInvalidReply   = "invalid_reply"   // a reply that cannot go to the device (handled as RETRY)
	ReasonCorruptEnvelope = "corrupt_envelope"
)

// The bearer credential a bridge sends on every call (backend.token_file):
// metadata "authorization: Bearer <token>", over TLS only.
const (
	AuthorizationKey = "authorization"
	BearerPrefix     = "Bearer "
)

// Limits of the Delivery protocol.
const (
	// MaxWindow is the largest Hello.window a bridge sends; a backend
	// clamps a larger one to it.
	MaxWindow = 65536
	// MaxIDLen bounds device_id, request_id and merchant_id, in bytes.
	MaxIDLen = 128
	// MaxTopicLen is MQTT's limit on a topic (source_topic), in bytes.
	MaxTopicLen = 65535
	// MaxContentTypeLen bounds content_type, in bytes.
	MaxContentTypeLen = 256
	// MaxPayloadLen bounds an envelope's payload, in bytes.
	MaxPayloadLen = 1 << 20
	// MaxTraceEntries and MaxTraceLen bound trace_context: entries, and
	// bytes of each key and value.
	MaxTraceEntries = 8
	MaxTraceLen     = 512
)

// MessageID derives the deterministic message id of a request: the first 16
// bytes of SHA-256(device id, 0x00, request id), hex-encoded. The same
// device and request id always give the same id, so a redelivery is
// recognised as one.
func MessageID(deviceID, requestID string) string {
	var buf [2*MaxIDLen + 1]byte // on the stack for ids within the limits
	b := append(append(append(buf[:0], deviceID...), 0), requestID...)
	sum := sha256.Sum256(b)
	var out [32]byte
	hex.Encode(out[:], sum[:16])
	return string(out[:]) // one allocation; hex.EncodeToString makes two
}

// Fingerprint is the SHA-256 (hex) of a payment request's business content:
// for each field in field-number order, its name, 0x00, the byte length of
// its value in decimal, 0x00 and the value (amount_minor as decimal text).
// It does not depend on how the device encoded the request (JSON or
// protobuf) or on trace context, so a redelivery has the same fingerprint,
// and a request id reused for another amount, currency or merchant does not.
func Fingerprint(req *PaymentRequest) string {
	var buf [512]byte
	var amount [20]byte
	b := appendField(buf[:0], "request_id", req.GetRequestId())
	b = appendField(b, "amount_minor", string(strconv.AppendInt(amount[:0], req.GetAmountMinor(), 10)))
	b = appendField(b, "currency", req.GetCurrency())
	b = appendField(b, "merchant_id", req.GetMerchantId())
	sum := sha256.Sum256(b)
	var out [64]byte
	hex.Encode(out[:], sum[:])
	return string(out[:])
}

func appendField(b []byte, name, value string) []byte {
	b = append(append(b, name...), 0)
	b = append(strconv.AppendInt(b, int64(len(value)), 10), 0)
	return append(b, value...)
}

// ErrInvalidEnvelope is wrapped by every error of CheckEnvelope.
var ErrInvalidEnvelope = errors.New("invalid envelope")

// CheckEnvelope reports the first way env breaks the contract: an empty or
// oversized field, invalid UTF-8, a message id that is not
// MessageID(device_id, request_id), or a malformed fingerprint. A backend
// must not process or store an envelope that fails it.
func CheckEnvelope(env *Envelope) error {
	bad := func(format string, args ...any) error {
		return fmt.Errorf("%w: %s", ErrInvalidEnvelope, fmt.Sprintf(format, args...))
	}
	for _, f := range []struct {
		name, v string
		max     int
	}{
		{"device_id", env.GetDeviceId(), MaxIDLen},
		{"request_id", env.GetRequestId(), MaxIDLen},
		{"source_topic", env.GetSourceTopic(), MaxTopicLen},
		{"content_type", env.GetContentType(), MaxContentTypeLen},
	} {
		if len(f.v) > f.max {
			return bad("%s has %d bytes, limit %d", f.name, len(f.v), f.max)
		}
		if !utf8.ValidString(f.v) {
			return bad("%s is not valid UTF-8", f.name)
		}
	}
	if env.GetDeviceId() == "" || env.GetRequestId() == "" {
		return bad("device_id and request_id are required")
	}
	if want := MessageID(env.GetDeviceId(), env.GetRequestId()); env.GetMessageId() != want {
		return bad("message_id %.40q is not the id of this device and request", env.GetMessageId())
	}
	if n := len(env.GetPayload()); n > MaxPayloadLen {
		return bad("payload has %d bytes, limit %d", n, MaxPayloadLen)
	}
	if n := len(env.GetTraceContext()); n > MaxTraceEntries {
		return bad("trace_context has %d entries, limit %d", n, MaxTraceEntries)
	}
	for k, v := range env.GetTraceContext() {
		if len(k) > MaxTraceLen || len(v) > MaxTraceLen {
			return bad("trace_context entry over %d bytes", MaxTraceLen)
		}
	}
	if fp := env.GetFingerprint(); fp != "" {
		if _, err := hex.DecodeString(fp); err != nil || len(fp) != 2*sha256.Size {
			return bad("fingerprint is not a hex SHA-256")
		}
	}
	return nil
}
