// Package await polls a condition until it holds, with a time limit: the
// one poll loop of the tests, the bench and the demo.
package await

import (
	"context"
	"errors"
	"fmt"
	"time"
)

// Every is how often a condition is checked.
const Every = 20 * time.Millisecond

// Cond checks cond every 20 ms until it returns nil, ctx ends or limit
// passes; the error then names what, with cond's last error. An error
// cond marks with Final ends the wait at once.
func Cond(ctx context.Context, limit time.Duration, what string, cond func() error) error {
	deadline := time.Now().Add(limit)
	t := time.NewTicker(Every)
	defer t.Stop()
	for {
		err := cond()
		if err == nil {
			return nil
		}
		var final finalError
		if errors.As(err, &final) {
			return fmt.Errorf("%s: %w", what, final.err)
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s: not after %s: %w", what, limit, err)
		}
		select {
		case <-t.C:
		case <-ctx.Done():
			return errors.Join(fmt.Errorf("%s: %w", what, ctx.Err()), err)
		}
	}
}

// Final marks err as one waiting longer cannot cure (the process waited
// for has exited): Cond returns it at once.
func Final(err error) error { return finalError{err} }

type finalError struct{ err error }

func (f finalError) Error() string { return f.err.Error() }
func (f finalError) Unwrap() error { return f.err }

// TB is what True needs of a *testing.T or *testing.B.
type TB interface {
	Helper()
	Fatalf(format string, args ...any)
}

var errNotYet = errors.New("condition false")

// True checks cond every 20 ms until it holds, and fails the test when
// limit passes first.
func True(t TB, limit time.Duration, what string, cond func() bool) {
	t.Helper()
	err := Cond(context.Background(), limit, "waiting for "+what, func() error {
		if cond() {
			return nil
		}
		return errNotYet
	})
	if err != nil {
		t.Fatalf("%v", err)
	}
}

// Receive returns the next value from ch, and fails the test when limit
// passes first.
func Receive[T any](t TB, ch <-chan T, limit time.Duration, what string) T {
	t.Helper()
	select {
	case v := <-ch:
		return v
	case <-time.After(limit):
		t.Fatalf("no %s within %s", what, limit)
		var zero T
		return zero
	}
}
