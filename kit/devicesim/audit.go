package devicesim

import (
	"strconv"
	"strings"

	"github.com/edgebridge/edgebridge/payment"
)

// Audit is what a backend's ledger says about the simulated devices'
// requests (request ids r-NNNNNN; other entries are ignored).
type Audit struct {
	// Processed holds "device/request" of every request processed at least once.
	Processed map[string]bool
	// Twice counts ledger entries beyond the first for a request.
	Twice int
	// Reordered counts entries processed after a later request of the same
	// device; MaxReorder is the largest such step back, in requests.
	Reordered, MaxReorder int
}

// AuditLedger reads entries in ledger order (the order of first processing).
func AuditLedger(entries []payment.Entry) Audit {
	a := Audit{Processed: map[string]bool{}}
	highest := map[string]int{}
	for _, e := range entries {
		n, err := strconv.Atoi(strings.TrimPrefix(e.RequestID, "r-"))
		if err != nil || !strings.HasPrefix(e.RequestID, "r-") {
			continue
		}
		key := e.DeviceID + "/" + e.RequestID
		if a.Processed[key] {
			a.Twice++
		}
		a.Processed[key] = true
		if h, ok := highest[e.DeviceID]; ok && n <= h {
			a.Reordered++
			a.MaxReorder = max(a.MaxReorder, h-n)
		}
		highest[e.DeviceID] = max(highest[e.DeviceID], n)
	}
	return a
}
