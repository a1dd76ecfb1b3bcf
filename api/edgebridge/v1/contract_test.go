package edgebridgev1

import (
	"errors"
	"strings"
	"testing"
)

// The derivations as the README states them, computed independently
// (Python's hashlib): implementations in other languages check against
// these vectors.
func TestDerivationVectors(t *testing.T) {
	if got, want := MessageID("dev-0001", "r-000042"), "e2d6e6b782d5659aee554e335fbf9f95"; got != want {
		t.Errorf("MessageID = %s, want %s", got, want)
	}
	for _, tc := range []struct {
		req  *PaymentRequest
		want string
	}{
		{&PaymentRequest{RequestId: "r-1", AmountMinor: 1250, Currency: "EUR", MerchantId: "m-1"}, "345284d43c8a065b9c4ed5cb4b3c0ac65186de5c19e8660f1655b966e6e8203d"},
		{&PaymentRequest{RequestId: "r-1", AmountMinor: 500000000, Currency: "USD", MerchantId: "m-1"}, "e95483e2f3811938f9be7d6c8f8ba5d253ca0a16240141506485346a44e9f7d2"},
	} {
		if got := Fingerprint(tc.req); got != tc.want {
			t.Errorf("Fingerprint(%v) = %s, want %s", tc.req, got, tc.want)
		}
	}
}

func TestCheckEnvelope(t *testing.T) {
	ok := &Envelope{MessageId: MessageID("d", "r"), DeviceId: "d", RequestId: "r",
		Fingerprint: Fingerprint(&PaymentRequest{RequestId: "r"})}
	if err := CheckEnvelope(ok); err != nil {
		t.Fatalf("valid envelope: %v", err)
	}
	long := strings.Repeat("x", MaxIDLen+1)
	for name, e := range map[string]*Envelope{
		"nil":                 nil,
		"no ids":              {},
		"wrong message id":    {MessageId: MessageID("d", "q"), DeviceId: "d", RequestId: "r"},
		"long request id":     {MessageId: MessageID("d", long), DeviceId: "d", RequestId: long},
		"invalid UTF-8":       {MessageId: MessageID("d", "r\xff"), DeviceId: "d", RequestId: "r\xff"},
		"short fingerprint":   {MessageId: MessageID("d", "r"), DeviceId: "d", RequestId: "r", Fingerprint: "abcd"},
		"long content type":   {MessageId: MessageID("d", "r"), DeviceId: "d", RequestId: "r", ContentType: strings.Repeat("c", MaxContentTypeLen+1)},
		"too many trace keys": {MessageId: MessageID("d", "r"), DeviceId: "d", RequestId: "r", TraceContext: map[string]string{"a": "", "b": "", "c": "", "d": "", "e": "", "f": "", "g": "", "h": "", "i": ""}},
	} {
		if err := CheckEnvelope(e); !errors.Is(err, ErrInvalidEnvelope) {
			t.Errorf("%s: got %v, want ErrInvalidEnvelope", name, err)
		}
	}
}
