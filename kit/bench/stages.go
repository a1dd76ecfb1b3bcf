package bench

import (
	"math"
	"slices"
	"strconv"
	"strings"
)

// Stage is where a scenario's latency went inside the bridge, from its own
// histograms (read before and after the scenario): the bucket bounds that
// hold the median and the 99th percentile. Coarse (the buckets double from
// 0.5 ms), but it says which leg a tail is in.
type Stage struct {
	Name  string  `json:"name"`
	Count float64 `json:"count"`
	// P50UpTo and P99UpTo are the upper bounds, ms, of the buckets holding
	// the median and the 99th percentile (-1: past the last bucket).
	P50UpTo float64 `json:"p50_up_to_ms"`
	P99UpTo float64 `json:"p99_up_to_ms"`
}

// stageHistograms are the bridge's latency histograms a site-rate scenario
// is broken into.
var stageHistograms = []struct{ name, metric string }{
	{"produce (a batch of requests -> Kafka's acknowledgement, fsync)", "edgebridge_kafka_produce_latency_seconds"},
	{"delivery (a record handed to the backends -> its ACK)", "edgebridge_delivery_latency_seconds"},
	{"end to end (MQTT receipt -> the reply's PUBACK)", "edgebridge_end_to_end_latency_seconds"},
}

// buckets is a histogram's cumulative counts by upper bound, seconds.
type buckets map[float64]float64

// parseBuckets reads every histogram's buckets from a /metrics text.
func parseBuckets(text string) map[string]buckets {
	out := map[string]buckets{}
	for line := range strings.SplitSeq(text, "\n") {
		name, rest, ok := strings.Cut(line, `_bucket{le="`)
		if !ok || strings.Contains(rest, ",") { // labelled histograms are not stages
			continue
		}
		le, value, ok := strings.Cut(rest, `"} `)
		if !ok {
			continue
		}
		bound, err1 := strconv.ParseFloat(le, 64)
		n, err2 := strconv.ParseFloat(value, 64)
		if err1 != nil || err2 != nil {
			continue
		}
		if out[name] == nil {
			out[name] = buckets{}
		}
		out[name][bound] = n
	}
	return out
}

// stages compares the histograms of two /metrics texts.
func stages(before, after string) []Stage {
	b, a := parseBuckets(before), parseBuckets(after)
	var out []Stage
	for _, h := range stageHistograms {
		s, ok := stage(b[h.metric], a[h.metric])
		if !ok {
			continue
		}
		s.Name = h.name
		out = append(out, s)
	}
	return out
}

// stage is the observations between two readings of a histogram: their
// count and the buckets holding the median and the 99th percentile.
func stage(before, after buckets) (Stage, bool) {
	total := after[math.Inf(1)] - before[math.Inf(1)]
	if total <= 0 {
		return Stage{}, false
	}
	bounds := make([]float64, 0, len(after))
	for le := range after {
		bounds = append(bounds, le)
	}
	slices.Sort(bounds)
	upTo := func(q float64) float64 {
		for _, le := range bounds {
			if !math.IsInf(le, 1) && after[le]-before[le] >= q*total {
				return le * 1000
			}
		}
		return -1
	}
	return Stage{Count: total, P50UpTo: upTo(0.5), P99UpTo: upTo(0.99)}, true
}
