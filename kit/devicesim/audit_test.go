package devicesim

import (
	"testing"

	"github.com/edgebridge/edgebridge/payment"
)

func TestAuditLedger(t *testing.T) {
	e := func(dev, req string) payment.Entry { return payment.Entry{DeviceID: dev, RequestID: req} }
	tests := []struct {
		name                        string
		entries                     []payment.Entry
		processed, twice, reordered int
		maxReorder                  int
	}{
		{name: "in order", entries: []payment.Entry{e("d1", "r-000000"), e("d1", "r-000001"), e("d2", "r-000000")}, processed: 3},
		{name: "twice", entries: []payment.Entry{e("d1", "r-000000"), e("d1", "r-000000")}, processed: 1, twice: 1, reordered: 1},
		{name: "step back of 3", entries: []payment.Entry{e("d1", "r-000004"), e("d1", "r-000001"), e("d1", "r-000005")}, processed: 3, reordered: 1, maxReorder: 3},
		{name: "other requests ignored", entries: []payment.Entry{e("p", "x"), e("p", "")}, processed: 0},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			a := AuditLedger(tc.entries)
			if len(a.Processed) != tc.processed || a.Twice != tc.twice || a.Reordered != tc.reordered || a.MaxReorder != tc.maxReorder {
				t.Fatalf("got processed %d twice %d reordered %d max %d, want %d %d %d %d",
					len(a.Processed), a.Twice, a.Reordered, a.MaxReorder, tc.processed, tc.twice, tc.reordered, tc.maxReorder)
			}
		})
	}
}
