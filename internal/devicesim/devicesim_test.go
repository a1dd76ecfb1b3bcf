package devicesim

import (
	"encoding/json"
	"testing"
)

func TestAppendRequest(t *testing.T) {
	for _, size := range []int{0, 50, 100, 1024, 4096} {
		b := appendRequest(nil, "r-000042", 1250, "m-dev-0001", size)
		var got map[string]any
		if err := json.Unmarshal(b, &got); err != nil {
			t.Fatalf("size %d: %s is not JSON: %v", size, b, err)
		}
		if got["request_id"] != "r-000042" || got["amount_minor"] != 1250.0 || got["currency"] != "EUR" || got["merchant_id"] != "m-dev-0001" {
			t.Errorf("size %d: fields %v", size, got)
		}
		if size > 100 && len(b) != size {
			t.Errorf("size %d: got %d bytes", size, len(b))
		}
		if size <= 90 && got["memo"] != nil {
			t.Errorf("size %d: padded although the request is longer: %s", size, b)
		}
	}
}
