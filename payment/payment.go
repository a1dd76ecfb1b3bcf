// Package payment is the reference payment backend behind cmd/paymentd and
// the demo: a Handler that approves amounts up to a limit, and a Ledger, an
// append-only JSON-lines file that is both the record of processed payments
// and the dedup store that survives restarts.
package payment

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"sync"

	v1 "github.com/edgebridge/edgebridge/api/edgebridge/v1"
	"github.com/edgebridge/edgebridge/backend"
	"github.com/edgebridge/edgebridge/transcoder"
)

// DefaultLimit is the approval limit in minor units.
const DefaultLimit = 100000

// Handler approves requests with amount_minor <= limit and declines the rest.
func Handler(limit int64) backend.Handler {
	return func(_ context.Context, env *v1.Envelope) backend.Result {
		req, err := transcoder.PaymentRequest(env)
		if err != nil {
			// The bridge builds the REJECTED reply from code and reason.
			return backend.Result{
				Outcome: v1.Outcome_OUTCOME_REJECT, Code: v1.ReasonCode_REASON_CODE_INVALID_REQUEST, Reason: string(transcoder.ReasonOf(err)),
			}
		}
		return backend.Result{Outcome: v1.Outcome_OUTCOME_OK, Reply: decide(req, limit)}
	}
}

const declineReason = "amount exceeds limit"

// decide is paymentd's business rule: approve up to limit, decline above
// it (a business answer, OK with a DECLINED reply: not a failure).
func decide(req *v1.PaymentRequest, limit int64) *v1.PaymentReply {
	if req.GetAmountMinor() > limit {
		return &v1.PaymentReply{Status: v1.PaymentStatus_PAYMENT_STATUS_DECLINED, Code: v1.ReasonCode_REASON_CODE_LIMIT_EXCEEDED, Reason: declineReason}
	}
	return &v1.PaymentReply{Status: v1.PaymentStatus_PAYMENT_STATUS_APPROVED}
}

// Entry is one ledger line.
type Entry struct {
	MessageID   string `json:"message_id"`
	DeviceID    string `json:"device_id"`
	RequestID   string `json:"request_id"`
	AmountMinor int64  `json:"amount_minor"`
	Currency    string `json:"currency"`
	Status      string `json:"status"`
	// Code and Reason of a REJECTED request (a redelivery is answered with
	// them); empty otherwise.
	Code   string `json:"code,omitempty"`
	Reason string `json:"reason,omitempty"`
	// Fingerprint of the request's content (v1.Fingerprint); absent in
	// lines written before envelopes carried one.
	Fingerprint string `json:"fingerprint,omitempty"`
}

// Ledger is a backend.Store and backend.Syncer over a JSON-lines file. Save
// appends to a buffer; Sync writes and fsyncs it. It is safe for concurrent use.
type Ledger struct {
	mu      sync.Mutex
	f       *os.File
	w       *bufio.Writer
	seen    map[string]Entry
	noFsync bool
}

// LedgerOption configures OpenLedger.
type LedgerOption func(*Ledger)

// NoFsync makes Sync write to the page cache without an fsync: the ledger
// survives a process crash but not a machine crash. For benchmarks that
// measure the pipeline without the disk's flush latency.
func NoFsync() LedgerOption { return func(l *Ledger) { l.noFsync = true } }

// OpenLedger opens (creating if needed) the ledger at path and reloads every
// entry in it. A torn last line from a crash is ignored and truncated.
func OpenLedger(path string, opts ...LedgerOption) (*Ledger, error) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o640)
	if err != nil {
		return nil, fmt.Errorf("payment: open ledger: %w", err)
	}
	seen, good, err := load(f)
	if err != nil {
		f.Close()
		return nil, err
	}
	if err := f.Truncate(good); err != nil {
		f.Close()
		return nil, fmt.Errorf("payment: truncate torn ledger tail: %w", err)
	}
	if _, err := f.Seek(good, io.SeekStart); err != nil {
		f.Close()
		return nil, fmt.Errorf("payment: %w", err)
	}
	l := &Ledger{f: f, w: bufio.NewWriterSize(f, 64<<10), seen: seen}
	for _, o := range opts {
		o(l)
	}
	return l, nil
}

func load(r io.Reader) (map[string]Entry, int64, error) {
	seen := make(map[string]Entry)
	br := bufio.NewReader(r)
	var good int64
	for {
		line, err := br.ReadBytes('\n')
		if errors.Is(err, io.EOF) {
			return seen, good, nil // an unterminated last line is torn: drop it
		}
		if err != nil {
			return nil, 0, fmt.Errorf("payment: read ledger: %w", err)
		}
		var e Entry
		if json.Unmarshal(bytes.TrimSpace(line), &e) != nil || e.MessageID == "" {
			return nil, 0, fmt.Errorf("payment: corrupt ledger line at byte %d", good)
		}
		seen[e.MessageID] = e
		good += int64(len(line))
	}
}

// Lookup implements backend.Store.
func (l *Ledger) Lookup(id string) (backend.Stored, bool) {
	l.mu.Lock()
	e, ok := l.seen[id]
	l.mu.Unlock()
	if !ok {
		return backend.Stored{}, false
	}
	st := backend.Stored{Fingerprint: e.Fingerprint}
	if e.Status == transcoder.StatusRejected {
		// The bridge renders the device's REJECTED reply from the code.
		st.Outcome, st.Code, st.Reason = v1.Outcome_OUTCOME_REJECT, transcoder.ParseCode(e.Code), e.Reason
		return st, true
	}
	st.Outcome, st.Reply = v1.Outcome_OUTCOME_OK, &v1.PaymentReply{Status: v1.PaymentStatus_PAYMENT_STATUS_APPROVED}
	if e.Status == transcoder.StatusDeclined {
		st.Reply = &v1.PaymentReply{Status: v1.PaymentStatus_PAYMENT_STATUS_DECLINED, Code: v1.ReasonCode_REASON_CODE_LIMIT_EXCEEDED, Reason: declineReason}
	}
	return st, true
}

// Save implements backend.Store: it buffers one ledger line. The backend
// helper saves only envelopes that passed v1.CheckEnvelope.
func (l *Ledger) Save(env *v1.Envelope, r backend.Result) error {
	e := Entry{MessageID: env.GetMessageId(), DeviceID: env.GetDeviceId(), RequestID: env.GetRequestId(), Fingerprint: env.GetFingerprint()}
	if req, err := transcoder.PaymentRequest(env); err == nil {
		e.AmountMinor, e.Currency = req.GetAmountMinor(), req.GetCurrency()
	}
	if r.Outcome != v1.Outcome_OUTCOME_REJECT && r.Reply != nil {
		e.Status = transcoder.StatusName(r.Reply.GetStatus())
	} else {
		e.Status, e.Code, e.Reason = transcoder.StatusRejected, transcoder.CodeName(r.Code), r.Reason
	}
	line, err := json.Marshal(e)
	if err != nil {
		return fmt.Errorf("payment: encode ledger entry: %w", err)
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if _, err := l.w.Write(append(line, '\n')); err != nil {
		return fmt.Errorf("payment: append ledger: %w", err)
	}
	l.seen[e.MessageID] = e
	return nil
}

// Sync implements backend.Syncer: flush and fsync (flush only with NoFsync).
func (l *Ledger) Sync() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.w.Buffered() == 0 {
		return nil
	}
	if err := l.w.Flush(); err != nil {
		return fmt.Errorf("payment: write ledger: %w", err)
	}
	if l.noFsync {
		return nil
	}
	if err := l.f.Sync(); err != nil {
		return fmt.Errorf("payment: fsync ledger: %w", err)
	}
	return nil
}

// Len returns the number of entries.
func (l *Ledger) Len() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.seen)
}

// Close syncs and closes the file.
func (l *Ledger) Close() error {
	err := l.Sync()
	return errors.Join(err, l.f.Close())
}

// ReadLedger returns every entry of the ledger file at path in file order.
func ReadLedger(path string) ([]Entry, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var out []Entry
	for _, line := range bytes.Split(b, []byte("\n")) {
		if len(bytes.TrimSpace(line)) == 0 {
			continue
		}
		var e Entry
		if err := json.Unmarshal(line, &e); err != nil {
			return nil, fmt.Errorf("payment: ledger line %q: %w", line, err)
		}
		out = append(out, e)
	}
	return out, nil
}
