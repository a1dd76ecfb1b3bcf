package embedded_test

import (
	"fmt"
	"testing"
	"time"

	"github.com/edgebridge/edgebridge/embedded"
)

// BenchmarkQueuedReplyMemory measures what one reply waiting for an
// offline device costs the embedded broker in heap: 100 devices with
// persistent sessions go offline and b.N replies of 150 bytes queue for
// them. Reported as heap-B/reply (the bbolt store holds a copy on disk).
//
//	go test -run '^$' -bench QueuedReplyMemory -benchtime 100000x ./embedded
func BenchmarkQueuedReplyMemory(b *testing.B) {
	const devices = 100
	m, err := embedded.ListenMQTT(embedded.MQTTConfig{Listen: "127.0.0.1:0", DataDir: b.TempDir()})
	if err != nil {
		b.Fatal(err)
	}
	defer m.Close()
	url := "tcp://" + m.Addr()
	for i := range devices {
		d := connectDeviceOpts(b, url, fmt.Sprintf("d%03d", i), nil, nil, false)
		if tok := d.Subscribe(fmt.Sprintf("payment/response/d%03d", i), 1, nil); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
			b.Fatal(tok.Error())
		}
		d.Disconnect(50)
	}
	pub := connectDeviceOpts(b, url, "bridge-replies", nil, nil, false)
	payload := make([]byte, 150)
	before := embedded.HeapInUse()
	b.ResetTimer()
	for i := range b.N {
		tok := pub.Publish(fmt.Sprintf("payment/response/d%03d", i%devices), 1, false, payload)
		if i%512 == 511 || i == b.N-1 {
			if !tok.WaitTimeout(30*time.Second) || tok.Error() != nil {
				b.Fatal(tok.Error())
			}
		}
	}
	b.StopTimer()
	for i := range min(devices, b.N) {
		if got := m.Inflight(fmt.Sprintf("d%03d", i)); got == 0 {
			b.Fatalf("d%03d holds no reply", i)
		}
	}
	b.ReportMetric(float64(embedded.HeapInUse()-before)/float64(b.N), "heap-B/reply")
}
