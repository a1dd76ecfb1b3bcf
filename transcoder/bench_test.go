package transcoder

import (
	"fmt"
	"strings"
	"testing"
	"time"

	v1 "github.com/edgebridge/edgebridge/api/edgebridge/v1"
)

// BenchmarkDecode: a device's JSON request, padded to 1 KB as in the bench
// command, into a validated Envelope.
func BenchmarkDecode(b *testing.B) {
	pad := strings.Repeat("x", 1024-110)
	payload := []byte(fmt.Sprintf(`{"request_id":"r-000042","amount_minor":1250,"currency":"EUR","merchant_id":"m-dev-0001","memo":%q}`, pad))
	d := New(DefaultMaxPayload)
	in := Input{DeviceID: "dev-0001", Topic: "payment/request/dev-0001", Payload: payload, ReceivedAt: time.Now()}
	b.SetBytes(int64(len(payload)))
	b.ReportAllocs()
	for b.Loop() {
		if _, err := d.Decode(in); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkEncodeReply: a backend's answer into the device's JSON reply.
func BenchmarkEncodeReply(b *testing.B) {
	r := &v1.PaymentReply{RequestId: "r-000042", MessageId: v1.MessageID("dev-0001", "r-000042"), Status: v1.PaymentStatus_PAYMENT_STATUS_APPROVED}
	b.ReportAllocs()
	for b.Loop() {
		_ = EncodeReply(r)
	}
}
