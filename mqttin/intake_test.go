package mqttin_test

import (
	"errors"
	"testing"
	"testing/synctest"
	"time"

	"github.com/edgebridge/edgebridge/mqttin"
)

// Take answers true only once the pipeline acknowledged the message, false
// when it gave up (queue full, no ack in time, closed); a message given up
// on before it was claimed cannot be claimed any more.
func TestIntakeTake(t *testing.T) {
	const wait = time.Second
	took := func(in *mqttin.Intake, topic string) <-chan bool {
		res := make(chan bool, 1)
		go func() { res <- in.Take(topic, []byte("{}"), false, wait) }()
		return res
	}
	t.Run("acked", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			in := mqttin.NewIntake([]string{"payment/request/+"}, 4)
			res := took(in, "payment/request/d1")
			m := <-in.Messages()
			if m.DeviceID != "d1" || m.Topic != "payment/request/d1" {
				t.Fatalf("got %q from %q, want d1 from payment/request/d1", m.DeviceID, m.Topic)
			}
			synctest.Wait()
			select {
			case <-res:
				t.Fatal("Take returned before the message was acknowledged")
			default:
			}
			if !m.Claim() {
				t.Fatal("Claim of a waiting message: got false, want true")
			}
			m.Ack()
			m.Ack() // a second Ack is harmless
			if !<-res {
				t.Fatal("Take after Ack: got false, want true")
			}
			if n := in.Refused(); n != 0 {
				t.Fatalf("Refused: got %d, want 0", n)
			}
		})
	})
	t.Run("not claimed in time", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			in := mqttin.NewIntake([]string{"payment/request/+"}, 4)
			start := time.Now()
			if <-took(in, "payment/request/d1") {
				t.Fatal("Take with nobody reading: got true, want false")
			}
			if d := time.Since(start); d != wait {
				t.Fatalf("Take gave up after %s, want %s", d, wait)
			}
			m := <-in.Messages()
			if m.Claim() {
				t.Fatal("Claim of an abandoned message: got true, want false (its device resends it)")
			}
			if n := in.Refused(); n != 1 {
				t.Fatalf("Refused: got %d, want 1", n)
			}
		})
	})
	t.Run("queue full", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			in := mqttin.NewIntake([]string{"#"}, 1)
			first := took(in, "a/d1")
			synctest.Wait() // the first holds the queue's one slot
			if <-took(in, "a/d2") {
				t.Fatal("Take into a full queue: got true, want false")
			}
			if <-first {
				t.Fatal("the first Take, never acknowledged: got true, want false")
			}
			if m := <-in.Messages(); m.DeviceID != "d1" || len(in.Messages()) != 0 {
				t.Fatalf("queued: got %q and %d more, want d1 alone", m.DeviceID, len(in.Messages()))
			}
			if n := in.Refused(); n != 2 {
				t.Fatalf("Refused: got %d, want 2", n)
			}
		})
	})
	t.Run("claimed, then the wait ends", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			in := mqttin.NewIntake([]string{"#"}, 1)
			res := took(in, "a/d1")
			m := <-in.Messages()
			m.Claim() // the write is under way when the wait ends
			if <-res {
				t.Fatal("Take without an Ack: got true, want false")
			}
			m.Ack() // a late Ack does nothing
		})
	})
	t.Run("close", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			in := mqttin.NewIntake([]string{"#"}, 1)
			res := took(in, "a/d1")
			synctest.Wait()
			start := time.Now()
			in.Close()
			in.Close()
			if <-res || time.Since(start) != 0 {
				t.Fatal("a waiting Take did not return false at once on Close")
			}
			if <-took(in, "a/d2") {
				t.Fatal("Take after Close: got true, want false")
			}
		})
	})
}

func TestIntakeTakes(t *testing.T) {
	in := mqttin.NewIntake([]string{"payment/request/+", "ops/#"}, 0)
	for _, tc := range []struct {
		topic string
		want  bool
	}{
		{"payment/request/d1", true},
		{"ops/a/b", true},
		{"payment/response/d1", false},
		{"payment/request/d1/x", false},
	} {
		if got := in.Takes(tc.topic); got != tc.want {
			t.Errorf("Takes(%q): got %v, want %v", tc.topic, got, tc.want)
		}
	}
}

// Reply goes through the replier the broker set, after the checks the
// broker's in-process publish does not make, also once takes stopped.
func TestIntakeReply(t *testing.T) {
	in := mqttin.NewIntake([]string{"payment/request/+"}, 1)
	if in.CanReply() {
		t.Fatal("CanReply before a broker set its replier")
	}
	if err := in.Reply("payment/response/d1", []byte("r")); !errors.Is(err, mqttin.ErrNoReplier) {
		t.Fatalf("Reply without a replier: %v, want mqttin.ErrNoReplier", err)
	}
	var got []string
	in.SetReplier(func(topic string, payload []byte) error {
		got = append(got, topic+" "+string(payload))
		return nil
	})
	if !in.CanReply() {
		t.Fatal("CanReply: false after SetReplier")
	}
	if err := in.Reply("payment/response/d1", []byte("r1")); err != nil {
		t.Fatal(err)
	}
	for _, topic := range []string{"payment/response/+", "payment/#", "", "payment/response/d1\x00"} {
		if err := in.Reply(topic, []byte("x")); !errors.Is(err, mqttin.ErrInvalidTopic) {
			t.Errorf("Reply to %q: %v, want mqttin.ErrInvalidTopic", topic, err)
		}
	}
	// Close stops takes, not replies: a draining bridge still answers.
	in.Close()
	if err := in.Reply("payment/response/d1", []byte("r2")); err != nil {
		t.Fatalf("Reply after Close: %v", err)
	}
	if len(got) != 2 || got[0] != "payment/response/d1 r1" || got[1] != "payment/response/d1 r2" {
		t.Fatalf("the replier got %q, want the two valid replies", got)
	}
}
