package payment

import (
	"context"
	"os"
	"path/filepath"
	"strconv"
	"testing"

	v1 "github.com/edgebridge/edgebridge/api/edgebridge/v1"
	"github.com/edgebridge/edgebridge/backend"
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
			if got := transcoder.StatusName(r.Reply.GetStatus()); r.Outcome != v1.Outcome_OUTCOME_OK || got != tc.want {
				t.Fatalf("got %v %s, want OK %s", r.Outcome, got, tc.want)
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
	if rep := r.Reply; rep.GetStatus() != v1.PaymentStatus_PAYMENT_STATUS_DECLINED || rep.GetCode() != v1.ReasonCode_REASON_CODE_LIMIT_EXCEEDED {
		t.Fatalf("got stored reply %v, want DECLINED limit_exceeded", rep)
	}
	if r.Fingerprint != e2.Fingerprint || r.Fingerprint == "" {
		t.Fatalf("got stored fingerprint %q, want the envelope's %q", r.Fingerprint, e2.Fingerprint)
	}
	entries, err := ReadLedger(path)
	if err != nil {
		t.Fatal(err)
	}
	want := Entry{MessageID: e1.MessageId, DeviceID: "d1", RequestID: "r-1", AmountMinor: 50, Currency: "EUR", Status: "APPROVED",
		Fingerprint: e1.Fingerprint}
	if len(entries) != 2 || entries[0] != want {
		t.Fatalf("got entries %+v, want first %+v", entries, want)
	}
}

// A REJECT is stored with its code and reason, and looked up as a REJECT
// (a lost REJECT's redelivery must be dead-lettered again, not answered
// like an approval); ledger lines from before fingerprints load with none.
func TestLedgerRejectAndOldLines(t *testing.T) {
	path := filepath.Join(t.TempDir(), "ledger.jsonl")
	old := `{"message_id":"` + v1.MessageID("d0", "r-0") + `","device_id":"d0","request_id":"r-0","amount_minor":5,"currency":"EUR","status":"APPROVED"}` + "\n"
	if err := os.WriteFile(path, []byte(old), 0o600); err != nil {
		t.Fatal(err)
	}
	l, err := OpenLedger(path)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	e := envelope(t, "d1", "r-1", 50)
	rej := backend.Result{Outcome: v1.Outcome_OUTCOME_REJECT, Code: v1.ReasonCode_REASON_CODE_NOT_PERMITTED, Reason: "merchant blocked"}
	if err := l.Save(e, rej); err != nil {
		t.Fatal(err)
	}
	got, ok := l.Lookup(e.MessageId)
	if !ok || got.Outcome != v1.Outcome_OUTCOME_REJECT || got.Code != rej.Code || got.Reason != rej.Reason || got.Fingerprint != e.Fingerprint {
		t.Fatalf("got %+v, want the REJECT with its code, reason and fingerprint", got)
	}
	prev, ok := l.Lookup(v1.MessageID("d0", "r-0"))
	if !ok || prev.Outcome != v1.Outcome_OUTCOME_OK || prev.Fingerprint != "" {
		t.Fatalf("old line: got %+v, want OK without a fingerprint", prev)
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
