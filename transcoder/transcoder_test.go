package transcoder

import (
	"errors"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	v1 "github.com/edgebridge/edgebridge/api/edgebridge/v1"
)

func TestDecode(t *testing.T) {
	protoReq, _ := proto.Marshal(&v1.PaymentRequest{RequestId: "r-9", AmountMinor: 99, Currency: "USD", MerchantId: "m"})
	tests := []struct {
		name    string
		device  string
		payload string
		want    Reason // "" = accepted
		amount  int64
	}{
		{name: "valid", device: "d1", payload: `{"request_id":"r-1","amount_minor":1250,"currency":"EUR","merchant_id":"m-1"}`, amount: 1250},
		{name: "unknown fields accepted", device: "d1", payload: `{"request_id":"r-1","amount_minor":5,"currency":"GBP","terminal":{"x":1},"device_id":"spoof"}`, amount: 5},
		{name: "leading whitespace", device: "d1", payload: " \n{\"request_id\":\"r\",\"amount_minor\":1,\"currency\":\"JPY\"}", amount: 1},
		{name: "protobuf", device: "d1", payload: string(protoReq), amount: 99},
		{name: "bad json", device: "d1", payload: `{"request_id":`, want: ReasonMalformed},
		{name: "trailing garbage", device: "d1", payload: `{"request_id":"r","amount_minor":1,"currency":"EUR"} x`, want: ReasonMalformed},
		{name: "empty", device: "d1", payload: ``, want: ReasonMalformed},
		{name: "missing request id", device: "d1", payload: `{"amount_minor":1,"currency":"EUR"}`, want: ReasonMissingRequestID},
		{name: "blank request id", device: "d1", payload: `{"request_id":"  ","amount_minor":1,"currency":"EUR"}`, want: ReasonMissingRequestID},
		{name: "zero amount", device: "d1", payload: `{"request_id":"r","amount_minor":0,"currency":"EUR"}`, want: ReasonBadAmount},
		{name: "negative amount", device: "d1", payload: `{"request_id":"r","amount_minor":-5,"currency":"EUR"}`, want: ReasonBadAmount},
		{name: "fractional amount", device: "d1", payload: `{"request_id":"r","amount_minor":1.5,"currency":"EUR"}`, want: ReasonBadAmount},
		{name: "missing amount", device: "d1", payload: `{"request_id":"r","currency":"EUR"}`, want: ReasonBadAmount},
		{name: "lower-case currency", device: "d1", payload: `{"request_id":"r","amount_minor":1,"currency":"eur"}`, want: ReasonBadCurrency},
		{name: "unknown currency", device: "d1", payload: `{"request_id":"r","amount_minor":1,"currency":"XYZ"}`, want: ReasonBadCurrency},
		{name: "too large", device: "d1", payload: `{"request_id":"r","amount_minor":1,"currency":"EUR","pad":"` + strings.Repeat("x", DefaultMaxPayload) + `"}`, want: ReasonTooLarge},
		{name: "long request id", device: "d1", payload: `{"request_id":"` + strings.Repeat("r", 200) + `","amount_minor":1,"currency":"EUR"}`, want: ReasonFieldTooLong},
		{name: "empty device", device: "", payload: `{"request_id":"r","amount_minor":1,"currency":"EUR"}`, want: ReasonBadDeviceID},
		{name: "wildcard device", device: "d+", payload: `{"request_id":"r","amount_minor":1,"currency":"EUR"}`, want: ReasonBadDeviceID},
		{name: "not json not proto", device: "d1", payload: "\xff\xff\xff", want: ReasonMalformed},
	}
	d := New(0)
	at := time.Unix(1700000000, 5)
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			env, err := d.Decode(Input{DeviceID: tc.device, Topic: "payment/request/" + tc.device, Payload: []byte(tc.payload), ReceivedAt: at})
			if tc.want != "" {
				var te *Error
				if !errors.As(err, &te) {
					t.Fatalf("got err %v, want *Error with reason %s", err, tc.want)
				}
				if te.Reason != tc.want {
					t.Fatalf("got reason %s (%v), want %s", te.Reason, err, tc.want)
				}
				return
			}
			if err != nil {
				t.Fatalf("got err %v, want nil", err)
			}
			if env.DeviceId != tc.device || env.SourceTopic != "payment/request/"+tc.device {
				t.Fatalf("got device %q topic %q", env.DeviceId, env.SourceTopic)
			}
			if env.ReceivedAtUnixNano != at.UnixNano() {
				t.Fatalf("got received_at %d, want %d", env.ReceivedAtUnixNano, at.UnixNano())
			}
			req, err := PaymentRequest(env)
			if err != nil {
				t.Fatalf("payload does not round-trip: %v", err)
			}
			if req.AmountMinor != tc.amount {
				t.Fatalf("got amount %d, want %d", req.AmountMinor, tc.amount)
			}
			if env.MessageId != MessageID(tc.device, req.RequestId) {
				t.Fatalf("message id not derived from device and request id")
			}
		})
	}
}

func TestMessageIDDeterministic(t *testing.T) {
	a, b := MessageID("d1", "r1"), MessageID("d1", "r1")
	if a != b {
		t.Fatalf("got %s and %s for the same input", a, b)
	}
	// The separator keeps ("d1","0r") and ("d10","r") apart.
	if MessageID("d1", "0r") == MessageID("d10", "r") {
		t.Fatal("ids collide across the device/request boundary")
	}
	if len(a) != 32 {
		t.Fatalf("got id length %d, want 32", len(a))
	}
}

func TestReplyRoundTrip(t *testing.T) {
	b := EncodeReply(&v1.PaymentReply{RequestId: "r-1", MessageId: "m", Status: v1.PaymentStatus_PAYMENT_STATUS_DECLINED, Reason: "limit"})
	r, err := DecodeReply(b)
	if err != nil {
		t.Fatal(err)
	}
	if r != (Reply{RequestID: "r-1", MessageID: "m", Status: StatusDeclined, Reason: "limit"}) {
		t.Fatalf("got %+v", r)
	}
	rej, _ := DecodeReply(RejectReply("r-2", "", ReasonBadAmount, "x"))
	if rej.Status != StatusRejected || rej.Reason != "invalid_amount: x" || rej.RequestID != "r-2" {
		t.Fatalf("got %+v", rej)
	}
	if got := RequestIDHint([]byte(`{"request_id":"r-7","amount_minor":-1}`)); got != "r-7" {
		t.Fatalf("got hint %q, want r-7", got)
	}
}

// FuzzDecode states the decoder's invariants for arbitrary device input:
// it never panics, every error is a typed *Error with a reason, and every
// accepted envelope carries a payload that validates.
func FuzzDecode(f *testing.F) {
	f.Add("d1", []byte(`{"request_id":"r-1","amount_minor":1250,"currency":"EUR","merchant_id":"m-1"}`))
	f.Add("d1", []byte(`{"request_id":"r","amount_minor":1e3,"currency":"USD"}`))
	f.Add("d/1", []byte(`{}`))
	f.Add("d", []byte("\x0a\x01r\x10\x05\x1a\x03EUR"))
	f.Add("d", []byte(`[1,2]`))
	d := New(1024)
	f.Fuzz(func(t *testing.T, device string, payload []byte) {
		env, err := d.Decode(Input{DeviceID: device, Topic: "t", Payload: payload, ReceivedAt: time.Unix(1, 0)})
		if err != nil {
			var te *Error
			if !errors.As(err, &te) || te.Reason == "" {
				t.Fatalf("untyped error %T: %v", err, err)
			}
			return
		}
		req, err := PaymentRequest(env)
		if err != nil {
			t.Fatalf("accepted envelope does not validate: %v", err)
		}
		if env.MessageId != MessageID(device, req.RequestId) || env.DeviceId != device {
			t.Fatal("accepted envelope has wrong identity")
		}
	})
}
