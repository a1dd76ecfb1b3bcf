package transcoder

import (
	"encoding/json"
	"fmt"
	"strings"

	v1 "github.com/edgebridge/edgebridge/api/edgebridge/v1"
)

// Reply is the JSON document published to payment/response/{device_id}.
type Reply struct {
	RequestID string `json:"request_id"`
	MessageID string `json:"message_id"`
	Status    string `json:"status"` // APPROVED, DECLINED, REJECTED or ERROR
	// Code says why a request was not approved, e.g. "limit_exceeded"
	// (see CodeName); empty when approved.
	Code   string `json:"code,omitempty"`
	Reason string `json:"reason,omitempty"`
}

// Device reply statuses.
const (
	StatusApproved = "APPROVED"
	StatusDeclined = "DECLINED"
	StatusRejected = "REJECTED"
	StatusError    = "ERROR"
)

// EncodeReply renders a PaymentReply in the device's JSON format.
func EncodeReply(r *v1.PaymentReply) []byte {
	b, _ := json.Marshal(Reply{ // a struct of strings always marshals
		RequestID: r.GetRequestId(),
		MessageID: r.GetMessageId(),
		Status:    StatusName(r.GetStatus()),
		Code:      CodeName(r.GetCode()),
		Reason:    r.GetReason(),
	})
	return b
}

// CodeName renders a ReasonCode as devices, DLQ headers and metric labels
// see it: REASON_CODE_LIMIT_EXCEEDED -> "limit_exceeded"; "" for
// unspecified; "unknown" for a number this version does not define, so
// what a backend sends cannot make labels or device codes up.
func CodeName(c v1.ReasonCode) string {
	name, ok := v1.ReasonCode_name[int32(c)]
	switch {
	case c == v1.ReasonCode_REASON_CODE_UNSPECIFIED:
		return ""
	case !ok:
		return CodeUnknown
	}
	return strings.ToLower(strings.TrimPrefix(name, "REASON_CODE_"))
}

// CodeUnknown is CodeName's rendering of an undefined ReasonCode.
const CodeUnknown = "unknown"

// ParseCode is the inverse of CodeName: REASON_CODE_UNSPECIFIED for "" and
// for names it does not know.
func ParseCode(name string) v1.ReasonCode {
	return v1.ReasonCode(v1.ReasonCode_value["REASON_CODE_"+strings.ToUpper(name)])
}

// DecodeReply parses a device reply; devices and tests use it.
func DecodeReply(b []byte) (Reply, error) {
	var r Reply
	if err := json.Unmarshal(b, &r); err != nil {
		return Reply{}, fmt.Errorf("transcoder: bad reply: %w", err)
	}
	return r, nil
}

// StatusName maps a PaymentStatus to the device's status word.
func StatusName(s v1.PaymentStatus) string {
	if s == v1.PaymentStatus_PAYMENT_STATUS_UNSPECIFIED {
		return StatusError
	}
	return strings.TrimPrefix(s.String(), "PAYMENT_STATUS_")
}

// RejectReply builds the REJECTED reply the bridge sends for a request it
// could not accept. requestID may be empty when the payload was unreadable.
func RejectReply(requestID, messageID string, reason Reason, detail string) []byte {
	text := string(reason)
	if detail != "" {
		text += ": " + detail
	}
	return EncodeReply(&v1.PaymentReply{
		RequestId: requestID,
		MessageId: messageID,
		Status:    v1.PaymentStatus_PAYMENT_STATUS_REJECTED,
		Code:      v1.ReasonCode_REASON_CODE_INVALID_REQUEST,
		Reason:    text,
	})
}

// AppReply is a reply as a Dapr app publishes it to the reply topic: the
// device's reply plus the device it goes to.
type AppReply struct {
	DeviceID string `json:"device_id"`
	Reply
}

// DecodeAppReply parses and validates an app's reply and returns the device
// it is for and the reply in the device's JSON format. A missing message_id
// is derived from device_id and request_id; status is case-insensitive.
// Every failure is an *Error with Reason ReasonMalformed or ReasonBadDeviceID.
func DecodeAppReply(b []byte) (deviceID string, reply []byte, err error) {
	var r AppReply
	if err := json.Unmarshal(b, &r); err != nil {
		return "", nil, &Error{Reason: ReasonMalformed, Detail: "reply is not a JSON object", Err: err}
	}
	if err := validateDeviceID(r.DeviceID); err != nil {
		return "", nil, err
	}
	var problems []string
	if r.RequestID == "" || len(r.RequestID) > maxFieldLen {
		problems = append(problems, fmt.Sprintf("request_id must have 1 to %d bytes", maxFieldLen))
	}
	switch r.Status = strings.ToUpper(r.Status); r.Status {
	case StatusApproved, StatusDeclined, StatusRejected, StatusError:
	default:
		problems = append(problems, fmt.Sprintf("status %q is not one of APPROVED, DECLINED, REJECTED, ERROR", Clip(r.Status, 16)))
	}
	if len(r.Reason) > 1024 || len(r.Code) > maxFieldLen || len(r.MessageID) > maxFieldLen {
		problems = append(problems, "code, message_id or reason too long")
	}
	if len(problems) > 0 {
		return "", nil, &Error{Reason: ReasonMalformed, Detail: strings.Join(problems, "; ")}
	}
	if r.MessageID == "" {
		r.MessageID = v1.MessageID(r.DeviceID, r.RequestID)
	}
	reply, _ = json.Marshal(r.Reply) // a struct of strings always marshals
	return r.DeviceID, reply, nil
}
