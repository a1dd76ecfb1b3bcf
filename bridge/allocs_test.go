//go:build !race

package bridge

import (
	"fmt"
	"strings"
	"testing"

	v1 "github.com/edgebridge/edgebridge/api/edgebridge/v1"
	"github.com/edgebridge/edgebridge/transcoder"
)

// The allocations of the ingest decision for one valid 1 KB request:
// decoded, checked, enveloped, marshalled, made a Kafka record. A change
// that allocates more per message fails here, deterministically
// (testing.AllocsPerRun; not under -race, whose sync.Pool drops items at
// random: scripts/test.sh runs these without it). Lower the budget when
// a change saves some.
func TestAdmitAllocs(t *testing.T) {
	r := testRules()
	pad := strings.Repeat("x", 1024-110)
	m := message("payment/request/dev-0001", fmt.Appendf(nil,
		`{"request_id":"r-000042","amount_minor":1250,"currency":"EUR","merchant_id":"m-dev-0001","memo":%q}`, pad), false)
	if a := r.admit(m, nil); a.dead != nil {
		t.Fatalf("dead-lettered: %+v", a.dead)
	}
	checkAllocs(t, "admit", admitAllocs, func() { _ = r.admit(m, nil) })
}

// The reply a device gets for a backend's answer.
func TestReplyAllocs(t *testing.T) {
	rep := &v1.PaymentReply{RequestId: "r-000042", MessageId: v1.MessageID("dev-0001", "r-000042"), Status: v1.PaymentStatus_PAYMENT_STATUS_APPROVED}
	checkAllocs(t, "transcoder.EncodeReply", replyAllocs, func() { _ = transcoder.EncodeReply(rep) })
}

// Budgets: what the code allocates today, per message. To see where:
//
//	go test -run TestAdmitAllocs -memprofile m.out -memprofilerate 1 -o b.test ./bridge
//	go tool pprof -sample_index=alloc_objects -top b.test m.out
//
// Of admit's 23, encoding/json's decode of the request makes 10,
// proto.Marshal 3.
const (
	admitAllocs = 23
	replyAllocs = 2
)

func checkAllocs(t *testing.T, what string, budget float64, f func()) {
	t.Helper()
	got := testing.AllocsPerRun(200, f)
	t.Logf("%s: %.0f allocations per message (budget %.0f)", what, got, budget)
	if got > budget {
		t.Errorf("%s: %.0f allocations per message, budget %.0f", what, got, budget)
	}
}
