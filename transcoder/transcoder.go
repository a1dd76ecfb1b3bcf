// Package transcoder turns a device's payment request (JSON or binary
// protobuf) into a validated edgebridge.v1.Envelope, and a backend's answer
// into the JSON reply devices expect.
//
// Decoding never panics on outside input; every failure is an *Error with a
// machine-readable Reason, so the pipeline can dead-letter the message and
// tell the device why.
package transcoder

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"google.golang.org/protobuf/proto"

	v1 "github.com/edgebridge/edgebridge/api/edgebridge/v1"
)

// ContentTypePaymentRequest is the Envelope.content_type of a payload that
// holds a binary edgebridge.v1.PaymentRequest.
const ContentTypePaymentRequest = "application/x-protobuf; messageType=edgebridge.v1.PaymentRequest"

// DefaultMaxPayload is the largest device payload accepted by default.
const DefaultMaxPayload = 16 << 10

// Reason classifies why a device payload was refused.
type Reason string

// The reasons a payload can be refused. They are stable: they appear in DLQ
// records, device replies and metric labels.
const (
	ReasonTooLarge         Reason = "payload_too_large"
	ReasonMalformed        Reason = "malformed_payload"
	ReasonMissingRequestID Reason = "missing_request_id"
	ReasonBadAmount        Reason = "invalid_amount"
	ReasonBadCurrency      Reason = "invalid_currency"
	ReasonBadDeviceID      Reason = "invalid_device_id"
	ReasonFieldTooLong     Reason = "field_too_long"
)

// Error is returned for every payload the transcoder refuses.
type Error struct {
	Reason Reason
	Detail string
	Err    error // underlying parse error, if any
}

func (e *Error) Error() string {
	if e.Detail == "" {
		return "transcoder: " + string(e.Reason)
	}
	return "transcoder: " + string(e.Reason) + ": " + e.Detail
}

func (e *Error) Unwrap() error { return e.Err }

// ReasonOf returns the Reason of err if it is (or wraps) an *Error, else "".
func ReasonOf(err error) Reason {
	var te *Error
	if errors.As(err, &te) {
		return te.Reason
	}
	return ""
}

// maxFieldLen bounds free-text identifiers so a device cannot make the
// envelope arbitrarily large inside the payload limit.
const maxFieldLen = 128

// Decoder validates device payloads. The zero value is not usable; use New.
// A Decoder is safe for concurrent use.
type Decoder struct {
	maxPayload int
}

// New returns a Decoder that refuses payloads larger than maxPayload bytes
// (DefaultMaxPayload when maxPayload <= 0).
func New(maxPayload int) *Decoder {
	if maxPayload <= 0 {
		maxPayload = DefaultMaxPayload
	}
	return &Decoder{maxPayload: maxPayload}
}

// Input is one device message as received over MQTT.
type Input struct {
	DeviceID   string // from the topic, never from the payload
	Topic      string
	Payload    []byte
	ReceivedAt time.Time
}

// jsonRequest is the device's JSON shape. Unknown fields are accepted.
type jsonRequest struct {
	RequestID   *string      `json:"request_id"`
	AmountMinor *json.Number `json:"amount_minor"`
	Currency    *string      `json:"currency"`
	MerchantID  *string      `json:"merchant_id"`
	TraceParent string       `json:"traceparent"`
	TraceState  string       `json:"tracestate"`
}

// Decode validates in and returns the Envelope to write to Kafka. The
// payload may be JSON (first non-space byte '{') or a binary PaymentRequest.
func (d *Decoder) Decode(in Input) (*v1.Envelope, error) {
	if err := validateDeviceID(in.DeviceID); err != nil {
		return nil, err
	}
	if len(in.Payload) > d.maxPayload {
		return nil, &Error{Reason: ReasonTooLarge, Detail: fmt.Sprintf("%d bytes, limit %d", len(in.Payload), d.maxPayload)}
	}
	req, trace, err := parse(in.Payload)
	if err != nil {
		return nil, err
	}
	if err := Validate(req); err != nil {
		return nil, err
	}
	payload, err := proto.Marshal(req)
	if err != nil {
		return nil, &Error{Reason: ReasonMalformed, Detail: "re-encode", Err: err}
	}
	return &v1.Envelope{
		MessageId:          MessageID(in.DeviceID, req.RequestId),
		DeviceId:           in.DeviceID,
		RequestId:          req.RequestId,
		SourceTopic:        in.Topic,
		ReceivedAtUnixNano: in.ReceivedAt.UnixNano(),
		ContentType:        ContentTypePaymentRequest,
		Payload:            payload,
		TraceContext:       trace,
	}, nil
}

func parse(b []byte) (*v1.PaymentRequest, map[string]string, error) {
	trimmed := bytes.TrimLeft(b, " \t\r\n")
	if len(trimmed) == 0 {
		return nil, nil, &Error{Reason: ReasonMalformed, Detail: "empty payload"}
	}
	if trimmed[0] != '{' {
		req := &v1.PaymentRequest{}
		if err := proto.Unmarshal(b, req); err != nil {
			return nil, nil, &Error{Reason: ReasonMalformed, Detail: "neither JSON nor protobuf", Err: err}
		}
		return req, nil, nil
	}
	var jr jsonRequest
	// Unmarshal, not a Decoder: no copy of the payload, and data after the
	// object is an error too.
	if err := json.Unmarshal(trimmed, &jr); err != nil {
		return nil, nil, &Error{Reason: ReasonMalformed, Detail: "bad JSON", Err: err}
	}
	req := &v1.PaymentRequest{}
	if jr.RequestID != nil {
		req.RequestId = *jr.RequestID
	}
	if jr.AmountMinor != nil {
		n, err := jr.AmountMinor.Int64()
		if err != nil {
			return nil, nil, &Error{Reason: ReasonBadAmount, Detail: "amount_minor must be an integer number of minor units", Err: err}
		}
		req.AmountMinor = n
	}
	if jr.Currency != nil {
		req.Currency = *jr.Currency
	}
	if jr.MerchantID != nil {
		req.MerchantId = *jr.MerchantID
	}
	var trace map[string]string
	if jr.TraceParent != "" && len(jr.TraceParent) <= maxFieldLen {
		trace = map[string]string{"traceparent": jr.TraceParent}
		if jr.TraceState != "" && len(jr.TraceState) <= 512 {
			trace["tracestate"] = jr.TraceState
		}
	}
	return req, trace, nil
}

// Validate checks the business rules of a PaymentRequest.
func Validate(req *v1.PaymentRequest) error {
	switch {
	case strings.TrimSpace(req.GetRequestId()) == "":
		return &Error{Reason: ReasonMissingRequestID}
	case len(req.GetRequestId()) > maxFieldLen:
		return &Error{Reason: ReasonFieldTooLong, Detail: "request_id"}
	case len(req.GetMerchantId()) > maxFieldLen:
		return &Error{Reason: ReasonFieldTooLong, Detail: "merchant_id"}
	case req.GetAmountMinor() <= 0:
		return &Error{Reason: ReasonBadAmount, Detail: fmt.Sprintf("amount_minor %d must be > 0", req.GetAmountMinor())}
	case !IsCurrency(req.GetCurrency()):
		return &Error{Reason: ReasonBadCurrency, Detail: fmt.Sprintf("%q is not an ISO 4217 code", truncate(req.GetCurrency(), 16))}
	}
	return nil
}

func validateDeviceID(id string) error {
	if id == "" || len(id) > maxFieldLen || strings.ContainsAny(id, "+#/\x00") {
		return &Error{Reason: ReasonBadDeviceID, Detail: fmt.Sprintf("%q", truncate(id, 32))}
	}
	return nil
}

func truncate(s string, n int) string {
	if len(s) > n {
		return s[:n] + "…"
	}
	return s
}

// MessageID derives the deterministic message id of a request: the same
// device and request id always give the same id, so a redelivered request is
// recognised as a duplicate by backends.
func MessageID(deviceID, requestID string) string {
	h := sha256.New()
	h.Write([]byte(deviceID))
	h.Write([]byte{0})
	h.Write([]byte(requestID))
	return hex.EncodeToString(h.Sum(nil)[:16])
}

// PaymentRequest decodes the payload of an Envelope written by Decode.
func PaymentRequest(env *v1.Envelope) (*v1.PaymentRequest, error) {
	if env.GetContentType() != ContentTypePaymentRequest {
		return nil, &Error{Reason: ReasonMalformed, Detail: fmt.Sprintf("content type %q", env.GetContentType())}
	}
	req := &v1.PaymentRequest{}
	if err := proto.Unmarshal(env.GetPayload(), req); err != nil {
		return nil, &Error{Reason: ReasonMalformed, Detail: "envelope payload", Err: err}
	}
	return req, Validate(req)
}
