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
		{name: "invalid utf-8 in request id", device: "d1", payload: "{\"request_id\":\"r-\xff\",\"amount_minor\":1,\"currency\":\"EUR\"}", want: ReasonInvalidUTF8},
		{name: "invalid utf-8 in unknown field", device: "d1", payload: "{\"request_id\":\"r\",\"amount_minor\":1,\"currency\":\"EUR\",\"x\":\"\xc3\"}", want: ReasonInvalidUTF8},
		{name: "lone high surrogate", device: "d1", payload: `{"request_id":"r-\ud800","amount_minor":1,"currency":"EUR"}`, want: ReasonInvalidUTF8},
		{name: "lone low surrogate", device: "d1", payload: `{"request_id":"r-\udc00x","amount_minor":1,"currency":"EUR"}`, want: ReasonInvalidUTF8},
		{name: "surrogate pair", device: "d1", payload: `{"request_id":"r-\ud83d\ude00","amount_minor":7,"currency":"EUR"}`, amount: 7},
		{name: "escaped backslash before u", device: "d1", payload: `{"request_id":"r-\\ud800","amount_minor":8,"currency":"EUR"}`, amount: 8},
		{name: "invalid utf-8 device", device: "d\xff", payload: `{"request_id":"r","amount_minor":1,"currency":"EUR"}`, want: ReasonBadDeviceID},
		{name: "long device", device: strings.Repeat("d", 129), payload: `{"request_id":"r","amount_minor":1,"currency":"EUR"}`, want: ReasonBadDeviceID},
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
			if env.MessageId != v1.MessageID(tc.device, req.RequestId) {
				t.Fatalf("message id not derived from device and request id")
			}
		})
	}
}

// The fingerprint is the request's content: the same for JSON and
// protobuf and with or without trace context, different when any business
// field differs.
func TestFingerprint(t *testing.T) {
	d := New(0)
	fp := func(payload []byte) string {
		t.Helper()
		env, err := d.Decode(Input{DeviceID: "d1", Topic: "payment/request/d1", Payload: payload})
		if err != nil {
			t.Fatal(err)
		}
		return env.Fingerprint
	}
	base := fp([]byte(`{"request_id":"r-1","amount_minor":1250,"currency":"EUR","merchant_id":"m-1"}`))
	pb, _ := proto.Marshal(&v1.PaymentRequest{RequestId: "r-1", AmountMinor: 1250, Currency: "EUR", MerchantId: "m-1"})
	same := map[string][]byte{
		"protobuf":       pb,
		"trace context":  []byte(`{"traceparent":"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01","request_id":"r-1","amount_minor":1250,"currency":"EUR","merchant_id":"m-1"}`),
		"unknown fields": []byte(`{"request_id":"r-1","merchant_id":"m-1","currency":"EUR","amount_minor":1250,"memo":"x"}`),
	}
	for name, p := range same {
		if got := fp(p); got != base {
			t.Errorf("%s: got fingerprint %s, want %s", name, got, base)
		}
	}
	differ := map[string]string{
		"amount":   `{"request_id":"r-1","amount_minor":5000000,"currency":"EUR","merchant_id":"m-1"}`,
		"currency": `{"request_id":"r-1","amount_minor":1250,"currency":"USD","merchant_id":"m-1"}`,
		"merchant": `{"request_id":"r-1","amount_minor":1250,"currency":"EUR","merchant_id":"m-2"}`,
		// Length prefixes keep field boundaries: "m-1" + "" is not "m" + "-1".
		"boundary": `{"request_id":"r-1","amount_minor":1250,"currency":"EUR","merchant_id":"m-1 "}`,
	}
	for name, p := range differ {
		if got := fp([]byte(p)); got == base {
			t.Errorf("%s changed: fingerprint stayed %s", name, got)
		}
	}
	if len(base) != 64 {
		t.Errorf("got fingerprint length %d, want 64 hex digits", len(base))
	}
}

// Fields a device adds to a protobuf request are not carried to Kafka.
func TestProtobufUnknownFieldsDropped(t *testing.T) {
	pb, _ := proto.Marshal(&v1.PaymentRequest{RequestId: "r", AmountMinor: 1, Currency: "EUR"})
	pb = append(pb, 0xfa, 0x01, 0x80, 0x08) // field 31, bytes, 1024 long
	pb = append(pb, make([]byte, 1024)...)
	env, err := New(0).Decode(Input{DeviceID: "d", Payload: pb})
	if err != nil {
		t.Fatal(err)
	}
	if len(env.Payload) > 32 {
		t.Fatalf("got envelope payload of %d bytes, want the unknown field dropped", len(env.Payload))
	}
}

// A refused payload carries the request id it held, so the device can
// match the REJECTED reply; one over the limit is not read at all.
func TestErrorCarriesRequestID(t *testing.T) {
	d := New(64)
	tests := []struct {
		name, payload, want string
	}{
		{"bad amount", `{"request_id":"r-7","amount_minor":-1,"currency":"EUR"}`, "r-7"},
		{"fractional amount", `{"request_id":"r-8","amount_minor":1.5,"currency":"EUR"}`, "r-8"},
		{"bad currency", `{"request_id":"r-9","amount_minor":1,"currency":"xx"}`, "r-9"},
		{"too large", `{"request_id":"r-10","amount_minor":1,"currency":"EUR","pad":"` + strings.Repeat("x", 64) + `"}`, ""},
		{"bad json", `{"request_id":"r-11",`, ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := d.Decode(Input{DeviceID: "d", Payload: []byte(tc.payload)})
			var te *Error
			if !errors.As(err, &te) {
				t.Fatalf("got %v, want *Error", err)
			}
			if te.RequestID != tc.want {
				t.Fatalf("got request id %q, want %q", te.RequestID, tc.want)
			}
		})
	}
}

func TestClip(t *testing.T) {
	tests := []struct{ in, want string }{
		{"shor", "shor"},
		{"abcdefgh", "abcd…"},
		{"ab\u00e9\u00e9", "ab\u00e9…"}, // never splits a character
		{"a\xffb", "a\ufffd…"},
		{strings.Repeat("x", 100000), "xxxx…"},
	}
	for _, tc := range tests {
		if got := Clip(tc.in, 4); got != tc.want {
			t.Errorf("Clip(%.20q, 4) = %q, want %q", tc.in, got, tc.want)
		}
	}
}

func TestMessageIDDeterministic(t *testing.T) {
	a, b := v1.MessageID("d1", "r1"), v1.MessageID("d1", "r1")
	if a != b {
		t.Fatalf("got %s and %s for the same input", a, b)
	}
	// The separator keeps ("d1","0r") and ("d10","r") apart.
	if v1.MessageID("d1", "0r") == v1.MessageID("d10", "r") {
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
}

// FuzzDecode states the decoder's invariants for arbitrary device input:
// it never panics, every error is a typed *Error with a reason, and every
// accepted envelope carries a payload that validates, its request's
// fingerprint, and passes the backend helper's envelope check.
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
		if env.MessageId != v1.MessageID(device, req.RequestId) || env.DeviceId != device {
			t.Fatal("accepted envelope has wrong identity")
		}
		if env.Fingerprint != v1.Fingerprint(req) {
			t.Fatal("accepted envelope's fingerprint is not its request's")
		}
		if err := v1.CheckEnvelope(env); err != nil {
			t.Fatalf("accepted envelope breaks the contract: %v", err)
		}
	})
}
