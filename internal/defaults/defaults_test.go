package defaults

import (
	"testing"
	"time"
)

func TestPositiveFillsZeroAndNegative(t *testing.T) {
	for _, in := range []time.Duration{0, -time.Second} {
		v := in
		Positive(&v, 5*time.Second)
		if v != 5*time.Second {
			t.Errorf("Positive(%s): got %s", in, v)
		}
	}
	v := 3
	Positive(&v, 8)
	if v != 3 {
		t.Errorf("a set value was replaced: %d", v)
	}
}

func TestZeroKeepsNegative(t *testing.T) {
	off, unset, name := -time.Second, time.Duration(0), ""
	Zero(&off, time.Minute)
	Zero(&unset, time.Minute)
	Zero(&name, "edgebridge")
	if off != -time.Second || unset != time.Minute || name != "edgebridge" {
		t.Fatalf("got %s, %s, %q", off, unset, name)
	}
}
