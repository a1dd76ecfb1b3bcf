package daprcomp

import (
	"context"
	"fmt"
	"slices"
	"sort"
	"strings"

	components "github.com/dapr/dapr/pkg/proto/components/v1"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/edgebridge/edgebridge/mqttin"
)

// OperationCreate publishes the invocation's data to an MQTT topic.
const OperationCreate = "create"

// MetaTopic is the invoke metadata key naming the MQTT topic.
const MetaTopic = "topic"

// binding is the output binding: how Dapr apps send commands to devices.
type binding struct {
	components.UnimplementedOutputBindingServer
	srv *Server
}

// Init accepts no component metadata but Dapr's own "direction" (the MQTT
// connection is the bridge's).
func (b *binding) Init(_ context.Context, req *components.OutputBindingInitRequest) (*components.OutputBindingInitResponse, error) {
	var keys []string
	for k, v := range req.GetMetadata().GetProperties() {
		if k == "direction" && (v == "" || v == "output") {
			continue
		}
		keys = append(keys, k)
	}
	if len(keys) > 0 {
		sort.Strings(keys)
		return nil, status.Errorf(codes.InvalidArgument,
			"binding init: unknown metadata %s (the binding takes none; the topic goes in each invocation's metadata %q)",
			strings.Join(keys, ", "), MetaTopic)
	}
	return &components.OutputBindingInitResponse{}, nil
}

// Invoke runs an operation; only "create" exists. It returns after the
// MQTT broker's PUBACK.
func (b *binding) Invoke(ctx context.Context, req *components.InvokeRequest) (*components.InvokeResponse, error) {
	if op := req.GetOperation(); op != OperationCreate {
		return nil, status.Errorf(codes.InvalidArgument, "binding: operation %q is not supported (supported: %s)", op, OperationCreate)
	}
	topic := req.GetMetadata()[MetaTopic]
	if err := checkPublishTopic(topic); err != nil {
		return nil, status.Errorf(codes.InvalidArgument, "binding: metadata %q: %v", MetaTopic, err)
	}
	if !slices.ContainsFunc(b.srv.cfg.BindingTopics, func(f string) bool { return mqttin.FilterMatches(f, topic) }) {
		b.srv.event(EventRefused, "")
		return nil, status.Errorf(codes.PermissionDenied, "binding: the binding may not publish to %.128q (allowed: %s; dapr.binding_topics)",
			topic, strings.Join(b.srv.cfg.BindingTopics, ", "))
	}
	if err := b.srv.deps.MQTT.Publish(ctx, topic, req.GetData()); err != nil {
		return nil, publishError("binding: publish to "+topic, err)
	}
	b.srv.event(EventCommanded, "")
	return &components.InvokeResponse{Metadata: map[string]string{MetaTopic: topic}}, nil
}

// ListOperations lists the supported operations.
func (b *binding) ListOperations(context.Context, *components.ListOperationsRequest) (*components.ListOperationsResponse, error) {
	return &components.ListOperationsResponse{Operations: []string{OperationCreate}}, nil
}

// Ping fails while the pipeline is unhealthy.
func (b *binding) Ping(context.Context, *components.PingRequest) (*components.PingResponse, error) {
	if err := b.srv.ping(); err != nil {
		return nil, err
	}
	return &components.PingResponse{}, nil
}

// checkPublishTopic keeps apps off the broker's $ topics; Publish itself
// refuses a topic against MQTT's rules (mqttin.ValidTopic).
func checkPublishTopic(t string) error {
	switch {
	case t == "":
		return fmt.Errorf("missing: name the MQTT topic to publish to")
	case strings.HasPrefix(t, "$"):
		return fmt.Errorf("%.64q: topics starting with $ are reserved for the broker", t)
	}
	return nil
}
