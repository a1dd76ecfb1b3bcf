package integration

import (
	"context"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	v1 "github.com/edgebridge/edgebridge/api/edgebridge/v1"
	"github.com/edgebridge/edgebridge/kit/grpctest"
	"github.com/edgebridge/edgebridge/payment"
	"github.com/edgebridge/edgebridge/transcoder"
)

// maxPaymentdRSS bounds paymentd (built without -race) under a flood of
// the largest frames a bridge can send: its queue of unprocessed
// deliveries is capped at 16 MiB.
const maxPaymentdRSS = 128 << 20

// TestPaymentdRefusesHostileFrames plays a hostile bridge against a real
// paymentd (built without -race, 5 ms per payment): windows that once ran
// it out of memory, envelopes that break the contract, a reused message
// id, more deliveries than the window, and a flood of 1 MiB frames.
// paymentd answers each as the protocol says, stores nothing it could not
// trust, stays up, and stays within maxPaymentdRSS.
func TestPaymentdRefusesHostileFrames(t *testing.T) {
	ledger := filepath.Join(t.TempDir(), "ledger.jsonl")
	pay := startPaymentdBin(t, bins.paymentdNoRace, freeAddr(t), ledger, "-delay", "5ms")
	conn, err := grpc.NewClient(pay.addr, grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultCallOptions(grpc.MaxCallSendMsgSize(8<<20)))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	client := v1.NewDeliveryClient(conn)

	valid := func(device, request string, amount int64) *v1.Envelope {
		env, err := transcoder.New(0).Decode(transcoder.Input{DeviceID: device, Topic: "payment/request/" + device,
			Payload: []byte(`{"request_id":"` + request + `","amount_minor":` + itoa(amount) + `,"currency":"EUR"}`)})
		if err != nil {
			t.Fatal(err)
		}
		return env
	}
	with := func(env *v1.Envelope, change func(*v1.Envelope)) *v1.Envelope {
		e := proto.Clone(env).(*v1.Envelope)
		change(e)
		return e
	}
	big := strings.Repeat("x", 1<<20)
	tests := []struct {
		name   string
		window uint32
		env    *v1.Envelope
		want   v1.Outcome
		code   v1.ReasonCode
		dup    bool
	}{
		{name: "window 4294967280", window: 4294967280, env: valid("d1", "r-1", 100), want: v1.Outcome_OUTCOME_OK},
		{name: "window 20,000,000", window: 20_000_000, env: valid("d1", "r-2", 100), want: v1.Outcome_OUTCOME_OK},
		{name: "redelivery", window: 8, env: valid("d1", "r-1", 100), want: v1.Outcome_OUTCOME_OK, dup: true},
		{name: "same id, other content", window: 8, env: valid("d1", "r-1", 500000000), want: v1.Outcome_OUTCOME_REJECT, code: v1.ReasonCode_REASON_CODE_CONFLICT},
		{name: "message id of another request", window: 8, env: with(valid("d1", "r-3", 100), func(e *v1.Envelope) { e.MessageId = v1.MessageID("d1", "r-1") }),
			want: v1.Outcome_OUTCOME_REJECT, code: v1.ReasonCode_REASON_CODE_INVALID_REQUEST},
		{name: "1 MiB device id", window: 8, env: with(valid("d1", "r-4", 100), func(e *v1.Envelope) { e.DeviceId = big; e.MessageId = v1.MessageID(big, e.RequestId) }),
			want: v1.Outcome_OUTCOME_REJECT, code: v1.ReasonCode_REASON_CODE_INVALID_REQUEST},
		{name: "payload over 1 MiB", window: 8, env: with(valid("d1", "r-5", 100), func(e *v1.Envelope) { e.Payload = []byte(big + "x") }),
			want: v1.Outcome_OUTCOME_REJECT, code: v1.ReasonCode_REASON_CODE_INVALID_REQUEST},
		{name: "payload that is no request", window: 8, env: with(valid("d1", "r-6", 100), func(e *v1.Envelope) { e.Payload = []byte(big) }),
			want: v1.Outcome_OUTCOME_REJECT, code: v1.ReasonCode_REASON_CODE_INVALID_REQUEST},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			st := openStream(t, client, tc.window)
			if err := st.Send(&v1.ClientFrame{Frame: &v1.ClientFrame_Deliver{Deliver: &v1.Deliver{Seq: 1, Envelope: tc.env}}}); err != nil {
				t.Fatal(err)
			}
			a := grpctest.NextAck(t, st)
			if a.Outcome != tc.want || a.Code != tc.code || a.Duplicate != tc.dup || a.Seq != 1 {
				t.Fatalf("got %v %v duplicate %v (%s), want %v %v duplicate %v", a.Outcome, a.Code, a.Duplicate, a.Reason, tc.want, tc.code, tc.dup)
			}
		})
	}

	t.Run("more deliveries than the window", func(t *testing.T) {
		st := openStream(t, client, 2)
		for seq := range uint64(50) { // far faster than 5 ms each: past the window of 2
			if st.Send(&v1.ClientFrame{Frame: &v1.ClientFrame_Deliver{Deliver: &v1.Deliver{Seq: seq, Envelope: valid("d2", "r-"+itoa(int64(seq)), 100)}}}) != nil {
				break
			}
		}
		for {
			if _, err := st.Recv(); err != nil {
				if status.Code(err) != codes.ResourceExhausted {
					t.Fatalf("got %v, want the stream ended ResourceExhausted", err)
				}
				return
			}
		}
	})

	t.Run("flood of 1 MiB frames", func(t *testing.T) {
		st := openStream(t, client, 65536)
		const frames = 256 // 256 MiB sent; paymentd may hold 64 MiB of them
		acked := make(chan int, 1)
		go func() {
			n := 0
			for n < frames {
				f, err := st.Recv()
				if err != nil {
					break
				}
				if f.GetAck() != nil {
					n++
				}
			}
			acked <- n
		}()
		flood := valid("d3", "r-flood", 100)
		flood.Payload = []byte(big)
		for seq := range uint64(frames) {
			if err := st.Send(&v1.ClientFrame{Frame: &v1.ClientFrame_Deliver{Deliver: &v1.Deliver{Seq: seq, Envelope: flood}}}); err != nil {
				t.Fatalf("send %d: %v", seq, err)
			}
		}
		if n := <-acked; n != frames {
			t.Fatalf("got %d ACKs, want %d", n, frames)
		}
		if rss := peakRSS(t, pay.Process); rss > maxPaymentdRSS {
			t.Errorf("paymentd peak RSS %d MB under a flood of %d MiB, want under %d MB", rss>>20, frames, maxPaymentdRSS>>20)
		} else {
			t.Logf("paymentd peak RSS after a %d MiB flood: %.1f MB", frames, float64(rss)/(1<<20))
		}
	})

	// Still up and serving; the ledger holds only what it could trust.
	st := openStream(t, client, 8)
	if err := st.Send(&v1.ClientFrame{Frame: &v1.ClientFrame_Deliver{Deliver: &v1.Deliver{Seq: 1, Envelope: valid("d4", "r-1", 100)}}}); err != nil {
		t.Fatal(err)
	}
	if a := grpctest.NextAck(t, st); a.Outcome != v1.Outcome_OUTCOME_OK {
		t.Fatalf("after the hostile frames: got %v, want OK", a)
	}
	conn.Close() // a graceful stop waits for open streams
	if err := pay.Stop(10 * time.Second); err != nil {
		t.Fatalf("paymentd exit: %v", err)
	}
	entries, err := payment.ReadLedger(ledger)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	overWindow := 0
	for _, e := range entries {
		if e.DeviceID == "d2" { // the stream past its window: at most the window was processed
			overWindow++
			continue
		}
		got = append(got, e.DeviceID+"/"+e.RequestID+"/"+itoa(e.AmountMinor))
	}
	if want := "d1/r-1/100 d1/r-2/100 d4/r-1/100"; strings.Join(got, " ") != want || overWindow > 2 {
		t.Errorf("ledger: got %q and %d of the stream past its window, want %q and at most 2", strings.Join(got, " "), overWindow, want)
	}
}

// openStream opens a Delivery stream with the given Hello window and reads
// the Welcome.
func openStream(t *testing.T, c v1.DeliveryClient, window uint32) v1.Delivery_StreamClient {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	st, err := c.Stream(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := st.Send(&v1.ClientFrame{Frame: &v1.ClientFrame_Hello{Hello: &v1.Hello{BridgeId: "hostile", Window: window}}}); err != nil {
		t.Fatal(err)
	}
	f, err := st.Recv()
	if err != nil || f.GetWelcome() == nil {
		t.Fatalf("got %v %v, want Welcome", f, err)
	}
	return st
}
