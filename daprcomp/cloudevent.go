package daprcomp

import (
	"encoding/json"
	"errors"
	"time"

	"google.golang.org/protobuf/proto"

	v1 "github.com/edgebridge/edgebridge/api/edgebridge/v1"
	"github.com/edgebridge/edgebridge/kafkapipe"
	"github.com/edgebridge/edgebridge/transcoder"
)

// RequestEventType is the CloudEvent type of a device request.
const RequestEventType = "io.edgebridge.payment.request.v1"

// Request is the data of a device request's CloudEvent (JSON).
type Request struct {
	DeviceID    string    `json:"device_id"`
	RequestID   string    `json:"request_id"`
	MessageID   string    `json:"message_id"` // stable across redeliveries: deduplicate on it
	AmountMinor int64     `json:"amount_minor"`
	Currency    string    `json:"currency"`
	MerchantID  string    `json:"merchant_id,omitempty"`
	SourceTopic string    `json:"source_topic"` // MQTT topic it arrived on
	ReceivedAt  time.Time `json:"received_at"`
}

// cloudEvent is a CloudEvents 1.0 event in JSON, as daprd reads it.
type cloudEvent struct {
	SpecVersion     string `json:"specversion"`
	ID              string `json:"id"`
	Source          string `json:"source"`
	Type            string `json:"type"`
	Subject         string `json:"subject,omitempty"`
	Time            string `json:"time,omitempty"`
	DataContentType string `json:"datacontenttype"`
	Topic           string `json:"topic"`
	TraceParent     string `json:"traceparent,omitempty"`
	TraceState      string `json:"tracestate,omitempty"`
	Data            any    `json:"data"`
}

// errCorrupt marks a request record that is not a valid envelope.
var errCorrupt = errors.New("daprcomp: record is not a valid edgebridge.v1.Envelope of a payment request")

// toEvent turns a fetched record into what a subscriber receives: a device
// request (protobuf envelope) becomes a CloudEvent with Request as data;
// anything else (published through Dapr) is passed on as written.
func (s *Server) toEvent(m kafkapipe.Message) (data []byte, contentType string, err error) {
	ct := string(kafkapipe.Header(m.Headers, kafkapipe.HeaderContentType))
	if ct != kafkapipe.ContentTypeEnvelope {
		if ct == "" {
			ct = cloudEventContentType
		}
		return m.Value, ct, nil
	}
	env := &v1.Envelope{}
	if err := proto.Unmarshal(m.Value, env); err != nil || env.GetMessageId() == "" {
		return nil, "", errCorrupt
	}
	req, err := transcoder.PaymentRequest(env)
	if err != nil {
		return nil, "", errors.Join(errCorrupt, err)
	}
	received := time.Unix(0, env.GetReceivedAtUnixNano()).UTC()
	ev := cloudEvent{
		SpecVersion:     "1.0",
		ID:              env.GetMessageId(),
		Source:          s.cfg.Source,
		Type:            RequestEventType,
		Subject:         env.GetDeviceId(),
		Time:            received.Format(time.RFC3339Nano),
		DataContentType: "application/json",
		Topic:           m.Topic,
		TraceParent:     env.GetTraceContext()["traceparent"],
		TraceState:      env.GetTraceContext()["tracestate"],
		Data: Request{
			DeviceID:    env.GetDeviceId(),
			RequestID:   env.GetRequestId(),
			MessageID:   env.GetMessageId(),
			AmountMinor: req.GetAmountMinor(),
			Currency:    req.GetCurrency(),
			MerchantID:  req.GetMerchantId(),
			SourceTopic: env.GetSourceTopic(),
			ReceivedAt:  received,
		},
	}
	data, err = json.Marshal(ev)
	if err != nil {
		return nil, "", errors.Join(errCorrupt, err)
	}
	return data, cloudEventContentType, nil
}
