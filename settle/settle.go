// Package settle gives every record a consumer was handed exactly one
// terminal outcome. A backend stream (gRPC) or a Dapr app answers each
// delivery; Decide turns the answer into one of three actions — commit it
// (after publishing the device's reply, if any), redeliver it after a
// backoff, or dead-letter it (and tell the device) — and a Settler carries
// the action out: it writes the dead letter and publishes the reply,
// retrying each until it succeeds or the Settler stops, then ACKs the record
// in the consumer's window so its offset can be committed. A record the
// Settler could not finish stays un-ACKed and is redelivered after a
// restart; the backend's dedup answers it with the stored result.
//
// The bridge's gRPC delivery and each Dapr subscription own one Settler and
// implement Sink, the few operations it needs from them.
package settle

import (
	"fmt"
	"time"
	"unicode/utf8"

	v1 "github.com/edgebridge/edgebridge/api/edgebridge/v1"
	"github.com/edgebridge/edgebridge/internal/defaults"
	"github.com/edgebridge/edgebridge/transcoder"
)

// Policy is what the operator configured for failed deliveries.
type Policy struct {
	// MaxAttempts is how many deliveries a record gets before a failure
	// (RETRY, a protocol error, a Dapr app's error) dead-letters it.
	// Default: 5.
	MaxAttempts int
	// Backoff is the delay before the first redelivery; it doubles with
	// each attempt, to at most 32 times. Default: 1s.
	Backoff time.Duration
	// ExhaustedReason is the dead letter's reason for a record that failed
	// MaxAttempts times without a reason code. Default: "backend_retry".
	ExhaustedReason string
}

// Defaults of Policy: package config gives backend.max_attempts,
// retry_backoff and their dapr.* twins the same values by these names.
const (
	DefaultMaxAttempts = 5
	DefaultBackoff     = time.Second
)

func (p Policy) withDefaults() Policy {
	defaults.Positive(&p.MaxAttempts, DefaultMaxAttempts)
	defaults.Positive(&p.Backoff, DefaultBackoff)
	defaults.Zero(&p.ExhaustedReason, ReasonRetriesExhausted)
	return p
}

// Dead-letter reasons Decide gives when the answer carries no code.
const (
	ReasonRetriesExhausted = "backend_retry"  // RETRY MaxAttempts times
	ReasonRejected         = "backend_reject" // REJECT
	ReasonProtocolError    = "protocol_error" // no valid answer MaxAttempts times
)

// ReasonExpired is the dead-letter reason, and the device reply's reason,
// of a request no backend was sent within the bridge's max_request_age.
const ReasonExpired = "request_expired"

// Expired is the decision for a request that reached no backend within
// maxAge of its receipt: dead-lettered, and the device told REJECTED with
// code "unavailable" (no backend could take it) and a reason starting
// "request_expired". No backend saw it, so nothing was processed.
func (p Policy) Expired(r *Record, maxAge time.Duration, wantReply bool) Decision {
	detail := fmt.Sprintf("not delivered to a backend within %s of its receipt", maxAge)
	d := Decision{Action: DeadLetter, Reason: ReasonExpired, Detail: detail}
	if wantReply {
		d.Reply = builtReply(r.Envelope, v1.PaymentStatus_PAYMENT_STATUS_REJECTED,
			Answer{Code: v1.ReasonCode_REASON_CODE_UNAVAILABLE, Reason: ReasonExpired + ": " + detail})
	}
	return d
}

// Protocol problems Decide reports (see Decision.Problem); they are the
// error label of edgebridge_grpc_stream_protocol_errors_total.
const (
	ProblemUnknownOutcome = v1.ProblemUnknownOutcome
	ProblemInvalidReply   = v1.ProblemInvalidReply
)

// Limits of a backend's reply.
const (
	// MaxRawReply bounds Ack.raw_reply, in bytes.
	MaxRawReply = 64 << 10
	// MaxReplyReason bounds PaymentReply.reason and Ack.reason, in bytes.
	MaxReplyReason = 1024
)

// Action is what happens to a record next.
type Action int

const (
	// Commit: publish the reply (if any), then ACK the record.
	Commit Action = iota + 1
	// Redeliver: send the record again after Decision.Delay.
	Redeliver
	// DeadLetter: write the record to the DLQ, publish the reply (if
	// any), then ACK it.
	DeadLetter
)

func (a Action) String() string {
	switch a {
	case Commit:
		return "commit"
	case Redeliver:
		return "redeliver"
	case DeadLetter:
		return "dead_letter"
	}
	return fmt.Sprintf("action(%d)", int(a))
}

// Answer is what a consumer said about one delivery.
type Answer struct {
	Outcome  v1.Outcome
	Code     v1.ReasonCode
	Reason   string
	Reply    *v1.PaymentReply // typed device reply
	RawReply []byte           // device reply bytes; overrides Reply
}

// FromAck is the Answer in a backend's Ack.
func FromAck(a *v1.Ack) Answer {
	return Answer{Outcome: a.GetOutcome(), Code: a.GetCode(), Reason: a.GetReason(), Reply: a.GetReply(), RawReply: a.GetRawReply()}
}

// Decision is the next step for one record.
type Decision struct {
	Action Action
	// Delay before the redelivery (Redeliver).
	Delay time.Duration
	// Reason and Detail of the dead letter (DeadLetter).
	Reason, Detail string
	// Reply is published to the device before the record is ACKed; nil
	// publishes nothing.
	Reply []byte
	// Problem names the protocol error in the answer, "" if none; Detail
	// says more. The record is then redelivered like a RETRY.
	Problem string
}

// Decide returns what happens to r after answer a. r.Attempt counts the
// deliveries so far, this one included. wantReply is false where devices
// get no reply from this path (Dapr apps publish their own).
func (p Policy) Decide(r *Record, a Answer, wantReply bool) Decision {
	p = p.withDefaults()
	if _, known := v1.Outcome_name[int32(a.Outcome)]; !known || a.Outcome == v1.Outcome_OUTCOME_UNSPECIFIED {
		return p.failed(r, a, ProblemUnknownOutcome, fmt.Sprintf("outcome %d", a.Outcome), wantReply)
	}
	reply, err := Render(r.Envelope, a)
	if err != nil {
		return p.failed(r, a, ProblemInvalidReply, err.Error(), wantReply)
	}
	if !wantReply {
		reply = nil
	}
	switch a.Outcome {
	case v1.Outcome_OUTCOME_RETRY:
		return p.failed(r, a, "", "", wantReply)
	case v1.Outcome_OUTCOME_REJECT:
		if reply == nil && wantReply {
			reply = builtReply(r.Envelope, v1.PaymentStatus_PAYMENT_STATUS_REJECTED, a)
		}
		return Decision{Action: DeadLetter, Reason: codeOr(a.Code, ReasonRejected), Detail: a.Reason, Reply: reply}
	}
	return Decision{Action: Commit, Reply: reply} // OK, or DUPLICATE from backends before the duplicate flag
}

// failed is a delivery that did not succeed: redelivered after a backoff
// until MaxAttempts, then dead-lettered with an ERROR reply.
func (p Policy) failed(r *Record, a Answer, problem, detail string, wantReply bool) Decision {
	if r.Attempt < p.MaxAttempts {
		return Decision{Action: Redeliver, Delay: p.Backoff << min(max(r.Attempt-1, 0), 5), Problem: problem, Detail: detail}
	}
	d := Decision{Action: DeadLetter, Reason: codeOr(a.Code, p.ExhaustedReason), Detail: a.Reason, Problem: problem}
	if problem != "" {
		d.Reason, d.Detail = ReasonProtocolError, detail
	}
	if wantReply {
		d.Reply = builtReply(r.Envelope, v1.PaymentStatus_PAYMENT_STATUS_ERROR, a)
	}
	return d
}

func codeOr(c v1.ReasonCode, fallback string) string {
	if name := transcoder.CodeName(c); name != "" {
		return name
	}
	return fallback
}

// builtReply is the device reply the bridge writes when the backend sent
// none: the status, and the answer's code and reason.
func builtReply(env *v1.Envelope, status v1.PaymentStatus, a Answer) []byte {
	if env == nil {
		return nil
	}
	return transcoder.EncodeReply(&v1.PaymentReply{RequestId: env.GetRequestId(), MessageId: env.GetMessageId(),
		Status: status, Code: a.Code, Reason: transcoder.Clip(a.Reason, MaxReplyReason)})
}

// Render returns the device's reply in a: RawReply as it is, or Reply
// validated against env and rendered as the device's JSON; nil when a has
// neither or is a RETRY. The error says why the reply cannot go to the
// device.
func Render(env *v1.Envelope, a Answer) ([]byte, error) {
	if a.Outcome == v1.Outcome_OUTCOME_RETRY {
		return nil, nil // nothing is final yet
	}
	if len(a.RawReply) > 0 {
		if len(a.RawReply) > MaxRawReply {
			return nil, fmt.Errorf("raw_reply has %d bytes, limit %d", len(a.RawReply), MaxRawReply)
		}
		return a.RawReply, nil
	}
	rep := a.Reply
	if rep == nil {
		return nil, nil
	}
	if err := checkReply(env, a.Outcome, rep); err != nil {
		return nil, err
	}
	return transcoder.EncodeReply(&v1.PaymentReply{RequestId: env.GetRequestId(), MessageId: env.GetMessageId(),
		Status: rep.GetStatus(), Code: rep.GetCode(), Reason: rep.GetReason()}), nil
}

func checkReply(env *v1.Envelope, outcome v1.Outcome, rep *v1.PaymentReply) error {
	if env == nil {
		return fmt.Errorf("a typed reply needs the envelope it answers")
	}
	st := rep.GetStatus()
	switch {
	case rep.GetRequestId() != "" && rep.GetRequestId() != env.GetRequestId():
		return fmt.Errorf("reply request_id %.40q is not the envelope's", rep.GetRequestId())
	case rep.GetMessageId() != "" && rep.GetMessageId() != env.GetMessageId():
		return fmt.Errorf("reply message_id %.40q is not the envelope's", rep.GetMessageId())
	case len(rep.GetReason()) > MaxReplyReason || !utf8.ValidString(rep.GetReason()):
		return fmt.Errorf("reply reason is over %d bytes or not UTF-8", MaxReplyReason)
	case transcoder.CodeName(rep.GetCode()) == transcoder.CodeUnknown:
		return fmt.Errorf("reply code %d is not a ReasonCode", rep.GetCode())
	case outcome == v1.Outcome_OUTCOME_REJECT && st != v1.PaymentStatus_PAYMENT_STATUS_REJECTED:
		return fmt.Errorf("reply status %s with OUTCOME_REJECT, want REJECTED", st)
	case outcome != v1.Outcome_OUTCOME_REJECT && st != v1.PaymentStatus_PAYMENT_STATUS_APPROVED && st != v1.PaymentStatus_PAYMENT_STATUS_DECLINED:
		return fmt.Errorf("reply status %s with %s, want APPROVED or DECLINED", st, outcome)
	}
	return nil
}
