package grpcout

import (
	"strings"
	"testing"

	"google.golang.org/protobuf/proto"

	v1 "github.com/edgebridge/edgebridge/api/edgebridge/v1"
)

// The frames of the hot path as gRPC's codec sees them (proto.Marshal /
// proto.Unmarshal): a Deliver carrying a request envelope, and its Ack
// carrying the device reply.
var (
	benchDeliver = &v1.ClientFrame{Frame: &v1.ClientFrame_Deliver{Deliver: &v1.Deliver{Seq: 42, Envelope: &v1.Envelope{
		MessageId: "7afbe77713591fc817a89dbe4ba335a1", DeviceId: "dev-0001", RequestId: "r-000042",
		SourceTopic: "payment/request/dev-0001", ReceivedAtUnixNano: 1_763_000_000_000_000_000,
		ContentType: "application/x-protobuf; messageType=edgebridge.v1.PaymentRequest",
		Payload:     []byte(strings.Repeat("p", 48)), Attempt: 1,
	}}}}
	benchAck = &v1.ServerFrame{Frame: &v1.ServerFrame_Ack{Ack: &v1.Ack{Seq: 42, MessageId: "7afbe77713591fc817a89dbe4ba335a1",
		Outcome: v1.Outcome_OUTCOME_OK,
		Reply:   &v1.PaymentReply{Status: v1.PaymentStatus_PAYMENT_STATUS_APPROVED}}}}
)

func BenchmarkFrameEncode(b *testing.B) {
	for _, tc := range []struct {
		name string
		m    proto.Message
	}{{"deliver", benchDeliver}, {"ack", benchAck}} {
		b.Run(tc.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				buf, err := proto.Marshal(tc.m)
				if err != nil {
					b.Fatal(err)
				}
				b.SetBytes(int64(len(buf)))
			}
		})
	}
}

func BenchmarkFrameDecode(b *testing.B) {
	deliver, _ := proto.Marshal(benchDeliver)
	ack, _ := proto.Marshal(benchAck)
	b.Run("deliver", func(b *testing.B) {
		b.SetBytes(int64(len(deliver)))
		b.ReportAllocs()
		for b.Loop() {
			var f v1.ClientFrame
			if err := proto.Unmarshal(deliver, &f); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("ack", func(b *testing.B) {
		b.SetBytes(int64(len(ack)))
		b.ReportAllocs()
		for b.Loop() {
			var f v1.ServerFrame
			if err := proto.Unmarshal(ack, &f); err != nil {
				b.Fatal(err)
			}
		}
	})
}
