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
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

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
	// ReasonInvalidUTF8: a string is not valid UTF-8 (or, in JSON, holds an
	// unpaired surrogate escape). Decoding such a string would replace the
	// bad bytes with U+FFFD, and two different request ids could collide on
	// one message id.
	ReasonInvalidUTF8 Reason = "invalid_utf8"
)

// Error is returned for every payload the transcoder refuses.
type Error struct {
	Reason Reason
	Detail string
	// RequestID is the request id the payload carried, when it was read
	// before the payload was refused (so the device can match the
	// REJECTED reply); "" otherwise.
	RequestID string
	Err       error // underlying parse error, if any
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
const maxFieldLen = v1.MaxIDLen

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
// A payload over the limit is refused without being read.
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
		var te *Error
		if errors.As(err, &te) {
			te.RequestID = hint(req.GetRequestId())
		}
		return nil, err
	}
	payload, err := proto.Marshal(req)
	if err != nil {
		return nil, &Error{Reason: ReasonMalformed, Detail: "re-encode", Err: err}
	}
	return &v1.Envelope{
		MessageId:          v1.MessageID(in.DeviceID, req.RequestId),
		DeviceId:           in.DeviceID,
		RequestId:          req.RequestId,
		SourceTopic:        in.Topic,
		ReceivedAtUnixNano: in.ReceivedAt.UnixNano(),
		ContentType:        ContentTypePaymentRequest,
		Payload:            payload,
		TraceContext:       trace,
		Fingerprint:        v1.Fingerprint(req),
	}, nil
}

// protoOpts drops fields the device added that PaymentRequest does not
// have: they are not part of the request's content and must not reach Kafka.
var protoOpts = proto.UnmarshalOptions{DiscardUnknown: true}

func parse(b []byte) (*v1.PaymentRequest, map[string]string, error) {
	trimmed := bytes.TrimLeft(b, " \t\r\n")
	if len(trimmed) == 0 {
		return nil, nil, &Error{Reason: ReasonMalformed, Detail: "empty payload"}
	}
	if trimmed[0] != '{' {
		req := &v1.PaymentRequest{}
		if err := protoOpts.Unmarshal(b, req); err != nil {
			return nil, nil, &Error{Reason: ReasonMalformed, Detail: "neither JSON nor protobuf", Err: err}
		}
		return req, nil, nil
	}
	if err := checkJSONText(trimmed); err != nil {
		return nil, nil, err
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
			return nil, nil, &Error{Reason: ReasonBadAmount, Detail: "amount_minor must be an integer number of minor units", Err: err,
				RequestID: hint(req.RequestId)}
		}
		req.AmountMinor = n
	}
	if jr.Currency != nil {
		req.Currency = *jr.Currency
	}
	if jr.MerchantID != nil {
		req.MerchantId = *jr.MerchantID
	}
	return req, traceContext(jr.TraceParent, jr.TraceState), nil
}

// TraceOf returns the W3C trace context a JSON payload carries
// (traceparent, tracestate), even when the request itself is invalid, so a
// rejected request's spans join the device's trace; nil if there is none.
func TraceOf(payload []byte) map[string]string {
	var jr struct {
		TraceParent string `json:"traceparent"`
		TraceState  string `json:"tracestate"`
	}
	if len(payload) == 0 || json.Unmarshal(payload, &jr) != nil {
		return nil
	}
	return traceContext(jr.TraceParent, jr.TraceState)
}

// traceContext is the trace context of a device's traceparent and
// tracestate fields, within the envelope's limits; nil without a
// traceparent.
func traceContext(parent, state string) map[string]string {
	if parent == "" || len(parent) > maxFieldLen {
		return nil
	}
	trace := map[string]string{"traceparent": parent}
	if state != "" && len(state) <= v1.MaxTraceLen {
		trace["tracestate"] = state
	}
	return trace
}

// hint is id if it can be echoed to the device, else "".
func hint(id string) string {
	if len(id) > maxFieldLen || !utf8.ValidString(id) {
		return ""
	}
	return id
}

// checkJSONText refuses JSON whose strings could not be decoded exactly:
// bytes that are not UTF-8 (RFC 8259 requires it) and \u escapes of
// unpaired UTF-16 surrogates. encoding/json turns both into U+FFFD, which
// would make different request ids equal.
func checkJSONText(b []byte) error {
	if !utf8.Valid(b) {
		return &Error{Reason: ReasonInvalidUTF8, Detail: "JSON text is not valid UTF-8"}
	}
	if bytes.Contains(b, []byte(`\u`)) && unpairedSurrogate(b) {
		return &Error{Reason: ReasonInvalidUTF8, Detail: "unpaired UTF-16 surrogate escape"}
	}
	return nil
}

// unpairedSurrogate reports whether b holds a \uD800-\uDFFF escape that is
// not a high surrogate followed at once by a low one. Escapes are only
// meaningful inside strings, and outside strings a backslash is invalid
// JSON anyway, so b is scanned as a whole.
func unpairedSurrogate(b []byte) bool {
	hex4 := func(i int) (rune, bool) { // the escape \uXXXX starting at b[i]
		if i+6 > len(b) || b[i] != '\\' || b[i+1] != 'u' {
			return 0, false
		}
		n, err := strconv.ParseUint(string(b[i+2:i+6]), 16, 16)
		return rune(n), err == nil
	}
	for i := 0; i < len(b); i++ {
		if b[i] != '\\' {
			continue
		}
		r, ok := hex4(i)
		if !ok {
			i++ // another escape: skip its character
			continue
		}
		switch {
		case r >= 0xDC00 && r <= 0xDFFF:
			return true // a low surrogate first
		case r >= 0xD800 && r <= 0xDBFF:
			low, ok := hex4(i + 6)
			if !ok || low < 0xDC00 || low > 0xDFFF {
				return true
			}
			i += 11
		default:
			i += 5
		}
	}
	return false
}

// Validate checks the business rules of a PaymentRequest.
func Validate(req *v1.PaymentRequest) error {
	for _, f := range []struct{ name, v string }{
		{"request_id", req.GetRequestId()}, {"currency", req.GetCurrency()}, {"merchant_id", req.GetMerchantId()},
	} {
		if !utf8.ValidString(f.v) {
			return &Error{Reason: ReasonInvalidUTF8, Detail: f.name}
		}
	}
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
		return &Error{Reason: ReasonBadCurrency, Detail: fmt.Sprintf("%q is not an ISO 4217 code", Clip(req.GetCurrency(), 16))}
	}
	return nil
}

func validateDeviceID(id string) error {
	if id == "" || len(id) > maxFieldLen || strings.ContainsAny(id, "+#/\x00") || !utf8.ValidString(id) {
		return &Error{Reason: ReasonBadDeviceID, Detail: fmt.Sprintf("%q (%d bytes)", Clip(id, 32), len(id))}
	}
	return nil
}

// Clip returns s cut to at most n bytes on a UTF-8 boundary, marked with
// "…" when cut, with invalid bytes replaced: for logs and error details,
// which must stay small and readable whatever a device sent.
func Clip(s string, n int) string {
	s = strings.ToValidUTF8(s[:min(len(s), n+utf8.UTFMax)], "\uFFFD")
	if len(s) <= n {
		return s
	}
	cut := n
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return s[:cut] + "…"
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
