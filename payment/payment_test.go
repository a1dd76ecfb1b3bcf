package payment

import (
	"context"
	"os"
	"path/filepath"
	"strconv"
	"testing"

	v1 "github.com/edgebridge/edgebridge/api/edgebridge/v1"
	"github.com/edgebridge/edgebridge/transcoder"
)

func envelope(t *testing.T, device, request string, amount int64) *v1.Envelope {
	t.Helper()
	env, err := transcoder.New(0).Decode(transcoder.Input{
		DeviceID: device, Topic: "payment/request/" + device,
		Payload: []byte(`{"request_id":"` + request + `","amount_minor":` + strconv.FormatInt(amount, 10) + `,"currency":"EUR"}`),
	})
	if err != nil {
		t.Fatal(err)
	}
	return env
}

func TestHandlerLimit(t *testing.T) {
	h := Handler(1000)
	tests := []struct {
		name   string
		amount int64
		want   string
	}{
		{name: "below", amount: 999, want: transcoder.StatusApproved},
		{name: "at limit", amount: 1000, want: transcoder.StatusApproved},
		{name: "above", amount: 1001, want: transcoder.StatusDeclined},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := h(context.Background(), envelope(t, "d1", "r-"+tc.name, tc.amount))
			rep, err := transcoder.DecodeReply(r.Reply)
			if err != nil {
				t.Fatal(err)
			}
			if r.Outcome != v1.Outcome_OUTCOME_OK || rep.Status != tc.want {
				t.Fatalf("got %v %s, want OK %s", r.Outcome, rep.Status, tc.want)
			}
		})
	}
	bad := &v1.Envelope{MessageId: "x", ContentType: "text/plain"}
	if r := h(context.Background(), bad); r.Outcome != v1.Outcome_OUTCOME_REJECT {
		t.Fatalf("got %v for an undecodable envelope, want REJECT", r.Outcome)
	}
}

func TestLedgerSurvivesRestart(t *testing.T) {
	path := filepath.Join(t.TempDir(), "ledger.jsonl")
	l, err := OpenLedger(path)
	if err != nil {
		t.Fatal(err)
	}
	h := Handler(DefaultLimit)
	e1, e2 := envelope(t, "d1", "r-1", 50), envelope(t, "d1", "r-2", 500000)
	for _, e := range []*v1.Envelope{e1, e2} {
		if err := l.Save(e, h(context.Background(), e)); err != nil {
			t.Fatal(err)
		}
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	// A crash mid-append leaves a torn line; it must be ignored and cut.
	f, _ := os.OpenFile(path, os.O_APPEND|os.O_WRONLY, 0)
	f.WriteString(`{"message_id":"torn","dev`)
	f.Close()

	l, err = OpenLedger(path)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	if l.Len() != 2 {
		t.Fatalf("got %d entries after reload, want 2", l.Len())
	}
	r, ok := l.Lookup(e2.MessageId)
	if !ok {
		t.Fatal("reloaded ledger forgot a message")
	}
	rep, _ := transcoder.DecodeReply(r.Reply)
	if rep.Status != transcoder.StatusDeclined || rep.RequestID != "r-2" || rep.MessageID != e2.MessageId {
		t.Fatalf("got stored reply %+v", rep)
	}
	entries, err := ReadLedger(path)
	if err != nil {
		t.Fatal(err)
	}
	want := Entry{MessageID: e1.MessageId, DeviceID: "d1", RequestID: "r-1", AmountMinor: 50, Currency: "EUR", Status: "APPROVED"}
	if len(entries) != 2 || entries[0] != want {
		t.Fatalf("got entries %+v, want first %+v", entries, want)
	}
}

func TestLedgerRejectsCorruption(t *testing.T) {
	path := filepath.Join(t.TempDir(), "ledger.jsonl")
	os.WriteFile(path, []byte("not json\n"), 0o600)
	if _, err := OpenLedger(path); err == nil {
		t.Fatal("got nil error for a corrupt complete line, want an error (never silently drop history)")
	}
}

// Without fsync, Sync still writes what was saved to the file: another
// reader (and a restarted process) sees it before Close.
func TestLedgerNoFsyncSyncWrites(t *testing.T) {
	path := filepath.Join(t.TempDir(), "ledger.jsonl")
	l, err := OpenLedger(path, NoFsync())
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	e := envelope(t, "d1", "r-1", 50)
	if err := l.Save(e, Handler(DefaultLimit)(context.Background(), e)); err != nil {
		t.Fatal(err)
	}
	if entries, _ := ReadLedger(path); len(entries) != 0 {
		t.Fatalf("saved entry on disk before Sync: %+v", entries)
	}
	if err := l.Sync(); err != nil {
		t.Fatal(err)
	}
	entries, err := ReadLedger(path)
	if err != nil {
		t.Fatal(err)
	}
	if len(entries) != 1 || entries[0].MessageID != e.MessageId {
		t.Fatalf("after Sync got %+v, want the saved entry", entries)
	}
}
