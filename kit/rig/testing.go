package rig

import (
	"context"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/edgebridge/edgebridge/bridge"
)

// TB is what Test and StartTest need of a *testing.T.
type TB interface {
	Helper()
	TempDir() string
	Cleanup(func())
	Errorf(format string, args ...any)
	Fatalf(format string, args ...any)
}

// Test is New in a temporary directory, closed at the end of the test.
func Test(t TB, opts ...Option) *Rig {
	t.Helper()
	r, err := New(t.TempDir(), opts...)
	if err != nil {
		t.Fatalf("rig: %v", err)
	}
	t.Cleanup(func() {
		if err := r.Close(); err != nil {
			t.Errorf("rig: %v", err)
		}
	})
	return r
}

// StartTest starts the node and waits until the bridge is ready; at the
// end of the test it is stopped and Run's error fails the test.
func (r *Rig) StartTest(t TB, opts ...bridge.Option) *bridge.Bridge {
	t.Helper()
	b := r.StartUnreadyTest(t, opts...)
	if err := r.AwaitReady(context.Background(), 30*time.Second); err != nil {
		t.Fatalf("%v", err)
	}
	return b
}

// StartUnreadyTest is StartTest without waiting for readiness.
func (r *Rig) StartUnreadyTest(t TB, opts ...bridge.Option) *bridge.Bridge {
	t.Helper()
	if err := r.Start(opts...); err != nil {
		t.Fatalf("%v", err)
	}
	t.Cleanup(func() {
		if err := r.Stop(); err != nil {
			t.Errorf("bridge Run: %v", err)
		}
	})
	return r.Running.Bridge
}

// RecordsTest is Records with 20 s, failing the test short of n.
func (r *Rig) RecordsTest(t TB, topic string, n int) []*kgo.Record {
	t.Helper()
	recs, err := r.Records(topic, n, 20*time.Second)
	if err != nil {
		t.Fatalf("%v", err)
	}
	return recs
}
