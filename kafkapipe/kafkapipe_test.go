package kafkapipe_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/edgebridge/edgebridge/ackwindow"
	"github.com/edgebridge/edgebridge/embedded"
	"github.com/edgebridge/edgebridge/internal/await"
	"github.com/edgebridge/edgebridge/kafkapipe"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func broker(t *testing.T) string {
	t.Helper()
	k, err := embedded.ListenKafka(embedded.KafkaConfig{Listen: "127.0.0.1:0", DataDir: t.TempDir(), Partitions: 1})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(k.Close)
	return k.Addr()
}

// consume runs a consumer (group "g", topic "t", changed by tweak) until
// stop is called and returns the fetched messages; ack decides, per
// offset, whether to acknowledge it.
func consume(t *testing.T, addr string, win *ackwindow.Window, ack func(int64) bool, tweak ...func(*kafkapipe.ConsumerConfig)) (<-chan kafkapipe.Message, func()) {
	t.Helper()
	got := make(chan kafkapipe.Message, 100)
	cfg := kafkapipe.ConsumerConfig{
		Brokers: []string{addr}, GroupID: "g", Topic: "t",
		CommitInterval: 10 * time.Millisecond, DrainTimeout: 200 * time.Millisecond, MaxWait: 50 * time.Millisecond,
	}
	for _, fn := range tweak {
		fn(&cfg)
	}
	c, err := kafkapipe.NewConsumer(cfg, win, func(_ context.Context, m kafkapipe.Message) error {
		got <- m
		if ack(m.Offset) {
			win.Ack(m.Partition, m.Offset)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx) }()
	return got, func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("consumer: %v", err)
		}
	}
}

func next(t *testing.T, ch <-chan kafkapipe.Message) kafkapipe.Message {
	t.Helper()
	return await.Receive(t, ch, 20*time.Second, "message")
}

// Records 0..9 are fetched; all but offset 3 are ACKed. Only the contiguous
// prefix (0..2) may be committed, so the next consumer starts at 3 and
// sees 3..9 again.
func TestCommitOnlyContiguousFloor(t *testing.T) {
	addr := broker(t)
	ctx := context.Background()
	if err := kafkapipe.EnsureTopics(ctx, []string{addr}, kafkapipe.Security{}, 1, "t"); err != nil {
		t.Fatal(err)
	}
	p, err := kafkapipe.NewProducer(kafkapipe.ProducerConfig{Brokers: []string{addr}})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	var recs []kafkapipe.Record
	for i := range 10 {
		recs = append(recs, kafkapipe.Record{Topic: "t", Key: []byte("dev"), Value: fmt.Appendf(nil, "v%d", i)})
	}
	if err := p.Write(ctx, recs...); err != nil {
		t.Fatal(err)
	}

	win := ackwindow.New(100)
	got, stop := consume(t, addr, win, func(off int64) bool { return off != 3 })
	for i := range 10 {
		m := next(t, got)
		if m.Offset != int64(i) || string(m.Value) != fmt.Sprintf("v%d", i) {
			t.Fatalf("got offset %d value %q, want %d v%d (order must hold)", m.Offset, m.Value, i, i)
		}
	}
	stop()

	win = ackwindow.New(100)
	got, stop = consume(t, addr, win, func(int64) bool { return true })
	defer stop()
	if m := next(t, got); m.Offset != 3 {
		t.Fatalf("restarted consumer began at offset %d, want 3 (the lowest un-ACKed)", m.Offset)
	}
	for want := int64(4); want < 10; want++ {
		if m := next(t, got); m.Offset != want {
			t.Fatalf("got offset %d, want %d", m.Offset, want)
		}
	}
}

func TestNewConsumerListsEveryProblem(t *testing.T) {
	_, err := kafkapipe.NewConsumer(kafkapipe.ConsumerConfig{}, nil, nil)
	if err == nil {
		t.Fatal("got nil error")
	}
	for _, want := range []string{"no brokers", "no group id", "no topic", "window and handler"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not mention %q", err, want)
		}
	}
}

// produce writes n records v<i> keyed "dev" (one partition) to topic t.
func produce(t *testing.T, addr string, from, n int) {
	t.Helper()
	p, err := kafkapipe.NewProducer(kafkapipe.ProducerConfig{Brokers: []string{addr}})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	var recs []kafkapipe.Record
	for i := from; i < from+n; i++ {
		recs = append(recs, kafkapipe.Record{Topic: "t", Key: []byte("dev"), Value: fmt.Appendf(nil, "v%d", i)})
	}
	if err := p.Write(context.Background(), recs...); err != nil {
		t.Fatal(err)
	}
}

// TestAbandonSkipsTheDrain: a consumer whose records nobody will ACK any
// more commits what was ACKed and returns at once instead of waiting its
// (here 10-minute) drain timeout; the next member starts at the first
// un-ACKed record.
func TestAbandonSkipsTheDrain(t *testing.T) {
	addr := broker(t)
	if err := kafkapipe.EnsureTopics(context.Background(), []string{addr}, kafkapipe.Security{}, 1, "t"); err != nil {
		t.Fatal(err)
	}
	produce(t, addr, 0, 3)
	win := ackwindow.New(10)
	got := make(chan kafkapipe.Message, 10)
	c, err := kafkapipe.NewConsumer(kafkapipe.ConsumerConfig{Brokers: []string{addr}, GroupID: "g", Topic: "t",
		CommitInterval: time.Hour, DrainTimeout: 10 * time.Minute, MaxWait: 50 * time.Millisecond},
		win, func(_ context.Context, m kafkapipe.Message) error { got <- m; return nil })
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx) }()
	for i := range 3 {
		if m := next(t, got); i == 0 {
			win.Ack(m.Partition, m.Offset) // only offset 0 is ACKed
		}
	}
	c.Abandon()
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(time.Minute):
		t.Fatal("Run still draining a minute after Abandon")
	}
	win = ackwindow.New(10)
	again, stop := consume(t, addr, win, func(int64) bool { return true })
	defer stop()
	if m := next(t, again); m.Offset != 1 {
		t.Fatalf("next member began at offset %d, want 1 (offset 0 was ACKed and committed)", m.Offset)
	}
}

// TestStartNewest: a new group with StartNewest skips what the topic held
// before it joined.
func TestStartNewest(t *testing.T) {
	addr := broker(t)
	if err := kafkapipe.EnsureTopics(context.Background(), []string{addr}, kafkapipe.Security{}, 1, "t"); err != nil {
		t.Fatal(err)
	}
	produce(t, addr, 0, 3)
	got, stop := consume(t, addr, ackwindow.New(100), func(int64) bool { return true }, func(c *kafkapipe.ConsumerConfig) {
		c.GroupID, c.StartNewest = "newest", true
	})
	defer stop()
	// The group's start is fixed when it joins; keep writing until a record
	// written after that arrives.
	deadline := time.Now().Add(30 * time.Second)
	for n := 3; ; n++ {
		produce(t, addr, n, 1)
		select {
		case m := <-got:
			if m.Offset < 3 {
				t.Fatalf("got offset %d (%s), want none of the 3 records written before the group joined", m.Offset, m.Value)
			}
			return
		case <-time.After(300 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatal("no record within 30s")
		}
	}
}

// Lag works while the consumer runs and refuses once Run returned: a call
// then would open connections nobody closes (the bridge polls Lag on its
// own clock, so one can come after the consumer stopped).
func TestLagAfterStop(t *testing.T) {
	addr := broker(t)
	if err := kafkapipe.EnsureTopics(context.Background(), []string{addr}, kafkapipe.Security{}, 1, "t"); err != nil {
		t.Fatal(err)
	}
	produce(t, addr, 0, 3)
	win := ackwindow.New(100)
	c, err := kafkapipe.NewConsumer(kafkapipe.ConsumerConfig{Brokers: []string{addr}, GroupID: "g", Topic: "t",
		CommitInterval: 10 * time.Millisecond, DrainTimeout: 200 * time.Millisecond, MaxWait: 50 * time.Millisecond},
		win, func(_ context.Context, m kafkapipe.Message) error { win.Ack(m.Partition, m.Offset); return nil })
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx) }()
	deadline := time.Now().Add(20 * time.Second)
	for {
		lag, err := c.Lag(context.Background())
		if err == nil && len(lag) == 1 && lag[0] == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("lag %v (%v), want partition 0 at 0 once all three are committed", lag, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if _, err := c.Lag(context.Background()); err == nil {
		t.Fatal("Lag after Run returned: want an error")
	}
}

// TestRedelivered: Message.Redelivered is false for a record no run handed
// before and true for one an earlier run may have handed (it was not
// ACKed, so a restart hands it again). A run that finds no HandedFile
// counts what the partition held when it first looked as possibly handed,
// and what arrives after as new; the next run knows from the file.
func TestRedelivered(t *testing.T) {
	addr := broker(t)
	if err := kafkapipe.EnsureTopics(context.Background(), []string{addr}, kafkapipe.Security{}, 1, "t"); err != nil {
		t.Fatal(err)
	}
	produce(t, addr, 0, 10)
	file := filepath.Join(t.TempDir(), "handed")
	run := func(path string, after func()) []bool {
		t.Helper()
		got, stop := consume(t, addr, ackwindow.New(100), func(int64) bool { return false },
			func(c *kafkapipe.ConsumerConfig) { c.HandedFile = path })
		var re []bool
		for i := range 15 {
			if i == 10 && after != nil {
				after()
			}
			m := next(t, got)
			if m.Offset != int64(i) {
				t.Fatalf("offset %d, want %d", m.Offset, i)
			}
			re = append(re, m.Redelivered)
		}
		stop()
		return re
	}
	// Offsets 0..9 were in the partition when the run first looked;
	// 10..14 are written after.
	if re := run(file, func() { produce(t, addr, 10, 5) }); slices.Contains(re[:10], false) || slices.Contains(re[10:], true) {
		t.Fatalf("first run: Redelivered %v, want 10 true then 5 false", re)
	}
	raw, err := os.ReadFile(file)
	if err != nil || !strings.Contains(string(raw), `"handed_below":{"0":4096}`) {
		t.Fatalf("handed file %q, %v", raw, err)
	}
	if re := run(file, nil); slices.Contains(re, false) {
		t.Fatalf("after a restart (nothing ACKed): Redelivered %v, want all true", re)
	}
	// Without a file only this run counts: nothing was handed in it yet.
	if re := run("", nil); slices.Contains(re, true) {
		t.Fatalf("without a handed file: Redelivered %v, want all false", re)
	}
}
