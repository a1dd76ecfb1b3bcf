package bench

import (
	"reflect"
	"testing"
)

const metricsBefore = `# HELP edgebridge_kafka_produce_latency_seconds x
# TYPE edgebridge_kafka_produce_latency_seconds histogram
edgebridge_kafka_produce_latency_seconds_bucket{le="0.0005"} 10
edgebridge_kafka_produce_latency_seconds_bucket{le="0.001"} 10
edgebridge_kafka_produce_latency_seconds_bucket{le="0.002"} 10
edgebridge_kafka_produce_latency_seconds_bucket{le="+Inf"} 10
edgebridge_kafka_produce_latency_seconds_sum 0.001
edgebridge_kafka_produce_latency_seconds_count 10
edgebridge_grpc_x_bucket{target="a",le="0.001"} 5
`

const metricsAfter = `edgebridge_kafka_produce_latency_seconds_bucket{le="0.0005"} 60
edgebridge_kafka_produce_latency_seconds_bucket{le="0.001"} 100
edgebridge_kafka_produce_latency_seconds_bucket{le="0.002"} 108
edgebridge_kafka_produce_latency_seconds_bucket{le="+Inf"} 110
edgebridge_end_to_end_latency_seconds_bucket{le="0.001"} 0
edgebridge_end_to_end_latency_seconds_bucket{le="+Inf"} 0
edgebridge_grpc_x_bucket{target="a",le="0.001"} 9
`

// The stages are the observations between the readings: 100 produces, 50
// of them up to 0.5 ms (the median's bucket), 90 up to 1 ms, 98 up to 2 ms,
// 2 past the last bound (the 99th percentile's). A histogram without new
// observations and labelled ones are left out.
func TestStages(t *testing.T) {
	got := stages(metricsBefore, metricsAfter)
	want := []Stage{{Name: stageHistograms[0].name, Count: 100, P50UpTo: 0.5, P99UpTo: -1}}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("stages = %+v, want %+v", got, want)
	}
	after := metricsAfter + "edgebridge_delivery_latency_seconds_bucket{le=\"0.004\"} 99\nedgebridge_delivery_latency_seconds_bucket{le=\"0.008\"} 100\nedgebridge_delivery_latency_seconds_bucket{le=\"+Inf\"} 100\n"
	got = stages(metricsBefore, after)
	if len(got) != 2 || got[1].Name != stageHistograms[1].name || got[1].P50UpTo != 4 || got[1].P99UpTo != 4 || got[1].Count != 100 {
		t.Fatalf("with deliveries: %+v", got)
	}
}
